"""Training in its own process: ``lora_adapter`` launches ``accelerate launch -m vlmrl_pipeline.training_process``
through Dagster Pipes; a killed run resumes from its last checkpoint; failures come back with their cause."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings
from vlmrl_pipeline.core.training import launch
from vlmrl_pipeline.core.training.checkpoints import (
    PROGRESS_FILE,
    checkpoint_key,
    latest_checkpoint,
    training_inputs,
)
from vlmrl_pipeline.definitions import all_assets
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

UPSTREAM = ("mathvista_filtered", "resized_images", "base_model")
CHECKPOINTS = "lora_adapter_checkpoints"


def _assets(*names):
    return [a for a in all_assets if a.key.to_user_string() in names]


def _profile(**gspo):
    base = tiny_profile()
    # These tests are about the training loop, not about rewards: a two-step warm start is enough, and the small
    # trained tokenizer (no GGUF export here) keeps each step short on two cores.
    base = dataclasses.replace(base, model=dataclasses.replace(
        base.model, tiny_model=dataclasses.replace(base.model.tiny_model, tokenizer="trained")))
    return dataclasses.replace(base, warm_start=WarmStartSettings(steps=2, batch_size=2),
                               gspo=dataclasses.replace(base.gspo, **{"max_steps": 6, "save_steps": 2,
                                                                      "max_completion_length": 16, **gspo}))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """Data, manifest and the demo base model, materialized once for this module's runs."""
    data = tmp_path_factory.mktemp("upstream") / "data"
    result = materialize(_assets(*UPSTREAM), resources=resources_for_profile(_profile(), str(data)),
                         instance=DagsterInstance.ephemeral())
    assert result.success
    return data


def _train(profile, data: Path):
    instance = DagsterInstance.ephemeral()
    result = materialize(_assets("lora_adapter"), resources=resources_for_profile(profile, str(data)),
                         instance=instance, raise_on_error=False)
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    return result, messages


def _failure(result) -> tuple[str, list[str]]:
    """The step failure's messages and error classes, down its cause chain (Dagster wraps the asset's error)."""
    [failure] = result.get_step_failure_events()
    error, messages, classes = failure.step_failure_data.error, [], []
    while error is not None:
        messages.append(error.message)
        classes.append(error.cls_name)
        error = error.cause
    return "\n".join(messages), classes


def _metadata(result) -> dict:
    [event] = result.asset_materializations_for_node("lora_adapter")
    return {k: v.value for k, v in event.metadata.items()}


class _Killer(threading.Thread):
    """SIGKILLs the training process once it has finished a step past a complete checkpoint (``progress.json``,
    written by the training process after every step, names its pid)."""

    def __init__(self, root: Path, beyond: int):
        super().__init__(daemon=True)
        self.root, self.beyond, self.killed_at = root, beyond, None

    def run(self):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.killed_at is None:
            for progress_file in self.root.glob(f"*/{PROGRESS_FILE}"):
                try:
                    progress = json.loads(progress_file.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                found = latest_checkpoint(progress_file.parent)
                if found and progress["global_step"] > found[1] >= self.beyond:
                    os.kill(progress["pid"], signal.SIGKILL)
                    self.killed_at = progress["global_step"]
                    return
            time.sleep(0.02)


def test_a_killed_run_resumes_from_its_last_checkpoint_and_other_settings_never_do(upstream, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(upstream, data)
    profile = _profile()  # 6 steps, a checkpoint every 2

    # 1. Kill the training process (SIGKILL: no cleanup, as a lost node or the OOM killer) after checkpoint-2.
    killer = _Killer(data / CHECKPOINTS, beyond=2)
    killer.start()
    killed, _ = _train(profile, data)
    killer.join()
    assert killer.killed_at is not None and not killed.success
    [work] = [p for p in (data / CHECKPOINTS).iterdir() if p.is_dir()]
    checkpoint, k = latest_checkpoint(work)
    assert 2 <= k < profile.gspo.max_steps
    last_step = json.loads((work / PROGRESS_FILE).read_text())["global_step"]
    assert last_step > k  # steps after the checkpoint were done and lost
    message, _ = _failure(killed)
    assert "no Python error was recorded" in message and f"resume from step {k}" in message
    before_kill = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    assert not (data / "lora_adapter").exists()  # nothing half-written was moved into place

    # 2. Other settings (learning rate, fewer steps) get their own folder: trained from step 0, the killed run's
    #    checkpoints untouched, and the log says they were not resumed.
    other = dataclasses.replace(profile, gspo=dataclasses.replace(profile.gspo, learning_rate=1e-3, max_steps=2))
    fresh, messages = _train(other, data)
    assert fresh.success
    meta = _metadata(fresh)
    assert (meta["resumed_from_step"], meta["steps_run"], meta["global_step"]) == (0, 2, 2)
    assert meta["checkpoint_key"] != work.name
    assert any("not resuming 1 checkpoint folder" in m and work.name in m for m in messages)
    assert latest_checkpoint(work) == (checkpoint, k)

    # 3. The same settings again: resumed from step k with its optimizer and scheduler state.
    resumed, messages = _train(profile, data)
    assert resumed.success
    meta = _metadata(resumed)
    assert meta["resumed_from_step"] == k and meta["global_step"] == profile.gspo.max_steps
    assert meta["steps_run"] == profile.gspo.max_steps - k  # this process ran only the missing steps
    assert any(f"resuming from {checkpoint}" in m for m in messages)
    log = json.loads((data / "lora_adapter" / "training_log.json").read_text())
    # A fresh optimizer and scheduler would have counted only the steps of this process.
    assert log["resume"]["optimizer_state_step"] == profile.gspo.max_steps
    assert log["resume"]["scheduler_last_epoch"] == profile.gspo.max_steps
    steps = [h["step"] for h in log["log_history"] if "loss" in h]
    assert steps == list(range(1, profile.gspo.max_steps + 1))  # every step logged once, none repeated
    assert log["log_history"][:len(before_kill)] == before_kill  # the history up to step k is the killed run's
    assert (data / "lora_adapter" / "adapter_model.safetensors").exists()
    assert not work.exists()  # a finished run's checkpoints are removed


def test_a_failure_in_the_training_process_reaches_the_run_with_its_cause(upstream, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(upstream, data)
    base = _profile()
    # Every prompt is longer than this context: the training process refuses to train on nothing.
    profile = dataclasses.replace(base, model=dataclasses.replace(base.model, max_seq_length=48),
                                  gspo=dataclasses.replace(base.gspo, max_completion_length=40))
    result, _ = _train(profile, data)
    assert not result.success
    message, classes = _failure(result)
    assert "rank 0: ValueError: every training prompt overflows max_seq_length=48" in message
    assert "TrainingProcessError" in classes


def test_bad_launch_settings_are_refused_before_anything_starts(upstream, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(upstream, data)
    base = _profile()
    # This machine may have no GPU (CI): more processes than GPUs is refused with what to set instead.
    too_many = max(launch.visible_gpu_count(), 1) + 1
    profile = dataclasses.replace(base, gspo=dataclasses.replace(base.gspo, num_processes=too_many))
    result, _ = _train(profile, data)
    message, _ = _failure(result)
    assert f"num_processes={too_many}" in message
    assert not (data / CHECKPOINTS).exists()


def test_the_process_count_follows_the_visible_gpus():
    assert launch.resolve_num_processes(0, 0) == 1 and launch.resolve_num_processes(1, 0) == 1
    with pytest.raises(ValueError, match="needs 2 CUDA GPUs, but this machine has none"):
        launch.resolve_num_processes(2, 0)
    assert launch.resolve_num_processes(0, 4) == 4 and launch.resolve_num_processes(2, 4) == 2
    with pytest.raises(ValueError, match="only 2 GPU"):
        launch.resolve_num_processes(3, 2)


def test_threads_per_process_follow_omp_num_threads_or_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert launch.default_cpu_threads(2) == 6  # a pod's limit, set by the deployment, wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    cores = len(os.sched_getaffinity(0))
    assert launch.default_cpu_threads(1) == cores and launch.default_cpu_threads(cores * 2) == 1


def test_unsloth_is_kept_to_one_process():
    launch.check_backend_supports("unsloth", 1, "ddp")
    launch.check_backend_supports("transformers", 8, "fsdp")
    with pytest.raises(ValueError, match="backend='transformers' for several GPUs"):
        launch.check_backend_supports("unsloth", 2, "ddp")


@pytest.mark.parametrize("processes, distributed, use_cpu", [(1, "ddp", True), (1, "fsdp", False),
                                                             (2, "ddp", False), (4, "fsdp", False)])
def test_accelerate_reads_the_launch_as_meant(tmp_path, monkeypatch, processes, distributed, use_cpu):
    """The config file and command go through accelerate's own parser and validation (no launch)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7,8")
    gpu_ids = launch.visible_gpu_ids(processes)
    config = launch.write_accelerate_config(tmp_path / "accelerate.yaml",
                                            launch.accelerate_config(processes, distributed, use_cpu, gpu_ids))
    command = launch.accelerate_command(config, tmp_path / "job.json", cpu_threads=2)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[-4:] == ["-m", "vlmrl_pipeline.training_process", "--job", str(tmp_path / "job.json")]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
    assert args.num_processes == processes and args.module and args.use_cpu == use_cpu
    assert args.multi_gpu == (processes > 1 and distributed == "ddp")
    assert args.use_fsdp == (processes > 1 and distributed == "fsdp")
    if args.use_fsdp:
        assert str(args.fsdp_version) == "2" and args.fsdp_state_dict_type == "FULL_STATE_DICT"
    assert args.num_cpu_threads_per_process == 2
    # one process sees one GPU (else Trainer wraps it in nn.DataParallel, which TRL refuses); N see the first N
    assert args.gpu_ids == ("all" if use_cpu else ",".join(["4", "5", "6", "7"][:processes]))


def test_the_launch_sees_the_first_visible_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert launch.visible_gpu_ids(1) == "0" and launch.visible_gpu_ids(3) == "0,1,2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaa, GPU-bbb")
    assert launch.visible_gpu_ids(1) == "GPU-aaa" and launch.visible_gpu_ids(2) == "GPU-aaa,GPU-bbb"


def test_several_processes_on_a_cpu_are_refused():
    with pytest.raises(ValueError, match="need CUDA GPUs"):
        launch.accelerate_config(2, "ddp", use_cpu=True)


def test_the_checkpoint_key_follows_what_training_depends_on():
    def key(**changes):
        base = dict(gspo={"learning_rate": 1e-4, "max_steps": 8, "save_steps": 3, "logging_steps": 1},
                    model={"backend": "transformers"}, prompt_style={"answer_format": "tags"},
                    base_model_ref={"model_name": "m"}, base_model_files=[["model.safetensors", 10, 1]],
                    manifest_sha256="a", reward_version="r", num_processes=1, code_version="c")
        for name, value in changes.items():
            if name in ("learning_rate", "max_steps", "save_steps", "logging_steps"):
                base["gspo"] = {**base["gspo"], name: value}
            else:
                base[name] = value
        return checkpoint_key(training_inputs(**base))

    same = key()
    # checkpoint cadence and logging do not change what is trained: an interrupted run may change them
    assert key(save_steps=10) == key(logging_steps=5) == same
    for changed in (key(learning_rate=2e-4), key(max_steps=9), key(manifest_sha256="b"), key(num_processes=2),
                    key(base_model_files=[["model.safetensors", 10, 2]]), key(reward_version="s"),
                    key(code_version="d"), key(base_model_ref={"model_name": "other"})):
        assert changed != same


def test_the_base_model_part_of_the_key_follows_content_not_modification_times(tmp_path, monkeypatch):
    from vlmrl_pipeline.core.training import checkpoints

    def write(folder, weights: bytes):
        (folder / "sub").mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "sub" / "config.json").write_text("{}")
        return folder

    first = write(tmp_path / "a" / "checkpoint", b"weights")
    state = checkpoints.local_files_state(first)
    time.sleep(0.01)
    shutil.rmtree(first)
    rebuilt = write(tmp_path / "a" / "checkpoint", b"weights")  # the demo job rebuilds base_model: new mtimes
    assert checkpoints.local_files_state(rebuilt) == state
    shutil.rmtree(rebuilt)
    changed = write(tmp_path / "a" / "checkpoint", b"WEIGHTS")  # same size, other bytes
    assert checkpoints.local_files_state(changed) != state
    assert checkpoints.local_files_state("org/hub-model") is None

    # With a cache, an unchanged file (path, size, mtime) is hashed once, however often the key is computed.
    hashed = []
    original = checkpoints._sha256
    monkeypatch.setattr(checkpoints, "_sha256", lambda f: hashed.append(f.name) or original(f))
    cache = tmp_path / "cache.json"
    assert checkpoints.local_files_state(changed, cache) == checkpoints.local_files_state(changed, cache)
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    (changed / "model.safetensors").write_bytes(b"retrained")
    checkpoints.local_files_state(changed, cache)
    assert sorted(hashed) == ["config.json", "model.safetensors", "model.safetensors"]


_HOLD_LOCK = """
import sys, time
from vlmrl_pipeline.core.atomic import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_training_process_that_outlived_its_step_blocks_a_second_training(upstream, tmp_path):
    import subprocess
    import sys

    import vlmrl_pipeline
    from vlmrl_pipeline.assets.training import TRAINING_LOCK

    data = tmp_path / "data"
    shutil.copytree(upstream, data)
    # What an orphaned training process holds (its Dagster step was killed, it was not).
    orphan = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(data / TRAINING_LOCK)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ,
                                              "PYTHONPATH": str(Path(vlmrl_pipeline.__file__).parent.parent)})
    try:
        assert orphan.stdout.readline().strip() == "held"
        result, _ = _train(_profile(), data)
    finally:
        orphan.kill()
        orphan.wait(timeout=10)
        orphan.stdout.close()
    assert not result.success
    message, classes = _failure(result)
    assert "a training process of an earlier (killed) run is still running" in message
    assert f"pid {orphan.pid} on" in message and "ArtifactBusyError" in classes
    assert not list((data / CHECKPOINTS).glob("*/launch/job.json"))  # nothing was launched


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_it(upstream, tmp_path):
    # Before: truncating the newest checkpoint's adapter (or emptying its optimizer.pt) made every later
    # materialization fail with EOFError, never falling back, while the message advised resuming from it.
    data = tmp_path / "data"
    shutil.copytree(upstream, data)
    profile = _profile()  # 6 steps, a checkpoint every 2
    killer = _Killer(data / CHECKPOINTS, beyond=4)
    killer.start()
    killed, _ = _train(profile, data)
    killer.join()
    assert killer.killed_at is not None and not killed.success
    [work] = [p for p in (data / CHECKPOINTS).iterdir() if p.is_dir()]
    assert latest_checkpoint(work) == (work / "checkpoint-4", 4)
    adapter = work / "checkpoint-4" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:adapter.stat().st_size // 2])

    resumed, messages = _train(profile, data)
    assert resumed.success, _failure(resumed)[0]
    meta = _metadata(resumed)
    assert meta["resumed_from_step"] == 2 and meta["global_step"] == profile.gspo.max_steps
    [warning] = [m for m in messages if m.startswith("skipping checkpoint-4")]
    assert "adapter_model.safetensors is" in warning and "header describes" in warning
    assert "renamed to unusable-checkpoint-4, resuming from checkpoint-2 instead" in warning
    assert not work.exists()  # finished: the checkpoints, the unusable one too, are removed
