"""A killed run recovers with the README's own commands: the real job, killed (its whole process group, SIGKILL)
during ``base_model`` and during ``lora_adapter``, then the same command again.

What must hold after each kill, with the project's ``dagster_home/dagster.yaml`` (a copy): the next run neither
hangs on the ``gpu`` pool nor needs the daemon; the dead run is marked failed with the reason and its slot is
freed; training continues from the newest checkpoint although ``base_model`` was rebuilt in between (the
checkpoint key follows content, not modification times); staging folders of the killed writers are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus

import vlmrl_pipeline
from vlmrl_pipeline.core.training.checkpoints import PROGRESS_FILE, latest_checkpoint
from vlmrl_pipeline.execution import GPU_POOL, RUN_WORKER_TAG
from vlmrl_pipeline_tests.recovery_defs import MAX_STEPS

ROOT = Path(vlmrl_pipeline.__file__).resolve().parent.parent
INSTANCE_YAML = ROOT / "dagster_home" / "dagster.yaml"
DAGSTER = str(Path(sys.executable).with_name("dagster"))
COMMAND = [DAGSTER, "job", "execute", "-m", "vlmrl_pipeline_tests.recovery_defs", "-j", "vlmrl_lineage"]
RUN_TIMEOUT = 480


@pytest.fixture
def project(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "VLMRL_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
           "HF_HUB_OFFLINE": "1"}
    return home, tmp_path / "data", env


def _start(env, log: Path) -> subprocess.Popen:
    # its own session: the kill takes the job and every process it started (step workers, accelerate, training)
    return subprocess.Popen(COMMAND, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _kill_when(process: subprocess.Popen, ready, log: Path, what: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the job ended (rc {process.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {RUN_TIMEOUT} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group, as a closed terminal, preemption or the OOM killer
    process.wait(timeout=30)


def _run_to_end(env, log: Path) -> None:
    process = _start(env, log)
    try:
        rc = process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        pytest.fail(f"the rerun hung (more than {RUN_TIMEOUT} s):\n{log.read_text()[-4000:]}")
    assert rc == 0, log.read_text()[-6000:]


def _staging(data: Path, asset: str) -> list[Path]:
    return [p for p in data.glob(f".{asset}.*") if p.is_dir()] if data.is_dir() else []


def _runs(home: Path):
    with DagsterInstance.from_config(str(home)) as instance:
        return {run.run_id: run for run in instance.get_runs()}


def test_a_killed_job_recovers_with_the_same_command(project, tmp_path):
    home, data, env = project

    # 1. Killed while base_model writes its staging folder (the demo model being built).
    first = _start(env, tmp_path / "run1.log")
    _kill_when(first, lambda: bool(_staging(data, "base_model")), tmp_path / "run1.log", "base_model staging folder")
    [killed_in_base_model] = _runs(home).values()
    assert killed_in_base_model.status == DagsterRunStatus.STARTED  # nobody told the instance
    assert _staging(data, "base_model")
    assert json.loads(killed_in_base_model.tags[RUN_WORKER_TAG])["pid"] == first.pid

    # 2. The same command: it runs through base_model and into training, where it is killed after a checkpoint.
    second = _start(env, tmp_path / "run2.log")
    checkpoints = data / "lora_adapter_checkpoints"
    killed = {}

    def past_a_checkpoint() -> bool:
        for progress_file in checkpoints.glob(f"*/{PROGRESS_FILE}"):
            try:
                progress = json.loads(progress_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            found = latest_checkpoint(progress_file.parent)
            if found and progress["global_step"] > found[1]:
                killed.update(step=found[1], work=progress_file.parent)
                return True
        return False

    _kill_when(second, past_a_checkpoint, tmp_path / "run2.log", "training step past a checkpoint")
    assert not _staging(data, "base_model")  # run 2 cleared what the kill in run 1 left
    assert _staging(data, "lora_adapter")  # and this kill left its own
    runs = _runs(home)
    assert runs[killed_in_base_model.run_id].status == DagsterRunStatus.FAILURE
    [killed_in_training] = [r for r in runs.values() if r.run_id != killed_in_base_model.run_id]
    assert killed_in_training.status == DagsterRunStatus.STARTED
    with DagsterInstance.from_config(str(home)) as instance:
        claimed = instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots
        assert [slot.run_id for slot in claimed] == [killed_in_training.run_id]  # the dead run holds the GPU

    # 3. The same command again: no hang on the pool, the dead run failed with the reason, training resumed
    #    from the checkpoint although base_model was rebuilt (new files, same bytes).
    checkpoint_mtime = killed["work"].stat().st_mtime
    _run_to_end(env, tmp_path / "run3.log")
    with DagsterInstance.from_config(str(home)) as instance:
        dead = instance.get_run_by_id(killed_in_training.run_id)
        assert dead.status == DagsterRunStatus.FAILURE
        [failure] = [e for e in instance.all_logs(dead.run_id) if e.dagster_event
                     and e.dagster_event.event_type == DagsterEventType.RUN_FAILURE]
        assert f"run worker process {second.pid} " in failure.message and "is gone" in failure.message
        [third] = [r for r in instance.get_runs()
                   if r.run_id not in (killed_in_base_model.run_id, killed_in_training.run_id)]
        assert third.status == DagsterRunStatus.SUCCESS
        assert any(f"freed 1 concurrency slot(s) (pools: ['{GPU_POOL}'])" in (e.user_message or "")
                   for e in instance.all_logs(third.run_id))
        assert not instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots
        [latest] = instance.fetch_materializations(AssetKey("lora_adapter"), limit=1).records
        meta = {k: v.value for k, v in latest.asset_materialization.metadata.items()}
        [base] = instance.fetch_materializations(AssetKey("base_model"), limit=1).records
    assert base.run_id == latest.run_id  # base_model was materialized again in the resuming run
    assert meta["resumed_from_step"] == killed["step"] > 0
    assert meta["global_step"] == MAX_STEPS and meta["steps_run"] == MAX_STEPS - killed["step"]
    assert checkpoint_mtime and not killed["work"].exists()  # finished: its checkpoints are removed
    assert not _staging(data, "lora_adapter") and not _staging(data, "base_model")
    assert (data / "lora_adapter" / "adapter_model.safetensors").exists()


_TOGETHER = """
import os, sys, time
from pathlib import Path
from dagster._cli import main  # the slow imports first, so that both commands open the new instance at once
ready = Path(sys.argv[1])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:
    time.sleep(0.002)
sys.argv = ["dagster", *sys.argv[2:]]
sys.exit(main())
"""
"""The ``dagster`` command, started in step with a second one (on a loaded machine, two commands started
together reach the instance seconds apart and may miss each other)."""


def test_two_first_runs_started_together_on_a_fresh_instance(project, tmp_path):
    # Before: both `dagster job execute` failed after about 10 s with alembic's "'alembic_version' has more than
    # one head present", and every later command on that instance failed the same way.
    home, data, env = project
    command = [*COMMAND[:-1], "vlmrl_first_steps"]
    logs = [tmp_path / f"together{i}.log" for i in (1, 2)]
    ready = tmp_path / "ready"
    ready.mkdir()
    together = [sys.executable, "-c", _TOGETHER, str(ready), *command[1:]]
    processes = [subprocess.Popen(together, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True) for log in logs]
    try:
        codes = [process.wait(timeout=RUN_TIMEOUT) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    texts = [log.read_text() for log in logs]
    for text in texts:
        assert "more than one head" not in text and "alembic" not in text.lower(), text[-4000:]
    assert 0 in codes, texts  # one ran through (the other waited for the instance, then ran or was refused)
    for code, text in zip(codes, texts):
        if code != 0:  # the documented refusal, from the asset both runs wanted to write at once
            assert "is being written by another materialization" in text, text[-4000:]
    runs = _runs(home)
    assert len(runs) == 2 and DagsterRunStatus.SUCCESS in {r.status for r in runs.values()}
    # The instance is still usable: the same command again succeeds and is recorded.
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert len(_runs(home)) == 3
    assert (data / "resized_images" / "manifest.parquet").exists()
