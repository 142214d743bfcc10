"""The rollout server of ``vllm_mode="server"`` (``core.training.rollout_server``, ``resources.RolloutServerResource``) on a
CPU: the real lifecycle with a child that speaks the server's health protocol (``rollout_fake_server``), the real
``trl vllm-serve`` argv checked against TRL's own parser, and the settings refused before any model loads."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vlmrl_pipeline.core.training.gspo_config import GSPOSettings, build_grpo_config
from vlmrl_pipeline.core.training.rollout_server import (
    RolloutServerError,
    RolloutServerSettings,
    group_alive,
    plan_gpus,
    running_server,
    server_settings_problems,
    trl_vllm_serve_command,
)
from vlmrl_pipeline.resources import RolloutServerResource

ROOT = Path(__file__).resolve().parent.parent
FAKE = [sys.executable, "-m", "vlmrl_pipeline_tests.rollout_fake_server", "--host", "{host}", "--port", "{port}"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(autouse=True)
def _importable_fake(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped by its parent) holds no GPU: count it as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids, within_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if _pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if _pid_alive(p)]


def _serve(tmp_path, *extra, **settings):
    settings = {"gpus": "0", "startup_timeout_s": 30, "stop_grace_s": 1, **settings}
    return RolloutServerResource(**settings).serving("unused-model", log_dir=tmp_path, command=[*FAKE, *extra])


# --- the real command ---------------------------------------------------------------------------------------------

def test_the_default_command_is_trl_vllm_serve_and_trls_own_parser_takes_every_flag():
    from trl.cli.commands import get_commands
    from trl.scripts.vllm_serve import ScriptArguments, build_command, make_parser

    command = trl_vllm_serve_command("/models/qwen3-vl-8b", host="127.0.0.1", port=8123, tensor_parallel_size=2,
                                     gpu_memory_utilization=0.8, max_model_len=4096, dtype="bfloat16",
                                     revision="abc123", enforce_eager=True)
    # TRL's CLI through this interpreter, not a `trl` script that may not be on PATH (pip install --target).
    assert command[:4] == [sys.executable, "-m", "trl.cli.main", "vllm-serve"]
    assert importlib.util.find_spec("trl.cli.main") is not None
    assert "vllm-serve" in [c.name for c in get_commands()]  # the subcommand the trl CLI dispatches
    args, remaining = make_parser().parse_args_into_dataclasses(command[4:], return_remaining_strings=True)
    # `trl vllm-serve` forwards flags it does not know to `vllm serve`: none of ours may fall through that way
    assert remaining == []
    assert isinstance(args, ScriptArguments)
    assert (args.model, args.host, args.port, args.tensor_parallel_size, args.gpu_memory_utilization,
            args.max_model_len, args.dtype, args.revision, args.enforce_eager) == (
        "/models/qwen3-vl-8b", "127.0.0.1", 8123, 2, 0.8, 4096, "bfloat16", "abc123", True)
    served = build_command(args)  # what TRL execs: vLLM's server with TRL's weight-sync flags
    assert served[served.index("--max-model-len") + 1] == "4096" and "--enforce-eager" in served
    assert "--weight-transfer-config" in served


def test_a_misspelt_flag_would_not_pass_the_same_check():
    from trl.scripts.vllm_serve import make_parser

    _, remaining = make_parser().parse_args_into_dataclasses(
        ["--model", "m", "--tensor_paralel_size", "2"], return_remaining_strings=True)
    assert remaining  # so the check above can fail


def test_the_resource_builds_the_trl_command_when_none_is_injected(tmp_path, monkeypatch):
    import vlmrl_pipeline.resources as resources

    seen = {}

    def record(argv, **kwargs):
        seen.update(argv=argv, **kwargs)
        return "context manager"

    monkeypatch.setattr(resources, "running_server", record)
    RolloutServerResource(gpus="1,2", port=8555, gpu_memory_utilization=0.7).serving(
        "/m", log_dir=tmp_path, max_model_len=2048, dtype="float32")
    assert seen["argv"] == trl_vllm_serve_command("/m", host="127.0.0.1", port=8555, tensor_parallel_size=2,
                                                  gpu_memory_utilization=0.7, max_model_len=2048, dtype="float32")
    assert seen["gpus"] == "1,2" and seen["port"] == 8555 and seen["log_path"] == tmp_path / "rollout_server.log"


def test_the_servers_address_becomes_grpo_configs(tiny_checkpoint, tmp_path):
    from vlmrl_pipeline.core.model.loading import load_processor

    settings = GSPOSettings(optim="adamw_torch", use_vllm=True, vllm_mode="server",
                            vllm_server_base_url="http://127.0.0.1:8123")
    config = build_grpo_config(settings, tmp_path, load_processor(tiny_checkpoint), [1.0])
    assert config.vllm_mode == "server" and config.vllm_server_base_url == "http://127.0.0.1:8123"


# --- the lifecycle ------------------------------------------------------------------------------------------------

def test_the_step_waits_until_the_server_answers_and_stops_its_whole_group(tmp_path):
    child_file = tmp_path / "child.pid"
    with _serve(tmp_path, "--ready-after", "1.5", "--spawn-child", str(child_file)) as server:
        with urllib.request.urlopen(server.base_url + "/health") as response:
            assert response.status == 200  # ready when the body starts, not merely listening
        child = int(child_file.read_text())
        pids = [server.process.pid, child, server.watchdog.pid]
        assert all(_pid_alive(p) for p in pids)
    # the child ignores SIGTERM: it is gone because the group got SIGKILL after the grace period
    assert _wait_gone(pids, within_s=1) == []
    assert not group_alive(server.pgid)
    assert "fake rollout server" in (tmp_path / "rollout_server.log").read_text()


def test_a_server_that_exits_before_answering_fails_the_step_with_its_last_log_lines(tmp_path):
    with pytest.raises(RolloutServerError, match=r"exited with code 3(.|\n)*CUDA out of memory while loading"):
        with _serve(tmp_path, "--exit-code", "3", "--say", "CUDA out of memory while loading"):
            pytest.fail("the body must not run")


def test_a_server_that_never_answers_is_stopped_at_the_deadline(tmp_path):
    child_file = tmp_path / "child.pid"
    with pytest.raises(RolloutServerError, match="startup_timeout_s=2"):
        with _serve(tmp_path, "--never-ready", "--spawn-child", str(child_file), startup_timeout_s=2):
            pytest.fail("the body must not run")
    assert _wait_gone([int(child_file.read_text())], within_s=1) == []


def test_a_failing_step_stops_the_server_and_its_children(tmp_path):
    child_file = tmp_path / "child.pid"
    with pytest.raises(RuntimeError, match="training failed"):
        with _serve(tmp_path, "--spawn-child", str(child_file), "--ignore-sigterm") as server:
            pids = [server.process.pid, int(child_file.read_text()), server.watchdog.pid]
            raise RuntimeError("training failed")
    assert _wait_gone(pids, within_s=1) == []


def test_a_sigkilled_step_leaves_no_server_behind(tmp_path):
    """The holder process (the resource inside, as in the lora_adapter step) is SIGKILLed: it runs no cleanup, so
    the server and its child are gone only because the watchdog stopped their group."""
    child_file = tmp_path / "child.pid"
    holder = subprocess.Popen([sys.executable, "-m", "vlmrl_pipeline_tests.rollout_server_holder", str(tmp_path),
                               str(child_file)], stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        started = json.loads(holder.stdout.readline())
        server_pid, watchdog_pid = started["server_pid"], started["watchdog_pid"]
        child_pid = int(child_file.read_text())
        with urllib.request.urlopen(started["base_url"] + "/health") as response:
            assert response.status == 200
        assert _pid_alive(server_pid) and _pid_alive(child_pid)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert _wait_gone([server_pid, child_pid, watchdog_pid]) == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_running_server_accepts_any_command_speaking_the_protocol(tmp_path):
    from vlmrl_pipeline.core.training.rollout_server import free_port

    port = free_port()
    argv = [p.format(host="127.0.0.1", port=port) for p in FAKE]
    with running_server(argv, host="127.0.0.1", port=port, gpus="3", log_path=tmp_path / "s.log",
                        startup_timeout_s=30, stop_grace_s=1, env=_env()) as server:
        assert server.base_url == f"http://127.0.0.1:{port}"
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=3" in environ  # the server sees its own GPUs only


# --- settings -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("visible, settings, processes, expected", [
    (["0", "1"], RolloutServerSettings(gpus="1"), 0, (1, "0")),
    (["0", "1", "2", "3"], RolloutServerSettings(gpus="3"), 0, (3, "0,1,2")),
    (["4", "5", "6"], RolloutServerSettings(gpus="4"), 2, (2, "5,6")),
    (["0"], RolloutServerSettings(gpus="0", share_training_gpu=True, gpu_memory_utilization=0.3), 1, (1, "0")),
])
def test_training_takes_the_gpus_the_server_leaves(visible, settings, processes, expected):
    assert plan_gpus(settings, visible, processes) == expected


@pytest.mark.parametrize("visible, settings, processes, match", [
    ([], RolloutServerSettings(gpus="0"), 1, "sees none"),
    (["0", "1"], RolloutServerSettings(gpus="2"), 1, r"rollout_server.gpus='2' names \['2'\]"),
    (["0"], RolloutServerSettings(gpus="0"), 1, "leaving none for training.*share_training_gpu"),
    (["0", "1"], RolloutServerSettings(gpus="1"), 2, "training_settings.num_processes=2 needs 2 GPUs"),
])
def test_gpu_plans_that_cannot_run_are_refused_naming_the_setting(visible, settings, processes, match):
    with pytest.raises(ValueError, match=match):
        plan_gpus(settings, visible, processes)


@pytest.mark.parametrize("values, match", [
    ({"gpus": "1,1"}, "names a GPU twice"),
    ({"gpu_memory_utilization": 1.0}, "rollout_server.gpu_memory_utilization"),
    ({"gpus": "0", "share_training_gpu": True, "gpu_memory_utilization": 0.9}, "0.5 or less"),
    ({"port": 70000}, "rollout_server.port"),
    ({"startup_timeout_s": 0}, "rollout_server.startup_timeout_s"),
])
def test_server_settings_that_cannot_work_are_refused_when_made(values, match):
    with pytest.raises(ValueError, match=match):
        RolloutServerSettings(**values)


def test_server_mode_settings_that_cannot_work_are_named():
    server_mode = GSPOSettings(vllm_mode="server", use_vllm=True)
    assert "rollout_server.gpus" in server_settings_problems(server_mode, RolloutServerSettings())[0]
    external = GSPOSettings(vllm_mode="server", use_vllm=True, vllm_server_base_url="http://gpu-node:8000")
    assert server_settings_problems(external, RolloutServerSettings()) == []  # a server the user runs
    [both] = server_settings_problems(external, RolloutServerSettings(gpus="1"))
    assert "set one of the two" in both
    [unsloth] = server_settings_problems(server_mode, RolloutServerSettings(gpus="1"), backend="unsloth")
    assert "model_settings.backend='transformers'" in unsloth
    assert server_settings_problems(GSPOSettings(), RolloutServerSettings()) == []  # colocate: unused
    with pytest.raises(ValueError, match="rollout_engine='generate' never uses vLLM"):
        GSPOSettings(vllm_mode="server", rollout_engine="generate")


def test_the_runs_pre_start_check_refuses_server_mode_without_server_gpus():
    """Through the job's resources, as the executor checks a run's config before its first step."""
    from vlmrl_pipeline.definitions import defs
    from vlmrl_pipeline.execution import settings_problems

    job = defs.resolve_job_def("vlmrl_lineage")
    run_config = {"resources": {"training_settings": {"config": {"vllm_mode": "server", "use_vllm": True}}}}
    assert any("rollout_server.gpus" in p for p in settings_problems(job, run_config))
    run_config["resources"]["rollout_server"] = {"config": {"gpus": "1"}}
    assert not any("rollout_server" in p for p in settings_problems(job, run_config))
    run_config["resources"]["rollout_server"] = {"config": {"gpus": "0", "share_training_gpu": True}}
    assert any("rollout_server:" in p and "0.5 or less" in p for p in settings_problems(job, run_config))


def test_the_lora_adapter_step_refuses_server_mode_on_a_machine_without_gpus_before_launching(tmp_path):
    """Through the real asset: server mode on a CPU stops the step, naming the setting, before any training process
    (or model load) starts."""
    import dataclasses

    from dagster import DagsterInstance, materialize

    from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings
    from vlmrl_pipeline.definitions import all_assets
    from vlmrl_pipeline.resources import resources_for_profile
    from vlmrl_pipeline_tests.conftest import tiny_profile

    base = tiny_profile()
    profile = dataclasses.replace(
        base, warm_start=WarmStartSettings(steps=2, batch_size=2),
        model=dataclasses.replace(base.model, tiny_model=dataclasses.replace(base.model.tiny_model,
                                                                             tokenizer="trained")),
        gspo=dataclasses.replace(base.gspo, vllm_mode="server", rollout_engine="vllm"))
    resources = {**resources_for_profile(profile, str(tmp_path)), "rollout_server": RolloutServerResource(gpus="0")}
    upstream = [a for a in all_assets if a.key.to_user_string() in ("mathvista_filtered", "resized_images",
                                                                     "base_model")]
    assert materialize(upstream, resources=resources, instance=DagsterInstance.ephemeral()).success
    instance = DagsterInstance.ephemeral()
    result = materialize([a for a in all_assets if a.key.to_user_string() == "lora_adapter"], resources=resources,
                         instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    error, text = failure.step_failure_data.error, []
    while error is not None:
        text.append(error.message)
        error = error.cause
    assert "training_settings.vllm_mode='server' runs vLLM on CUDA GPUs, but this step sees none" in "\n".join(text)
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert not any("launching" in m or "rollout server" in m for m in messages)


def test_the_lora_adapter_step_refuses_a_server_its_python_cannot_start_before_launching(tmp_path, monkeypatch):
    """The first one-GPU run began training and then the server died on "No module named 'uvicorn'": on a step
    that sees a GPU, a Python without TRL's server packages is refused, naming them, before anything launches."""
    import dataclasses

    from dagster import DagsterInstance, materialize

    import vlmrl_pipeline.core.training.plan as training_plan
    from vlmrl_pipeline.definitions import all_assets
    from vlmrl_pipeline.resources import resources_for_profile
    from vlmrl_pipeline_tests.conftest import tiny_profile

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real_find_spec(name, *a))
    monkeypatch.setattr(training_plan, "visible_gpu_count", lambda: 1)
    base = tiny_profile()
    # rollout_engine='auto' so that this CPU's missing CUDA is one more refusal in the list, not the first raise.
    profile = dataclasses.replace(base, gspo=dataclasses.replace(base.gspo, vllm_mode="server", rollout_engine="auto"))
    server = RolloutServerResource(gpus="0", share_training_gpu=True, gpu_memory_utilization=0.3)
    resources = {**resources_for_profile(profile, str(tmp_path)), "rollout_server": server}
    upstream = [a for a in all_assets if a.key.to_user_string() in ("mathvista_filtered", "resized_images",
                                                                     "base_model")]
    assert materialize(upstream, resources=resources, instance=DagsterInstance.ephemeral()).success
    instance = DagsterInstance.ephemeral()
    result = materialize([a for a in all_assets if a.key.to_user_string() == "lora_adapter"], resources=resources,
                         instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    error, text = failure.step_failure_data.error, []
    while error is not None:
        text.append(error.message)
        error = error.cause
    assert "starts `trl vllm-serve` with this Python, which lacks" in "\n".join(text)
    assert "uvicorn" in "\n".join(text)
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert not any("launching" in m or "rollout server" in m for m in messages)


def test_the_servers_address_changes_neither_the_checkpoint_key_nor_the_settings_version():
    """A resumed run trains against a new server (a new port); the key and lora_adapter's staleness stay."""
    import dataclasses

    from vlmrl_pipeline.core.settings_versions import settings_versions
    from vlmrl_pipeline.core.training.checkpoints import checkpoint_key, training_inputs
    from vlmrl_pipeline_tests.conftest import tiny_profile

    def key(gspo):
        return checkpoint_key(training_inputs(
            gspo=dataclasses.asdict(gspo), model={}, prompt_style={}, base_model_ref={}, base_model_files={},
            manifest_sha256="m", reward_version="r", num_processes=1, code_version="c"))

    server = GSPOSettings(vllm_mode="server", use_vllm=True)
    assert key(server) == key(dataclasses.replace(server, vllm_server_base_url="http://127.0.0.1:40001"))
    assert key(server) != key(GSPOSettings(use_vllm=True))  # the mode itself is an input
    profile = tiny_profile()
    moved = dataclasses.replace(profile, gspo=dataclasses.replace(profile.gspo, vllm_server_base_url="http://h:1"))
    assert settings_versions(profile)["lora_adapter"] == settings_versions(moved)["lora_adapter"]


def test_doctests_of_the_server_and_launch_modules():
    import doctest

    from vlmrl_pipeline.core.training import k8s_workers, launch, rollout_server

    for module in (rollout_server, launch, k8s_workers):
        assert doctest.testmod(module).failed == 0, module.__name__
