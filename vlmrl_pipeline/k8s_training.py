"""Machine ranks 1..N-1 of a multi-machine ``lora_adapter`` step on Kubernetes (``VLMRL_TRAINING_MACHINES`` > 1).

The step's own pod is machine rank 0: it launches its training processes through Dagster Pipes as on one machine,
so logs and the materialization's metadata come back the usual way. Here it submits the Indexed Job of the other
machines (``core.training.k8s_workers``, copied from its own pod, read through the API with the step's service
account), and deletes it when training ends, fails or is cancelled; the Job's owner is the step pod, so Kubernetes also
deletes it when that pod goes. Needs the ``k8s`` extra and a pod whose service account may get pods and create/delete
Jobs in its namespace (the Dagster chart's, which ``k8s_job_executor`` already uses for the step Jobs).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vlmrl_pipeline.core.training.k8s_workers import worker_job_manifest

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def step_pod_address() -> str:
    """This pod's IP, where the other machines reach rank 0 (a pod's hostname resolves to it)."""
    return socket.gethostbyname(socket.gethostname())


@contextmanager
def training_workers(*, name: str, num_machines: int, processes_per_machine: int, job_file: str, main_address: str,
                     main_port: int, distributed: str, log: Callable[[str], None]) -> Iterator[dict]:
    """Submit the worker Job while inside; delete it (and its pods) on the way out."""
    import kubernetes

    kubernetes.config.load_incluster_config()
    api = kubernetes.client.ApiClient()
    namespace = NAMESPACE_FILE.read_text().strip()
    pod = kubernetes.client.CoreV1Api(api).read_namespaced_pod(socket.gethostname(), namespace)
    manifest = worker_job_manifest(api.sanitize_for_serialization(pod), name=name, num_machines=num_machines,
                                   processes_per_machine=processes_per_machine, job_file=job_file,
                                   main_address=main_address, main_port=main_port, distributed=distributed)
    batch = kubernetes.client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, manifest)
    log(f"submitted Job {namespace}/{name}: machine ranks 1..{num_machines - 1}, {processes_per_machine} "
        f"process(es) each, meeting at {main_address}:{main_port}")
    try:
        yield manifest
    finally:
        try:
            batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
            log(f"deleted Job {namespace}/{name} and its pods")
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:  # already gone (deleted with its owner, or by hand) is what we want
                raise
