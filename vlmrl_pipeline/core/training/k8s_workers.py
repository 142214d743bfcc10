"""Training on several machines on Kubernetes: the ``lora_adapter`` step's pod is machine rank 0, and a Kubernetes
Indexed Job runs machine ranks 1..N-1, one pod each, copied from the step's own pod.

Kubernetes schedules the pods (no scheduler here); ``accelerate launch`` on every machine meets at rank 0's address
(static rendezvous through ``torch.distributed``). Each worker pod is the step pod's image, GPUs, tolerations,
node selection and volumes (so every rank mounts the same artifact volume: the job file, the base model, the
checkpoints), with the step's command replaced by ``python -m vlmrl_pipeline.core.training.launch``, which reads its
machine rank from ``JOB_COMPLETION_INDEX`` (``core.training.launch.machines_from_env``). The Job is owned by the step
pod (``ownerReferences``), so Kubernetes deletes it with that pod; the step deletes it itself when training ends.

Plain dicts in the Kubernetes API's JSON shape, no client objects: ``vlmrl_pipeline.k8s_training`` submits them.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from typing import Any

from vlmrl_pipeline.core.training.launch import (
    MACHINE_RANK_OFFSET_ENV,
    MAIN_PROCESS_IP_ENV,
    MAIN_PROCESS_PORT_ENV,
    NUM_MACHINES_ENV,
)

TRAINING_MACHINES_ENV = "VLMRL_TRAINING_MACHINES"
"""Machines one ``lora_adapter`` step trains on (default 1): a deployment setting, like ``VLMRL_GPUS_PER_STEP`` (the
GPUs, hence training processes, of each machine)."""
WORKER_LABEL = "vlmrl/training-workers"
WORKER_CONTAINER = "training"
STEP_ONLY_ENV_PREFIXES = ("DAGSTER_",)
"""The step pod's env that the workers leave out: they run no Dagster code (rank 0 speaks Dagster Pipes)."""
STEP_ONLY_POD_FIELDS = ("hostname", "subdomain", "nodeName", "serviceAccount", "serviceAccountName",
                        "restartPolicy", "initContainers", "containers")


def training_machines(env: Mapping[str, str] | None = None) -> int:
    """``VLMRL_TRAINING_MACHINES`` (1 when unset), refused below 1."""
    env = os.environ if env is None else env
    raw = (env.get(TRAINING_MACHINES_ENV) or "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{TRAINING_MACHINES_ENV} must be a whole number >= 1, got {raw!r}")
    return int(raw)


def worker_job_name(run_id: str, checkpoint_key: str) -> str:
    """A DNS-1123 name, unique per run and training inputs, short enough for the pods' ``-<index>-<suffix>``.

    >>> worker_job_name("0123456789abcdef-ffff", "a1b2c3d4e5f6")
    'vlmrl-train-01234567-a1b2c3d4'
    """
    clean = [re.sub(r"[^a-z0-9]", "", part.lower())[:8] for part in (run_id, checkpoint_key)]
    return "vlmrl-train-" + "-".join(clean)


def worker_job_manifest(step_pod: Mapping[str, Any], *, name: str, num_machines: int, processes_per_machine: int,
                        job_file: str, main_address: str, main_port: int, distributed: str = "ddp",
                        python: str = "python", active_deadline_s: int | None = None) -> dict[str, Any]:
    """The ``batch/v1`` Indexed Job of machine ranks 1..``num_machines``-1, from ``step_pod`` (the step's own pod,
    as the API returns it: ``metadata``, ``spec``).

    Every worker gets the step container's image, resources (its GPUs), env and volume mounts, and the pod's
    volumes, tolerations and node selection; ``backoffLimit: 0`` (a failed rank fails the run, whose rank 0 then
    fails too, as on one machine), and the step pod as owner."""
    if num_machines < 2:
        raise ValueError(f"a worker Job is for several machines; {TRAINING_MACHINES_ENV}={num_machines}")
    if processes_per_machine < 1:
        raise ValueError(f"processes_per_machine must be >= 1, got {processes_per_machine}")
    meta, spec = step_pod.get("metadata") or {}, step_pod.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        raise ValueError("the step pod has no container to copy")
    step = containers[0]
    env = [e for e in step.get("env") or [] if not e["name"].startswith(STEP_ONLY_ENV_PREFIXES)
           and e["name"] not in (TRAINING_MACHINES_ENV, NUM_MACHINES_ENV, MACHINE_RANK_OFFSET_ENV,
                                 MAIN_PROCESS_IP_ENV, MAIN_PROCESS_PORT_ENV)]
    env += [{"name": NUM_MACHINES_ENV, "value": str(num_machines)},
            {"name": MACHINE_RANK_OFFSET_ENV, "value": "1"},  # JOB_COMPLETION_INDEX 0 is machine rank 1
            {"name": MAIN_PROCESS_IP_ENV, "value": main_address},
            {"name": MAIN_PROCESS_PORT_ENV, "value": str(main_port)},
            {"name": "PYTHONUNBUFFERED", "value": "1"}]
    container = {
        "name": WORKER_CONTAINER,
        "image": step["image"],
        "command": [python, "-m", "vlmrl_pipeline.core.training.launch", "--job", job_file,
                    "--processes-per-machine", str(processes_per_machine), "--distributed", distributed],
        "env": env,
    }
    for key in ("imagePullPolicy", "resources", "volumeMounts", "envFrom", "securityContext", "workingDir"):
        if step.get(key):
            container[key] = copy.deepcopy(step[key])
    pod_spec = {key: copy.deepcopy(value) for key, value in spec.items()
                if key not in STEP_ONLY_POD_FIELDS and value not in (None, [], {})}
    pod_spec.update(restartPolicy="Never", containers=[container], automountServiceAccountToken=False)
    labels = {"app.kubernetes.io/name": "vlmrl-pipeline", "app.kubernetes.io/component": "training-worker",
              WORKER_LABEL: name}
    job_meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if meta.get("namespace"):
        job_meta["namespace"] = meta["namespace"]
    if meta.get("name") and meta.get("uid"):
        job_meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"],
                                        "blockOwnerDeletion": False, "controller": False}]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": num_machines - 1,
        "parallelism": num_machines - 1,  # all at once: the rendezvous waits for every machine
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": 3600,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if active_deadline_s:
        job_spec["activeDeadlineSeconds"] = int(active_deadline_s)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta, "spec": job_spec}
