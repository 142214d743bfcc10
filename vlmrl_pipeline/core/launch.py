"""How training is launched: ``accelerate launch`` of ``vlmrl_pipeline.training_process`` on 1 or N processes.

The same command runs everywhere: on a CPU machine (tests, CI, the demo) it is one process with ``use_cpu``; on a
GPU machine it is one process per GPU, data parallel (``ddp``) or sharded (``fsdp``, FSDP2). The launch is fully
described by an accelerate config file written next to the job, so a user's own ``accelerate config`` default
never changes what the pipeline runs, and the same command can be rerun by hand from the logs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

TRAINING_MODULE = "vlmrl_pipeline.training_process"
"""The child entry point (``python -m``); it lives outside ``core`` because it speaks Dagster Pipes."""


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


def accelerate_config(num_processes: int, distributed: str, use_cpu: bool, gpu_ids: str = "all") -> dict[str, Any]:
    """The ``accelerate`` config (``ClusterConfig`` fields) for one training launch on this machine.

    One process: a plain launch (``distributed_type: NO``). Several: ``MULTI_GPU`` (DDP) or ``FSDP`` (FSDP2,
    each decoder and vision block wrapped as its own unit, full state dicts on save so checkpoints and the
    adapter are ordinary files). Mixed precision stays ``no`` here: the trainer's own ``bf16`` flag decides.
    ``main_process_port: 0`` makes accelerate pick a free port, so two launches on one host never collide.
    ``gpu_ids`` (see ``visible_gpu_ids``) becomes the processes' ``CUDA_VISIBLE_DEVICES``.
    """
    if num_processes > 1 and use_cpu:
        raise ValueError("several training processes need CUDA GPUs; a CPU launch runs one process")
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "NO",
        "num_processes": int(num_processes),
        "num_machines": 1,
        "machine_rank": 0,
        "gpu_ids": "all" if use_cpu else gpu_ids,
        "mixed_precision": "no",
        "use_cpu": bool(use_cpu),
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "main_process_port": 0,
        "downcast_bf16": "no",
        "debug": False,
    }
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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, num_processes))
