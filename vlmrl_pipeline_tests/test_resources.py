"""Settings resources come from the core dataclasses with the profile's defaults; the artifact store writes whole
artifacts or nothing."""

import ast
import dataclasses
from pathlib import Path

import pytest

from vlmrl_pipeline import resources as res
from vlmrl_pipeline.core.demo.tiny_model import TinyModelSpec
from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings
from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
from vlmrl_pipeline.core.export.settings import ExportSettings
from vlmrl_pipeline.core.model.loading import LoraSettings
from vlmrl_pipeline.core.profiles import PROFILES, DataSettings, ModelSettings
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings

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


def test_doctests():
    import doctest

    assert doctest.testmod(res).failed == 0


def test_an_assets_folder_is_the_last_part_of_its_key(tmp_path):
    """Key, prefixed key (an experiment's location, which has a data folder of its own), definition or str: the
    same folder, so an asset reads and writes where its experiment's lineage keeps it."""
    from dagster import AssetKey, AssetOut, asset, multi_asset

    @asset(name="resized_images")
    def plain() -> None: ...

    @asset(name="resized_images", key_prefix="exp1")
    def prefixed() -> None: ...

    store = res.ArtifactStore(root=str(tmp_path))
    folder = tmp_path / "resized_images"
    for ref in ("resized_images", AssetKey("resized_images"), AssetKey(["exp1", "resized_images"]), plain, prefixed):
        assert store.asset_dir(ref) == folder, ref
        assert res.asset_folder(ref) == "resized_images", ref
    with store.staging(AssetKey(["exp1", "resized_images"])) as tmp:
        (tmp / "a.txt").write_text("one")
    with store.lock(prefixed):
        assert (store.asset_dir(plain) / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".resized_images.lock", "resized_images"]
    # A str is a folder name as given: folders beside the assets' (the training's checkpoints, a cache file).
    assert store.asset_dir(".cache/hashes.json") == tmp_path / ".cache" / "hashes.json"

    @multi_asset(outs={"one": AssetOut(), "two": AssetOut()})
    def both() -> tuple[None, None]: ...

    with pytest.raises(Exception, match="multiple asset keys"):  # no one folder for two assets
        store.asset_dir(both)
    with pytest.raises(TypeError, match="AssetKey, an AssetsDefinition or a str"):
        store.asset_dir(3)


ASSETS_DIR = Path(res.__file__).parent / "assets"
FOLDER_METHODS = {"asset_dir", "staging", "lock"}


def _typed_folder_names(path: Path, asset_names: set[str]) -> tuple[int, list[str]]:
    """How many ``asset_dir``/``staging``/``lock`` calls ``path`` makes, and where one names a folder by a string
    (a literal, an f-string or sum, or a module constant holding an asset's name), or an ``AssetKey`` is built
    from a literal."""
    tree = ast.parse(path.read_text())
    constants = {target.id: node.value.value for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                 and isinstance(node.value.value, str) for target in node.targets if isinstance(target, ast.Name)}
    calls, typed = 0, []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{path.name}:{node.lineno}"
        if isinstance(node.func, ast.Name) and node.func.id == "AssetKey":
            if any(isinstance(n, ast.Constant) and isinstance(n.value, str) for arg in node.args for n in ast.walk(arg)):
                typed.append(where)
        elif isinstance(node.func, ast.Attribute) and node.func.attr in FOLDER_METHODS and node.args:
            calls += 1
            arg = node.args[0]
            if isinstance(arg, (ast.Constant, ast.JoinedStr, ast.BinOp)) or (
                    isinstance(arg, ast.Name) and constants.get(arg.id) in asset_names):
                typed.append(where)
    return calls, typed


def test_every_asset_folder_is_named_by_a_key_or_a_definition_not_a_string():
    """Each asset names its own folder by ``context.asset_key`` and an upstream one by the definition it depends on
    (``asset_dir(resized_images)``): renaming an asset moves its folder with it, and nothing can read a folder by a
    name that no asset has any more."""
    from vlmrl_pipeline.definitions import defs

    asset_names = {key.path[-1] for key in defs.resolve_asset_graph().get_all_asset_keys()}
    calls, typed = 0, []
    for path in sorted(ASSETS_DIR.glob("*.py")):
        found, where = _typed_folder_names(path, asset_names)
        calls, typed = calls + found, typed + where
    assert calls > 30, "the asset modules moved: point ASSETS_DIR at them"
    assert typed == [], f"asset folders named by a string at {typed}"
