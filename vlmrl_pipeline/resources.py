"""Dagster resources: where artifacts live, and the settings of each stage (editable in the launchpad).

Each settings resource is generated from one dataclass of ``vlmrl_pipeline.core``, where every setting is
defined once, with its type, default and ``help`` (which the launchpad shows as the field's description). The
active profile's values become the resource's defaults, so a run changes one field by naming only that field.
``to_core()`` converts back; the core never sees Dagster.
"""

import dataclasses
import os
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Optional, Union, get_args, get_origin, get_type_hints

from dagster import AssetKey, AssetsDefinition, Config, ConfigurableResource
from pydantic import Field, create_model

from vlmrl_pipeline.core.atomic import atomic_dir, exclusive, remove_dead_staging
from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings
from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
from vlmrl_pipeline.core.export.settings import ExportSettings
from vlmrl_pipeline.core.integrity import record_files, verify_files
from vlmrl_pipeline.core.profiles import DataSettings, ModelSettings, Profile
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings
from vlmrl_pipeline.core.training.rollout_server import (
    RolloutServerSettings,
    RunningServer,
    free_port,
    running_server,
    trl_vllm_serve_command,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV_VAR = "VLMRL_DATA_DIR"


NO_OP_CONFIG: dict = {}
"""Every asset's own config schema: empty. Settings are resources (``resources: data_settings: config: ...``); an
empty schema, unlike none, makes Dagster refuse config typed under ``ops:`` instead of silently ignoring it."""


def default_data_dir() -> str:
    """``$VLMRL_DATA_DIR``, else ``data/`` in the project checkout."""
    return os.environ.get(DATA_DIR_ENV_VAR) or str(PROJECT_ROOT / "data")


VERIFIED_HASH_CACHE = ".cache/verified_sha256.json"
"""Under the data folder: sha256 of artifact files that changed inode or mtime but not content (a copied folder),
so each is read once (``core.integrity.verify_files``)."""
EXPERIMENTS_FILE_ENV_VAR = "VLMRL_EXPERIMENTS"


def experiments_file() -> Path:
    """``$VLMRL_EXPERIMENTS``, else ``experiments.yaml`` in the data folder (beside the experiments' artifacts)."""
    return Path(os.environ.get(EXPERIMENTS_FILE_ENV_VAR) or Path(default_data_dir()) / "experiments.yaml")


AssetRef = AssetKey | AssetsDefinition | str
"""What names an asset's folder: its key (``context.asset_key``), its definition (a single asset, e.g. the upstream
``resized_images`` an asset lists in ``deps``), or a folder name as given (tests, and folders beside the assets')."""


def asset_folder(asset: AssetRef) -> str:
    """The folder name of ``asset`` under a data folder: its key's last component.

    An experiment's location prefixes its keys (``exp1/resized_images``) and has a data folder of its own
    (``core.experiment_specs.experiment_dir``), so the prefix is never a subfolder. A str is taken as it is.

    >>> asset_folder(AssetKey(["exp1", "resized_images"])), asset_folder("lora_adapter_checkpoints")
    ('resized_images', 'lora_adapter_checkpoints')
    """
    if isinstance(asset, AssetsDefinition):
        asset = asset.key  # a multi-asset has no one folder: Dagster refuses it here
    if isinstance(asset, AssetKey):
        return asset.path[-1]
    if isinstance(asset, str):
        return asset
    raise TypeError(f"an asset's folder is named by an AssetKey, an AssetsDefinition or a str, not {asset!r}")


class ArtifactStore(ConfigurableResource):
    """A folder per asset under ``root``, named by the asset's key (``asset_folder``); every artifact is written to
    a temp folder and moved into place."""

    root: str
    report_server_url: str = "http://127.0.0.1:8765"
    """Where ``vlmrl-playground --data-dir <root>`` serves this folder's report (``/reports/report.html``): the
    ``report_page`` link the UI shows. Empty: link the file itself (which a browser opens only outside the UI)."""
    report_page_path: str = "/reports/report.html"
    """The report's path on that server: ``/experiments/<name>/reports/report.html`` for an experiment's."""

    def asset_dir(self, asset: AssetRef) -> Path:
        """``root / asset_folder(asset)``: ``asset_dir(context.asset_key)`` for an asset's own folder,
        ``asset_dir(resized_images)`` for an upstream one's."""
        path = Path(self.root) / asset_folder(asset)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def lock(self, asset: AssetRef) -> AbstractContextManager[None]:
        """Be the only writer of ``asset_dir(asset)`` while inside; another live writer makes this fail at once
        (``core.atomic.exclusive``). ``staging`` takes it too; take it earlier when an asset prepares files
        outside its staging folder (``lora_adapter``'s checkpoints)."""
        return exclusive(self.asset_dir(asset))

    @contextmanager
    def staging(self, asset: AssetRef) -> Iterator[Path]:
        """An empty temp folder beside ``asset_dir(asset)``; on success it replaces that folder whole.

        A failed or cancelled materialization leaves the previous artifact untouched and no half-written one. The
        asset's lock is held throughout, and staging folders left by killed writers of this asset are removed
        first (with the lock held, none of them can belong to a live writer).
        """
        with self.lock(asset):
            remove_dead_staging(self.asset_dir(asset))
            with atomic_dir(self.asset_dir(asset)) as tmp:
                yield tmp
                record_files(tmp)  # last: what every reader verifies (``read``)

    def read(self, asset: AssetRef, log: Callable[[str], None] | None = None) -> Path:
        """``asset_dir(asset)`` after checking its files against the ``integrity.json`` its materialization wrote
        (``core.integrity``): a missing, truncated or changed file fails the reading step now, naming the file and
        the asset to materialize again. Cheap: only files whose size, mtime or inode changed are read."""
        folder = self.asset_dir(asset)
        checked = verify_files(folder, asset_folder(asset), cache_file=Path(self.root) / VERIFIED_HASH_CACHE)
        if checked is None and log is not None:
            log(f"{folder} has no integrity record (written before records existed): its files are not verified; "
                f"materialize {asset_folder(asset)} again to record them")
        return folder

    def amend(self, asset: AssetRef, relative: str, text: str) -> Path:
        """Rewrite one text file of a materialized artifact and its entry in the artifact's integrity record, under
        the artifact's lock (a materialization in progress makes this fail at once): for documentation written
        later than the artifact, such as the report's evaluation in a model card. The file is replaced whole."""
        from vlmrl_pipeline.core.files import write_text_atomic
        from vlmrl_pipeline.core.integrity import record_changed_files

        with self.lock(asset):
            folder = self.asset_dir(asset)
            path = write_text_atomic(folder / relative, text)
            record_changed_files(folder, [relative])
        return path

    def verify(self, *assets: AssetRef, log: Callable[[str], None] | None = None) -> None:
        """``read`` each of ``assets``: what a step calls on its upstream folders before it reads any of them."""
        for asset in assets:
            self.read(asset, log)


def _config_type(tp: Any, value: Any) -> Any:
    """The config type of a core field: tuples become lists, ``X | None`` Optional[X], a nested dataclass a nested
    ``Config`` class whose defaults are ``value``'s."""
    if dataclasses.is_dataclass(tp):
        return settings_config_class(tp, value, base=Config, name=f"{tp.__name__}Config")
    origin = get_origin(tp)
    if origin is tuple:
        return list[get_args(tp)[0]]
    if origin in (Union, types.UnionType):
        (inner,) = [arg for arg in get_args(tp) if arg is not type(None)]
        return Optional[_config_type(inner, value)]
    return tp


def _nested_field(config_type: type, description: str) -> tuple[type, Any]:
    """A nested config field whose defaults are its class's (the annotation, not the factory, is what Dagster
    reads the defaults from)."""
    return config_type, Field(default_factory=config_type, description=description)


def settings_config_class(core_cls: type, values: Any, base: type[Config], name: str,
                          doc: str | None = None, extra: dict | None = None) -> type:
    """A Dagster config class (``base``: ``Config`` or a settings resource) with one field per field of the core
    dataclass ``core_cls``: its type, its ``help`` as the launchpad's description, and ``values`` (a dataclass
    instance or a dict of one) as its defaults, so a run names only the fields it changes."""
    if not isinstance(values, dict):
        values = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
    hints = get_type_hints(core_cls)
    config_fields: dict[str, Any] = {}
    for f in dataclasses.fields(core_cls):
        tp, value, help_text = hints[f.name], values[f.name], f.metadata.get("help", "")
        config_type = _config_type(tp, value)
        if isinstance(config_type, type) and issubclass(config_type, Config):
            config_fields[f.name] = _nested_field(config_type, help_text)
        else:
            default = list(value) if isinstance(value, tuple) else value
            config_fields[f.name] = (config_type, Field(default=default, description=help_text))
    config_fields.update(extra or {})
    return create_model(name, __base__=base, __doc__=doc or base.__doc__, **config_fields)


def _core_from_values(core_cls: type, values: dict) -> Any:
    hints = get_type_hints(core_cls)
    kwargs = {}
    for f in dataclasses.fields(core_cls):
        value, tp = values[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            value = _core_from_values(tp, value)
        elif get_origin(tp) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return core_cls(**kwargs)


class SettingsResource(ConfigurableResource):
    """A stage's settings: one field per field of a core dataclass (``core_class``), documented there."""

    core_class: ClassVar[type]

    def to_core(self) -> Any:
        """The core dataclass, whose own checks run now (a bad value raises ValueError naming the field)."""
        return _core_from_values(self.core_class, self.model_dump())

    @classmethod
    def with_defaults(cls, values: Any, **extra_defaults: Any) -> type:
        """This resource class with ``values`` (a core dataclass instance) as its defaults: what the active
        profile binds, so the launchpad shows the profile's values and a run overrides only what it names.
        ``extra_defaults``: fields beyond the core class's (``model_settings.warm_start``)."""
        extra = {key: _nested_field(_config_type(type(value), value), cls.model_fields[key].description)
                 for key, value in extra_defaults.items()}
        return settings_config_class(cls.core_class, values, base=cls, name=cls.__name__, extra=extra)


def _settings_resource(core_cls: type, name: str, doc: str, extra: dict | None = None) -> type:
    resource = settings_config_class(core_cls, core_cls(), base=SettingsResource, name=name, doc=doc, extra=extra)
    resource.core_class = core_cls
    return resource


DataSettingsResource = _settings_resource(
    DataSettings, "DataSettingsResource",
    "Data source, filters, image size and the held-out split (``core.profiles.DataSettings``).")

TrainingSettingsResource = _settings_resource(
    GSPOSettings, "TrainingSettingsResource",
    "GSPO options passed to TRL's ``GRPOConfig``, plus checkpointing and the launch (processes, ddp/fsdp) "
    "(``core.training.gspo_config.GSPOSettings``).")

EvalSettingsResource = _settings_resource(
    GenerationSettings, "EvalSettingsResource",
    "How evaluation generates (``core.evaluation.generation.GenerationSettings``): greedy and batched by default.")

ExportSettingsResource = _settings_resource(
    ExportSettings, "ExportSettingsResource",
    "What the export stage writes: merged checkpoints and GGUF types (``core.export.settings.ExportSettings``).")

_WarmStartConfig = _config_type(WarmStartSettings, WarmStartSettings())


class ModelSettingsResource(_settings_resource(
        ModelSettings, "ModelSettingsBase",
        "The base policy and its LoRA (``core.profiles.ModelSettings``); ``warm_start`` applies to the demo model.",
        extra={"warm_start": _nested_field(
            _WarmStartConfig, "The demo model's supervised warm start (``core.demo.warmstart.WarmStartSettings``).")})):
    """The base policy and its LoRA (``core.profiles.ModelSettings``); ``warm_start`` applies to the demo model."""

    def to_core(self) -> ModelSettings:
        values = self.model_dump()
        values.pop("warm_start")
        return _core_from_values(ModelSettings, values)

    def warm_start_settings(self) -> WarmStartSettings:
        return _core_from_values(WarmStartSettings, self.model_dump()["warm_start"])


class RolloutServerResource(_settings_resource(
        RolloutServerSettings, "RolloutServerBase",
        "The rollout server ``lora_adapter`` starts in ``vllm_mode='server'`` "
        "(``core.training.rollout_server.RolloutServerSettings``).")):
    """The rollout server ``lora_adapter`` starts in ``vllm_mode='server'``: ``trl vllm-serve`` on ``gpus``, up
    while the step trains, stopped when it ends (``core.training.rollout_server``, which owns the process)."""

    def serving(self, model: str, *, log_dir: str | os.PathLike, max_model_len: int | None = None,
                dtype: str = "auto", revision: str | None = None, log: Callable[[str], None] | None = None,
                command: list[str] | None = None) -> AbstractContextManager[RunningServer]:
        """Serve ``model`` while inside; ``command`` replaces the ``trl vllm-serve`` argv (tests: ``{host}`` and
        ``{port}`` in it are filled in)."""
        settings = self.to_core()
        port = settings.port or free_port(settings.host)
        argv = ([part.format(host=settings.host, port=port) for part in command] if command is not None else
                trl_vllm_serve_command(model, host=settings.host, port=port,
                                       tensor_parallel_size=len(settings.gpu_ids) or 1,
                                       gpu_memory_utilization=settings.gpu_memory_utilization,
                                       max_model_len=max_model_len, dtype=dtype, revision=revision,
                                       enforce_eager=settings.enforce_eager))
        return running_server(argv, host=settings.host, port=port, gpus=settings.gpus,
                              log_path=Path(log_dir) / "rollout_server.log",
                              startup_timeout_s=settings.startup_timeout_s, stop_grace_s=settings.stop_grace_s,
                              log=log)


def resources_for_profile(profile: Profile, data_dir: str | None = None,
                          report_page_path: str = "/reports/report.html") -> dict:
    """The resource dict for ``Definitions`` (or ``dagster.materialize``) that runs ``profile``: each settings
    resource bound with no values of its own, its class carrying the profile's values as defaults."""
    return {
        "artifacts": ArtifactStore(root=data_dir or default_data_dir(), report_page_path=report_page_path),
        "data_settings": DataSettingsResource.with_defaults(profile.data)(),
        "model_settings": ModelSettingsResource.with_defaults(profile.model, warm_start=profile.warm_start)(),
        "training_settings": TrainingSettingsResource.with_defaults(profile.gspo)(),
        "eval_settings": EvalSettingsResource.with_defaults(profile.generation)(),
        "export_settings": ExportSettingsResource.with_defaults(profile.export)(),
        "rollout_server": RolloutServerResource(),
    }
