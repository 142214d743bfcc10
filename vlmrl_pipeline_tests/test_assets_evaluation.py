"""Re-running only the evaluation after a reward change, proved through the Dagster instance."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, Definitions, materialize
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from vlmrl_pipeline.assets import evaluation, report
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

# The shipped artifacts' records score too (they generate as well: merged ~7 s, GGUF ~4 s on the demo).
SCORING = {"baseline_records", "after_records", "merged_records", "gguf_records", "eval_diff_report"}
GENERATION_AND_TRAINING = {"baseline_completions", "after_completions", "lora_adapter"}


def _statuses(instance, assets, resources) -> dict[str, StaleStatus]:
    graph = Definitions(assets=assets, resources=resources).get_repository_def().asset_graph
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    return {key.to_user_string(): resolver.get_status(key) for key in graph.materializable_asset_keys}


def _with_new_reward_code(assets):
    """The same definitions as after someone edits rewards.py: only the code versions derived from it change."""
    return [
        a.map_asset_specs(lambda spec: spec.replace_attributes(code_version=f"{spec.code_version}-edited"))
        if a.key.to_user_string() in SCORING else a
        for a in assets
    ]


def test_scoring_assets_take_their_code_version_from_the_rewards_source():
    from vlmrl_pipeline.core.rewards import REWARD_VERSION

    versions = {a.key.to_user_string(): a.code_versions_by_key[a.key] for a in all_assets}
    # The rewards' source hash, plus the hash of the settings scoring reads (the answer format).
    assert versions["baseline_records"] == versions["after_records"]
    assert versions["baseline_records"].startswith(f"{REWARD_VERSION}+settings-")
    assert REWARD_VERSION in versions["eval_diff_report"]
    for name in GENERATION_AND_TRAINING:
        assert REWARD_VERSION not in versions[name]  # generation and training keep their own versions
    assert evaluation.baseline_completions.op.tags["dagster-k8s/config"]  # generation is a GPU step
    assert report.eval_diff_report.op.pool is None  # scoring is not


def test_a_reward_change_rescores_stored_completions_without_generating_or_training(tmp_path):
    instance = DagsterInstance.ephemeral()
    resources = resources_for_profile(tiny_profile(), str(tmp_path))
    assert materialize([*all_assets, *all_checks], resources=resources, instance=instance).success
    assert set(_statuses(instance, all_assets, resources).values()) == {StaleStatus.FRESH}
    # Every asset wrote its folder, named by its key.
    assert {key.path[-1] for a in all_assets for key in a.keys} <= {p.name for p in tmp_path.iterdir() if p.is_dir()}

    edited = _with_new_reward_code(all_assets)
    statuses = _statuses(instance, edited, resources)
    assert {name for name, status in statuses.items() if status == StaleStatus.STALE} == SCORING
    stamps = {name: instance.get_latest_materialization_event(AssetKey(name)).timestamp
              for name in GENERATION_AND_TRAINING | SCORING}
    completions_before = pd.read_parquet(tmp_path / "baseline_completions" / "completions.parquet")

    # What "Materialize unsynced" does in the UI: re-run exactly the stale assets (their checks come along).
    rerun = materialize([*edited, *all_checks], selection=sorted(SCORING), resources=resources, instance=instance)
    assert rerun.success
    ran = {event.step_key for event in rerun.get_step_success_events()}
    assert {"baseline_records", "after_records", "eval_diff_report"} <= ran
    assert not ran & GENERATION_AND_TRAINING
    for name in GENERATION_AND_TRAINING:  # untouched: no new materialization
        assert instance.get_latest_materialization_event(AssetKey(name)).timestamp == stamps[name]
    for name in SCORING:
        assert instance.get_latest_materialization_event(AssetKey(name)).timestamp > stamps[name]
    assert set(_statuses(instance, edited, resources).values()) == {StaleStatus.FRESH}

    # The records were re-scored from the stored completions, pid for pid.
    records = json.loads((tmp_path / "baseline_records" / "baseline_records.json").read_text())
    assert [r["completion"] for r in records["records"]] == completions_before["completion"].tolist()
    assert records["completions_from"] == "baseline_completions"


def test_scoring_refuses_completions_for_the_wrong_samples():
    from vlmrl_pipeline.core.evaluation import score_stored_completions

    rows = pd.DataFrame({"pid": ["a", "b"], "question": ["q", "q"], "answer": ["1", "2"]})
    scored = score_stored_completions(rows, pd.DataFrame({"pid": ["b", "a"], "completion": ["x", "y"]}))
    assert scored["pid"].tolist() == ["b", "a"] and scored["answer"].tolist() == ["2", "1"]
    with pytest.raises(ValueError, match="not evaluation rows"):
        score_stored_completions(rows, pd.DataFrame({"pid": ["c"], "completion": ["x"]}))
    with pytest.raises(ValueError, match="repeated"):
        score_stored_completions(rows, pd.DataFrame({"pid": ["a", "a"], "completion": ["x", "y"]}))
