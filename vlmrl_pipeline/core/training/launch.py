"""How training is launched: ``accelerate launch`` of ``vlmrl_pipeline.training_process`` on 1 or N processes.

The same command runs everywhere: on a CPU machine (tests, CI, the demo) it is one process with ``use_cpu``; on a
GPU machine it is one process per GPU, data parallel (``ddp``) or sharded (``fsdp``, FSDP2). The launch is fully
described by an accelerate config file written next to the job, so a user's own ``accelerate config`` default
never changes what the pipeline runs, and the same command can be rerun by hand from the logs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.environment import usable_cores

TRAINING_MODULE = "vlmrl_pipeline.training_process"
"""The child entry point (``python -m``); it lives outside ``core`` because it speaks Dagster Pipes."""

NUM_MACHINES_ENV = "VLMRL_NUM_MACHINES"
MACHINE_RANK_ENV = "VLMRL_MACHINE_RANK"
MACHINE_RANK_OFFSET_ENV = "VLMRL_MACHINE_RANK_OFFSET"
"""Added to Kubernetes' ``JOB_COMPLETION_INDEX`` where ``VLMRL_MACHINE_RANK`` is unset: the worker Job's pods are
indices 0..N-2 and machine ranks 1..N-1 (rank 0 is the ``lora_adapter`` step's own pod)."""
MAIN_PROCESS_IP_ENV = "VLMRL_MAIN_PROCESS_IP"
MAIN_PROCESS_PORT_ENV = "VLMRL_MAIN_PROCESS_PORT"
DEFAULT_MAIN_PROCESS_PORT = 29500


@dataclass(frozen=True)
class Machines:
    """Where this launch sits among the machines of one training run (``accelerate``'s ``num_machines``,
    ``machine_rank``, ``main_process_ip``/``_port``). One machine by default: then the port is picked free."""

    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 0

    def __post_init__(self) -> None:
        if self.num_machines < 1:
            raise ValueError(f"{NUM_MACHINES_ENV} must be >= 1, got {self.num_machines}")
        if not 0 <= self.machine_rank < self.num_machines:
            raise ValueError(f"machine rank {self.machine_rank} is outside 0..{self.num_machines - 1} "
                             f"({NUM_MACHINES_ENV}={self.num_machines})")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError(f"{NUM_MACHINES_ENV}={self.num_machines} needs {MAIN_PROCESS_IP_ENV}: the address of "
                             "machine rank 0, where every machine meets")
        if self.num_machines > 1 and not 0 < self.main_process_port < 65536:
            raise ValueError(f"{NUM_MACHINES_ENV}={self.num_machines} needs a fixed {MAIN_PROCESS_PORT_ENV} (every "
                             f"machine must know it), got {self.main_process_port}")


def machines_from_env(env: Mapping[str, str] | None = None) -> Machines:
    """:class:`Machines` from ``VLMRL_NUM_MACHINES``, ``VLMRL_MACHINE_RANK`` (else Kubernetes'
    ``JOB_COMPLETION_INDEX`` + ``VLMRL_MACHINE_RANK_OFFSET``), ``VLMRL_MAIN_PROCESS_IP`` and ``_PORT``.

    >>> machines_from_env({"VLMRL_NUM_MACHINES": "3", "JOB_COMPLETION_INDEX": "1", "VLMRL_MACHINE_RANK_OFFSET": "1",
    ...                    "VLMRL_MAIN_PROCESS_IP": "10.0.0.5"})
    Machines(num_machines=3, machine_rank=2, main_process_ip='10.0.0.5', main_process_port=29500)
    >>> machines_from_env({})
    Machines(num_machines=1, machine_rank=0, main_process_ip=None, main_process_port=0)
    """
    env = os.environ if env is None else env
    num = int(env.get(NUM_MACHINES_ENV) or 1)
    if env.get(MACHINE_RANK_ENV):
        rank = int(env[MACHINE_RANK_ENV])
    else:
        rank = int(env.get("JOB_COMPLETION_INDEX") or 0) + int(env.get(MACHINE_RANK_OFFSET_ENV) or 0)
    if num == 1:
        return Machines(machine_rank=rank)
    return Machines(num_machines=num, machine_rank=rank, main_process_ip=env.get(MAIN_PROCESS_IP_ENV) or None,
                    main_process_port=int(env.get(MAIN_PROCESS_PORT_ENV) or DEFAULT_MAIN_PROCESS_PORT))


def visible_gpu_count() -> int:
    """CUDA devices this process can see (``CUDA_VISIBLE_DEVICES`` applies), without creating a CUDA context."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_gpu_ids(count: int) -> str:
    """The first ``count`` GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries for the launch.

    A one-process launch must see exactly one GPU: with several visible, transformers' Trainer would wrap the
    model in ``nn.DataParallel``, which TRL's GRPOTrainer refuses. Entries of an existing
    ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs) are kept, so a step given GPUs 2 and 3 trains on 2 and 3.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(count)]
    return ",".join(ids[:count])


def resolve_num_processes(requested: int, gpus: int) -> int:
    """The process count to launch: ``requested``, or one per GPU for 0; refused where it cannot run."""
    if requested < 0:
        raise ValueError(f"num_processes must be >= 0 (0: one per visible GPU), got {requested}")
    if gpus == 0:
        if requested > 1:
            raise ValueError(
                f"num_processes={requested} needs {requested} CUDA GPUs, but this machine has none; training on "
                "a CPU runs a single process (set num_processes to 1 or 0)"
            )
        return 1
    wanted = gpus if requested == 0 else requested
    if wanted > gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ValueError(
            f"num_processes={wanted} but only {gpus} GPU(s) are visible"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + "; lower num_processes or set it to 0 for one process per GPU"
        )
    return wanted


def check_backend_supports(backend: str, num_processes: int, distributed: str) -> None:
    """Refuse combinations this project does not run: Unsloth's trainer patches are single-GPU here."""
    if backend == "unsloth" and num_processes > 1:
        raise ValueError(
            f"backend 'unsloth' trains on one GPU in this pipeline, but num_processes={num_processes} was asked "
            f"({distributed}). Use backend='transformers' for several GPUs (bf16, or load_in_4bit through "
            "bitsandbytes), or num_processes=1 to keep Unsloth."
        )


def accelerate_config(num_processes: int, distributed: str, use_cpu: bool, gpu_ids: str = "all",
                      machines: Machines | None = None) -> dict[str, Any]:
    """The ``accelerate`` config (``ClusterConfig`` fields) for one training launch on this machine.

    One process: a plain launch (``distributed_type: NO``). Several: ``MULTI_GPU`` (DDP) or ``FSDP`` (FSDP2,
    each decoder and vision block wrapped as its own unit, full state dicts on save so checkpoints and the
    adapter are ordinary files). Mixed precision stays ``no`` here: the trainer's own ``bf16`` flag decides.
    ``main_process_port: 0`` makes accelerate pick a free port, so two launches on one host never collide.
    ``gpu_ids`` (see ``visible_gpu_ids``) becomes the processes' ``CUDA_VISIBLE_DEVICES``. Several ``machines``:
    ``num_processes`` counts the processes of all of them (accelerate's convention), and every machine meets at
    machine rank 0's fixed address (static rendezvous).
    """
    machines = machines or Machines()
    if num_processes > 1 and use_cpu:
        raise ValueError("several training processes need CUDA GPUs; a CPU launch runs one process")
    if num_processes % machines.num_machines:
        raise ValueError(f"num_processes={num_processes} (all machines together) does not split evenly over "
                         f"{machines.num_machines} machines")
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "NO",
        "num_processes": int(num_processes),
        "num_machines": machines.num_machines,
        "machine_rank": machines.machine_rank,
        "gpu_ids": "all" if use_cpu else gpu_ids,
        "mixed_precision": "no",
        "use_cpu": bool(use_cpu),
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "main_process_port": machines.main_process_port,
        "downcast_bf16": "no",
        "debug": False,
    }
    if machines.num_machines > 1:
        config["main_process_ip"] = machines.main_process_ip
    if num_processes > 1:
        if distributed == "ddp":
            config["distributed_type"] = "MULTI_GPU"
        elif distributed == "fsdp":
            config["distributed_type"] = "FSDP"
            config["fsdp_config"] = {
                "fsdp_version": 2,
                "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "fsdp_reshard_after_forward": True,
                "fsdp_state_dict_type": "FULL_STATE_DICT",
                "fsdp_cpu_ram_efficient_loading": False,
                "fsdp_offload_params": False,
                "fsdp_activation_checkpointing": False,
            }
        else:
            raise ValueError(f"distributed must be 'ddp' or 'fsdp', got {distributed!r}")
    return config


def write_accelerate_config(path: str | os.PathLike, config: dict[str, Any]) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return path


def accelerate_command(config_file: str | os.PathLike, job_file: str | os.PathLike, *, cpu_threads: int | None = None,
                       python: str | None = None) -> list[str]:
    """``python -m accelerate.commands.launch --config_file ... -m vlmrl_pipeline.training_process --job ...``.

    Through ``python -m`` so the launcher and the training processes run in this interpreter's environment
    (whatever ``accelerate`` script is first on ``PATH``). ``cpu_threads`` sets ``OMP_NUM_THREADS`` per process
    (accelerate's own default would be 1 on a machine whose cores it cannot count as physical).
    """
    command = [python or sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
               "--quiet"]
    if cpu_threads:
        command += ["--num_cpu_threads_per_process", str(int(cpu_threads))]
    return [*command, "-m", TRAINING_MODULE, "--job", str(job_file)]


def default_cpu_threads(num_processes: int) -> int:
    """Threads per training process: ``$OMP_NUM_THREADS`` when set (e.g. a pod's CPU limit, which the machine's
    core count does not reflect), else the cores this process may run on, split between the processes."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, usable_cores() // max(1, num_processes))


def node_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlmrl_pipeline.core.training.launch",
                                     description="Launch one machine's training processes of a multi-machine job.")
    parser.add_argument("--job", required=True, help="the TrainingJob JSON the lora_adapter step wrote")
    parser.add_argument("--processes-per-machine", type=int, required=True)
    parser.add_argument("--distributed", choices=DISTRIBUTED_CHOICES, default="ddp")
    parser.add_argument("--dry-run", action="store_true", help="write the accelerate config, print the command")
    return parser


DISTRIBUTED_CHOICES = ("ddp", "fsdp")


def main(argv: Sequence[str] | None = None) -> int:
    """One machine's part of a multi-machine training run (a Kubernetes worker pod): ``accelerate launch`` of the
    job on this machine's ``--processes-per-machine`` GPUs, at the rank and address :func:`machines_from_env` reads.
    The job file (on the shared volume) is the one the ``lora_adapter`` step wrote for all machines."""
    args = node_parser().parse_args(argv)
    machines = machines_from_env()
    gpus = visible_gpu_count()
    if gpus < args.processes_per_machine:
        raise SystemExit(f"machine rank {machines.machine_rank} sees {gpus} GPU(s) but --processes-per-machine="
                         f"{args.processes_per_machine}")
    total = args.processes_per_machine * machines.num_machines
    config = accelerate_config(total, args.distributed, use_cpu=False,
                               gpu_ids=visible_gpu_ids(args.processes_per_machine), machines=machines)
    launch_dir = Path(args.job).parent
    config_file = write_accelerate_config(launch_dir / f"accelerate_config-machine{machines.machine_rank}.yaml",
                                          config)
    command = accelerate_command(config_file, args.job,
                                 cpu_threads=default_cpu_threads(args.processes_per_machine))
    print(" ".join(command), flush=True)
    if args.dry_run:
        return 0
    os.execv(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
