"""The Kubernetes deployment (vlmrl_pipeline/deploy/k8s): Helm values and instance config agree and are valid, and
each step's pod, rendered with dagster-k8s' own code from them, asks for what the step needs (no cluster needed)."""

from __future__ import annotations

import importlib
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
