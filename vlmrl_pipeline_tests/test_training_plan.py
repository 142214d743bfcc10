"""``core.training.plan``: a ``lora_adapter`` run planned and refused without Dagster, and its checkpoint folder
chosen (resume, set-aside, a live earlier process)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing

import pandas as pd
import pytest

from vlmrl_pipeline.core.atomic import ArtifactBusyError, exclusive
from vlmrl_pipeline.core.training import plan as training_plan
from vlmrl_pipeline.core.training.checkpoints import checkpoint_key
from vlmrl_pipeline.core.training.plan import choose_work_dir, plan_training
from vlmrl_pipeline.core.training.rollout_server import RolloutServerSettings
from vlmrl_pipeline_tests.conftest import tiny_profile


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    return str(folder)


def _manifest(train=8, validation=0, evaluation=4) -> pd.DataFrame:
    splits = ["train"] * train + ["validation"] * validation + ["eval"] * evaluation
    return pd.DataFrame({"split": splits, "pid": [str(i) for i in range(len(splits))]})


def _plan(checkpoint, *, gspo=None, server=None, manifest=None, **kwargs):
    profile = tiny_profile()
    return plan_training(profile.model, profile.data, gspo or profile.gspo, server or RolloutServerSettings(),
                         load_path=checkpoint, revision=None, manifest=_manifest() if manifest is None else manifest,
                         **{"gpus": 0, "num_machines": 1, **kwargs})


def test_a_cpu_plan_runs_one_process_through_generate_and_writes_a_job_the_training_process_reads(checkpoint, tmp_path):
    plan = _plan(checkpoint)
    assert (plan.backend, plan.processes, plan.per_machine, plan.gpus) == ("transformers", 1, 1, 0)
    assert plan.engine.label == "model.generate" and not plan.gspo.use_vllm and not plan.starts_server
    assert plan.accelerate_config()["use_cpu"] is True
    assert plan.prompt_style == {"prompt_field": "query", "answer_format": "tags", "system_prompt": ""}
    work = tmp_path / "work"
    job = plan.job(base_model_path=checkpoint, base_model_ref={"name": "x"}, manifest_dir=tmp_path,
                   adapter_dir=tmp_path / "adapter", work_dir=work, training_lock=tmp_path / "lock")
    assert job.checkpoint_key == "work" and job.num_processes == 1
    assert job.gspo_settings() == plan.gspo  # the process rebuilds exactly the settings planned here
    assert job.rollout_engine == plan.engine.record()


def test_the_checkpoint_key_follows_the_plan_and_not_the_servers_address(checkpoint):
    plan = _plan(checkpoint)
    facts = {"base_model_ref": {"name": "x"}, "base_model_files": None, "manifest_sha256": "m", "code_version": "c"}
    key = checkpoint_key(plan.checkpoint_inputs(**facts))
    assert key == checkpoint_key(plan.with_server("http://127.0.0.1:1").checkpoint_inputs(**facts))
    changed = dataclasses.replace(plan, gspo=dataclasses.replace(plan.gspo, learning_rate=plan.gspo.learning_rate * 2))
    assert checkpoint_key(changed.checkpoint_inputs(**facts)) != key


@pytest.mark.parametrize(("change", "manifest", "message"), [
    ({"eval_steps": 1}, _manifest(), "need validation rows"),
    ({"keep_checkpoint": "best_validation", "eval_steps": 2}, _manifest(), "need validation rows"),
    ({"reward_funcs": ("no_such_module_here:reward",)}, _manifest(), "no_such_module_here"),
    ({"rollout_engine": "vllm"}, _manifest(), "rollout_engine"),
    ({"report_to": "wandb"}, _manifest(), "wandb"),
    ({}, _manifest(train=0), "no 'train' rows"),
])
def test_settings_that_cannot_work_are_refused_by_the_plan(checkpoint, monkeypatch, change, manifest, message):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    gspo = dataclasses.replace(tiny_profile().gspo, **change)
    with pytest.raises(ValueError, match=message):
        _plan(checkpoint, gspo=gspo, manifest=manifest)


def test_validation_rows_make_the_validation_settings_plannable(checkpoint):
    gspo = dataclasses.replace(tiny_profile().gspo, eval_steps=1, keep_checkpoint="best_validation")
    assert _plan(checkpoint, gspo=gspo, manifest=_manifest(validation=2)).gspo.eval_steps == 1


def test_several_machines_need_gpus_and_colocated_rollouts(checkpoint):
    with pytest.raises(ValueError, match="VLMRL_TRAINING_MACHINES=2 .* this step sees none"):
        _plan(checkpoint, num_machines=2, main_address=lambda: "10.0.0.1")


def test_server_mode_on_its_own_gpu_leaves_training_the_others(checkpoint, monkeypatch):
    """Planned as on a two-GPU machine (the refusals that need CUDA or vLLM are this CPU's, and are lifted)."""
    monkeypatch.setattr(training_plan, "vllm_problems", lambda setting: [])
    monkeypatch.setattr(training_plan, "server_runtime_problems", lambda server: [])
    monkeypatch.setattr(training_plan, "resolve_backend", lambda backend: "transformers")
    monkeypatch.setattr(training_plan, "resolve_rollout_engine", _vllm_engine)
    profile = tiny_profile()
    gspo = dataclasses.replace(profile.gspo, vllm_mode="server", rollout_engine="vllm")
    plan = _plan(checkpoint, gspo=gspo, server=RolloutServerSettings(gpus="1"), gpus=2)
    assert plan.starts_server and plan.gspo.use_vllm
    assert (plan.processes, plan.gpu_ids) == (1, "0")


def _vllm_engine(model, gspo, backend, **kwargs):
    from vlmrl_pipeline.core.training.rollout_engine import resolve_rollout_engine

    return resolve_rollout_engine(model, gspo, backend, cuda_available=True, vllm_installed=True,
                                  compressed_tensors_installed=True, **kwargs)


def test_a_new_work_dir_starts_fresh_and_an_unverifiable_checkpoint_is_set_aside(tmp_path):
    root, lock = tmp_path / "checkpoints", tmp_path / "training.lock"
    first = choose_work_dir(root, {"a": 1}, lock)
    assert first.resume_from is None and first.other_settings == [] and first.set_aside == []
    broken = first.path / "checkpoint-2"
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{not json")
    again = choose_work_dir(root, {"a": 1}, lock)
    assert again.path == first.path and again.resume_from is None
    [(name, problem, aside)] = again.set_aside
    assert name == "checkpoint-2" and problem and (first.path / aside).is_dir() and not broken.exists()
    other = choose_work_dir(root, {"a": 2}, lock)
    assert other.path != first.path and other.other_settings == [first.path]


def _hold(lock, started, release):
    with exclusive(lock):
        started.set()
        release.wait(30)


def test_a_training_process_still_holding_the_lock_refuses_the_work_dir(tmp_path):
    lock = tmp_path / "training.lock"
    context = multiprocessing.get_context("spawn")
    started, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(lock, started, release))
    holder.start()
    try:
        assert started.wait(60)
        with pytest.raises(ArtifactBusyError, match="still running on this data folder"):
            choose_work_dir(tmp_path / "checkpoints", {"a": 1}, lock)
    finally:
        release.set()
        holder.join(30)
    assert choose_work_dir(tmp_path / "checkpoints", {"a": 1}, lock).resume_from is None
