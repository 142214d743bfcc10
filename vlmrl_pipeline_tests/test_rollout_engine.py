"""``training_settings.rollout_engine`` resolved with the machine's probes given: which engine, which switches, and
why; ``vllm`` refused where it cannot run. The Dagster side (metadata, run log, refusal before launch) is in
``test_vllm_settings.py``."""

from __future__ import annotations

import dataclasses
import doctest
import json

import pytest

from vlmrl_pipeline.core.model.loading import LoraSettings
from vlmrl_pipeline.core.profiles import ModelSettings
from vlmrl_pipeline.core.training import rollout_engine
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings
from vlmrl_pipeline.core.training.job import TrainingJob
from vlmrl_pipeline.core.training.rollout_engine import resolve_rollout_engine

EVERYTHING = dict(cuda_available=True, vllm_installed=True, compressed_tensors_installed=True)
UNSLOTH_4BIT = ModelSettings(backend="unsloth", load_in_4bit=True)
UNSLOTH_16BIT = ModelSettings(backend="unsloth", load_in_4bit=False)
TRANSFORMERS_BF16 = ModelSettings(backend="transformers", load_in_4bit=False, dtype="bfloat16")
TRANSFORMERS_4BIT = ModelSettings(backend="transformers", load_in_4bit=True)
VISION_LORA = ModelSettings(backend="unsloth", load_in_4bit=False, lora=LoraSettings(finetune_vision_layers=True))


def test_doctests():
    assert doctest.testmod(rollout_engine).failed == 0


def _resolve(model, setting, backend, **probes):
    return resolve_rollout_engine(model, GSPOSettings(rollout_engine=setting), backend, **{**EVERYTHING, **probes})


@pytest.mark.parametrize("setting", ["auto", "vllm"])
@pytest.mark.parametrize("model, backend, fast_inference", [
    (UNSLOTH_4BIT, "unsloth", True),  # Unsloth's own engine, loaded with the model
    (UNSLOTH_16BIT, "unsloth", True),
    (TRANSFORMERS_BF16, "transformers", False),  # TRL's colocated engine: use_vllm alone
    (ModelSettings(backend="auto", load_in_4bit=False), "transformers", False),
])
def test_where_vllm_can_run_both_auto_and_vllm_pick_it(setting, model, backend, fast_inference):
    choice = _resolve(model, setting, backend)
    assert (choice.engine, choice.label, choice.setting) == ("vllm", "vllm", setting)
    assert (choice.use_vllm, choice.fast_inference, choice.problems) == (True, fast_inference, ())
    engine = "Unsloth's engine" if backend == "unsloth" else "TRL's colocated engine"
    assert choice.reason.startswith(f"rollout_engine={setting}: ") and engine in choice.reason
    resolved_model, resolved_gspo = choice.apply(model, GSPOSettings(rollout_engine=setting))
    assert resolved_gspo.use_vllm and resolved_model.fast_inference == fast_inference
    assert resolved_gspo.rollout_engine == setting  # what was asked stays recorded


@pytest.mark.parametrize("model, backend, probes, why", [
    (TRANSFORMERS_BF16, "transformers", {"cuda_available": False}, "no CUDA GPU"),
    (TRANSFORMERS_BF16, "transformers", {"vllm_installed": False}, "vLLM is not installed"),
    (UNSLOTH_4BIT, "unsloth", {"vllm_installed": False}, "vLLM is not installed"),
    (TRANSFORMERS_4BIT, "transformers", {}, "load_in_4bit=True"),
    (UNSLOTH_4BIT, "unsloth", {"compressed_tensors_installed": False}, "compressed_tensors"),
    (VISION_LORA, "unsloth", {}, "finetune_vision_layers"),
    # Gemma 3 through Unsloth's engine: the rollout prompt is not the trainer's (the guard stops the first step).
    (UNSLOTH_16BIT, "unsloth", {"model_type": "gemma3"}, "Gemma 3's rollouts"),
    (ModelSettings(backend="auto", fast_inference=True), "transformers", {}, "Unsloth, but the backend is "
                                                                            "transformers"),
])
def test_where_vllm_cannot_run_auto_generates_and_vllm_is_refused(model, backend, probes, why):
    auto = _resolve(model, "auto", backend, **probes) if not model.fast_inference else None
    if auto is not None:  # (an explicit fast_inference is followed under auto; its own checks apply)
        assert (auto.engine, auto.label, auto.use_vllm, auto.fast_inference) == ("generate", "model.generate",
                                                                                  False, False)
        assert auto.problems == () and why in auto.reason
        assert auto.reason.startswith("rollout_engine=auto: ") and "through model.generate" in auto.reason
    asked = _resolve(model, "vllm", backend, **probes)
    [problem] = asked.problems
    assert problem.startswith("training_settings.rollout_engine='vllm' cannot run here: ") and why in problem
    assert "rollout_engine='auto'" in problem  # and what to do


def test_only_the_architectures_whose_engine_prompt_differs_leave_unsloths_engine():
    assert _resolve(UNSLOTH_4BIT, "auto", "unsloth", model_type="qwen3_vl").engine == "vllm"
    assert _resolve(TRANSFORMERS_BF16, "auto", "transformers", model_type="gemma3").engine == "vllm"  # not seen there
    assert "rollout_engine='generate'" in _resolve(UNSLOTH_4BIT, "auto", "unsloth", model_type="gemma3").reason


def test_a_cpu_machine_without_vllm_says_what_would_be_needed():
    choice = resolve_rollout_engine(TRANSFORMERS_BF16, GSPOSettings(), "transformers", cuda_available=False,
                                    vllm_installed=False, compressed_tensors_installed=False)
    assert choice.engine == "generate"
    assert "no CUDA GPU" in choice.reason and "vLLM is not installed" in choice.reason
    assert "pip install -e '.[gpu,vllm]'" in choice.reason


def test_generate_never_uses_vllm_and_refuses_use_vllm():
    choice = _resolve(UNSLOTH_4BIT, "generate", "unsloth")
    assert (choice.engine, choice.use_vllm, choice.fast_inference) == ("generate", False, False)
    assert choice.reason == "rollout_engine=generate: rollouts through model.generate"
    with pytest.raises(ValueError, match=r"rollout_engine='generate'.*use_vllm=True"):
        GSPOSettings(rollout_engine="generate", use_vllm=True)
    with pytest.raises(ValueError, match=r"rollout_engine must be one of .*'sglang'"):
        GSPOSettings(rollout_engine="sglang")


def test_explicit_switches_under_auto_are_kept_as_set():
    """``use_vllm`` / ``fast_inference`` set by hand mean vLLM, even where auto would not pick it: their own checks
    (``vllm_conflicts``, ``vllm_problems``) refuse what cannot run, as before."""
    choice = resolve_rollout_engine(TRANSFORMERS_BF16, GSPOSettings(use_vllm=True), "transformers",
                                    cuda_available=False, vllm_installed=False)
    assert (choice.engine, choice.use_vllm, choice.fast_inference, choice.problems) == ("vllm", True, False, ())
    assert "training_settings.use_vllm=True" in choice.reason
    # An inconsistent pair is not completed: the existing refusal ("set both, or neither") still sees it.
    half = resolve_rollout_engine(UNSLOTH_4BIT, GSPOSettings(use_vllm=True), "unsloth", **EVERYTHING)
    assert (half.use_vllm, half.fast_inference) == (True, False)


def test_the_training_job_carries_the_choice_and_old_job_files_still_read(tmp_path):
    choice = _resolve(TRANSFORMERS_BF16, "auto", "transformers", vllm_installed=False)
    job = TrainingJob(base_model_path="m", base_model_ref={}, manifest_dir="d", adapter_dir="a", work_dir="w",
                      checkpoint_key="k", model={}, prompt_style={}, gspo=dataclasses.asdict(GSPOSettings()),
                      num_processes=1, rollout_engine=choice.record())
    path = job.write(tmp_path / "job.json")
    assert TrainingJob.read(path).rollout_engine == {"engine": "model.generate", "setting": "auto",
                                                     "reason": choice.reason}
    old = json.loads(path.read_text())
    old.pop("rollout_engine")
    old["gspo"].pop("rollout_engine")
    (tmp_path / "old.json").write_text(json.dumps(old))
    read = TrainingJob.read(tmp_path / "old.json")
    assert read.rollout_engine == {} and read.gspo_settings().rollout_engine == "auto"
