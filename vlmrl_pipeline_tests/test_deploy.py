"""The Kubernetes deployment (vlmrl_pipeline/deploy/k8s): Helm values and instance config agree and are valid, and
each step's pod, rendered with dagster-k8s' own code from them, asks for what the step needs (no cluster needed)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import yaml

import vlmrl_pipeline
from vlmrl_pipeline import execution

DEPLOY = Path(vlmrl_pipeline.__file__).parent / "deploy" / "k8s"
RELEASE, NAMESPACE = "dagster", "vlmrl"
IMAGE = "registry.example.com/vlmrl-pipeline:0.1.0"
GPU_STEPS = ["baseline_completions", "lora_adapter", "after_completions", "merged_model", "merged_records"]
CPU_STEPS = ["mathvista_filtered", "resized_images", "base_model", "baseline_records", "after_records",
             "gguf_records", "eval_diff_report"]


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def helm_run_launcher_config(values: dict) -> dict:
    """The ``run_launcher.config`` the Dagster chart renders from ``values`` for ``runLauncher.type:
    K8sRunLauncher`` (helm/dagster/templates/helpers/instance/_run-launcher.tpl, ``dagsterYaml.runLauncher.k8s``),
    for a release named ``dagster``."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    glob = values.get("global", {})
    config = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": glob.get("serviceAccountName") or RELEASE,
        "dagster_home": glob["dagsterHome"],
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": glob.get("postgresqlSecretName", "dagster-postgresql-secret"),
    }
    if k8s.get("envConfigMaps"):
        config["env_config_maps"] = [c["name"] for c in k8s["envConfigMaps"] if "name" in c]
    if k8s.get("envSecrets"):
        config["env_secrets"] = [s["name"] for s in k8s["envSecrets"] if "name" in s]
    for key, name in (("envVars", "env_vars"), ("volumeMounts", "volume_mounts"), ("volumes", "volumes"),
                      ("labels", "labels"), ("resources", "resources"), ("schedulerName", "scheduler_name"),
                      ("securityContext", "security_context")):
        if k8s.get(key):
            config[name] = k8s[key]
    if k8s.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    if k8s.get("runK8sConfig"):
        run = k8s["runK8sConfig"]
        config["run_k8s_config"] = {snake: run[camel] for camel, snake in (
            ("containerConfig", "container_config"), ("podSpecConfig", "pod_spec_config"),
            ("podTemplateSpecMetadata", "pod_template_spec_metadata"), ("jobSpecConfig", "job_spec_config"),
            ("jobMetadata", "job_metadata")) if run.get(camel)}
    return config


def test_the_instance_config_is_what_the_chart_renders_and_dagster_accepts_it():
    from dagster._core.instance.config import dagster_instance_config

    instance = _load("dagster.yaml")
    assert instance["run_launcher"]["config"] == helm_run_launcher_config(_load("values.yaml"))
    validated, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")  # Dagster 1.13's instance schema
    assert validated["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert validated["run_monitoring"]["free_slots_after_run_end_seconds"] > 0


def test_code_location_and_launched_pods_share_env_and_the_artifact_volume():
    values = _load("values.yaml")
    [deployment] = values["dagster-user-deployments"]["deployments"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert [f"{e['name']}={e['value']}" for e in deployment["env"]] == launcher["envVars"]
    assert deployment["volumes"] == launcher["volumes"] and deployment["volumeMounts"] == launcher["volumeMounts"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "vlmrl_pipeline.definitions"]
    pvc = _load("artifacts-pvc.yaml")
    [volume] = launcher["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # step pods on several nodes mount it at once
    env = dict(e.split("=", 1) for e in launcher["envVars"])
    [mount] = launcher["volumeMounts"]
    assert env["VLMRL_DATA_DIR"].startswith(mount["mountPath"] + "/")  # artifacts and checkpoints on the PVC


@pytest.fixture(scope="module")
def deployed(monkeypatch_module):
    """The lineage job as the code location loads it with the deployment's env, and the run launcher built from
    dagster.yaml (kubeconfig loading stubbed: there is no cluster)."""
    import kubernetes.config
    from dagster._config import process_config, resolve_to_config_type
    from dagster_k8s import K8sRunLauncher, k8s_job_executor

    import vlmrl_pipeline.definitions as definitions

    env = dict(e.split("=", 1) for e in _load("values.yaml")["runLauncher"]["config"]["k8sRunLauncher"]["envVars"])
    for name, value in env.items():
        monkeypatch_module.setenv(name, value)
    monkeypatch_module.setattr(kubernetes.config, "load_incluster_config", lambda *a, **k: None)
    config = _load("dagster.yaml")["run_launcher"]["config"]
    processed = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), config)
    assert processed.success, processed.errors
    launcher = K8sRunLauncher(**processed.value)
    job = importlib.reload(definitions).defs.resolve_job_def("vlmrl_lineage")
    assert job.executor_def is k8s_job_executor
    yield job, launcher, env
    for name in env:
        monkeypatch_module.delenv(name)
    importlib.reload(definitions)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _render_step_pod(job, launcher, step: str):
    """What ``K8sStepHandler.launch_step`` submits for ``step``: the run launcher's container context, merged with
    the step's ``dagster-k8s/config`` op tags, through ``construct_dagster_k8s_job``."""
    from dagster import DagsterRun
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config

    [node] = [n for n in job.graph.node_defs if n.name == step]
    run = DagsterRun(job_name=job.name, run_id="0123456789abcdef")
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False).merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(node.tags)))
    job_config = context.get_k8s_job_config(IMAGE, launcher)
    return construct_dagster_k8s_job(
        job_config=job_config, args=["dagster", "api", "execute_step"], job_name=f"dagster-step-{step}",
        pod_name=f"dagster-step-{step}", component="step_worker", user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/op": step},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": job.name}, {"name": "DAGSTER_RUN_STEP_KEY", "value": step}],
    )


def _pod_view(k8s_job):
    spec = k8s_job.spec.template.spec
    [container] = spec.containers
    env = {e.name: e.value if e.value_from is None else e.value_from for e in container.env or []}
    mounts = {m.mount_path: m.name for m in container.volume_mounts or []}
    volumes = {v.name: v for v in spec.volumes or []}
    return spec, container, env, mounts, volumes


@pytest.mark.parametrize("step", GPU_STEPS)
def test_each_gpu_step_pod_gets_a_gpu_node_shared_memory_and_the_artifact_store(deployed, step):
    job, launcher, env = deployed
    spec, container, pod_env, mounts, volumes = _pod_view(_render_step_pod(job, launcher, step))
    assert container.image == IMAGE
    assert container.resources.requests["nvidia.com/gpu"] == container.resources.limits["nvidia.com/gpu"] == "1"
    assert [(t.key, t.operator, t.effect) for t in spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert mounts["/dev/shm"] == "dshm" and volumes["dshm"].empty_dir.medium == "Memory"  # NCCL between processes
    assert mounts["/data"] == "artifacts"
    assert volumes["artifacts"].persistent_volume_claim.claim_name == "vlmrl-artifacts"
    assert pod_env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    # the step writes its events to the run storage: the Postgres password comes from the chart's secret
    assert pod_env["DAGSTER_PG_PASSWORD"].secret_key_ref.name == "dagster-postgresql-secret"
    for name, value in env.items():
        assert pod_env[name] == value, name
    assert pod_env["DAGSTER_RUN_STEP_KEY"] == step


@pytest.mark.parametrize("step", CPU_STEPS)
def test_cpu_step_pods_get_the_artifact_store_but_no_gpu(deployed, step):
    job, launcher, env = deployed
    spec, container, pod_env, mounts, volumes = _pod_view(_render_step_pod(job, launcher, step))
    assert "nvidia.com/gpu" not in ((container.resources.limits or {}) if container.resources else {})
    assert not spec.tolerations and "/dev/shm" not in mounts
    assert mounts["/data"] == "artifacts" and pod_env["VLMRL_DATA_DIR"] == env["VLMRL_DATA_DIR"]
    assert pod_env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"


def test_two_gpus_per_step_are_one_setting_away(monkeypatch):
    monkeypatch.setenv(execution.GPUS_ENV_VAR, "2")
    config = execution.gpu_op_tags()["dagster-k8s/config"]
    assert config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert config["pod_spec_config"]["volumes"][0]["empty_dir"]["medium"] == "Memory"


# --- lora_adapter on several machines (VLMRL_TRAINING_MACHINES > 1, vlmrl_pipeline/k8s_training.py) ------------------

WORKERS_EXAMPLE = "training-workers.yaml"
EXAMPLE_KEY = "a1b2c3d4e5f6a7b8"
EXAMPLE_JOB_FILE = f"/data/vlmrl/lora_adapter_checkpoints/{EXAMPLE_KEY}/launch/job.json"
EXAMPLE_RANK0 = "10.8.0.17"


def _step_pod_as_the_api_returns_it(job, launcher) -> dict:
    """The lora_adapter step's pod as dagster-k8s submits it, in the API's JSON shape, with what the API server
    adds (name, namespace, uid): what ``k8s_training`` reads back through ``read_namespaced_pod``."""
    from kubernetes.client import ApiClient

    k8s_job = _render_step_pod(job, launcher, "lora_adapter")
    pod = {"metadata": {"name": "dagster-step-lora-adapter-x7k2p", "namespace": NAMESPACE,
                        "uid": "6f1c2a9e-0000-4000-8000-000000000001"},
           "spec": ApiClient().sanitize_for_serialization(k8s_job.spec.template.spec)}
    return pod


def _example_workers(job, launcher, machines: int = 2, per_machine: int = 1) -> dict:
    from vlmrl_pipeline.core.training.k8s_workers import worker_job_manifest, worker_job_name
    from vlmrl_pipeline.core.training.launch import DEFAULT_MAIN_PROCESS_PORT

    return worker_job_manifest(
        _step_pod_as_the_api_returns_it(job, launcher), name=worker_job_name("0123456789abcdef", EXAMPLE_KEY),
        num_machines=machines, processes_per_machine=per_machine, job_file=EXAMPLE_JOB_FILE,
        main_address=EXAMPLE_RANK0, main_port=DEFAULT_MAIN_PROCESS_PORT)


def _as_k8s_model(manifest: dict, kind: str):
    """``manifest`` read as the kubernetes client's model of ``kind`` (the API's schema: a missing required field
    raises), then written back: equal only if no field was unknown to the schema (those are silently dropped)."""
    import json as _json

    from kubernetes.client import ApiClient

    class _Response:
        data = _json.dumps(manifest)

    api = ApiClient()
    model = api.deserialize(_Response(), kind)
    assert api.sanitize_for_serialization(model) == manifest
    return model


def test_the_committed_worker_job_is_what_the_code_renders_for_two_machines(deployed):
    job, launcher, _ = deployed
    rendered = _example_workers(job, launcher)
    if os.environ.get("VLMRL_WRITE_DEPLOY_EXAMPLES"):  # regenerate after a deliberate change
        header = (DEPLOY / WORKERS_EXAMPLE).read_text().split("apiVersion:")[0]
        (DEPLOY / WORKERS_EXAMPLE).write_text(header + yaml.safe_dump(rendered, sort_keys=False))
    assert _load(WORKERS_EXAMPLE) == rendered


@pytest.mark.parametrize("machines, per_machine", [(2, 1), (4, 2)])
def test_each_worker_rank_is_a_copy_of_the_step_pod_on_the_shared_volume(deployed, machines, per_machine):
    from vlmrl_pipeline.core.training.launch import Machines, machines_from_env, node_parser

    job, launcher, env = deployed
    manifest = _example_workers(job, launcher, machines, per_machine)
    k8s_job = _as_k8s_model(manifest, "V1Job")
    step_spec, step_container, _, step_mounts, step_volumes = _pod_view(_render_step_pod(job, launcher,
                                                                                           "lora_adapter"))
    spec = k8s_job.spec
    assert (spec.completion_mode, spec.completions, spec.parallelism, spec.backoff_limit) == (
        "Indexed", machines - 1, machines - 1, 0)
    [owner] = k8s_job.metadata.owner_references
    assert (owner.kind, owner.name) == ("Pod", "dagster-step-lora-adapter-x7k2p")  # deleted with the step's pod
    pod = spec.template.spec
    [container] = pod.containers
    assert pod.restart_policy == "Never" and container.image == step_container.image == IMAGE
    assert container.resources.limits == step_container.resources.limits  # the same GPUs per machine
    assert [(t.key, t.effect) for t in pod.tolerations] == [(t.key, t.effect) for t in step_spec.tolerations]
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    volumes = {v.name: v for v in pod.volumes}
    assert mounts == step_mounts and mounts["/data"] == "artifacts" and mounts["/dev/shm"] == "dshm"
    assert volumes["artifacts"].persistent_volume_claim.claim_name == "vlmrl-artifacts" == \
        step_volumes["artifacts"].persistent_volume_claim.claim_name
    assert EXAMPLE_JOB_FILE.startswith(env["VLMRL_DATA_DIR"] + "/")  # the job file is on that volume
    worker_env = {e.name: e.value for e in container.env}
    for name, value in env.items():
        if name != "VLMRL_TRAINING_MACHINES":  # the step's setting; a worker reads VLMRL_NUM_MACHINES
            assert worker_env[name] == value, name
    assert "VLMRL_TRAINING_MACHINES" not in worker_env and worker_env["VLMRL_NUM_MACHINES"] == str(machines)
    assert not [name for name in worker_env if name.startswith("DAGSTER_")]  # workers run no Dagster code
    assert pod.automount_service_account_token is False
    # the command is core.training.launch's, and each pod's index becomes its machine rank: 1..machines-1 after the step's 0
    assert container.command[:3] == ["python", "-m", "vlmrl_pipeline.core.training.launch"]
    args = node_parser().parse_args(container.command[3:])
    assert (args.job, args.processes_per_machine, args.distributed) == (EXAMPLE_JOB_FILE, per_machine, "ddp")
    ranks = [machines_from_env({**worker_env, "JOB_COMPLETION_INDEX": str(i)}) for i in range(spec.completions)]
    assert ranks == [Machines(machines, r, EXAMPLE_RANK0, 29500) for r in range(1, machines)]


def test_every_machine_launches_accelerate_at_its_rank(tmp_path):
    """Rank 0's config (the step) and a worker's go through accelerate's own parser and validation."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from vlmrl_pipeline.core.training import launch

    for rank in (0, 2):
        machines = launch.Machines(3, rank, EXAMPLE_RANK0, 29500)
        config = launch.write_accelerate_config(tmp_path / f"m{rank}.yaml", launch.accelerate_config(
            6, "fsdp", use_cpu=False, gpu_ids="0,1", machines=machines))
        command = launch.accelerate_command(config, tmp_path / "job.json")
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
        assert (args.num_processes, args.num_machines, args.machine_rank) == (6, 3, rank)
        assert (args.main_process_ip, args.main_process_port, args.use_fsdp) == (EXAMPLE_RANK0, 29500, True)
    with pytest.raises(ValueError, match="does not split evenly"):
        launch.accelerate_config(5, "ddp", use_cpu=False, machines=launch.Machines(2, 0, EXAMPLE_RANK0, 29500))
    with pytest.raises(ValueError, match="VLMRL_MAIN_PROCESS_IP"):
        launch.machines_from_env({"VLMRL_NUM_MACHINES": "2"})
    with pytest.raises(ValueError, match="outside 0..1"):
        launch.machines_from_env({"VLMRL_NUM_MACHINES": "2", "VLMRL_MACHINE_RANK": "2",
                                  "VLMRL_MAIN_PROCESS_IP": "h"})
    assert launch.accelerate_config(1, "ddp", use_cpu=True)["num_machines"] == 1  # one machine: as before


def test_the_number_of_training_machines_is_a_deployment_setting():
    from vlmrl_pipeline.core.training.k8s_workers import TRAINING_MACHINES_ENV, training_machines

    values = _load("values.yaml")
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert {"name": TRAINING_MACHINES_ENV, "value": "1"} in deployment["env"]
    assert training_machines({}) == 1 and training_machines({TRAINING_MACHINES_ENV: "4"}) == 4
    with pytest.raises(ValueError, match=TRAINING_MACHINES_ENV):
        training_machines({TRAINING_MACHINES_ENV: "0"})
