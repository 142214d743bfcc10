"""The project's Dagster instance (dagster_home/dagster.yaml): one GPU step at a time, slots freed, runs retried.

Every test loads a copy of the file into a temporary folder, so the project's own run history is never touched.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    asset,
    define_asset_job,
    execute_job,
    multiprocess_executor,
    reconstructable,
)
from dagster._core.instance.config import PoolGranularity

from vlmrl_pipeline.execution import GPU_POOL

INSTANCE_YAML = Path(__file__).resolve().parent.parent / "dagster_home" / "dagster.yaml"
STEP_SECONDS = 1.5  # long enough that two unconstrained steps overlap even though child processes start unevenly


def _instance_from(folder: Path, yaml_text: str | None = None) -> DagsterInstance:
    folder.mkdir(parents=True, exist_ok=True)
    if yaml_text is None:
        shutil.copy(INSTANCE_YAML, folder / "dagster.yaml")
    else:
        (folder / "dagster.yaml").write_text(yaml_text)
    return DagsterInstance.from_config(str(folder))


@pytest.fixture
def instance(tmp_path):
    with _instance_from(tmp_path / "home") as inst:
        yield inst


# ----------------------------------------------------------------------- what the file configures


def test_the_instance_accepts_the_file_and_reads_back_every_setting(instance):
    # from_config validates the file against Dagster's instance schema: an unknown key would raise here.
    pools = instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 1 and instance.global_op_concurrency_default_limit == 1
    assert pools.pool_granularity == PoolGranularity.OP
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    assert instance.run_monitoring_max_resume_run_attempts == 0  # the default launcher cannot resume runs
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
    assert not instance.run_retries_retry_on_asset_or_op_failure
    assert not instance.telemetry_enabled
    # the daemons that act on these settings are the ones `dagster dev` starts
    assert {"MONITORING", "EVENT_LOG_CONSUMER"} <= set(instance.get_required_daemon_types())


def test_the_gpu_pool_gets_limit_one_once_the_instance_has_seen_it(instance):
    storage = instance.event_log_storage
    assert storage.supports_global_concurrency_limits
    assert storage.get_pool_limits() == []  # no row in a fresh database: the limit comes from the file
    # what the executor does the first time a step of the pool asks for a slot
    storage.initialize_concurrency_limit_to_default(GPU_POOL)
    [limit] = storage.get_pool_limits()
    assert (limit.name, limit.limit, limit.from_default) == (GPU_POOL, 1, True)
    info = storage.get_concurrency_info(GPU_POOL)
    assert info.slot_count == 1 and info.limit == 1 and info.using_default_limit


# ----------------------------------------------------------------------- the pool serialises GPU steps


@asset(pool=GPU_POOL)
def gpu_step_a() -> None:
    time.sleep(STEP_SECONDS)


@asset(pool=GPU_POOL)
def gpu_step_b() -> None:
    time.sleep(STEP_SECONDS)


def two_gpu_steps_job():
    """Two independent GPU steps: the multiprocess executor would run them side by side if nothing stopped it."""
    defs = Definitions(assets=[gpu_step_a, gpu_step_b], jobs=[define_asset_job("two_gpu_steps")],
                       executor=multiprocess_executor)
    return defs.resolve_job_def("two_gpu_steps")


def _step_windows(instance: DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            ends[event.step_key] = entry.timestamp
    assert set(starts) == set(ends) == {"gpu_step_a", "gpu_step_b"}
    return {key: (starts[key], ends[key]) for key in starts}


def _overlap(windows: dict[str, tuple[float, float]]) -> bool:
    (a_start, a_end), (b_start, b_end) = windows.values()
    return a_start < b_end and b_start < a_end


def _run_two_gpu_steps(instance: DagsterInstance) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """(each step's start and end time, the run's engine messages)."""
    run_config = {"execution": {"config": {"max_concurrent": 2}}}  # room for both, so only the pool can hold one
    with execute_job(reconstructable(two_gpu_steps_job), instance=instance, run_config=run_config) as result:
        assert result.success
        messages = [e.message or "" for e in result.all_events if e.event_type == DagsterEventType.ENGINE_EVENT]
        return _step_windows(instance, result.run_id), messages


def test_the_gpu_pool_runs_gpu_steps_one_at_a_time(tmp_path):
    with _instance_from(tmp_path / "configured") as configured:
        windows, messages = _run_two_gpu_steps(configured)
        assert not _overlap(windows), windows
        assert any(f"blocked by limit for pool {GPU_POOL}" in m for m in messages)
        info = configured.event_log_storage.get_concurrency_info(GPU_POOL)
        assert info.limit == 1 and not info.claimed_slots  # the run gave its slot back
    # Control: the same run on an instance without the file's pool limit does overlap, so the check above can
    # fail, and what kept the steps apart is the limit.
    with _instance_from(tmp_path / "unlimited", yaml_text="telemetry:\n  enabled: false\n") as unlimited:
        windows, messages = _run_two_gpu_steps(unlimited)
        assert _overlap(windows), windows
        assert not any("blocked by limit" in m for m in messages)


# ----------------------------------------------------------------------- retries and freed slots


@asset
def killed_gpu_step() -> None:
    """What the kernel's OOM killer does to a GPU process: SIGKILL, no Python exception, no cleanup."""
    os.kill(os.getpid(), signal.SIGKILL)


@asset
def buggy_step() -> None:
    raise ValueError("a bug in our code")


def _one_step_job(step):
    return Definitions(assets=[step], jobs=[define_asset_job("one_step")],
                       executor=multiprocess_executor).resolve_job_def("one_step")


def killed_step_job():
    return _one_step_job(killed_gpu_step)


def buggy_step_job():
    return _one_step_job(buggy_step)


def _failed_run(instance: DagsterInstance, job_fn) -> DagsterRun:
    with execute_job(reconstructable(job_fn), instance=instance, raise_on_error=False) as result:
        assert not result.success
        run_id = result.run_id
    run = instance.get_run_by_id(run_id)
    assert run.status == DagsterRunStatus.FAILURE
    return run


def test_a_killed_gpu_process_is_retried_and_a_python_error_is_not(instance):
    # Dagster tags a failed run with dagster/will_retry from the instance's run_retries settings as it fails;
    # the daemon then launches the retry. The kill crashes the executor's child process, which fails the run
    # with RUN_EXCEPTION; a raised exception is a STEP_FAILURE, which retry_on_asset_or_op_failure: false skips.
    killed = _failed_run(instance, killed_step_job)
    assert killed.tags["dagster/failure_reason"] == "RUN_EXCEPTION"
    assert killed.tags["dagster/will_retry"] == "true"
    buggy = _failed_run(instance, buggy_step_job)
    assert buggy.tags["dagster/failure_reason"] == "STEP_FAILURE"
    assert buggy.tags["dagster/will_retry"] == "false"


def test_a_slot_left_by_a_finished_run_is_freed_by_the_monitoring_daemon(instance, monkeypatch):
    from dagster._daemon.monitoring import concurrency as slot_monitor  # the daemon's own iteration

    storage = instance.event_log_storage
    run = instance.add_run(DagsterRun(job_name="vlmrl_lineage", status=DagsterRunStatus.STARTED))
    storage.initialize_concurrency_limit_to_default(GPU_POOL)
    assert storage.claim_concurrency_slot(GPU_POOL, run.run_id, "lora_adapter").is_claimed
    instance.report_run_canceled(run)  # e.g. cancelled while the run worker was gone: nobody freed the slot
    assert len(storage.get_concurrency_info(GPU_POOL).claimed_slots) == 1
    assert not storage.claim_concurrency_slot(GPU_POOL, "another-run", "baseline_records").is_claimed

    timeout = instance.run_monitoring_settings["free_slots_after_run_end_seconds"]

    def drain(at: datetime.datetime) -> None:
        monkeypatch.setattr(slot_monitor, "get_current_datetime", lambda: at)
        list(slot_monitor.execute_concurrency_slots_iteration(SimpleNamespace(instance=instance),
                                                                 logging.getLogger(__name__)))

    now = datetime.datetime.now(datetime.UTC)
    drain(now)  # the run ended just now: its slot is kept for the grace period
    assert len(storage.get_concurrency_info(GPU_POOL).claimed_slots) == 1
    drain(now + datetime.timedelta(seconds=timeout + 5))
    claimed = storage.get_concurrency_info(GPU_POOL).claimed_slots
    assert run.run_id not in {slot.run_id for slot in claimed}
    # the GPU step that was waiting gets the freed slot
    assert storage.claim_concurrency_slot(GPU_POOL, "another-run", "baseline_records").is_claimed


# ----------------------------------------------------------------------- runs whose process was killed


def test_a_run_whose_process_is_gone_is_failed_with_the_reason_and_its_slot_freed(instance):
    import json
    import subprocess
    import sys

    from vlmrl_pipeline.core.processes import process_identity
    from vlmrl_pipeline.execution import RUN_WORKER_TAG, fail_runs_of_dead_workers

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead_worker = process_identity(child.pid)
    child.kill()
    child.wait(timeout=10)
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(GPU_POOL)

    def started(worker: dict | None) -> DagsterRun:
        tags = {RUN_WORKER_TAG: json.dumps(worker)} if worker else {}
        run = instance.add_run(DagsterRun(job_name="vlmrl_lineage", status=DagsterRunStatus.STARTED, tags=tags))
        return run

    killed = started(dead_worker)  # SIGKILLed during lora_adapter: STARTED forever, holding the GPU
    assert storage.claim_concurrency_slot(GPU_POOL, killed.run_id, "lora_adapter").is_claimed
    alive = started(process_identity())  # this process: still running
    elsewhere = started({**dead_worker, "host": "another-node"})  # cannot be checked from here
    untagged = started(None)  # started by another executor
    assert not storage.claim_concurrency_slot(GPU_POOL, "next-run", "lora_adapter").is_claimed

    messages = []
    assert fail_runs_of_dead_workers(instance, "next-run", log=messages.append) == [killed.run_id]
    assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.FAILURE
    for run in (alive, elsewhere, untagged):
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
    [failure] = [e for e in instance.all_logs(killed.run_id)
                 if e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_FAILURE]
    assert f"run worker process {child.pid} " in failure.message and "is gone" in failure.message
    assert messages == [f"{failure.message}; freed 1 concurrency slot(s) (pools: ['{GPU_POOL}'])"]
    assert storage.claim_concurrency_slot(GPU_POOL, "next-run", "lora_adapter").is_claimed  # nothing waits
    assert fail_runs_of_dead_workers(instance, "next-run", log=messages.append) == []  # once only


# ----------------------------------------------------------------------- first use by several processes at once


def _open_at_once(home: str, barrier, results) -> None:
    """One process's first use of the instance, released with the others by ``barrier``."""
    from dagster import DagsterInstance as Instance

    barrier.wait()
    try:
        with Instance.from_config(home) as opened:
            opened.get_runs()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - the test reports what each process hit
        results.put(f"{type(exc).__name__}: {str(exc)[:200]}")


def _first_use_by(processes: int, home: Path) -> list[str]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter each, as separate commands are
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_open_at_once, args=(str(home), barrier, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    return outcomes


def _alembic_rows(db_file: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db_file) as connection:
        return [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]


def test_processes_opening_a_fresh_instance_at_once_all_get_a_working_instance(tmp_path):
    # Before: Dagster stamps a new SQLite database without a lock between processes; of four processes released
    # together, some failed with "'alembic_version' has more than one head present" (or a UNIQUE constraint), and
    # the instance stayed broken for every later command.
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    assert _first_use_by(4, home) == ["ok"] * 4
    for db_file in (home / "history" / "runs.db", home / "schedules" / "schedules.db",
                    home / "history" / "runs" / "index.db"):
        assert len(_alembic_rows(db_file)) == 1, db_file
    with DagsterInstance.from_config(str(home)) as instance:  # and it is still usable afterwards
        assert instance.get_runs() == []


def test_an_instance_broken_by_two_first_runs_is_repaired_when_opened(tmp_path):
    import sqlite3

    from vlmrl_pipeline.instance import ProjectInstance

    home = tmp_path / "home"
    with _instance_from(home) as instance:
        assert isinstance(instance, ProjectInstance)
    runs_db = home / "history" / "runs.db"
    [head] = _alembic_rows(runs_db)
    # What the loser of the race leaves: an older revision stamped beside the winner's head.
    with sqlite3.connect(runs_db) as connection:
        connection.execute("INSERT INTO alembic_version (version_num) VALUES ('7e2f3204cf8e')")
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copytree(home / "history", plain / "history")
    (plain / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.raises(Exception, match="more than one head"):
        DagsterInstance.from_config(str(plain))  # Dagster's own instance cannot open it
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []
    assert _alembic_rows(runs_db) == [head]


def test_the_storage_lock_names_a_holder_that_never_lets_go(tmp_path):
    import fcntl

    from vlmrl_pipeline.instance import INIT_LOCK, InstanceInitError, storage_init_lock

    tmp_path.joinpath(INIT_LOCK).touch()
    with open(tmp_path / INIT_LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file description: as another process would hold it
        with pytest.raises(InstanceInitError, match=INIT_LOCK):
            with storage_init_lock(tmp_path, timeout_s=0.3):
                pass
    with storage_init_lock(tmp_path, timeout_s=0.3):  # released with its holder
        pass
