"""vLLM settings on a CPU machine: they reach TRL's ``GRPOConfig`` and vLLM's sampling as meant, and the
combinations that cannot work are refused before anything loads. The vLLM runs themselves are GPU tests
(``test_vllm_gpu.py``)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from dagster import DagsterInstance, materialize

from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
from vlmrl_pipeline.core.evaluation.plots import training_curves_png
from vlmrl_pipeline.core.evaluation.vllm_engine import (
    greedy_sampling_params,
    needs_serving_copy,
    serving_checkpoint,
    vllm_prompts,
)
from vlmrl_pipeline.core.model.loading import LoraSettings, load_processor, vision_token_ids, vllm_available
from vlmrl_pipeline.core.profiles import ModelSettings, geo3k_profile
from vlmrl_pipeline.core.rewards import boxed_reward, boxed_reward_valued
from vlmrl_pipeline.core.settings_check import settings_conflicts, vllm_conflicts
from vlmrl_pipeline.core.training.gspo_config import SUPPRESSED_LOGIT_BIAS, GSPOSettings, build_grpo_config
from vlmrl_pipeline.core.training.trainer import rollout_summary
from vlmrl_pipeline_tests.conftest import tiny_profile


def test_vllm_rollout_settings_reach_grpo_config(tiny_checkpoint, tmp_path):
    processor = load_processor(tiny_checkpoint)
    settings = GSPOSettings(use_vllm=True, vllm_gpu_memory_utilization=0.45, vllm_enable_sleep_mode=True,
                            vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_max=2.0,
                            vllm_importance_sampling_clip_min=0.5, reward_max_val=2.0, optim="adamw_torch")
    config = build_grpo_config(settings, tmp_path, processor, [1.0], max_seq_length=4096)
    assert config.use_vllm and config.vllm_mode == "colocate"
    assert config.vllm_gpu_memory_utilization == 0.45 and config.vllm_enable_sleep_mode
    assert config.vllm_importance_sampling_correction
    assert config.vllm_importance_sampling_mode == "token_truncate"
    assert (config.vllm_importance_sampling_clip_min, config.vllm_importance_sampling_clip_max) == (0.5, 2.0)
    # vLLM's context is bounded by the model's, not the checkpoint's (262k for Qwen3-VL).
    assert config.vllm_max_model_length == 4096
    # TRL hands generation_kwargs to vLLM's SamplingParams, which has no suppress_tokens: a logit bias instead.
    ids = vision_token_ids(processor)
    assert ids and config.generation_kwargs == {"logit_bias": {i: SUPPRESSED_LOGIT_BIAS for i in ids}}
    assert not hasattr(config, "reward_max_val")  # the project's own field, not a GRPOConfig option


def test_without_vllm_rollouts_suppress_tokens_as_generate_expects(tiny_checkpoint, tmp_path):
    processor = load_processor(tiny_checkpoint)
    config = build_grpo_config(GSPOSettings(optim="adamw_torch"), tmp_path, processor, [1.0], max_seq_length=4096)
    assert not config.use_vllm and config.vllm_max_model_length is None
    assert config.generation_kwargs == {"suppress_tokens": vision_token_ids(processor)}


@pytest.mark.parametrize("bad, match", [
    ({"vllm_mode": "remote"}, "vllm_mode"),
    ({"vllm_gpu_memory_utilization": 1.0}, "vllm_gpu_memory_utilization"),
    ({"vllm_importance_sampling_mode": "sequence_clip"}, "vllm_importance_sampling_mode"),
    ({"vllm_importance_sampling_clip_max": 0.0}, "clip_max"),
    ({"vllm_importance_sampling_clip_min": 3.0, "vllm_importance_sampling_clip_max": 2.0}, "clip_min"),
    ({"reward_max_val": 0.0, "reward_min_val": 0.0}, "reward_max_val"),
])
def test_vllm_and_reward_settings_that_cannot_work_are_refused_when_made(bad, match):
    with pytest.raises(ValueError, match=match):
        GSPOSettings(**bad)


@pytest.mark.parametrize("model, gspo, backend, match", [
    (ModelSettings(backend="unsloth", fast_inference=True), GSPOSettings(), None, "use_vllm=True use"),
    (ModelSettings(backend="unsloth"), GSPOSettings(use_vllm=True), None, "fast_inference=True"),
    (ModelSettings(backend="auto"), GSPOSettings(use_vllm=True), "unsloth", "fast_inference=True"),
    (ModelSettings(backend="transformers", load_in_4bit=True), GSPOSettings(use_vllm=True), None, "load_in_4bit"),
    (ModelSettings(backend="unsloth", fast_inference=True), GSPOSettings(use_vllm=True, vllm_enable_sleep_mode=True),
     None, "vllm_standby"),
    # rollout_engine: what the settings alone rule out (GPU and packages are probed where training runs)
    (ModelSettings(backend="unsloth", fast_inference=True), GSPOSettings(rollout_engine="generate"), None,
     "training_settings.rollout_engine='generate' never uses"),
    (ModelSettings(backend="transformers", load_in_4bit=True), GSPOSettings(rollout_engine="vllm"), None,
     "rollout_engine='vllm' cannot run with these settings: the transformers backend trains a 4-bit policy"),
    (ModelSettings(backend="transformers", load_in_4bit=True), GSPOSettings(rollout_engine="vllm", use_vllm=True),
     None, "rollout_engine='vllm' cannot run with these settings"),
    (ModelSettings(backend="auto", lora=LoraSettings(finetune_vision_layers=True)),
     GSPOSettings(rollout_engine="vllm"), "unsloth", "finetune_vision_layers"),
    (ModelSettings(backend="unsloth"), GSPOSettings(rollout_engine="vllm", vllm_enable_sleep_mode=True), None,
     "vllm_standby"),
])
def test_vllm_combinations_that_cannot_work_are_named(model, gspo, backend, match):
    problems = vllm_conflicts(model, gspo, backend)
    assert len(problems) == 1 and match in problems[0], problems


def test_working_vllm_combinations_pass():
    assert vllm_conflicts(ModelSettings(backend="transformers", load_in_4bit=False), GSPOSettings(use_vllm=True)) == []
    assert vllm_conflicts(ModelSettings(backend="unsloth", fast_inference=True), GSPOSettings(use_vllm=True)) == []
    # rollout_engine='vllm' sets use_vllm and fast_inference on the training machine: nothing to pair by hand, and
    # with the backend still 'auto' a 4-bit policy may go to Unsloth, which serves it.
    assert vllm_conflicts(ModelSettings(backend="unsloth"), GSPOSettings(rollout_engine="vllm")) == []
    assert vllm_conflicts(ModelSettings(backend="auto", load_in_4bit=True), GSPOSettings(rollout_engine="vllm")) == []
    assert vllm_conflicts(ModelSettings(backend="unsloth"), GSPOSettings(rollout_engine="generate")) == []
    # settings_conflicts (what a run checks at its start) includes them.
    problems = settings_conflicts(model=ModelSettings(backend="unsloth"), gspo=GSPOSettings(use_vllm=True))
    assert any("fast_inference" in p for p in problems)
    problems = settings_conflicts(model=ModelSettings(backend="transformers"), gspo=GSPOSettings(rollout_engine="vllm"))
    assert any("training_settings.rollout_engine='vllm'" in p for p in problems)


def test_generation_engine_is_checked_when_made():
    with pytest.raises(ValueError, match="engine"):
        GenerationSettings(engine="sglang")
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        GenerationSettings(engine="vllm", vllm_gpu_memory_utilization=0.0)


def test_vllm_sampling_matches_the_transformers_evaluation(tiny_checkpoint):
    """Greedy, the same number of new tokens, the vision tokens biased away; the prompt text is the chat template's
    string that ``model.generate`` is given, with the image beside it."""
    from PIL import Image

    processor = load_processor(tiny_checkpoint)
    greedy = greedy_sampling_params(GenerationSettings(max_new_tokens=7), {5: SUPPRESSED_LOGIT_BIAS})
    assert greedy == {"max_tokens": 7, "skip_special_tokens": True, "logit_bias": {5: -100.0}, "temperature": 0.0}
    sampled = greedy_sampling_params(GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9, seed=3), {})
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"], sampled["logit_bias"]) == (0.7, 0.9, 3, None)
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many bars?"}]}]
    image = Image.new("L", (32, 32))
    [item] = vllm_prompts(processor, [prompt], [image])
    assert item["prompt"] == processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert "<|image_pad|>" in item["prompt"] and item["multi_modal_data"]["image"].mode == "RGB"
    with pytest.raises(ValueError, match="1 prompts but 2 images"):
        vllm_prompts(processor, [prompt], [image, image])


def test_a_16bit_base_is_served_as_stored_and_an_adapter_is_merged_first(tiny_checkpoint, tmp_path):
    assert not needs_serving_copy(tiny_checkpoint, None)
    assert serving_checkpoint(tiny_checkpoint, None, tmp_path) == tiny_checkpoint
    assert needs_serving_copy(tiny_checkpoint, tmp_path / "adapter")


def _first_failure(profile, data_dir, asset: str) -> tuple[str, str]:
    """Materialize the data, the base model and ``asset`` with ``profile``; the first failed step and its error."""
    from vlmrl_pipeline.definitions import all_assets, all_checks
    from vlmrl_pipeline.resources import resources_for_profile

    result = materialize([*all_assets, *all_checks],
                         selection=["mathvista_filtered", "resized_images", "base_model", asset],
                         resources=resources_for_profile(profile, str(data_dir)), instance=DagsterInstance.ephemeral(),
                         raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_key, failure.event_specific_data.error.to_string()


@pytest.mark.slow
def test_evaluation_with_vllm_on_a_cpu_machine_fails_at_once_naming_the_setting(tmp_path):
    """No CUDA here: baseline_completions with engine='vllm' fails before loading a model, naming the setting."""
    profile = tiny_profile()
    profile = dataclasses.replace(profile, generation=dataclasses.replace(profile.generation, engine="vllm"))
    step, message = _first_failure(profile, tmp_path, "baseline_completions")
    assert step == "baseline_completions"
    assert "eval_settings.engine='vllm'" in message
    assert not (tmp_path / "baseline_completions" / "completions.parquet").exists()


@pytest.mark.slow
def test_training_with_vllm_rollouts_on_a_cpu_machine_is_refused_before_launch(tmp_path):
    profile = tiny_profile()
    profile = dataclasses.replace(profile, gspo=dataclasses.replace(profile.gspo, use_vllm=True))
    step, message = _first_failure(profile, tmp_path, "lora_adapter")
    assert step == "lora_adapter"
    assert "training_settings.use_vllm=True needs a CUDA GPU" in message
    assert not (tmp_path / "lora_adapter_checkpoints").exists() or not any(
        (tmp_path / "lora_adapter_checkpoints").rglob("checkpoint-*"))


def _vllm_can_run_here() -> bool:
    import torch

    return torch.cuda.is_available() and vllm_available()


def _rollout_profile(rollout_engine: str):
    """The tiny profile trimmed to one optimizer step: these runs are about what is decided before training."""
    from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings

    profile = tiny_profile()
    return dataclasses.replace(
        profile, warm_start=WarmStartSettings(steps=2, batch_size=2),
        model=dataclasses.replace(profile.model, tiny_model=dataclasses.replace(profile.model.tiny_model,
                                                                                tokenizer="trained")),
        gspo=dataclasses.replace(profile.gspo, rollout_engine=rollout_engine, max_steps=1, save_steps=0,
                                 max_completion_length=16))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Data, manifest and the demo base model, materialized once for the rollout-engine runs below."""
    from vlmrl_pipeline.definitions import all_assets
    from vlmrl_pipeline.resources import resources_for_profile

    data = tmp_path_factory.mktemp("rollout") / "data"
    result = materialize([a for a in all_assets if a.key.to_user_string() in ("mathvista_filtered", "resized_images",
                                                                              "base_model")],
                         resources=resources_for_profile(_rollout_profile("auto"), str(data)),
                         instance=DagsterInstance.ephemeral())
    assert result.success
    return data


def _materialize_lora_adapter(profile, upstream, data):
    """``lora_adapter`` alone (its check left out) on a copy of ``upstream``; the result and the run log."""
    from vlmrl_pipeline.definitions import all_assets
    from vlmrl_pipeline.resources import resources_for_profile

    shutil.copytree(upstream, data)
    instance = DagsterInstance.ephemeral()
    result = materialize([a for a in all_assets if a.key.to_user_string() == "lora_adapter"],
                         resources=resources_for_profile(profile, str(data)), instance=instance, raise_on_error=False)
    return result, [e.user_message for e in instance.all_logs(result.run_id)]


@pytest.mark.slow
@pytest.mark.skipif(_vllm_can_run_here(), reason="auto picks vLLM on a machine with CUDA and vLLM")
def test_auto_rollouts_go_through_generate_on_a_cpu_machine_and_say_why(upstream, tmp_path):
    result, messages = _materialize_lora_adapter(_rollout_profile("auto"), upstream, tmp_path / "data")
    assert result.success
    [event] = result.asset_materializations_for_node("lora_adapter")
    meta = {key: value.value for key, value in event.metadata.items()}
    assert (meta["rollout_engine"], meta["rollout_engine_setting"]) == ("model.generate", "auto")
    reason = meta["rollout_engine_reason"]
    assert reason.startswith("rollout_engine=auto: ") and "through model.generate" in reason
    assert reason in messages  # the run log says it too
    log = json.loads((tmp_path / "data" / "lora_adapter" / "training_log.json").read_text())
    assert log["rollout_engine"] == {"engine": "model.generate", "setting": "auto", "reason": reason}
    assert log["settings"]["use_vllm"] is False and log["settings"]["rollout_engine"] == "auto"


@pytest.mark.slow
@pytest.mark.skipif(_vllm_can_run_here(), reason="vLLM can run on this machine")
def test_rollout_engine_vllm_where_it_cannot_run_is_refused_before_launch(upstream, tmp_path):
    result, messages = _materialize_lora_adapter(_rollout_profile("vllm"), upstream, tmp_path / "data")
    assert not result.success
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    while error.cause is not None and "rollout_engine" not in error.message:
        error = error.cause
    assert error.message.startswith("ValueError: training_settings.rollout_engine='vllm' cannot run here: ")
    assert "rollout_engine='auto'" in error.message  # what to do instead
    assert not any(m.startswith("launching ") for m in messages)  # no training process was started
    assert not (tmp_path / "data" / "lora_adapter_checkpoints").exists()  # nor a checkpoint folder made
    assert not (tmp_path / "data" / "lora_adapter").exists()


def test_geo3k_uses_rlinf_truncated_importance_sampling_and_reward_values():
    gspo = geo3k_profile().gspo
    assert gspo.vllm_importance_sampling_correction
    assert (gspo.vllm_importance_sampling_mode, gspo.vllm_importance_sampling_clip_max) == ("token_truncate", 2.0)
    assert (gspo.reward_max_val, gspo.reward_min_val) == (1.0, 0.0)


def test_boxed_reward_values_are_configurable_and_keep_the_reward_name():
    valued = boxed_reward_valued(2.0, -0.5)
    assert valued.__name__ == "boxed_reward"
    completions = ["\\boxed{3}", "\\boxed{4}", "no box"]
    assert valued(completions, answer="3") == [2.0, -0.5, -0.5]
    assert boxed_reward_valued() is boxed_reward


def test_rollout_mismatch_and_entropy_are_summarized_and_plotted():
    history = [
        {"step": 1, "reward": 0.1, "entropy": 3.0, "sampling/sampling_logp_difference/mean": 0.02,
         "sampling/sampling_logp_difference/max": 0.5, "sampling/importance_sampling_ratio/mean": 1.01},
        {"step": 2, "reward": 0.3, "entropy": 2.0, "sampling/sampling_logp_difference/mean": 0.04,
         "sampling/sampling_logp_difference/max": 0.7, "sampling/importance_sampling_ratio/mean": 0.99},
    ]
    summary = rollout_summary(history)
    assert summary["logp_difference_mean/mean"] == pytest.approx(0.03)
    assert summary["logp_difference_max/last"] == 0.7
    assert summary["importance_sampling_ratio_mean/first"] == 1.01
    assert summary["entropy/last"] == 2.0
    assert rollout_summary([{"step": 1, "reward": 0.0}]) == {}
    with_panels = training_curves_png(history)
    without = training_curves_png([{k: v for k, v in h.items() if k in ("step", "reward")} for h in history])
    assert with_panels.startswith(b"\x89PNG") and len(with_panels) > len(without)
