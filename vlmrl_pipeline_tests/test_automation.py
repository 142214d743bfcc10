"""The lineage job, the retraining schedule and the source data sensor (vlmrl_pipeline.automation)."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest
from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    build_sensor_context,
)

from vlmrl_pipeline.automation import (
    DEFAULT_RETRAIN_CRON,
    RETRAIN_CRON_ENV_VAR,
    RETRAIN_TIMEZONE_ENV_VAR,
    SOURCE_FINGERPRINT_TAG,
    build_retrain_schedule,
    retrain_schedule,
    source_data_sensor,
    vlmrl_lineage_job,
)
from vlmrl_pipeline.core.demo.synthetic import write_synthetic_mathvista
from vlmrl_pipeline.core.lineage import source_fingerprint
from vlmrl_pipeline.core.profiles import DataSettings, get_profile
from vlmrl_pipeline.resources import DataSettingsResource, resources_for_profile


def _data_settings(**changes) -> DataSettingsResource:
    data = dataclasses.replace(DataSettings(), **changes)
    return DataSettingsResource(**{**dataclasses.asdict(data), "image_keys": list(data.image_keys)})


def _tick(settings: DataSettingsResource, cursor: str | None):
    """One sensor evaluation as the daemon runs it: (run requests, skip message, cursor afterwards)."""
    context = build_sensor_context(cursor=cursor, resources={"data_settings": settings})
    result = source_data_sensor.evaluate_tick(context)
    return result.run_requests or [], result.skip_message, result.cursor


def _touch(path, seconds=10):
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 1_000_000_000))


# ----------------------------------------------------------------------- job and schedule


def test_the_lineage_job_covers_every_asset(tmp_path):
    resources = resources_for_profile(get_profile("demo"), data_dir=str(tmp_path))
    defs = Definitions(assets=_all_assets(), jobs=[vlmrl_lineage_job], resources=resources)
    job = defs.resolve_job_def("vlmrl_lineage")
    assert job.name == "vlmrl_lineage" and vlmrl_lineage_job.description
    assert set(job.asset_layer.executable_asset_keys) == set(defs.resolve_asset_graph().get_all_asset_keys())


def test_the_schedule_defaults_to_weekly_utc_stopped_on_the_lineage_job(monkeypatch):
    monkeypatch.delenv(RETRAIN_CRON_ENV_VAR, raising=False)
    monkeypatch.delenv(RETRAIN_TIMEZONE_ENV_VAR, raising=False)
    for schedule in (build_retrain_schedule(), build_retrain_schedule({})):
        assert schedule.name == "retrain_schedule"
        assert schedule.cron_schedule == DEFAULT_RETRAIN_CRON == "0 3 * * 1"
        assert schedule.execution_timezone == "UTC"
        assert schedule.default_status == DefaultScheduleStatus.STOPPED
        assert schedule.job_name == "vlmrl_lineage"
    assert retrain_schedule.job_name == "vlmrl_lineage"
    assert retrain_schedule.default_status == DefaultScheduleStatus.STOPPED


def test_the_environment_sets_the_cron_and_the_time_zone(monkeypatch):
    monkeypatch.setenv(RETRAIN_CRON_ENV_VAR, " 30 2 * * * ")
    monkeypatch.setenv(RETRAIN_TIMEZONE_ENV_VAR, "Europe/Berlin")
    schedule = build_retrain_schedule()
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 2 * * *", "Europe/Berlin")
    # an empty variable means the default, as unset does
    schedule = build_retrain_schedule({RETRAIN_CRON_ENV_VAR: "", RETRAIN_TIMEZONE_ENV_VAR: ""})
    assert (schedule.cron_schedule, schedule.execution_timezone) == (DEFAULT_RETRAIN_CRON, "UTC")


@pytest.mark.parametrize("cron", ["0 3 * *", "every monday", "0 3 31 2 *", "61 3 * * 1"])
def test_a_bad_cron_string_names_the_variable(cron):
    with pytest.raises(ValueError, match=RETRAIN_CRON_ENV_VAR):
        build_retrain_schedule({RETRAIN_CRON_ENV_VAR: cron})


def test_a_bad_time_zone_names_the_variable():
    with pytest.raises(ValueError, match=RETRAIN_TIMEZONE_ENV_VAR):
        build_retrain_schedule({RETRAIN_TIMEZONE_ENV_VAR: "Mars/Olympus_Mons"})


# ----------------------------------------------------------------------- sensor


def test_the_sensor_is_stopped_by_default_and_targets_the_lineage_job():
    assert source_data_sensor.default_status == DefaultSensorStatus.STOPPED
    assert source_data_sensor.job_name == "vlmrl_lineage"
    assert source_data_sensor.minimum_interval_seconds == 300
    assert source_data_sensor.required_resource_keys == {"data_settings"}


def test_the_sensor_starts_one_run_per_change_of_a_local_hub_layout_folder(tmp_path):
    shard = write_synthetic_mathvista(tmp_path, num_rows=4, image_size=64, split="testmini")
    settings = _data_settings(source=str(tmp_path), split="testmini")

    # first tick: nothing to compare with, so the fingerprint is recorded and no run starts
    runs, skip, cursor = _tick(settings, None)
    assert runs == [] and "recorded" in skip
    assert cursor == source_fingerprint(str(tmp_path), "testmini")

    runs, skip, cursor_after = _tick(settings, cursor)
    assert runs == [] and "unchanged" in skip and cursor_after in (None, cursor)

    (tmp_path / "notes.md").write_text("not data")  # a file the loader does not read
    assert _tick(settings, cursor)[0] == []

    shutil.copy(shard, tmp_path / "data" / "testmini-00001-of-00002.parquet")  # a new shard of the split
    runs, skip, new_cursor = _tick(settings, cursor)
    [run] = runs
    assert new_cursor != cursor and new_cursor == source_fingerprint(str(tmp_path), "testmini")
    assert run.run_key == new_cursor and run.job_name == "vlmrl_lineage"
    assert run.tags[SOURCE_FINGERPRINT_TAG] == new_cursor

    runs, skip, _ = _tick(settings, new_cursor)  # the next tick sees no further change
    assert runs == [] and "unchanged" in skip


def test_the_sensor_sees_a_touched_image_of_a_github_layout_folder(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "1.png")
    (tmp_path / "testmini.json").write_text(
        '{"1": {"question": "How many?", "image": "images/1.png", "answer": "3", "precision": null,'
        ' "question_type": "free_form", "answer_type": "integer", "metadata": {}}}'
    )
    settings = _data_settings(source=str(tmp_path))
    _, _, cursor = _tick(settings, None)
    _touch(tmp_path / "images" / "1.png")
    runs, _, new_cursor = _tick(settings, cursor)
    assert [r.run_key for r in runs] == [new_cursor] and new_cursor != cursor


def test_the_sensor_starts_a_run_when_the_synthetic_settings_change():
    _, _, cursor = _tick(_data_settings(source="synthetic", synthetic_rows=400), None)
    assert _tick(_data_settings(source="synthetic", synthetic_rows=400), cursor)[0] == []
    [run] = _tick(_data_settings(source="synthetic", synthetic_rows=800), cursor)[0]
    assert run.job_name == "vlmrl_lineage"


def test_the_sensor_cannot_watch_a_hub_id_and_says_to_use_the_schedule():
    runs, skip, cursor = _tick(_data_settings(source="AI4Math/MathVista"), "previous")
    assert runs == [] and cursor in (None, "previous")
    assert "hub id" in skip and "retrain_schedule" in skip and RETRAIN_CRON_ENV_VAR in skip


def test_the_sensor_skips_and_keeps_its_cursor_while_a_local_source_is_missing(tmp_path):
    runs, skip, cursor = _tick(_data_settings(source=str(tmp_path / "unmounted")), "previous")
    assert runs == [] and "unmounted" in skip and cursor in (None, "previous")


# ----------------------------------------------------------------------- all of it in one Definitions


def _all_assets():
    from vlmrl_pipeline.definitions import all_assets

    return all_assets


def test_definitions_with_job_schedule_and_sensor_load_and_feed_the_sensor_its_resource(tmp_path):
    from vlmrl_pipeline.definitions import all_checks

    profile = get_profile("demo")
    resources = resources_for_profile(profile, data_dir=str(tmp_path / "data"))
    defs = Definitions(assets=_all_assets(), asset_checks=all_checks, jobs=[vlmrl_lineage_job],
                       schedules=[retrain_schedule], sensors=[source_data_sensor], resources=resources)
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert repo.get_schedule_def("retrain_schedule").job_name == "vlmrl_lineage"
    assert repo.get_sensor_def("source_data_sensor").job_name == "vlmrl_lineage"

    # the sensor evaluated as the daemon does (with the resources bound in these Definitions) reads their
    # data_settings: the demo's synthetic set
    sensor_def = repo.get_sensor_def("source_data_sensor")
    bound = {k: v for k, v in repo.get_top_level_resources().items() if k in sensor_def.required_resource_keys}
    result = sensor_def.evaluate_tick(build_sensor_context(cursor=None, resources=bound, repository_def=repo))
    synthetic = {k: getattr(profile.data, k) for k in ("synthetic_rows", "seed", "image_size", "synthetic_tasks")}
    assert result.cursor == source_fingerprint("synthetic", profile.data.split, synthetic_settings=synthetic)

    # Dagster 1.13's validate_loadable does not check a sensor's resources (a missing one fails only at tick
    # time), so check here that the Definitions bind the one the sensor asks for.
    assert sensor_def.required_resource_keys <= set(repo.get_top_level_resources())
