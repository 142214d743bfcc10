"""When the lineage runs by itself: the job over the whole lineage, a retraining schedule and a data sensor.

Both automations start out stopped (``DefaultScheduleStatus.STOPPED`` / ``DefaultSensorStatus.STOPPED``): a run
of this pipeline trains a model for hours on the GPU, so nothing fires until someone turns it on in the UI
(Automation tab) with the daemon running (``dagster dev`` starts it).

* ``retrain_schedule``: the lineage on a cron, ``$VLMRL_RETRAIN_CRON`` (default Mondays 03:00) in
  ``$VLMRL_RETRAIN_TIMEZONE`` (default UTC). The way to follow a hub data set, whose changes cannot be seen
  offline.
* ``source_data_sensor``: the lineage when the local source data changes, judged by
  ``core.lineage.source_fingerprint`` (file names, sizes and mtimes; or the synthetic set's settings).
"""

from __future__ import annotations

import os
import zoneinfo
from collections.abc import Mapping

from dagster import (
    AssetSelection,
    DagsterInvalidDefinitionError,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from vlmrl_pipeline.core.lineage import SYNTHETIC_FINGERPRINT_KEYS, source_fingerprint
from vlmrl_pipeline.resources import DataSettingsResource

RETRAIN_CRON_ENV_VAR = "VLMRL_RETRAIN_CRON"
RETRAIN_TIMEZONE_ENV_VAR = "VLMRL_RETRAIN_TIMEZONE"
DEFAULT_RETRAIN_CRON = "0 3 * * 1"
"""Mondays at 03:00: weekly, at an hour when the GPU is likely idle."""
DEFAULT_RETRAIN_TIMEZONE = "UTC"
SOURCE_SENSOR_INTERVAL_SECONDS = 300
"""A fingerprint is one ``stat`` per data file; every 5 minutes is plenty for data that changes by hand."""
SOURCE_FINGERPRINT_TAG = "vlmrl/source_fingerprint"

vlmrl_lineage_job = define_asset_job(
    "vlmrl_lineage",
    selection=AssetSelection.all(),
    description="Filter data, resize images, build/load the base model, evaluate, train GSPO, re-evaluate, "
    "merge the adapter and write the before/after report.",
)
"""The whole lineage, data to report, as one job: the README's main command, the schedule and the sensor run it."""


def build_retrain_schedule(environ: Mapping[str, str] | None = None) -> ScheduleDefinition:
    """The retraining schedule of ``vlmrl_lineage_job``, read from ``environ`` (``os.environ`` when None).

    ``VLMRL_RETRAIN_CRON`` is a standard 5-field cron string and ``VLMRL_RETRAIN_TIMEZONE`` an IANA zone name;
    empty or unset means the defaults. A bad value raises ValueError naming the variable, at import of the
    definitions, rather than a schedule that never fires. Starts stopped.
    """
    env = os.environ if environ is None else environ
    cron = (env.get(RETRAIN_CRON_ENV_VAR) or DEFAULT_RETRAIN_CRON).strip()
    timezone = (env.get(RETRAIN_TIMEZONE_ENV_VAR) or DEFAULT_RETRAIN_TIMEZONE).strip()
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"{RETRAIN_TIMEZONE_ENV_VAR}={timezone!r} is not a time zone name (e.g. 'UTC', 'Europe/Berlin')"
        ) from exc
    try:
        # Dagster validates the cron string here (5 fields, nothing like 30 February); the time zone was
        # checked above and the other arguments are fixed, so a failure here is the cron string's.
        return ScheduleDefinition(
            name="retrain_schedule",
            job=vlmrl_lineage_job,
            cron_schedule=cron,
            execution_timezone=timezone,
            default_status=DefaultScheduleStatus.STOPPED,
            description=f"Retrain the whole lineage on a cadence ({cron} {timezone}; set {RETRAIN_CRON_ENV_VAR} "
            f"and {RETRAIN_TIMEZONE_ENV_VAR} to change it). Use it for hub data sets, which the source data "
            "sensor cannot watch.",
        )
    except DagsterInvalidDefinitionError as exc:
        raise ValueError(
            f"{RETRAIN_CRON_ENV_VAR}={cron!r} is not a valid cron schedule: use 5 fields, minute hour "
            f"day-of-month month day-of-week, e.g. {DEFAULT_RETRAIN_CRON!r} ({exc})"
        ) from exc


retrain_schedule = build_retrain_schedule()


@sensor(
    name="source_data_sensor",
    job=vlmrl_lineage_job,
    minimum_interval_seconds=SOURCE_SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.STOPPED,
    description="Start vlmrl_lineage when the source data changes: a local folder's files for the split "
    "(added, removed, replaced or touched) or the synthetic set's settings. Hub ids cannot be watched "
    "offline; use retrain_schedule for them.",
)
def source_data_sensor(context: SensorEvaluationContext, data_settings: DataSettingsResource):
    """Compare the source's fingerprint with the one in the cursor; a new one requests a run keyed by it.

    The settings are the deployment's ``data_settings`` resource (as bound in ``Definitions``; a launchpad
    override applies to that one run only, not to what the sensor watches). The first evaluation only
    records the fingerprint, so turning the sensor on does not retrain on data that was already there. The run
    key is the fingerprint, so one state of the data starts at most one run even if the cursor is lost.
    """
    settings = data_settings.to_core()
    source = settings.source
    try:
        fingerprint = source_fingerprint(
            source, settings.split, settings.dataset_format,
            synthetic_settings={k: getattr(settings, k) for k in SYNTHETIC_FINGERPRINT_KEYS},
        )
    except FileNotFoundError as exc:
        # Possibly a copy in progress or an unmounted disk: report it and keep the last fingerprint.
        return SkipReason(f"cannot fingerprint the source: {exc}")
    if fingerprint is None:
        return SkipReason(
            f"source {source!r} is a Hugging Face hub id: its changes cannot be watched offline. Turn on "
            f"retrain_schedule ({RETRAIN_CRON_ENV_VAR}) to retrain on a cadence, or point data_settings.source "
            "at a local copy."
        )
    what = f"{source!r} split {settings.split!r}"
    if context.cursor is None:
        return SensorResult(
            skip_reason=SkipReason(
                f"recorded fingerprint {fingerprint[:12]} of {what}; a later change starts {vlmrl_lineage_job.name}"
            ),
            cursor=fingerprint,
        )
    if context.cursor == fingerprint:
        return SkipReason(f"{what} unchanged (fingerprint {fingerprint[:12]})")
    context.log.info(f"{what} changed: fingerprint {context.cursor[:12]} -> {fingerprint[:12]}")
    return SensorResult(
        run_requests=[
            RunRequest(run_key=fingerprint, job_name=vlmrl_lineage_job.name,
                       tags={SOURCE_FINGERPRINT_TAG: fingerprint})
        ],
        cursor=fingerprint,
    )
