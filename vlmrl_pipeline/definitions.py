"""The one Definitions object: assets, checks, the lineage job, its schedule and sensor, resources, executor.

The profile comes from ``$VLMRL_PROFILE`` (``demo`` when unset: offline, CPU, minutes); artifacts go under
``$VLMRL_DATA_DIR`` (``data/`` in the checkout when unset); the executor from ``$VLMRL_EXECUTOR``.
"""

from collections.abc import Sequence

from dagster import (
    AssetsDefinition,
    AssetSpec,
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    map_asset_specs,
)

from vlmrl_pipeline.assets import data, evaluation, export, model, report, training
from vlmrl_pipeline.automation import retrain_schedule, source_data_sensor, vlmrl_lineage_job
from vlmrl_pipeline.core.profiles import Profile, get_profile
from vlmrl_pipeline.core.settings_versions import settings_versions
from vlmrl_pipeline.execution import executor_for_environment
from vlmrl_pipeline.resources import resources_for_profile

ASSET_MODULES = [data, model, training, evaluation, export, report]



def assets_for_profile(profile: Profile) -> Sequence[AssetsDefinition]:
    """The assets, each code version extended by the hash of the settings that feed it under ``profile``
    (``core.settings_versions``): change a setting in the profile, reload, and exactly the assets it feeds and
    their downstream show as stale ("Materialize unsynced" re-runs those)."""
    versions = settings_versions(profile)

    def stamp(spec: AssetSpec) -> AssetSpec:
        version = versions.get(spec.key.to_user_string())
        return spec.replace_attributes(code_version=f"{spec.code_version}+settings-{version}") if version else spec

    return map_asset_specs(stamp, load_assets_from_modules(ASSET_MODULES))


PROFILE = get_profile()
all_assets = assets_for_profile(PROFILE)
all_checks = load_asset_checks_from_modules(ASSET_MODULES)

defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[vlmrl_lineage_job],
    # Both start stopped: turn them on in the UI's Automation tab (the daemon runs with `dagster dev`).
    schedules=[retrain_schedule],
    sensors=[source_data_sensor],
    resources=resources_for_profile(PROFILE),
    # Multiprocess locally (each step its own process, GPU memory returned between steps); k8s_job_executor with
    # VLMRL_EXECUTOR=k8s. GPU steps also share the instance's "gpu" pool (limit 1, dagster_home/dagster.yaml).
    executor=executor_for_environment(),
)
