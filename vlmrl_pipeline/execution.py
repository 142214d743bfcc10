"""Where steps run: the GPU pool and tags every GPU asset carries, and the run's executor.

A Dagster run has exactly one executor, so GPU placement is expressed on the assets (``pool``, tags, op tags) and
the executor reads it:

* locally (default), ``multiprocess_executor``: every step in its own process, so the GPU memory one step held is
  returned to the driver before the next starts; the instance's ``gpu`` pool (``dagster_home/dagster.yaml``)
  keeps two GPU steps from running at once, across runs too;
* ``VLMRL_EXECUTOR=k8s`` with the ``k8s`` extra installed: ``dagster_k8s.k8s_job_executor``, every step in its own
  pod; GPU steps' pods request ``nvidia.com/gpu`` (``$VLMRL_GPUS_PER_STEP`` of them, 1 by default) through the
  ``dagster-k8s/config`` op tag below. ``vlmrl_pipeline/deploy/k8s/`` has the Helm values and instance config.
"""

import os

from dagster import ExecutorDefinition, multiprocess_executor

GPU_POOL = "gpu"
"""The concurrency pool of every step that holds the GPU; its limit (1) is set on the instance."""
GPU_TAGS = {"compute": "gpu"}
"""Asset tags: filter the asset graph by ``compute=gpu`` in the UI."""
CPU_TAGS = {"compute": "cpu"}
EXECUTOR_ENV_VAR = "VLMRL_EXECUTOR"
GPUS_ENV_VAR = "VLMRL_GPUS_PER_STEP"


def gpu_op_tags(gpus: int | None = None, memory: str = "64Gi", cpu: str = "8", shm: str = "16Gi") -> dict:
    """``op_tags`` asking Kubernetes (through ``k8s_job_executor``) for a GPU node for this step.

    The container requests and limits ``nvidia.com/gpu`` (extended resources need both equal), and the pod
    tolerates the usual ``nvidia.com/gpu`` taint of GPU node pools. ``/dev/shm`` is a memory-backed volume of
    ``shm``: a container's default 64 MB is too small for NCCL between the training processes of a multi-GPU
    step (``num_processes`` > 1) and for PyTorch's shared-memory tensors. Other executors ignore the tag.
    """
    gpus = int(os.environ.get(GPUS_ENV_VAR, "1")) if gpus is None else gpus
    resources = {"nvidia.com/gpu": str(gpus), "memory": memory, "cpu": cpu}
    return {
        "dagster-k8s/config": {
            "container_config": {
                "resources": {"requests": dict(resources), "limits": dict(resources)},
                "volume_mounts": [{"name": "dshm", "mount_path": "/dev/shm"}],
            },
            "pod_spec_config": {
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "volumes": [{"name": "dshm", "empty_dir": {"medium": "Memory", "size_limit": shm}}],
            },
        }
    }


def executor_for_environment() -> ExecutorDefinition:
    """The executor named by ``$VLMRL_EXECUTOR``: ``multiprocess`` (default) or ``k8s``."""
    choice = os.environ.get(EXECUTOR_ENV_VAR, "multiprocess").strip().lower()
    if choice in ("", "multiprocess"):
        return multiprocess_executor
    if choice == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise RuntimeError(
                f"{EXECUTOR_ENV_VAR}=k8s needs dagster-k8s: pip install -e '.[k8s]'"
            ) from exc
        return k8s_job_executor
    raise ValueError(f"{EXECUTOR_ENV_VAR} must be 'multiprocess' or 'k8s', got {choice!r}")
