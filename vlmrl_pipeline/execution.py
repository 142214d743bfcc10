"""Where steps run: the GPU pool and tags every GPU asset carries, and the run's executor.

A Dagster run has exactly one executor, so GPU placement is expressed on the assets (``pool``, tags, op tags) and
the executor reads it:

* locally (default), ``multiprocess_executor``: every step in its own process, so the GPU memory one step held is
  returned to the driver before the next starts; the instance's ``gpu`` pool (``dagster_home/dagster.yaml``)
  keeps two GPU steps from running at once, across runs too;
* ``VLMRL_EXECUTOR=k8s`` with the ``k8s`` extra installed: ``dagster_k8s.k8s_job_executor``, every step in its own
  pod; GPU steps' pods request ``nvidia.com/gpu`` (``$VLMRL_GPUS_PER_STEP`` of them, 1 by default) through the
  ``dagster-k8s/config`` op tag below. ``vlmrl_pipeline/deploy/k8s/`` has the Helm values and instance config.

A run killed outright (SIGKILL, a closed laptop, the OOM killer taking the run worker) never reports that it
ended: it stays STARTED and keeps its ``gpu`` slot, and Dagster's monitoring only frees slots of runs that ended
(and can check run workers only through a run launcher, which ``dagster job execute`` does not use). So the local
executor records which process runs each run, and at the start of every run marks the runs whose process is gone
as failed, with the reason, and frees their slots before any step asks for one (:func:`fail_runs_of_dead_workers`).
"""

import json
import os
from collections.abc import Callable, Iterator

from dagster import (
    DagsterInstance,
    Executor,
    ExecutorDefinition,
    executor,
    multiple_process_executor_requirements,
    multiprocess_executor,
)
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, RunsFilter

from vlmrl_pipeline.core.processes import process_identity, process_is_gone

GPU_POOL = "gpu"
"""The concurrency pool of every step that holds the GPU; its limit (1) is set on the instance."""
GPU_TAGS = {"compute": "gpu"}
"""Asset tags: filter the asset graph by ``compute=gpu`` in the UI."""
CPU_TAGS = {"compute": "cpu"}
EXECUTOR_ENV_VAR = "VLMRL_EXECUTOR"
GPUS_ENV_VAR = "VLMRL_GPUS_PER_STEP"
RUN_WORKER_TAG = "vlmrl/run_worker"
"""Run tag: the identity (host, pid, boot id, start time) of the process that orchestrates the run's steps."""


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


def fail_runs_of_dead_workers(instance: DagsterInstance, current_run_id: str | None = None,
                              log: Callable[[str], None] = print) -> list[str]:
    """Mark every unfinished run whose run worker (``RUN_WORKER_TAG``) is gone as failed, saying so, and free
    its concurrency slots (claimed and pending). Runs on other hosts, and runs without the tag, are left to
    Dagster's own monitoring. Returns the ids of the runs it failed."""
    failed = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES)):
        run = record.dagster_run
        raw = run.tags.get(RUN_WORKER_TAG)
        if run.run_id == current_run_id or raw is None:
            continue
        try:
            worker = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if process_is_gone(worker) is not True:
            continue
        # The run may have finished on its own since it was listed: only fail what is still unfinished.
        latest = instance.get_run_by_id(run.run_id)
        if latest is None or latest.status not in IN_PROGRESS_RUN_STATUSES:
            continue
        message = (f"run worker process {worker['pid']} on {worker['host']} is gone (killed: SIGKILL, OOM killer, "
                   f"lost machine) while the run was {latest.status.value}; marked failed by run "
                   f"{current_run_id or '(none)'} at its start")
        instance.report_run_failed(latest, message, JobFailureData(
            error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION))
        freed = []
        storage = instance.event_log_storage
        if storage.supports_global_concurrency_limits:
            freed = [key for key in storage.get_concurrency_keys()
                     for slot in storage.get_concurrency_info(key).claimed_slots if slot.run_id == run.run_id]
            storage.free_concurrency_slots_for_run(run.run_id)  # its claimed slots and its queued steps
        log(f"{message}; freed {len(freed)} concurrency slot(s)" + (f" (pools: {sorted(set(freed))})" if freed else ""))
        failed.append(run.run_id)
    return failed


SETTINGS_RESOURCE_KEYS = ("data_settings", "model_settings", "training_settings", "eval_settings", "export_settings",
                          "rollout_server")


class SettingsError(ValueError):
    """Settings that cannot work, found at the start of a run, before its first step."""


def settings_problems(job_def, run_config: dict, *, probe_machine: bool = False) -> list[str]:
    """Every settings resource of the job, built from the run's config as its steps would build it, converted
    to its core dataclass (whose checks run then), and checked against the others. One line per problem. With
    ``probe_machine`` (where the steps run on this machine), also what this machine lacks for the settings that
    ask for vLLM by name (``core.settings_check.machine_problems``)."""
    from dagster import build_resources

    from vlmrl_pipeline.core.settings_check import machine_problems, settings_conflicts

    defs = {key: job_def.resource_defs[key] for key in SETTINGS_RESOURCE_KEYS if key in job_def.resource_defs}
    config = {key: value for key, value in (run_config.get("resources") or {}).items() if key in defs}
    problems, core = [], {}
    with build_resources(defs, resource_config=config) as resources:
        for key in defs:
            resource = getattr(resources, key)
            try:
                core[key] = resource.to_core()
                if hasattr(resource, "warm_start_settings"):
                    resource.warm_start_settings()
            except (ValueError, TypeError) as exc:
                problems.append(f"{key}: {exc}")
    if not problems:
        problems += settings_conflicts(data=core.get("data_settings"), model=core.get("model_settings"),
                                       gspo=core.get("training_settings"), generation=core.get("eval_settings"))
        if "training_settings" in core and "rollout_server" in core:
            from vlmrl_pipeline.core.training.rollout_server import server_settings_problems

            backend = getattr(core.get("model_settings"), "backend", None)
            problems += server_settings_problems(core["training_settings"], core["rollout_server"],
                                                 None if backend == "auto" else backend)
    if not problems and probe_machine:
        problems += machine_problems(model=core.get("model_settings"), gspo=core.get("training_settings"),
                                     generation=core.get("eval_settings"))
    return problems


class _RecoveringExecutor(Executor):
    """Dagster's multiprocess executor, preceded by :func:`fail_runs_of_dead_workers`, the worker tag and the
    settings check (:func:`settings_problems`): settings that cannot work fail the run before its first step."""

    def __init__(self, inner: Executor):
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator:
        instance = plan_context.instance
        instance.add_run_tags(plan_context.run_id, {RUN_WORKER_TAG: json.dumps(process_identity())})
        fail_runs_of_dead_workers(instance, plan_context.run_id, log=plan_context.log.warning)
        # This executor runs every step on this machine, so what the machine lacks is known here too.
        problems = settings_problems(plan_context.reconstructable_job.get_definition(), plan_context.run_config,
                                     probe_machine=True)
        if problems:
            # The same settings would fail again: not a case for the instance's automatic retry.
            instance.add_run_tags(plan_context.run_id, {"dagster/max_retries": "0"})
            raise SettingsError("settings that cannot work, refused before the first step:\n  " + "\n  ".join(problems))
        yield from self._inner.execute(plan_context, execution_plan)


@executor(name="multiprocess", config_schema=multiprocess_executor.config_schema,
          requirements=multiple_process_executor_requirements())
def recovering_multiprocess_executor(init_context):
    """``multiprocess_executor`` (same config), which first fails runs whose process was killed and frees their
    slots, so a killed run never blocks the next one on the ``gpu`` pool.

    Unless the run config picks a ``start_method``, steps start from a forkserver that has imported this project
    and torch once (:data:`FORKSERVER_PRELOAD`): each step is still its own process (GPU memory is returned when
    it ends), but no longer spends seconds re-importing torch and transformers (about 6 s a step on two cores).
    """
    from dagster._core.definitions.executor_definition import _core_multiprocess_executor_creation

    config = dict(init_context.executor_config)
    if not config.get("start_method"):
        config["start_method"] = {"forkserver": {"preload_modules": list(FORKSERVER_PRELOAD)}}
    return _RecoveringExecutor(_core_multiprocess_executor_creation(config))


FORKSERVER_PRELOAD = ("vlmrl_pipeline.definitions", "torch", "transformers", "peft", "trl")
"""Modules the step forkserver imports once. Importing torch starts no threads and touches no GPU, so forking
after it is safe; CUDA is initialised in each step's own process."""


def executor_for_environment() -> ExecutorDefinition:
    """The executor named by ``$VLMRL_EXECUTOR``: ``multiprocess`` (default, with killed-run recovery) or ``k8s``."""
    choice = os.environ.get(EXECUTOR_ENV_VAR, "multiprocess").strip().lower()
    if choice in ("", "multiprocess"):
        return recovering_multiprocess_executor
    if choice == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise RuntimeError(
                f"{EXECUTOR_ENV_VAR}=k8s needs dagster-k8s: pip install -e '.[k8s]'"
            ) from exc
        return k8s_job_executor
    raise ValueError(f"{EXECUTOR_ENV_VAR} must be 'multiprocess' or 'k8s', got {choice!r}")
