"""Dynamic sampling (DAPO's; verl's ``filter_groups``): train only on groups whose rewards differ.

A GSPO/GRPO group whose completions all earn the same reward has zero advantage everywhere: it costs a rollout
and teaches nothing. With ``training_settings.dynamic_sampling`` each generation batch drops those groups and fills
their places with groups of newly drawn training prompts, at most ``dynamic_sampling_max_rounds`` extra rounds of
rollouts per generation. A batch still short after the last round trains on the groups it found plus enough of the
dropped ones to keep its shape (they carry zero advantage, so they add no gradient), and the run log says so.

It is a hook on TRL's ``GRPOTrainer``, not a copy of its loop: :func:`dynamic_sampling_trainer_class` overrides
``_generate_and_score_completions`` (TRL's step that generates, scores and computes advantages for one generation
batch), calls TRL's own for the batch and for each extra round, and joins the kept groups into one batch of the
size TRL expects. TRL's ``_prepare_inputs`` then shuffles and buffers it over ``steps_per_generation`` micro-steps
as usual.

Which prompts an extra round draws is a function of the seed, the optimizer step and the round
(:func:`replacement_prompt_indices`), not of any state kept in memory, so a run resumed from a checkpoint draws
exactly the prompts the uninterrupted run would have. One training process only: TRL gathers the rewards of every
process, and the processes would have to agree on every round; ``num_processes > 1`` is refused.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

METRIC_PREFIX = "dynamic_sampling/"
DYNAMIC_SAMPLING_METRICS = (
    "dynamic_sampling/groups_kept",
    "dynamic_sampling/groups_dropped",
    "dynamic_sampling/groups_padded",
    "dynamic_sampling/extra_rounds",
    "dynamic_sampling/extra_rollouts",
    "dynamic_sampling/frac_reward_zero_std_sampled",
)
"""Logged per generation (averaged over each logging window like TRL's own metrics): groups trained that had
differing rewards, zero-spread groups dropped, zero-spread groups trained anyway to fill a batch the bound left
short, extra rollout rounds, extra completions generated, and the zero-spread share of all groups sampled (TRL's
``frac_reward_zero_std`` then reports the share among the groups trained)."""

_LEFT_PADDED = {"prompt_ids", "prompt_mask"}
_PROMPT_THEN_COMPLETION = {"token_type_ids", "mm_token_type_ids"}
"""TRL's per-token type ids span prompt (left-padded) then completion (right-padded)."""


def zero_spread_groups(rewards: Sequence[float], num_generations: int) -> list[bool]:
    """For each group of ``num_generations`` consecutive rewards, whether it has nothing to teach: its scored
    (non-NaN) rewards have zero spread (TRL's ``frac_reward_zero_std`` test: std within 1e-8 of 0), or fewer than two
    of them were scored (TRL zeroes an unscorable completion's advantage).

    >>> zero_spread_groups([1.0, 1.0, 0.0, 2.0, 3.0, float("nan")], 2)
    [True, False, True]
    """
    if len(rewards) % num_generations:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {num_generations}")
    flags = []
    for start in range(0, len(rewards), num_generations):
        scored = [float(r) for r in rewards[start : start + num_generations] if not math.isnan(float(r))]
        if len(scored) < 2:
            flags.append(True)
            continue
        mean = sum(scored) / len(scored)
        std = math.sqrt(sum((r - mean) ** 2 for r in scored) / (len(scored) - 1))
        flags.append(std <= 1e-8)
    return flags


def replacement_prompt_indices(seed: int, step: int, round_index: int, dataset_size: int, count: int) -> list[int]:
    """The training rows extra round ``round_index`` of optimizer step ``step`` draws: ``count`` distinct rows
    (repeats only when ``count`` exceeds the data set), a function of its arguments alone, so a resumed run draws
    what the uninterrupted one would have.

    >>> replacement_prompt_indices(3407, 5, 1, 100, 3) == replacement_prompt_indices(3407, 5, 1, 100, 3)
    True
    >>> replacement_prompt_indices(3407, 5, 1, 100, 3) != replacement_prompt_indices(3407, 6, 1, 100, 3)
    True
    >>> sorted(replacement_prompt_indices(0, 0, 1, 3, 3))
    [0, 1, 2]
    """
    if dataset_size < 1 or count < 0:
        raise ValueError(f"cannot draw {count} prompts from {dataset_size} rows")
    rng = random.Random(f"dynamic-sampling:{seed}:{step}:{round_index}")
    if count <= dataset_size:
        return rng.sample(range(dataset_size), count)
    return [rng.randrange(dataset_size) for _ in range(count)]


def _pad_width(tensor, width: int, value, left: bool):
    import torch

    missing = width - tensor.size(1)
    if missing <= 0:
        return tensor
    filler = torch.full((tensor.size(0), missing, *tensor.shape[2:]), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([filler, tensor] if left else [tensor, filler], dim=1)


def join_groups(parts: Sequence[tuple[dict[str, Any], int]], num_generations: int, pad_token_id: int) -> dict[str, Any]:
    """One generation batch from groups of several of TRL's ``_generate_and_score_completions`` outputs: each part
    is ``(output, group index)``; rows keep their order, prompts are re-padded on the left and completions (and
    their log-probabilities, masks, ratios) on the right to the widest, pixel values follow their rows, and
    ``num_items_in_batch`` is recounted. A field it does not know how to join is an error naming it."""
    import torch
    from trl.trainer.utils import split_pixel_values_by_grid

    if not parts:
        raise ValueError("no groups to join")
    split_cache: dict[int, dict[str, Any]] = {}

    def per_sample(output):
        if id(output) not in split_cache:
            split_cache[id(output)] = split_pixel_values_by_grid(output)
        return split_cache[id(output)]

    first = parts[0][0]
    joined: dict[str, Any] = {}
    for key, template in first.items():
        if template is None:
            joined[key] = None
            continue
        if key == "num_items_in_batch":
            continue
        pieces = []
        for output, group in parts:
            rows = slice(group * num_generations, (group + 1) * num_generations)
            value = per_sample(output)[key]
            size = len(output["prompt_ids"])
            if isinstance(value, list) and len(value) == size:
                pieces.append(value[rows])
            elif isinstance(value, torch.Tensor) and value.ndim >= 1 and value.size(0) == size:
                prompt_width = output["prompt_ids"].size(1)
                pieces.append((value[rows], prompt_width))
            else:
                raise ValueError(
                    f"dynamic sampling cannot join the generation field {key!r} (not one entry per "
                    "completion); turn training_settings.dynamic_sampling off for this model"
                )
        if isinstance(pieces[0], list):
            rows_list = [item for piece in pieces for item in piece]
            # Fields TRL keeps as one tensor (pixel values, image grids) were split per row only to select rows.
            joined[key] = torch.cat(rows_list, dim=0) if isinstance(template, torch.Tensor) else rows_list
            continue
        tensors = [t for t, _ in pieces]
        if tensors[0].ndim == 1:
            joined[key] = torch.cat(tensors)
            continue
        pad_value = pad_token_id if key in ("prompt_ids", "completion_ids") else 1 if key == "tool_mask" else 0
        if key in _PROMPT_THEN_COMPLETION:
            prompt_w = max(w for _, w in pieces)
            completion_w = max(t.size(1) - w for t, w in pieces)
            joined[key] = torch.cat(
                [
                    torch.cat(
                        [
                            _pad_width(t[:, :w], prompt_w, 0, left=True),
                            _pad_width(t[:, w:], completion_w, 0, left=False),
                        ],
                        dim=1,
                    )
                    for t, w in pieces
                ]
            )
        else:
            width = max(t.size(1) for t in tensors)
            joined[key] = torch.cat([_pad_width(t, width, pad_value, left=key in _LEFT_PADDED) for t in tensors])
    if "num_items_in_batch" in first:
        mask = joined["completion_mask"]
        if joined.get("tool_mask") is not None:
            mask = mask * joined["tool_mask"]
        template = first["num_items_in_batch"]
        joined["num_items_in_batch"] = (
            mask.sum().to(dtype=template.dtype, device=template.device)
            if isinstance(template, torch.Tensor)
            else int(mask.sum().item())
        )
    # Keep TRL's key order (its buffering splits every field the same way whatever the order, but stay faithful).
    return {key: joined[key] for key in first if key in joined}


def _fold(name: str, values: list[float]) -> float:
    """One value for a metric several rounds of one generation appended: min/max metrics keep their extreme."""
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return values[-1]
    leaf = name.rsplit("/", 1)[-1]
    if leaf.startswith("min"):
        return min(finite)
    if leaf.startswith("max"):
        return max(finite)
    return sum(finite) / len(finite)


def dynamic_sampling_trainer_class(base, max_rounds: int, log: Callable[[str], None] | None = None):
    """``base`` (a ``GRPOTrainer`` class) with dynamic sampling: see the module's docstring."""
    if max_rounds < 1:
        raise ValueError(f"training_settings.dynamic_sampling_max_rounds must be >= 1, got {max_rounds}")

    class DynamicSamplingGRPOTrainer(base):
        dynamic_sampling_max_rounds = max_rounds

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.accelerator.num_processes > 1:
                raise ValueError(
                    f"training_settings.dynamic_sampling runs on one training process, got "
                    f"{self.accelerator.num_processes}: the processes would have to agree on every extra round. "
                    "Set num_processes=1 or dynamic_sampling=False"
                )
            if not hasattr(self.train_dataset, "__getitem__") or not hasattr(self.train_dataset, "__len__"):
                raise ValueError(
                    "training_settings.dynamic_sampling draws replacement prompts by index and needs a "
                    "map-style training set, not a streaming one"
                )
            self.dynamic_sampling_draws: list[dict[str, Any]] = []
            """One entry per extra round: the optimizer step it served, the round and the rows it drew."""
            self._scored_rewards = None

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._scored_rewards = rewards_per_func
            return rewards_per_func

        def _zero_spread(self, output) -> list[bool]:
            import torch

            per_func = self._scored_rewards
            if per_func is None:  # a trainer that scores elsewhere: a group without advantage taught nothing
                advantages = output["advantages"].view(-1, self.num_generations)
                return [bool(torch.all(row == 0)) for row in advantages]
            weights = self.reward_weights.to(per_func.device).unsqueeze(0)
            rewards = (per_func * weights).nansum(dim=1)
            rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
            return zero_spread_groups(rewards.tolist(), self.num_generations)

        def _generate_and_score_completions(self, inputs):
            if not self.model.training:
                return super()._generate_and_score_completions(inputs)
            k = self.num_generations
            needed = len(inputs) // k
            metrics = self._metrics["train"]
            before = {key: len(values) for key, values in metrics.items()}
            step = int(self.state.global_step) + 1
            kept: list[tuple[dict, int]] = []
            dropped: list[tuple[dict, int]] = []
            sampled_zero = extra_rollouts = rounds = 0
            batch = inputs
            first_output = None
            while True:
                self._scored_rewards = None
                output = super()._generate_and_score_completions(batch)
                if first_output is None:
                    first_output = output
                flags = self._zero_spread(output)
                sampled_zero += sum(flags)
                for group, zero in enumerate(flags):
                    (dropped if zero else kept).append((output, group))
                if len(kept) >= needed or rounds >= self.dynamic_sampling_max_rounds:
                    break
                rounds += 1
                missing = needed - len(kept)
                rows = replacement_prompt_indices(self.args.seed, step, rounds, len(self.train_dataset), missing)
                self.dynamic_sampling_draws.append({"step": step, "round": rounds, "rows": rows})
                batch = [self.train_dataset[i] for i in rows for _ in range(k)]
                extra_rollouts += missing * k
            trained = kept[:needed]
            padded = needed - len(trained)
            if padded:
                trained += dropped[:padded]
                message = (
                    f"dynamic sampling, step {step}: {len(kept)} of {needed} groups had differing rewards "
                    f"after {rounds} extra rounds (dynamic_sampling_max_rounds={self.dynamic_sampling_max_rounds});"
                    f" training on them and {padded} zero-spread group(s), which add no gradient"
                )
                logger.warning(message)
                if log is not None:
                    log(message)
            if rounds == 0 and not padded:
                joined = first_output  # nothing dropped: TRL's batch exactly
            else:
                joined = join_groups(trained, k, self._tokenizer.pad_token_id)
            for key, values in metrics.items():
                new = len(values) - before.get(key, 0)
                if new > 1:
                    folded = _fold(key, values[-new:])
                    del values[-new:]
                    values.append(folded)
            sampled = len(kept) + len(dropped)
            if metrics.get("frac_reward_zero_std"):
                metrics["frac_reward_zero_std"][-1] = padded / needed
            metrics["dynamic_sampling/groups_kept"].append(float(len(trained) - padded))
            metrics["dynamic_sampling/groups_dropped"].append(float(len(dropped) - padded))
            metrics["dynamic_sampling/groups_padded"].append(float(padded))
            metrics["dynamic_sampling/extra_rounds"].append(float(rounds))
            metrics["dynamic_sampling/extra_rollouts"].append(float(extra_rollouts))
            metrics["dynamic_sampling/frac_reward_zero_std_sampled"].append(sampled_zero / sampled)
            return joined

    return DynamicSamplingGRPOTrainer


def dynamic_sampling_summary(log_history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The run's zero-spread share of trained groups (TRL's ``frac_reward_zero_std``, mean over logged steps) and,
    with dynamic sampling, the share among all sampled groups and the totals of the per-step counts (each logged
    value is a mean over its logging window, so totals are exact only with ``logging_steps=1``).

    >>> dynamic_sampling_summary([{"reward": 1.0, "frac_reward_zero_std": 0.5}, {"reward": 1.0,
    ...                           "frac_reward_zero_std": 0.0}])
    {'frac_reward_zero_std_trained/mean': 0.25, 'logged_steps': 2}
    """
    logged = [h for h in log_history if "reward" in h]
    summary: dict[str, float] = {}

    def values(key):
        return [float(h[key]) for h in logged if h.get(key) is not None and math.isfinite(float(h[key]))]

    trained = values("frac_reward_zero_std")
    if trained:
        summary["frac_reward_zero_std_trained/mean"] = round(sum(trained) / len(trained), 6)
    sampled = values("dynamic_sampling/frac_reward_zero_std_sampled")
    if sampled:
        summary["frac_reward_zero_std_sampled/mean"] = round(sum(sampled) / len(sampled), 6)
        for key in ("groups_kept", "groups_dropped", "groups_padded", "extra_rounds", "extra_rollouts"):
            summary[f"{key}/sum_of_logged"] = round(sum(values(METRIC_PREFIX + key)), 6)
        summary["steps_short"] = sum(1 for v in values(METRIC_PREFIX + "groups_padded") if v > 0)
    summary["logged_steps"] = len(logged)
    return summary
