"""Staleness follows settings: a changed setting marks exactly the assets it feeds stale in a Dagster instance, and
materializing what is stale (the UI's "Materialize unsynced") carries the change down the lineage, and only there."""

from __future__ import annotations

import dataclasses
import doctest

import pytest
from dagster import DagsterInstance, Definitions, materialize

from vlmrl_pipeline.core import settings_versions as sv
from vlmrl_pipeline.core.profiles import PROFILES, demo_profile
from vlmrl_pipeline.definitions import all_checks, assets_for_profile
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

EVERYTHING = {"mathvista_filtered", "resized_images", "base_model", "baseline_completions", "baseline_records",
              "lora_adapter", "after_completions", "after_records", "eval_diff_report", "merged_model", "gguf_model",
              "merged_records", "gguf_records"}


def test_doctests():
    assert doctest.testmod(sv).failed == 0


def test_every_asset_has_its_feeding_settings_named():
    from vlmrl_pipeline.definitions import all_assets

    assert set(sv.SETTINGS_FEEDING) == {key.to_user_string() for a in all_assets for key in a.keys}


def _replace(profile, group: str, **changes):
    return dataclasses.replace(profile, **{group: dataclasses.replace(getattr(profile, group), **changes)})


@pytest.mark.parametrize("group, changes, changed_assets", [
    ("data", dict(eval_size=9), {"resized_images"}),
    ("data", dict(source="AI4Math/MathVista"), {"mathvista_filtered"}),
    ("data", dict(answer_format="boxed"), {"base_model", "baseline_completions", "lora_adapter", "after_completions",
                                           "baseline_records", "after_records", "merged_records", "gguf_records"}),
    ("gspo", dict(learning_rate=3.3e-4), {"lora_adapter"}),
    ("gspo", dict(rollout_engine="generate"), {"lora_adapter"}),  # another engine samples other rollouts
    ("generation", dict(max_new_tokens=99), {"baseline_completions", "after_completions"}),
    ("export", dict(gguf_types=("f16",)), {"gguf_model"}),
    ("export", dict(merged_dtype="float32"), {"merged_model"}),
    ("export", dict(llama_cpp_extra_buffer_types=True, shipped_logit_samples=4), {"gguf_records"}),
    # the checks' tolerance changes no artifact: the checks read it when they run
    ("export", dict(shipped_accuracy_tolerance=0.05), set()),
    ("model", dict(lora=dataclasses.replace(demo_profile().model.lora, r=4)), {"lora_adapter"}),
    # How a stage runs, not what it writes: no version moves.
    ("gspo", dict(save_steps=3, logging_steps=5, report_to="none"), set()),
    ("generation", dict(vllm_gpu_memory_utilization=0.4), set()),
])
def test_a_setting_moves_the_versions_of_exactly_the_assets_it_feeds(group, changes, changed_assets):
    before = demo_profile()
    after = _replace(before, group, **changes)
    old, new = sv.settings_versions(before), sv.settings_versions(after)
    assert {asset for asset in old if old[asset] != new[asset]} == changed_assets


def test_a_hub_models_base_model_version_ignores_the_demos_warm_start():
    profile = PROFILES["qwen3vl-8b"]()
    changed = dataclasses.replace(profile, warm_start=dataclasses.replace(profile.warm_start, steps=1))
    assert sv.settings_versions(profile)["base_model"] == sv.settings_versions(changed)["base_model"]


def _stale_assets(instance: DagsterInstance, profile, data: str) -> set[str]:
    """What the UI shows as stale (and "Materialize unsynced" selects) if the definitions loaded ``profile``. The
    webserver asks Dagster's stale-status resolver; so does this (a private API, hence here and only here)."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    graph = Definitions(assets=assets_for_profile(profile), asset_checks=all_checks,
                        resources=resources_for_profile(profile, data)).resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    return {key.to_user_string() for key in graph.materializable_asset_keys
            if resolver.get_status(key) == StaleStatus.STALE}


def _materialize_unsynced(instance: DagsterInstance, profile, data: str) -> list[set[str]]:
    """Click "Materialize unsynced" until nothing is stale: Dagster marks an asset's downstream stale once the asset
    has a new data version, so a change travels down the lineage one round at a time. Returns each round's set."""
    rounds = []
    while stale := _stale_assets(instance, profile, data):
        assert len(rounds) < len(EVERYTHING), rounds
        result = materialize([*assets_for_profile(profile), *all_checks], selection=sorted(stale),
                             instance=instance, resources=resources_for_profile(profile, data))
        assert result.success
        assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == stale
        rounds.append(stale)
    return rounds


def test_a_settings_change_marks_exactly_the_right_assets_stale_and_unsynced_rematerializes_them(tmp_path):
    profile = tiny_profile()
    instance = DagsterInstance.ephemeral()
    data = str(tmp_path / "data")
    assert materialize([*assets_for_profile(profile), *all_checks], instance=instance,
                       resources=resources_for_profile(profile, data)).success
    assert _stale_assets(instance, profile, data) == set()

    # Each change marks the assets it feeds, nothing else.
    assert _stale_assets(instance, _replace(profile, "gspo", learning_rate=3.3e-4), data) == {"lora_adapter"}
    assert _stale_assets(instance, _replace(profile, "data", eval_size=6), data) == {"resized_images"}
    assert _stale_assets(instance, _replace(profile, "model", max_seq_length=2048), data) == {
        "baseline_completions", "lora_adapter", "after_completions"}
    assert _stale_assets(instance, _replace(profile, "gspo", save_steps=1), data) == set()

    # Materializing what is stale makes its downstream stale in turn, and only that: a change of the evaluation's
    # generation re-runs both evaluations, their records and the report, never training or the export.
    changed = _replace(profile, "generation", max_new_tokens=5)
    assert _materialize_unsynced(instance, changed, data) == [
        {"baseline_completions", "after_completions"},
        {"baseline_records", "after_records", "merged_records", "gguf_records"}, {"eval_diff_report"}]
    # An export change re-runs the export, then the evaluation of what it wrote (through its bytes' hash), then
    # the report that shows it.
    changed_export = _replace(changed, "export", gguf_types=("f16",))
    assert _materialize_unsynced(instance, changed_export, data) == [{"gguf_model"}, {"gguf_records"},
                                                                      {"eval_diff_report"}]
    assert _stale_assets(instance, changed_export, data) == set()
