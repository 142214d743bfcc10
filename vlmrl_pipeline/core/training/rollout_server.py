"""A rollout server owned by one training step: TRL's ``trl vllm-serve`` on GPUs of its own (``vllm_mode="server"``).

The step starts the server, waits until its ``/health`` endpoint answers (the endpoint TRL's ``VLLMClient`` polls),
hands its address to training (``GSPOSettings.vllm_server_base_url``, which becomes ``GRPOConfig``'s) and stops it
when training ends, fails or is cancelled. No server outlives its step, also when the step process is SIGKILLed:

* the server runs in a process group of its own (``start_new_session``), so stopping it reaches vLLM's engine
  processes too: SIGTERM to the group, SIGKILL after a grace period;
* a watchdog process (``python -m vlmrl_pipeline.core.training.rollout_server --watch-parent ...``), the step's
  child in a session of its own, polls its parent; once the step is gone (its parent pid changes), it stops the group
  the same way. A watchdog rather than ``PR_SET_PDEATHSIG``: the death signal fires when the *thread* that started the
  child exits, and ``preexec_fn`` is unsafe in a process with threads, which a Dagster step is.

Nothing here imports Dagster: ``vlmrl_pipeline.resources.RolloutServerResource`` wraps it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HEALTH_PATH = "/health"
"""What ``trl.generation.vllm_client.VLLMClient.check_server`` polls (vLLM's server answers 200 once it serves)."""
LOG_TAIL_LINES = 40
WATCHDOG_POLL_S = 0.2


@dataclass(frozen=True)
class RolloutServerSettings:
    """Where and how the ``lora_adapter`` step runs its rollout server when ``training_settings.vllm_mode`` is
    ``server``. Unused in ``colocate`` mode."""

    gpus: str = field(default="", metadata={"help": (
        "The server's GPUs, as ``CUDA_VISIBLE_DEVICES`` entries of the step (indices, or UUIDs where the step's "
        "``CUDA_VISIBLE_DEVICES`` uses them), comma-separated: ``\"1\"``, ``\"2,3\"`` (tensor parallel over both). "
        "Training runs on the step's other GPUs (``num_processes=0``: all of them). Required in server mode.")})
    share_training_gpu: bool = field(default=False, metadata={"help": (
        "Let the server share its GPU(s) with training processes (a one-GPU machine: server and trainer on GPU 0). "
        "The server then takes only ``gpu_memory_utilization`` of the GPU (at most 0.5) and training the rest. "
        "Off: a server GPU that training would need is refused.")})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": (
        "Share of each server GPU's memory vLLM takes for weights and KV cache (``trl vllm-serve "
        "--gpu_memory_utilization``). At most 0.5 with ``share_training_gpu``.")})
    host: str = field(default="127.0.0.1", metadata={"help": (
        "Address the server listens on and training connects to; the default keeps it on the step's machine.")})
    port: int = field(default=0, metadata={"help": (
        "The server's HTTP port; 0 picks a free one when the step starts.")})
    enforce_eager: bool = field(default=False, metadata={"help": (
        "Run vLLM without CUDA graphs (``--enforce_eager``): starts faster, generates slower. For short runs.")})
    startup_timeout_s: float = field(default=900.0, metadata={"help": (
        "How long the step waits for the server's ``/health`` to answer (loading an 8B model and capturing CUDA "
        "graphs takes minutes) before it stops the server and fails with the server's last log lines.")})
    stop_grace_s: float = field(default=30.0, metadata={"help": (
        "After SIGTERM, how long the server's processes get to exit before they are SIGKILLed.")})

    def __post_init__(self) -> None:
        ids = self.gpu_ids
        if len(set(ids)) != len(ids):
            raise ValueError(f"rollout_server.gpus names a GPU twice: {self.gpus!r}")
        if not 0.0 < self.gpu_memory_utilization < 1.0:
            raise ValueError(f"rollout_server.gpu_memory_utilization must be in (0, 1), got "
                             f"{self.gpu_memory_utilization}")
        if self.share_training_gpu and self.gpu_memory_utilization > 0.5:
            raise ValueError(f"rollout_server.share_training_gpu=True leaves training the rest of the GPU, but "
                             f"rollout_server.gpu_memory_utilization={self.gpu_memory_utilization} takes more than "
                             "half of it: set it to 0.5 or less")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"rollout_server.port must be in [0, 65535] (0: a free port), got {self.port}")
        if not self.host:
            raise ValueError("rollout_server.host must name an address, e.g. 127.0.0.1")
        if not self.startup_timeout_s > 0:
            raise ValueError(f"rollout_server.startup_timeout_s must be > 0, got {self.startup_timeout_s}")
        if self.stop_grace_s < 0:
            raise ValueError(f"rollout_server.stop_grace_s must be >= 0, got {self.stop_grace_s}")

    @property
    def gpu_ids(self) -> list[str]:
        return [g.strip() for g in self.gpus.split(",") if g.strip()]


def server_settings_problems(gspo, server: RolloutServerSettings, backend: str | None = None) -> list[str]:
    """What rules server mode out from the settings alone (before any model loads), one line per problem.

    >>> from vlmrl_pipeline.core.training.gspo_config import GSPOSettings
    >>> server_settings_problems(GSPOSettings(vllm_mode="server", use_vllm=True), RolloutServerSettings())[0][:60]
    "training_settings.vllm_mode='server' needs rollout_server.gp"
    """
    if gspo.vllm_mode != "server":
        return []
    problems = []
    if not server.gpu_ids and not gspo.vllm_server_base_url:
        problems.append("training_settings.vllm_mode='server' needs rollout_server.gpus (the GPUs the step starts "
                        "`trl vllm-serve` on), or training_settings.vllm_server_base_url naming a server you run")
    if server.gpu_ids and gspo.vllm_server_base_url:
        problems.append(f"training_settings.vllm_server_base_url={gspo.vllm_server_base_url!r} names a server of "
                        f"your own, but rollout_server.gpus={server.gpus!r} asks the step to start one: set one of "
                        "the two")
    if backend == "unsloth":
        problems.append("training_settings.vllm_mode='server' is TRL's (transformers backend); the Unsloth backend "
                        "runs its own engine in the training process (model_settings.fast_inference): set "
                        "model_settings.backend='transformers', or vllm_mode='colocate'")
    return problems  # the GPUs themselves are checked on the step's machine (plan_gpus), which knows them


# What ``trl vllm-serve`` imports before it serves (``trl/scripts/vllm_serve.py``); vLLM's own install brings the web
# parts, a trimmed one may not (the first one-GPU run stopped at "No module named 'uvicorn'" after the step began).
SERVER_PACKAGES = ("vllm", "fastapi", "uvicorn", "pydantic")


def server_runtime_problems(server: RolloutServerSettings, find_spec: Callable[[str], object] | None = None
                            ) -> list[str]:
    """What this interpreter lacks to start ``trl vllm-serve`` (only when the step starts the server: a
    ``vllm_server_base_url`` server runs elsewhere); checked on the step's machine before any model loads.

    >>> [problem] = server_runtime_problems(RolloutServerSettings(gpus="1"), lambda name: name != "uvicorn" or None)
    >>> "lacks uvicorn" in problem and problem.startswith("rollout_server.gpus='1'")
    True
    >>> server_runtime_problems(RolloutServerSettings(), lambda name: None)  # no server to start here
    []
    """
    if not server.gpu_ids:
        return []
    if find_spec is None:
        import importlib.util

        find_spec = importlib.util.find_spec
    missing = [name for name in SERVER_PACKAGES if find_spec(name) is None]
    if not missing:
        return []
    return [f"rollout_server.gpus={server.gpus!r} starts `trl vllm-serve` with this Python, which lacks "
            f"{', '.join(missing)} (TRL's server imports them): install the project's `vllm` extra, or "
            "`pip install fastapi uvicorn` beside vLLM"]


def plan_gpus(server: RolloutServerSettings, visible: Sequence[str], num_processes: int) -> tuple[int, str]:
    """``(training processes, their CUDA_VISIBLE_DEVICES)`` in server mode, given the step's ``visible`` GPU
    entries; refuses, naming the setting, what cannot run.

    >>> plan_gpus(RolloutServerSettings(gpus="1"), ["0", "1"], 0)
    (1, '0')
    >>> plan_gpus(RolloutServerSettings(gpus="0", share_training_gpu=True, gpu_memory_utilization=0.3), ["0"], 1)
    (1, '0')
    """
    if not visible:
        raise ValueError("training_settings.vllm_mode='server' runs vLLM on CUDA GPUs, but this step sees none")
    missing = [g for g in server.gpu_ids if g not in visible]
    if missing:
        raise ValueError(f"rollout_server.gpus={server.gpus!r} names {missing}, which this step does not see "
                         f"(its GPUs: {','.join(visible)})")
    free = list(visible) if server.share_training_gpu else [g for g in visible if g not in server.gpu_ids]
    if not free:
        raise ValueError(f"rollout_server.gpus={server.gpus!r} takes every GPU this step sees "
                         f"({','.join(visible)}), leaving none for training: name fewer, or set "
                         "rollout_server.share_training_gpu=True (server and trainer on one GPU)")
    wanted = len(free) if num_processes == 0 else num_processes
    if wanted > len(free):
        raise ValueError(f"training_settings.num_processes={num_processes} needs {wanted} GPUs for training, but "
                         f"with rollout_server.gpus={server.gpus!r} on their own only {len(free)} are left "
                         f"({','.join(free)}): lower num_processes (0: all that are left), name fewer server GPUs, "
                         "or set rollout_server.share_training_gpu=True")
    return wanted, ",".join(free[:wanted])


def trl_cli() -> list[str]:
    """TRL's command line run by this interpreter (``trl.cli.main``, what the ``trl`` console script calls): an
    environment installed without console scripts (``pip install --target``, as on the GPU machine) has no ``trl``
    on ``PATH``, and the first GPU run failed there with "No such file or directory: 'trl'"."""
    return [sys.executable, "-m", "trl.cli.main"]


def trl_vllm_serve_command(model: str, *, host: str, port: int, tensor_parallel_size: int,
                           gpu_memory_utilization: float, max_model_len: int | None = None, dtype: str = "auto",
                           revision: str | None = None, enforce_eager: bool = False) -> list[str]:
    """The ``trl vllm-serve`` argv (``trl.scripts.vllm_serve.ScriptArguments``' flags) serving ``model``."""
    command = [*trl_cli(), "vllm-serve", "--model", str(model), "--host", host, "--port", str(port),
               "--tensor_parallel_size", str(tensor_parallel_size),
               "--gpu_memory_utilization", str(gpu_memory_utilization), "--dtype", dtype]
    if max_model_len is not None:
        command += ["--max_model_len", str(int(max_model_len))]
    if revision:
        command += ["--revision", revision]
    if enforce_eager:
        command += ["--enforce_eager", "true"]
    return command


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's pick); the server binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RolloutServerError(RuntimeError):
    """The rollout server exited or never answered; the message carries its last log lines."""


def log_tail(path: str | os.PathLike, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` exists (an unreaped zombie counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace_s: float, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM every process of group ``pgid``, SIGKILL whatever is left after ``grace_s``; ``reap`` (the leader's
    ``Popen.poll``) is called while waiting, so the leader's zombie does not keep the group alive."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if reap is not None:
                reap()
            if not group_alive(pgid):
                return
            time.sleep(0.05)


@dataclass
class RunningServer:
    """A started rollout server: its address, its process (the group leader) and its log file."""

    base_url: str
    process: subprocess.Popen
    log_path: Path
    watchdog: subprocess.Popen | None = None

    @property
    def pgid(self) -> int:
        return self.process.pid  # start_new_session: the leader's pid is the group's id

    def stop(self, grace_s: float) -> None:
        stop_group(self.pgid, grace_s, reap=self.process.poll)
        self.process.poll()
        if self.watchdog is not None and self.watchdog.poll() is None:
            self.watchdog.terminate()
            try:
                self.watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait()


def wait_until_ready(server: RunningServer, timeout_s: float, poll_s: float = 0.5) -> None:
    """Poll ``base_url/health`` until it answers 200; raise ``RolloutServerError`` with the log's tail if the
    server exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    url = server.base_url + HEALTH_PATH
    while True:
        code = server.process.poll()
        if code is not None:
            raise RolloutServerError(f"the rollout server exited with code {code} before it answered {url}; the "
                                     f"last lines of {server.log_path}:\n{log_tail(server.log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=max(poll_s, 1.0)) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass  # not listening yet, or answering 503 while it loads
        if time.monotonic() >= deadline:
            raise RolloutServerError(
                f"the rollout server did not answer {url} within rollout_server.startup_timeout_s={timeout_s:g} s "
                f"(raise it for a large model); the last lines of {server.log_path}:\n{log_tail(server.log_path)}")
        time.sleep(poll_s)


def _watchdog_command(parent: int, pgid: int, grace_s: float) -> list[str]:
    return [sys.executable, "-m", "vlmrl_pipeline.core.training.rollout_server", "--watch-parent", str(parent),
            "--group", str(pgid), "--grace", str(grace_s)]


@contextmanager
def running_server(command: Sequence[str], *, host: str, port: int, gpus: str, log_path: str | os.PathLike,
                   startup_timeout_s: float, stop_grace_s: float, env: dict[str, str] | None = None,
                   log: Callable[[str], None] | None = None, poll_s: float = 0.5) -> Iterator[RunningServer]:
    """Start ``command`` on ``gpus`` (``CUDA_VISIBLE_DEVICES``), wait until ``http://host:port/health`` answers,
    yield the running server, and stop its whole process group on the way out, however the body exits."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {}), "CUDA_VISIBLE_DEVICES": gpus, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
    server = RunningServer(base_url=f"http://{host}:{port}", process=process, log_path=log_path)
    try:
        server.watchdog = subprocess.Popen(
            _watchdog_command(os.getpid(), process.pid, stop_grace_s), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONPATH": _package_root() + os.pathsep + os.environ.get("PYTHONPATH", "")})
        if log is not None:
            log(f"rollout server (pid {process.pid}, GPUs {gpus}) starting at {server.base_url}, log {log_path}")
        started = time.monotonic()
        wait_until_ready(server, startup_timeout_s, poll_s=poll_s)
        if log is not None:
            log(f"rollout server at {server.base_url} answered after {time.monotonic() - started:.0f} s")
        yield server
    finally:
        server.stop(stop_grace_s)
        if log is not None:
            log(f"rollout server (pid {process.pid}) stopped (exit code {process.returncode})")


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[3])


def watch_parent(parent: int, pgid: int, grace_s: float, poll_s: float = WATCHDOG_POLL_S) -> int:
    """The watchdog's loop: return once the server group is gone, stopping it first if ``parent`` died."""
    while True:
        if not group_alive(pgid):
            return 0
        if os.getppid() != parent:  # reparented: the step that owns the server is gone
            stop_group(pgid, grace_s)
            return 0
        time.sleep(poll_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stop a rollout server's process group when its step dies.")
    parser.add_argument("--watch-parent", type=int, required=True)
    parser.add_argument("--group", type=int, required=True)
    parser.add_argument("--grace", type=float, default=30.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the owner stops the group itself, then this
    return watch_parent(args.watch_parent, args.group, args.grace)


if __name__ == "__main__":
    sys.exit(main())
