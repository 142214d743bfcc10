"""The Definitions object: the lineage graph, the job, and resources that mirror the core settings."""

from __future__ import annotations

import dataclasses

import pytest
from dagster import AssetKey

from vlmrl_pipeline import resources as res
from vlmrl_pipeline.core.generation import GenerationSettings
from vlmrl_pipeline.core.modeling import LoraSettings, TinyModelSpec
from vlmrl_pipeline.core.profiles import DEMO_MODEL_NAME, DataSettings, get_profile, qwen3vl_8b_profile
from vlmrl_pipeline.core.training import GSPOSettings
from vlmrl_pipeline.core.warmstart import WarmStartSettings
from vlmrl_pipeline.definitions import all_checks, defs

EXPECTED_UPSTREAM = {
    "mathvista_filtered": set(),
    "resized_images": {"mathvista_filtered"},
    "base_model": {"resized_images"},
    "baseline_records": {"base_model", "resized_images", "mathvista_filtered"},
    "lora_adapter": {"base_model", "resized_images"},
    "after_records": {"lora_adapter", "base_model", "resized_images", "mathvista_filtered"},
    "eval_diff_report": {"baseline_records", "after_records"},
    "merged_model": {"lora_adapter", "base_model", "resized_images"},
}


def test_lineage_graph_has_every_stage_wired():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(EXPECTED_UPSTREAM)
    for name, upstream in EXPECTED_UPSTREAM.items():
        parents = {k.to_user_string() for k in graph.get(AssetKey(name)).parent_keys}
        assert parents == upstream, name


def test_every_asset_says_what_it_is():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 40, key


def test_the_lineage_job_exists_and_the_split_check_is_blocking():
    assert defs.resolve_job_def("vlmrl_lineage").name == "vlmrl_lineage"
    specs = {spec.name: spec for checks in all_checks for spec in checks.check_specs}
    assert specs["train_eval_disjoint"].blocking
    assert specs["train_eval_disjoint"].asset_key == AssetKey("resized_images")


def test_demo_profile_is_the_default(monkeypatch):
    monkeypatch.delenv("VLMRL_PROFILE", raising=False)
    profile = get_profile()
    assert profile.name == "demo"
    assert profile.model.model_name == DEMO_MODEL_NAME
    assert profile.data.source == "synthetic"
    assert profile.gspo.importance_sampling_level == "sequence"


def test_real_profile_is_one_setting_away(monkeypatch):
    monkeypatch.setenv("VLMRL_PROFILE", "qwen3vl-8b")
    profile = get_profile()
    assert profile.model.model_name == "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"
    assert profile.model.load_in_4bit and profile.model.backend == "auto"
    assert (profile.data.source, profile.data.split) == ("AI4Math/MathVista", "testmini")
    assert (profile.data.image_size, profile.data.eval_size, profile.data.numeric_only) == (512, 100, True)
    assert (profile.model.lora.r, profile.model.lora.lora_alpha) == (16, 16)
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("nope")


@pytest.mark.parametrize(
    "resource_cls, core_cls",
    [
        (res.DataSettingsResource, DataSettings),
        (res.TrainingSettingsResource, GSPOSettings),
        (res.EvalSettingsResource, GenerationSettings),
        (res.LoraConfig, LoraSettings),
        (res.TinyModelConfig, TinyModelSpec),
        (res.WarmStartConfig, WarmStartSettings),
    ],
)
def test_resources_mirror_the_core_settings(resource_cls, core_cls):
    assert set(resource_cls.model_fields) == {f.name for f in dataclasses.fields(core_cls)}


def test_resources_round_trip_a_profile(tmp_path):
    profile = qwen3vl_8b_profile()
    built = res.resources_for_profile(profile, data_dir=str(tmp_path))
    assert built["data_settings"].to_core() == profile.data
    assert built["training_settings"].to_core() == profile.gspo
    assert built["eval_settings"].to_core() == profile.generation
    assert built["model_settings"].to_core() == profile.model
    assert built["model_settings"].warm_start_settings() == profile.warm_start


def test_artifact_staging_replaces_whole_or_not_at_all(tmp_path):
    store = res.ArtifactStore(root=str(tmp_path))
    with store.staging("thing") as tmp:
        (tmp / "a.txt").write_text("one")
    assert (store.asset_dir("thing") / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with store.staging("thing") as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise RuntimeError("crash mid-write")
    assert (store.asset_dir("thing") / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]
