"""GSPO through TRL's GRPOTrainer on the tiny model: real training steps, the config it builds, NaN handling."""

from __future__ import annotations

import json
import math
import re

import datasets
import pytest
from PIL import Image

from vlmrl_pipeline.core.export.merge import inspect_lora_adapter
from vlmrl_pipeline.core.model.loading import LoraSettings, load_model, peft_lora_config, vision_token_ids
from vlmrl_pipeline.core.profiles import qwen3vl_8b_profile
from vlmrl_pipeline.core.rewards import REWARD_FUNCTIONS, REWARD_WEIGHTS
from vlmrl_pipeline.core.training.checkpoints import checkpoint_problem, latest_checkpoint, resume_candidates
from vlmrl_pipeline.core.training.gspo_config import (
    GSPOSettings,
    build_grpo_config,
    paper_gspo_settings,
    report_to_problems,
    resolve_optim,
)
from vlmrl_pipeline.core.training.job import describe_failure
from vlmrl_pipeline.core.training.trainer import (
    NonFiniteLossError,
    TrainingOutOfMemoryError,
    _progress_callback,
    explain_out_of_memory,
    is_out_of_memory,
    train_gspo,
)


def _dataset(n=4):
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the value?"}]}]
    return datasets.Dataset.from_dict(
        {"prompt": [prompt] * n, "image": [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green", "white")][:n],
         "answer": ["3", "5", "7", "9"][:n]}
    ).cast_column("image", datasets.Image())


def test_grpo_config_is_gspo_with_the_seed_rewards_and_suppressed_vision_tokens(tiny_checkpoint, tmp_path):
    _, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    config = build_grpo_config(qwen3vl_8b_profile().gspo, tmp_path, processor, REWARD_WEIGHTS)
    assert config.importance_sampling_level == "sequence"
    assert config.reward_weights == [0.3, 1.0]
    assert config.loss_type == "dr_grpo"
    assert (config.learning_rate, config.num_generations, config.max_completion_length) == (5e-6, 4, 1024)
    assert config.generation_kwargs["suppress_tokens"] == vision_token_ids(processor)
    # adamw_8bit needs CUDA + bitsandbytes: on this CPU machine the equivalent full-precision AdamW is used.
    assert config.optim == resolve_optim("adamw_8bit") == "adamw_torch"


def test_gspo_trains_the_adapter_and_logs_rewards(tiny_checkpoint, tmp_path):
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    settings = GSPOSettings(learning_rate=5e-3, optim="adamw_torch", per_device_train_batch_size=4,
                            gradient_accumulation_steps=1, num_generations=2, max_completion_length=8, max_steps=3,
                            logging_steps=1, max_grad_norm=1.0)
    lines = []
    trained, result = train_gspo(model, processor, _dataset(), settings, tmp_path / "out", REWARD_FUNCTIONS,
                                 REWARD_WEIGHTS, peft_config=peft_lora_config(LoraSettings(r=4, lora_alpha=8)),
                                 log=lines.append)
    assert result.global_step == 3
    logged = [h for h in result.log_history if "reward" in h]
    assert len(logged) == 3
    for key in ("rewards/formatting_reward/mean", "rewards/correctness_reward/mean", "completions/mean_length"):
        assert key in logged[0]
    assert any("GSPO step 3/3" in line for line in lines)
    # report_to's default: the same metrics as TensorBoard events under the trainer's output dir, one per step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run] = (tmp_path / "out" / "runs").iterdir()
    events = EventAccumulator(str(run))
    events.Reload()
    rewards = events.Scalars("train/reward")
    assert [e.step for e in rewards] == [1, 2, 3]
    assert [e.value for e in rewards] == pytest.approx([h["reward"] for h in logged], rel=1e-5)
    trained.save_pretrained(tmp_path / "adapter")
    stats = inspect_lora_adapter(tmp_path / "adapter")
    assert stats["all_finite"]
    assert stats["num_lora_b"] > 0


def test_non_finite_loss_stops_training_naming_the_step():
    callback = _progress_callback(None)
    state = type("State", (), {"global_step": 17, "max_steps": 100})()
    with pytest.raises(NonFiniteLossError, match="step 17"):
        callback.on_log(None, state, None, logs={"loss": math.nan})
    callback.on_log(None, state, None, logs={"loss": 0.5})  # a finite loss passes


def _small(**changes) -> GSPOSettings:
    return GSPOSettings(**{**dict(learning_rate=5e-3, optim="adamw_torch", per_device_train_batch_size=4,
                                  gradient_accumulation_steps=1, num_generations=2, max_completion_length=8,
                                  max_steps=3, logging_steps=1, max_grad_norm=1.0), **changes})


def test_a_non_finite_loss_in_training_stops_at_its_step(tiny_checkpoint, tmp_path):
    """From step 2 on, the training forward pass (the one with gradients; rollouts run without) overflows to NaN,
    as a bf16/fp16 overflow would. Training stops at step 2, naming it, before that step's update is applied: the
    adapter's weights are still finite. (A NaN reward cannot do this: TRL zeroes NaN advantages.)"""
    import torch
    from transformers import TrainerCallback

    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    armed = {"on": False}

    def overflow(module, args, output):
        if armed["on"] and torch.is_grad_enabled():
            return output * math.nan if torch.is_tensor(output) else (output[0] * math.nan, *output[1:])
        return None

    model.model.language_model.layers[0].register_forward_hook(overflow)

    class FromStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            armed["on"] = state.global_step >= 1

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 2/3.*before that step's update"):
        train_gspo(model, processor, _dataset(), _small(), tmp_path, (length_reward,), (1.0,),
                   peft_config=peft_lora_config(LoraSettings(r=4, lora_alpha=8)), callbacks=[FromStep2()])
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(torch.isfinite(p).all() for p in lora)
    assert build_grpo_config(_small(), tmp_path, processor, (1.0,)).logging_nan_inf_filter is False


def test_out_of_memory_says_what_to_lower(tiny_checkpoint, tmp_path):
    """An out-of-memory error raised inside a real training step (injected: a CPU cannot run out of GPU memory)
    comes back naming the step, the settings to lower with their values, and what to enable."""
    import torch
    from transformers import TrainerCallback

    class OutOfMemoryAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    settings = _small(gradient_checkpointing=False)
    with pytest.raises(TrainingOutOfMemoryError) as info:
        with explain_out_of_memory(settings, step=lambda: 2, max_seq_length=1024, load_in_4bit=False):
            train_gspo(model, processor, _dataset(), settings, tmp_path, REWARD_FUNCTIONS, REWARD_WEIGHTS,
                       peft_config=peft_lora_config(LoraSettings(r=4, lora_alpha=8)),
                       callbacks=[OutOfMemoryAtStep2()])
    message = str(info.value)
    for expected in ("at step 2", "per_device_train_batch_size (now 4", "num_generations (now 2)",
                     "max_completion_length (now 8)", "max_seq_length (now 1024", "load_in_4bit",
                     "gradient_checkpointing", "Tried to allocate 2.00 GiB"):
        assert expected in message, expected
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory")) and not is_out_of_memory(ValueError("x"))
    with pytest.raises(ValueError):  # anything else passes through untouched
        with explain_out_of_memory(settings):
            raise ValueError("not memory")


def test_checkpoints_are_written_and_a_half_written_one_is_skipped(tiny_checkpoint, tmp_path):
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    _, result = train_gspo(model, processor, _dataset(), _small(max_steps=2, save_steps=1, save_total_limit=2),
                           tmp_path, REWARD_FUNCTIONS, REWARD_WEIGHTS,
                           peft_config=peft_lora_config(LoraSettings(r=4, lora_alpha=8)))
    assert result.resumed_from_step == 0 and result.steps_run == 2 and result.optimizer_state_step == 2
    assert latest_checkpoint(tmp_path) == (tmp_path / "checkpoint-2", 2)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"):
        assert (tmp_path / "checkpoint-2" / name).exists(), name
    # killed while writing checkpoint-2's trainer state (the file the trainer writes last)
    state = tmp_path / "checkpoint-2" / "trainer_state.json"
    state.write_text(state.read_text()[:40])
    assert latest_checkpoint(tmp_path) == (tmp_path / "checkpoint-1", 1)


def _truncate(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def _overwrite_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(min(4096, len(data) - middle))  # same size, zeros in the middle
    path.write_bytes(bytes(data))


# Each damage a disk, a full volume or an interrupted copy leaves, with the part of the reason that names it.
DAMAGES = {
    "adapter truncated to half": ("adapter_model.safetensors", lambda p: _truncate(p, 0.5),
                                  "adapter_model.safetensors is .* bytes but its header describes"),
    "adapter header cut": ("adapter_model.safetensors", lambda p: _truncate(p, 0.001),
                           "adapter_model.safetensors"),
    "optimizer emptied": ("optimizer.pt", lambda p: _truncate(p, 0), "optimizer.pt cannot be loaded"),
    "optimizer overwritten in the middle": ("optimizer.pt", _overwrite_middle, "optimizer.pt"),
    "scheduler truncated": ("scheduler.pt", lambda p: _truncate(p, 0.5), "scheduler.pt cannot be loaded"),
    "rng state emptied": ("rng_state.pth", lambda p: _truncate(p, 0), "rng_state.pth"),
    "trainer state deleted": ("trainer_state.json", lambda p: p.unlink(), "trainer_state.json is missing"),
}


def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_that_loads(tiny_checkpoint, tmp_path):
    # Before: only file names were checked, so a truncated adapter or an emptied optimizer.pt in the newest
    # checkpoint was resumed, and every later attempt failed in the trainer with EOFError.
    import shutil

    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    trained = tmp_path / "trained"
    train_gspo(model, processor, _dataset(), _small(max_steps=2, save_steps=1, save_total_limit=2), trained,
               REWARD_FUNCTIONS, REWARD_WEIGHTS, peft_config=peft_lora_config(LoraSettings(r=4, lora_alpha=8)))
    assert checkpoint_problem(trained / "checkpoint-1") is None and checkpoint_problem(trained / "checkpoint-2") is None
    for case, (name, damage, reason) in DAMAGES.items():
        work = tmp_path / case.replace(" ", "_")
        shutil.copytree(trained, work)
        damage(work / "checkpoint-2" / name)
        found, skipped = resume_candidates(work)
        assert found == (work / "checkpoint-1", 1), case
        [(folder, problem)] = skipped
        assert folder == work / "checkpoint-2"
        assert re.search(reason, problem), (case, problem)
        # The failure message offers only what will work: resuming from the checkpoint that verifies.
        message = describe_failure(work / "launch" / "job.json", work, "exit code -9")
        assert "resume from step 1" in message and "step 2" not in message, message
    # Nothing that verifies: no resume at all, and every skipped one says why.
    for folder in (work / "checkpoint-1", work / "checkpoint-2"):
        _truncate(folder / "optimizer.pt", 0)
    found, skipped = resume_candidates(work)
    assert found is None and [f.name for f, _ in skipped] == ["checkpoint-2", "checkpoint-1"]


@pytest.mark.parametrize("bad, match", [(dict(distributed="zero3"), "distributed must be one of"),
                                        (dict(num_processes=-1), "num_processes"),
                                        (dict(save_steps=-5), "save_steps"),
                                        (dict(save_total_limit=0), "save_total_limit")])
def test_bad_launch_and_checkpoint_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        GSPOSettings(**bad)


@pytest.mark.parametrize("bad, match", [
    (dict(num_generations=1), r"num_generations must be >= 2, got 1"),
    (dict(per_device_train_batch_size=6, gradient_accumulation_steps=1, num_generations=4),
     r"6 x 1 x 1 = 6 is not divisible by num_generations=4"),
    (dict(per_device_train_batch_size=3, num_generations=4, num_processes=2, gradient_accumulation_steps=1),
     r"3 x 2 x 1 = 6 is not divisible"),
    (dict(per_device_train_batch_size=0), "per_device_train_batch_size must be >= 1"),
    (dict(max_completion_length=0), "max_completion_length must be >= 1"),
    (dict(learning_rate=0.0), "learning_rate must be a positive number"),
    (dict(learning_rate=float("nan")), "learning_rate must be a positive number"),
    (dict(max_steps=0), "max_steps must be positive, or -1"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(importance_sampling_level="sentence"), "importance_sampling_level must be"),
    (dict(steps_per_generation=0), "steps_per_generation must be >= 1"),
    (dict(report_to="tensorbord"), "report_to must be 'none' or a comma-separated list of"),
    (dict(report_to="none,wandb"), "report_to must be 'none' or"),
])
def test_gspo_settings_that_cannot_train_are_refused_when_made(bad, match):
    # Made at the start of a run (execution.settings_problems), not minutes in, inside TRL.
    with pytest.raises(ValueError, match=match):
        GSPOSettings(**bad)


def test_a_generation_batch_is_checked_with_the_resolved_process_count():
    settings = GSPOSettings(per_device_train_batch_size=2, num_generations=4, gradient_accumulation_steps=1,
                            num_processes=0)  # 0 = one per GPU: known only on the training machine
    settings.check_generation_batch(2)  # 2 x 2 x 1 = 4
    with pytest.raises(ValueError, match="2 x 3 x 1 = 6 is not divisible by num_generations=4"):
        settings.check_generation_batch(3)


def test_checkpoint_settings_reach_the_trainer(tiny_checkpoint, tmp_path):
    _, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    config = build_grpo_config(_small(save_steps=7, save_total_limit=3), tmp_path, processor, (1.0,))
    assert (config.save_strategy, config.save_steps, config.save_total_limit) == ("steps", 7, 3)
    assert build_grpo_config(_small(save_steps=0), tmp_path, processor, (1.0,)).save_strategy == "no"
    assert not hasattr(config, "distributed")  # launch settings stay out of GRPOConfig


def test_empty_training_set_is_refused(tiny_checkpoint, tmp_path):
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    with pytest.raises(ValueError, match="at least one"):
        train_gspo(model, processor, _dataset().select([]), GSPOSettings(), tmp_path, REWARD_FUNCTIONS, REWARD_WEIGHTS)



def length_reward(completions, **kwargs):
    """A reward that varies within every group (the random tiny model never earns the real ones), so advantages
    are non-zero, the policy moves, and TRL counts clipping (it only counts it where the advantage's sign bites)."""
    return [float(len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


def _clip_fractions(tiny_checkpoint, tmp_path, settings):
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    _, result = train_gspo(model, processor, _dataset(), settings, tmp_path, (length_reward,), (1.0,),
                           peft_config=peft_lora_config(LoraSettings(r=4, lora_alpha=8)))
    return [h["clip_ratio/region_mean"] for h in result.log_history if "clip_ratio/region_mean" in h]


def test_the_paper_preset_reuses_generations_so_the_sequence_ratio_leaves_1(tiny_checkpoint, tmp_path):
    seed = GSPOSettings(learning_rate=2e-2, optim="adamw_torch", per_device_train_batch_size=4,
                        gradient_accumulation_steps=1, num_generations=2, max_completion_length=8, max_steps=4,
                        logging_steps=1, max_grad_norm=1.0, temperature=1.0)
    paper = paper_gspo_settings(seed)
    assert (paper.loss_type, paper.beta, paper.epsilon, paper.epsilon_high) == ("grpo", 0.0, 3e-4, 4e-4)
    assert paper.steps_per_generation == 2 > paper.gradient_accumulation_steps
    assert paper.reuses_generations and not seed.reuses_generations
    # On-policy (the seed's defaults) every sequence ratio is exactly 1: nothing is ever clipped.
    assert _clip_fractions(tiny_checkpoint, tmp_path / "seed", seed) == [0.0] * 4
    # Reusing a generation batch for a second update, after the policy has moved, the ratios leave [1-3e-4, 1+4e-4].
    assert max(_clip_fractions(tiny_checkpoint, tmp_path / "paper", paper)) > 0.0


def test_paper_preset_keeps_the_rest_of_the_base_settings():
    paper = paper_gspo_settings()
    assert paper.steps_per_generation == 2 * GSPOSettings().gradient_accumulation_steps == 8
    assert (paper.learning_rate, paper.optim, paper.importance_sampling_level) == (5e-6, "adamw_8bit", "sequence")


def test_report_targets_reach_the_trainer_and_a_missing_package_is_named(tiny_checkpoint, tmp_path, monkeypatch):
    _, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    assert build_grpo_config(_small(), tmp_path, processor, (1.0,)).report_to == ["tensorboard"]
    assert build_grpo_config(_small(report_to="none"), tmp_path, processor, (1.0,)).report_to == []
    assert report_to_problems(_small()) == []  # tensorboard is a dependency
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    [problem] = report_to_problems(_small(report_to="tensorboard,wandb"))
    assert problem.startswith("training_settings.report_to='tensorboard,wandb': wandb needs the wandb package")


def test_every_step_line_gives_the_share_done_the_time_elapsed_and_left(tiny_checkpoint, tmp_path):
    """Logging every second step: the steps between get a progress line of their own (the first line comes after
    the first step, not the first logging step), the logged ones the same progress before their metrics, and the
    progress file the same numbers."""
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    lines = []
    train_gspo(model, processor, _dataset(), _small(max_steps=4, logging_steps=2), tmp_path / "out",
               REWARD_FUNCTIONS, REWARD_WEIGHTS, peft_config=peft_lora_config(LoraSettings(r=4, lora_alpha=8)),
               log=lines.append, progress_file=tmp_path / "progress.json")
    steps = [line for line in lines if line.startswith("GSPO step")]
    assert [line.split()[2] for line in steps] == ["1/4", "2/4", "3/4", "4/4"]
    assert steps[0].startswith("GSPO step 1/4 (25%), 0:") and " elapsed, ~" in steps[0] and "reward=" not in steps[0]
    assert "(50%)" in steps[1] and "reward=" in steps[1]
    assert steps[-1].split(": ")[0].endswith("~0:00:00 left")
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert (progress["global_step"], progress["percent"], progress["eta_s"]) == (4, 100.0, 0.0)
    assert progress["elapsed_s"] > 0
