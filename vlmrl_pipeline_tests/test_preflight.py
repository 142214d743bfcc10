"""Bad input never costs a run: settings that cannot work stop the run before its first step, and a base model
that cannot be loaded fails ``base_model`` itself, leaving the previous one in place."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, execute_job, materialize, reconstructable

import vlmrl_pipeline
from vlmrl_pipeline.core.lineage import MODEL_REF_NAME
from vlmrl_pipeline.definitions import all_assets
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

INSTANCE_YAML = Path(vlmrl_pipeline.__file__).resolve().parent.parent / "dagster_home" / "dagster.yaml"


def lineage_job():
    from vlmrl_pipeline.definitions import defs

    return defs.resolve_job_def("vlmrl_lineage")


def _launchpad_config(resource_key: str, **changes) -> dict:
    """What a user types in the launchpad to change some fields: only those (the rest keep the profile's values)."""
    return {"resources": {resource_key: {"config": changes}}}


@pytest.mark.parametrize("resource_key, changes, message", [
    ("training_settings", dict(num_generations=1), "num_generations must be >= 2, got 1"),
    ("training_settings", dict(per_device_train_batch_size=6, gradient_accumulation_steps=1),
     "is not divisible by num_generations=4"),
    ("training_settings", dict(max_completion_length=100_000), "leaves no room for the prompt"),
    ("data_settings", dict(answer_format="latex"), "data_settings.answer_format must be one of"),
])
def test_settings_that_cannot_work_stop_the_run_before_its_first_step(tmp_path, monkeypatch, resource_key, changes,
                                                                        message):
    _refused_before_the_first_step(tmp_path, monkeypatch, resource_key, changes, message)


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_here(), reason="probes a machine without a CUDA GPU")
@pytest.mark.parametrize("resource_key, changes, message", [
    ("training_settings", dict(use_vllm=True), "training_settings.use_vllm=True needs a CUDA GPU"),
    ("training_settings", dict(rollout_engine="vllm"), "training_settings.rollout_engine='vllm' needs a CUDA GPU"),
    ("eval_settings", dict(engine="vllm"), "eval_settings.engine='vllm' needs a CUDA GPU"),
])
def test_vllm_asked_by_name_on_a_machine_without_cuda_stops_the_run_before_its_first_step(
        tmp_path, monkeypatch, resource_key, changes, message):
    """Refused when the run starts, not when lora_adapter starts after the base model and the baseline ran."""
    _refused_before_the_first_step(tmp_path, monkeypatch, resource_key, changes, message)


def _refused_before_the_first_step(tmp_path, monkeypatch, resource_key, changes, message):
    monkeypatch.setenv("VLMRL_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "home").mkdir()
    shutil.copy(INSTANCE_YAML, tmp_path / "home" / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        with execute_job(reconstructable(lineage_job), instance=instance, raise_on_error=False,
                         run_config=_launchpad_config(resource_key, **changes)) as result:
            assert not result.success
            events = instance.all_logs(result.run_id)
            run = instance.get_run_by_id(result.run_id)
    assert not [e for e in events if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_START]
    failure_text = "\n".join(
        (e.message or "") + str(getattr(e.dagster_event.event_specific_data, "error", "") or "")
        for e in events if e.dagster_event and e.dagster_event.event_type in (
            DagsterEventType.RUN_FAILURE, DagsterEventType.ENGINE_EVENT, DagsterEventType.PIPELINE_FAILURE))
    assert "refused before the first step" in failure_text and message in failure_text, failure_text[-3000:]
    assert run.tags.get("dagster/max_retries") == "0"  # the same settings would fail again: no automatic retry
    assert not (tmp_path / "data").exists()  # nothing was written


def _previous_base_model(data: Path) -> dict[str, bytes]:
    folder = data / "base_model"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "model.safetensors").write_bytes(b"previous weights")
    (folder / MODEL_REF_NAME).write_text(json.dumps({"model_name": "demo:tiny-qwen3-vl", "revision": None,
                                                     "is_demo": True, "checkpoint_dir": "checkpoint"}))
    return {str(p.relative_to(data)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _materialize_base_model(data: Path, model_name: str):
    profile = tiny_profile()
    profile = dataclasses.replace(profile, model=dataclasses.replace(profile.model, model_name=model_name,
                                                                     backend="transformers"))
    base_model = [a for a in all_assets if a.key.to_user_string() == "base_model"]
    return materialize(base_model, resources=resources_for_profile(profile, str(data)),
                       instance=DagsterInstance.ephemeral(), raise_on_error=False)


@pytest.mark.parametrize("name, message", [
    ("/nonexistent/models/qwen", "no checkpoint folder at /nonexistent/models/qwen"),
    ("./models/typo", "no checkpoint folder at models/typo"),
    ("not a repo id!", "cannot be loaded"),
    ("vlmrl-test/no-such-model-anywhere", "cannot be loaded"),
])
def test_a_model_name_that_cannot_be_loaded_fails_base_model_and_keeps_the_previous(tmp_path, monkeypatch, name,
                                                                                      message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # CI has no hub; a name that is not cached cannot be loaded
    data = tmp_path / "data"
    before = _previous_base_model(data)
    result = _materialize_base_model(data, name)
    assert not result.success
    [failure] = result.get_step_failure_events()
    error, text = failure.step_failure_data.error, []
    while error is not None:
        text.append(error.message)
        error = error.cause
    assert f"model_name={name!r}" in "\n".join(text) and message in "\n".join(text)
    after = {str(p.relative_to(data)): p.read_bytes() for p in (data / "base_model").rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in data.glob(".base_model.*") if p.is_dir()]


def test_a_local_checkpoint_folder_is_checked_and_recorded(tmp_path, tiny_checkpoint):
    result = _materialize_base_model(tmp_path / "data", tiny_checkpoint)
    assert result.success
    [event] = result.asset_materializations_for_node("base_model")
    assert event.metadata["model_type"].value == "qwen3_vl"
    ref = json.loads((tmp_path / "data" / "base_model" / MODEL_REF_NAME).read_text())
    assert ref["model_name"] == tiny_checkpoint and not ref["is_demo"]


def test_settings_typed_under_an_assets_ops_config_are_refused_not_ignored():
    """Settings are resources; config under ``ops:`` has nowhere to go, and Dagster says so at launch."""
    from dagster import DagsterInvalidConfigError, validate_run_config

    job = lineage_job()
    validate_run_config(job, _launchpad_config("data_settings", eval_size=7))
    with pytest.raises(DagsterInvalidConfigError, match='unexpected config entry "eval_size" at path '
                                                        "root:ops:resized_images:config"):
        validate_run_config(job, {"ops": {"resized_images": {"config": {"eval_size": 7}}}})
