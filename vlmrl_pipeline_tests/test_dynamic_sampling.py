"""Dynamic sampling (``core.training.dynamic_sampling``) on TRL's GRPOTrainer with ``model.generate`` rollouts: zero-spread
groups are dropped and replaced by drawn prompts, the bound stops and says so, a resumed run draws the same prompts,
and the counts land in the trainer's metrics."""

from __future__ import annotations

import datasets
import pytest
import torch
from PIL import Image

from vlmrl_pipeline.core.model.loading import LoraSettings, load_model, peft_lora_config
from vlmrl_pipeline.core.profiles import PROFILES
from vlmrl_pipeline.core.training.dynamic_sampling import (
    DYNAMIC_SAMPLING_METRICS,
    join_groups,
    replacement_prompt_indices,
    zero_spread_groups,
)
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings, build_grpo_config
from vlmrl_pipeline.core.training.trainer import train_gspo

ANSWERS = ["3", "5", "7", "9"]
FLAT_ANSWER = "3"
"""The row whose every completion earns the same reward (see :func:`flat_for_one_row_reward`)."""


def _dataset():
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the value?"}]}]
    colours = ("red", "blue", "green", "white")
    return datasets.Dataset.from_dict(
        {"prompt": [prompt] * 4, "image": [Image.new("RGB", (64, 64), c) for c in colours], "answer": ANSWERS}
    ).cast_column("image", datasets.Image())


class RecordingReward:
    """A reward that differs between sampled completions (a checksum of the text) except on the row answered
    ``FLAT_ANSWER`` (always 1.0), and records the answers of each batch it scores. ``flat_everywhere``: 1.0 on
    every row, so no group ever has spread."""

    def __init__(self, flat_everywhere: bool = False):
        self.__name__ = "flat_for_one_row_reward"
        self.flat_everywhere = flat_everywhere
        self.batches: list[list[str]] = []

    def __call__(self, completions, answer, **kwargs):
        self.batches.append(list(answer))
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [
            1.0 if self.flat_everywhere or a == FLAT_ANSWER else float(sum(map(ord, t)) % 97)
            for t, a in zip(texts, answer)
        ]


def _settings(**changes) -> GSPOSettings:
    return GSPOSettings(
        **{
            **dict(
                learning_rate=5e-3,
                optim="adamw_torch",
                per_device_train_batch_size=4,
                gradient_accumulation_steps=1,
                num_generations=2,
                max_completion_length=8,
                max_steps=4,
                logging_steps=1,
                max_grad_norm=1.0,
                save_steps=0,
                report_to="none",
                dynamic_sampling=True,
                dynamic_sampling_max_rounds=4,
            ),
            **changes,
        }
    )


def _train(tiny_checkpoint, out, settings, reward, **kwargs):
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    lines: list[str] = []
    _, result = train_gspo(
        model,
        processor,
        _dataset(),
        settings,
        out,
        (reward,),
        (1.0,),
        peft_config=peft_lora_config(LoraSettings(r=4, lora_alpha=8)),
        log=lines.append,
        **kwargs,
    )
    return result, lines


def _steps(result) -> list[dict]:
    return [h for h in result.log_history if "reward" in h]


def test_zero_spread_groups_and_the_drawn_rows():
    assert zero_spread_groups([2.0, 2.0, 2.0, 0.0, 2.0, 2.0], 3) == [True, False]
    assert zero_spread_groups([0.5, 0.5 + 1e-3], 2) == [False]
    with pytest.raises(ValueError, match="groups of 4"):
        zero_spread_groups([1.0, 2.0], 4)
    drawn = replacement_prompt_indices(7, 12, 2, 466, 8)
    assert len(set(drawn)) == 8 and all(0 <= i < 466 for i in drawn)
    assert drawn == replacement_prompt_indices(7, 12, 2, 466, 8)
    assert drawn != replacement_prompt_indices(7, 12, 3, 466, 8)  # another round draws other rows
    assert drawn != replacement_prompt_indices(8, 12, 2, 466, 8)  # another seed too
    assert len(replacement_prompt_indices(0, 1, 1, 2, 5)) == 5  # more groups missing than rows: repeats


def test_settings_are_checked_and_the_seed_profiles_keep_it_off():
    with pytest.raises(ValueError, match="dynamic_sampling_max_rounds must be >= 1"):
        GSPOSettings(dynamic_sampling=True, dynamic_sampling_max_rounds=0)
    for processes in (0, 2):
        with pytest.raises(ValueError, match="dynamic_sampling runs on one training process"):
            GSPOSettings(dynamic_sampling=True, num_processes=processes)
    for name, make in PROFILES.items():
        assert make().gspo.dynamic_sampling == (name == "qwen3vl-8b-dapo"), name
    dapo, seed = PROFILES["qwen3vl-8b-dapo"](), PROFILES["qwen3vl-8b"]()
    assert dapo.data == seed.data and dapo.model == seed.model
    from dataclasses import replace

    assert replace(dapo.gspo, dynamic_sampling=False) == seed.gspo


def test_dynamic_sampling_fields_stay_out_of_trls_config(tiny_checkpoint, tmp_path):
    _, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    config = build_grpo_config(_settings(), tmp_path, processor, (1.0,))
    assert not hasattr(config, "dynamic_sampling") and not hasattr(config, "dynamic_sampling_max_rounds")


def _output(prompt_widths, completion_widths, pad=0, offset=0):
    """A fake ``_generate_and_score_completions`` output: row i's prompt is i+offset repeated (left-padded), its
    completion 100+i+offset (right-padded), one image of 2x2 patches per row whose pixel rows carry i+offset."""
    n = len(prompt_widths)
    width_p, width_c = max(prompt_widths), max(completion_widths)
    prompt_ids = torch.full((n, width_p), pad)
    completion_ids = torch.full((n, width_c), pad)
    prompt_mask = torch.zeros((n, width_p), dtype=torch.long)
    completion_mask = torch.zeros((n, width_c), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_widths, completion_widths)):
        prompt_ids[i, width_p - p :] = i + offset
        prompt_mask[i, width_p - p :] = 1
        completion_ids[i, :c] = 100 + i + offset
        completion_mask[i, :c] = 1
    mm = torch.cat([prompt_mask * 7, torch.zeros_like(completion_mask)], dim=1)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.arange(n, dtype=torch.float) + offset,
        "num_items_in_batch": completion_mask.sum(),
        "old_per_token_logps": completion_mask.float() * -1.0,
        "importance_sampling_ratio": torch.ones((n, 1)),
        "mm_token_type_ids": mm,
        "pixel_values": torch.cat([torch.full((4, 3), float(i + offset)) for i in range(n)]),
        "image_grid_thw": torch.tensor([[1, 2, 2]] * n),
        "num_images": [1] * n,
        "ref_per_token_logps": None,
    }


def test_join_groups_repads_rows_and_keeps_their_pixels():
    first = _output([3, 1, 2, 2], [2, 2, 1, 1])
    second = _output([5, 4], [3, 1], offset=10)
    joined = join_groups([(first, 1), (second, 0)], 2, pad_token_id=0)
    assert joined["prompt_ids"].shape == (4, 5) and joined["completion_ids"].shape == (4, 3)
    assert joined["prompt_ids"][0].tolist() == [0, 0, 0, 2, 2] and joined["prompt_ids"][2].tolist() == [10] * 5
    assert joined["prompt_mask"].sum(1).tolist() == [2, 2, 5, 4]
    assert joined["completion_ids"][0].tolist() == [102, 0, 0] and joined["completion_ids"][2].tolist() == [110] * 3
    assert joined["completion_mask"].sum(1).tolist() == [1, 1, 3, 1]
    assert joined["advantages"].tolist() == [2.0, 3.0, 10.0, 11.0]
    assert joined["num_items_in_batch"].item() == 6
    assert joined["old_per_token_logps"].shape == (4, 3) and joined["importance_sampling_ratio"].shape == (4, 1)
    # Prompt then completion: each part padded on its own side, so the image-token marks stay over the prompt.
    mm = joined["mm_token_type_ids"]
    assert mm.shape == (4, 8) and torch.equal(mm[:, :5], joined["prompt_mask"] * 7) and mm[:, 5:].sum() == 0
    assert joined["pixel_values"].shape == (16, 3)
    assert joined["pixel_values"][::4, 0].tolist() == [2.0, 3.0, 10.0, 11.0]
    assert joined["image_grid_thw"].shape == (4, 3) and joined["num_images"] == [1] * 4
    assert joined["ref_per_token_logps"] is None
    with pytest.raises(ValueError, match="'odd'"):
        join_groups([({**first, "odd": torch.zeros(3)}, 0)], 2, pad_token_id=0)


def test_a_group_with_equal_rewards_is_dropped_and_replaced(tiny_checkpoint, tmp_path):
    """The row answered 3 always earns 1.0: its group is dropped, the drawn rows are generated and scored next, and
    every group trained has spread (TRL's frac_reward_zero_std, here of the trained groups, is 0)."""
    reward = RecordingReward()
    result, lines = _train(tiny_checkpoint, tmp_path / "out", _settings(), reward)
    assert result.global_step == 4
    steps = _steps(result)
    assert len(steps) == 4 and all(key in steps[0] for key in DYNAMIC_SAMPLING_METRICS)
    dropped = [h["dynamic_sampling/groups_dropped"] for h in steps]
    assert sum(dropped) >= 1 and result.dynamic_sampling_draws
    assert all(h["frac_reward_zero_std"] == 0.0 for h in steps)
    assert all(h["dynamic_sampling/groups_kept"] == 2.0 and h["dynamic_sampling/groups_padded"] == 0 for h in steps)
    # Each step's first batch holds the flat row exactly when something was dropped.
    assert sum(h["dynamic_sampling/extra_rollouts"] for h in steps) == 2 * sum(
        len(d["rows"]) for d in result.dynamic_sampling_draws
    )
    assert any(h["dynamic_sampling/frac_reward_zero_std_sampled"] > 0 for h in steps)
    # Every extra round is the next batch the reward scored: the drawn rows, each repeated num_generations times.
    answers = list(_dataset()["answer"])
    position = 0
    for draw in result.dynamic_sampling_draws:
        expected = [answers[i] for i in draw["rows"] for _ in range(2)]
        position = reward.batches.index(expected, position)
        assert FLAT_ANSWER in reward.batches[position - 1]  # the batch before it lost the flat row's group
    assert not any("dynamic sampling, step" in line for line in lines)


def test_the_bound_stops_extra_rounds_says_so_and_training_continues(tiny_checkpoint, tmp_path):
    reward = RecordingReward(flat_everywhere=True)
    result, lines = _train(
        tiny_checkpoint, tmp_path / "out", _settings(max_steps=2, dynamic_sampling_max_rounds=2), reward
    )
    assert result.global_step == 2
    for h in _steps(result):
        assert h["dynamic_sampling/extra_rounds"] == 2.0
        assert h["dynamic_sampling/groups_kept"] == 0.0 and h["dynamic_sampling/groups_padded"] == 2.0
        assert h["frac_reward_zero_std"] == 1.0
    # Per step: the batch's 2 groups, then round 1 draws 2 groups and round 2 draws 2 more.
    assert len(reward.batches) == 2 * 3 and [len(b) for b in reward.batches] == [4] * 6
    shortfalls = [line for line in lines if "dynamic sampling, step" in line]
    assert len(shortfalls) == 2 and "0 of 2 groups had differing rewards after 2 extra rounds" in shortfalls[0]
    assert "dynamic_sampling_max_rounds=2" in shortfalls[0]


def test_a_resumed_run_draws_the_prompts_the_uninterrupted_one_drew(tiny_checkpoint, tmp_path):
    """Killed after step 1 and resumed from its checkpoint, the run scores the same batches and draws the same
    replacement rows for steps 2-4 as the run that was never stopped.

    The checkpoint is mid-epoch (4 rows, 2 a step): resumed at an epoch boundary, TRL's ``RepeatSampler`` starts a
    fresh generator and replays the first epoch's order, so the step's base prompts (not the drawn ones) would
    differ; that is TRL's resume, with or without dynamic sampling."""
    settings = _settings(max_steps=4, save_steps=1, save_total_limit=4)
    whole_reward, resumed_reward = RecordingReward(), RecordingReward()
    whole, _ = _train(tiny_checkpoint, tmp_path / "whole", settings, whole_reward)
    resumed, _ = _train(
        tiny_checkpoint,
        tmp_path / "resumed",
        settings,
        resumed_reward,
        resume_from_checkpoint=tmp_path / "whole" / "checkpoint-1",
    )
    assert resumed.resumed_from_step == 1 and resumed.global_step == 4
    after = [d for d in whole.dynamic_sampling_draws if d["step"] > 1]
    assert after  # the flat row comes up in every two steps
    assert resumed.dynamic_sampling_draws == after
    # Step 1 scored one batch plus one per extra round; the resumed run scored exactly what followed.
    step_1_batches = 1 + sum(1 for d in whole.dynamic_sampling_draws if d["step"] == 1)
    assert resumed_reward.batches == whole_reward.batches[step_1_batches:]
