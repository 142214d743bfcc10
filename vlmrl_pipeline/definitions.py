"""The one Definitions object: assets, checks, the lineage job and resources for the active profile.

The profile comes from ``$VLMRL_PROFILE`` (``demo`` when unset: offline, CPU, minutes); artifacts go under
``$VLMRL_DATA_DIR`` (``data/`` in the checkout when unset).
"""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from vlmrl_pipeline.assets import data, evaluation, export, model, report, training
from vlmrl_pipeline.core.profiles import get_profile
from vlmrl_pipeline.resources import resources_for_profile

ASSET_MODULES = [data, model, training, evaluation, export, report]

all_assets = load_assets_from_modules(ASSET_MODULES)
all_checks = load_asset_checks_from_modules(ASSET_MODULES)

# The whole lineage, data to report, as one job: the README's main command runs it.
vlmrl_lineage_job = define_asset_job(
    "vlmrl_lineage",
    selection=AssetSelection.all(),
    description="Filter data, resize images, build/load the base model, evaluate, train GSPO, re-evaluate, "
    "merge the adapter and write the before/after report.",
)

defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[vlmrl_lineage_job],
    resources=resources_for_profile(get_profile()),
)
