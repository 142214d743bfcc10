"""The Definitions of the main code location: assets, checks, the lineage job, its schedule and sensor,
resources, executor. (Experiments, ``vlmrl_pipeline.experiments_location``, build theirs with the same function.)

The profile comes from ``$VLMRL_PROFILE`` (``demo`` when unset: offline, CPU, minutes); artifacts go under
``$VLMRL_DATA_DIR`` (``data/`` in the checkout when unset); the executor from ``$VLMRL_EXECUTOR``.
"""

import logging
from collections.abc import Sequence

from dagster import (
    AssetsDefinition,
    AssetSpec,
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    map_asset_specs,
)

from vlmrl_pipeline.assets import data, evaluation, export, model, report, shipped, training
from vlmrl_pipeline.assets.experiment_comparison import build_experiment_comparison
from vlmrl_pipeline.automation import retrain_schedule, source_data_sensor, vlmrl_lineage_job
from vlmrl_pipeline.core.experiment_specs import declared_experiments, report_page_path
from vlmrl_pipeline.core.profiles import Profile, get_profile
from vlmrl_pipeline.core.settings_versions import settings_versions
from vlmrl_pipeline.execution import executor_for_environment
from vlmrl_pipeline.resources import experiments_file, resources_for_profile

ASSET_MODULES = [data, model, training, evaluation, export, shipped, report]


def assets_for_profile(profile: Profile, key_prefix: str | None = None) -> Sequence[AssetsDefinition]:
    """The assets (under ``key_prefix``, an experiment's name, when given), each code version extended by the hash
    of the settings that feed it under ``profile`` (``core.settings_versions``): change a setting in the profile,
    reload, and exactly the assets it feeds show as stale ("Materialize unsynced" re-runs those)."""
    versions = settings_versions(profile)

    def stamp(spec: AssetSpec) -> AssetSpec:
        version = versions.get(spec.key.path[-1])
        if version:
            spec = spec.replace_attributes(code_version=f"{spec.code_version}+settings-{version}")
        # An experiment's groups carry its name, so the asset graph draws each experiment's stages apart.
        return spec.replace_attributes(group_name=f"{key_prefix}_{spec.group_name}") if key_prefix else spec

    return map_asset_specs(stamp, load_assets_from_modules(ASSET_MODULES, key_prefix=key_prefix))


def build_definitions(profile: Profile, data_dir: str | None = None, key_prefix: str | None = None) -> Definitions:
    """Everything one code location serves: the lineage of ``profile``, its artifacts under ``data_dir``
    (``$VLMRL_DATA_DIR`` when None); an experiment's location also gives its assets ``key_prefix``."""
    return Definitions(**definitions_args(profile, data_dir, key_prefix))


def definitions_args(profile: Profile, data_dir: str | None = None, key_prefix: str | None = None) -> dict:
    """:func:`build_definitions`' arguments to ``Definitions``, also what one experiment's repository is made of
    (``vlmrl_pipeline.experiments_location``)."""
    assets = list(assets_for_profile(profile, key_prefix))
    if key_prefix is None:  # the main location also sets every declared experiment beside its own numbers
        # A malformed experiments file never stops this location: it is reported here, at load, and in the run
        # log of experiment_comparison; each experiment's own location fails with the same message.
        experiments, problem = declared_experiments(experiments_file())
        if problem:
            logging.getLogger("vlmrl_pipeline").warning("experiments file not used: %s", problem)
        assets.append(build_experiment_comparison(f"main ({profile.name})", experiments, problem))
    return dict(
        assets=assets,
        asset_checks=load_asset_checks_from_modules(ASSET_MODULES, asset_key_prefix=key_prefix),
        jobs=[vlmrl_lineage_job],
        # Both start stopped: turn them on in the UI's Automation tab (the daemon runs with `dagster dev`).
        schedules=[retrain_schedule],
        sensors=[source_data_sensor],
        resources=resources_for_profile(profile, data_dir, report_page_path=report_page_path(key_prefix)),
        # Multiprocess locally (each step its own process, GPU memory returned between steps); k8s_job_executor
        # with VLMRL_EXECUTOR=k8s. GPU steps also share the instance's "gpu" pool (limit 1, dagster_home).
        executor=executor_for_environment(),
    )


PROFILE = get_profile()
all_assets = assets_for_profile(PROFILE)
all_checks = load_asset_checks_from_modules(ASSET_MODULES)
defs = build_definitions(PROFILE)
