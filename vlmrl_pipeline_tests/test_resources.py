"""Settings resources come from the core dataclasses with the profile's defaults; the artifact store writes whole
artifacts or nothing."""

import dataclasses

import pytest

from vlmrl_pipeline import resources as res
from vlmrl_pipeline.core.export import ExportSettings
from vlmrl_pipeline.core.generation import GenerationSettings
from vlmrl_pipeline.core.modeling import LoraSettings, TinyModelSpec
from vlmrl_pipeline.core.profiles import PROFILES, DataSettings, ModelSettings
from vlmrl_pipeline.core.training import GSPOSettings
from vlmrl_pipeline.core.warmstart import WarmStartSettings

SETTINGS_CLASSES = [DataSettings, ModelSettings, LoraSettings, TinyModelSpec, WarmStartSettings, GSPOSettings,
                    GenerationSettings, ExportSettings]


@pytest.mark.parametrize("core_cls", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_documented_where_it_is_defined(core_cls):
    undocumented = [f.name for f in dataclasses.fields(core_cls) if len(f.metadata.get("help", "")) < 10]
    assert not undocumented


@pytest.mark.parametrize("resource_cls, core_cls", [
    (res.DataSettingsResource, DataSettings),
    (res.TrainingSettingsResource, GSPOSettings),
    (res.EvalSettingsResource, GenerationSettings),
    (res.ExportSettingsResource, ExportSettings),
    (res.ModelSettingsResource, ModelSettings),
])
def test_resources_are_generated_from_the_core_settings_with_their_help(resource_cls, core_cls):
    core_fields = {f.name: f for f in dataclasses.fields(core_cls)}
    extra = {"warm_start"} if core_cls is ModelSettings else set()
    assert set(resource_cls.model_fields) == set(core_fields) | extra
    for name, f in core_fields.items():
        assert resource_cls.model_fields[name].description == f.metadata["help"]


def test_the_profiles_values_are_the_launchpads_defaults(tmp_path):
    profile = PROFILES["qwen3vl-8b"]()
    built = res.resources_for_profile(profile, data_dir=str(tmp_path))
    data_fields = type(built["data_settings"]).model_fields
    assert data_fields["eval_size"].default == profile.data.eval_size
    assert data_fields["source"].default == profile.data.source
    lora = type(built["model_settings"]).model_fields["lora"].annotation.model_fields
    assert lora["r"].default == profile.model.lora.r
    # Bound with no values of its own, so a run's config for it may name one field and keep the rest.
    assert built["data_settings"].model_dump(exclude_unset=True) == {}
    overridden = type(built["data_settings"])(eval_size=7).to_core()
    assert overridden == dataclasses.replace(profile.data, eval_size=7)


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
