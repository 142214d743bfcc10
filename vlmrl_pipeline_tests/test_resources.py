"""Settings resources mirror the core dataclasses; the artifact store writes whole artifacts or nothing."""

import dataclasses

import pytest

from vlmrl_pipeline import resources as res
from vlmrl_pipeline.core.export import ExportSettings
from vlmrl_pipeline.core.generation import GenerationSettings
from vlmrl_pipeline.core.modeling import LoraSettings, TinyModelSpec
from vlmrl_pipeline.core.profiles import PROFILES, DataSettings
from vlmrl_pipeline.core.training import GSPOSettings
from vlmrl_pipeline.core.warmstart import WarmStartSettings


@pytest.mark.parametrize(
    "resource_cls, core_cls",
    [
        (res.DataSettingsResource, DataSettings),
        (res.TrainingSettingsResource, GSPOSettings),
        (res.EvalSettingsResource, GenerationSettings),
        (res.LoraConfig, LoraSettings),
        (res.TinyModelConfig, TinyModelSpec),
        (res.WarmStartConfig, WarmStartSettings),
        (res.ExportSettingsResource, ExportSettings),
    ],
)
def test_resources_mirror_the_core_settings(resource_cls, core_cls):
    assert set(resource_cls.model_fields) == {f.name for f in dataclasses.fields(core_cls)}


@pytest.mark.parametrize("profile", [make() for make in PROFILES.values()], ids=lambda p: p.name)
def test_resources_round_trip_a_profile(tmp_path, profile):
    built = res.resources_for_profile(profile, data_dir=str(tmp_path))
    assert built["data_settings"].to_core() == profile.data
    assert built["training_settings"].to_core() == profile.gspo
    assert built["eval_settings"].to_core() == profile.generation
    assert built["model_settings"].to_core() == profile.model
    assert built["model_settings"].warm_start_settings() == profile.warm_start
    assert built["export_settings"].to_core() == profile.export


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
    # no staging folder left; the lock file stays (released, empty) for the next writer
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock", "thing"]
    assert (tmp_path / ".thing.lock").read_text() == ""
