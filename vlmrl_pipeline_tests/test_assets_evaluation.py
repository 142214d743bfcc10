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
    from vlmrl_pipeline.core.evaluation.records import score_stored_completions

    rows = pd.DataFrame({"pid": ["a", "b"], "question": ["q", "q"], "answer": ["1", "2"]})
    scored = score_stored_completions(rows, pd.DataFrame({"pid": ["b", "a"], "completion": ["x", "y"]}))
    assert scored["pid"].tolist() == ["b", "a"] and scored["answer"].tolist() == ["2", "1"]
    with pytest.raises(ValueError, match="not evaluation rows"):
        score_stored_completions(rows, pd.DataFrame({"pid": ["c"], "completion": ["x"]}))
    with pytest.raises(ValueError, match="repeated"):
        score_stored_completions(rows, pd.DataFrame({"pid": ["a", "a"], "completion": ["x", "y"]}))


def _step_error(result) -> str:
    [failure] = result.get_step_failure_events()
    error, text = failure.step_failure_data.error, []
    while error is not None:
        text.append(error.message)
        error = error.cause
    return "\n".join(text)


def test_a_damaged_or_deleted_artifact_file_fails_the_step_that_reads_it(tmp_path):
    # Before: 4 KiB overwritten in the base model's weights gave 100 of 100 changed (empty) completions and no
    # warning; a deleted resized image surfaced as a bare FileNotFoundError in a later step; a truncated
    # model.safetensors failed with "SafetensorError ... incomplete metadata" without the file's name.
    import shutil

    upstream = tmp_path / "upstream"
    names = ("mathvista_filtered", "resized_images", "base_model")
    assert materialize([a for a in all_assets if a.key.to_user_string() in names],
                       resources=resources_for_profile(tiny_profile(), str(upstream)),
                       instance=DagsterInstance.ephemeral()).success

    def run(asset: str, damage) -> str:
        data = tmp_path / f"data-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(upstream, data)  # new inodes: the first check hashes, as after a move to another disk
        damaged = damage(data)
        result = materialize([a for a in all_assets if a.key.to_user_string() == asset],
                             resources=resources_for_profile(tiny_profile(), str(data)),
                             instance=DagsterInstance.ephemeral(), raise_on_error=False)
        assert not result.success
        message = _step_error(result)
        assert str(damaged) in message, message
        return message

    def overwrite_weights(data):
        weights = data / "base_model" / "checkpoint" / "model.safetensors"
        with open(weights, "r+b") as handle:
            handle.seek(weights.stat().st_size // 2)
            handle.write(bytes(4096))
        return weights

    def truncate_weights(data):
        weights = data / "base_model" / "checkpoint" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
        return weights

    def delete_an_image(data):
        manifest = pd.read_parquet(data / "resized_images" / "manifest.parquet")
        image = data / "resized_images" / manifest["image_path"].iloc[-1]  # a held-out row's
        image.unlink()
        return image

    message = run("baseline_completions", overwrite_weights)
    assert "has changed since base_model wrote it" in message and "materialize base_model again" in message
    assert "but base_model wrote" in run("baseline_completions", truncate_weights)
    for reader in ("baseline_completions", "lora_adapter"):  # generation and training check every image
        message = run(reader, delete_an_image)
        assert "is missing: it was written by resized_images" in message
        assert "materialize resized_images again" in message
