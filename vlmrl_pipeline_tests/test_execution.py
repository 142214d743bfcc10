"""Where steps run: the executor each environment resolves to, and the pod a GPU step asks Kubernetes for."""

from __future__ import annotations

import importlib

import pytest
from dagster import multiprocess_executor

from vlmrl_pipeline import execution


def test_multiprocess_is_the_default_and_k8s_is_one_setting_away(monkeypatch):
    from dagster_k8s import k8s_job_executor

    monkeypatch.delenv(execution.EXECUTOR_ENV_VAR, raising=False)
    local = execution.executor_for_environment()
    assert local is execution.recovering_multiprocess_executor
    # Dagster's multiprocess executor underneath: same name and the same run config (max_concurrent, retries, ...)
    assert local.name == multiprocess_executor.name == "multiprocess"
    assert local.config_schema.as_field().config_type.key == multiprocess_executor.config_schema.as_field(
    ).config_type.key
    monkeypatch.setenv(execution.EXECUTOR_ENV_VAR, "k8s")
    assert execution.executor_for_environment() is k8s_job_executor
    monkeypatch.setenv(execution.EXECUTOR_ENV_VAR, "ray")
    with pytest.raises(ValueError, match="VLMRL_EXECUTOR"):
        execution.executor_for_environment()


def test_the_definitions_run_the_lineage_job_on_the_chosen_executor(monkeypatch):
    from dagster_k8s import k8s_job_executor

    import vlmrl_pipeline.definitions as definitions

    try:
        monkeypatch.setenv(execution.EXECUTOR_ENV_VAR, "k8s")
        job = importlib.reload(definitions).defs.resolve_job_def("vlmrl_lineage")
        assert job.executor_def is k8s_job_executor
    finally:
        monkeypatch.delenv(execution.EXECUTOR_ENV_VAR)
        job = importlib.reload(definitions).defs.resolve_job_def("vlmrl_lineage")
    assert job.executor_def is execution.recovering_multiprocess_executor
    # `dagster asset materialize --select lora_adapter` (the README's resume command) runs the implicit asset
    # job, which must recover killed runs too
    from dagster import AssetKey

    repo = definitions.defs.get_repository_def()
    assert repo.get_implicit_job_def_for_assets([AssetKey("lora_adapter")]).executor_def is \
        execution.recovering_multiprocess_executor


def test_a_missing_k8s_extra_is_named(monkeypatch):
    import sys

    monkeypatch.setenv(execution.EXECUTOR_ENV_VAR, "k8s")
    monkeypatch.setitem(sys.modules, "dagster_k8s", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[k8s\]'"):
        execution.executor_for_environment()


@pytest.mark.parametrize("asset_name", ["baseline_completions", "after_completions", "lora_adapter", "merged_model"])
def test_each_gpu_step_renders_a_pod_that_requests_a_gpu(asset_name):
    """What k8s_job_executor would submit for the step, rendered with dagster-k8s' own code, no cluster needed."""
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    from vlmrl_pipeline.definitions import defs

    [node] = [n for n in defs.resolve_job_def("vlmrl_lineage").graph.node_defs if n.name == asset_name]
    user_config = get_user_defined_k8s_config(node.tags)
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="vlmrl-pipeline:test", dagster_home="/opt/dagster/dagster_home",
                            instance_config_map="dagster-instance"),
        args=["dagster", "api", "execute_step"], job_name=f"dagster-step-{asset_name.replace('_', '-')}",
        user_defined_k8s_config=user_config,
    )
    [container] = job.spec.template.spec.containers
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.requests["nvidia.com/gpu"] == "1"
    [toleration] = job.spec.template.spec.tolerations
    assert (toleration.key, toleration.operator, toleration.effect) == ("nvidia.com/gpu", "Exists", "NoSchedule")


def test_cpu_steps_ask_for_no_gpu():
    from dagster_k8s.job import get_user_defined_k8s_config

    from vlmrl_pipeline.definitions import defs

    for node in defs.resolve_job_def("vlmrl_lineage").graph.node_defs:
        if node.name in {"mathvista_filtered", "resized_images", "base_model", "baseline_records", "after_records",
                         "eval_diff_report"}:
            assert "nvidia.com/gpu" not in str(get_user_defined_k8s_config(node.tags).container_config)


def test_gpu_count_per_step_is_configurable(monkeypatch):
    monkeypatch.setenv(execution.GPUS_ENV_VAR, "2")
    tags = execution.gpu_op_tags()
    assert tags["dagster-k8s/config"]["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
