"""Which settings feed which asset, and a short version of them: a changed setting makes exactly the assets it
feeds (and, through Dagster's lineage, everything downstream of them) stale.

Each asset's Dagster code version is its code's own version plus :func:`settings_versions`' hash for it, computed
from the profile the definitions load. Fields that cannot change an artifact (where logs go, how often checkpoints
are written, how much of the GPU vLLM may take) are left out, so changing them marks nothing stale.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from vlmrl_pipeline.core.profiles import SYNTHETIC_SOURCE, Profile
from vlmrl_pipeline.core.training.checkpoints import KEY_EXCLUDED_SETTINGS

ALL = None
"""Every field of the group."""

PROMPT_FIELDS = ("prompt_field", "answer_format", "system_prompt")
"""What the prompts, the reward and the scoring follow."""
LOADING_FIELDS = ("backend", "load_in_4bit", "dtype", "max_seq_length")
"""How a stage loads the policy; which policy it is comes from ``base_model``."""
SOURCE_FIELDS = ("source", "split", "dataset_format", "prompt_key", "answer_key", "image_keys", "numeric_only",
                 "free_form_only")
SYNTHETIC_FIELDS = ("seed", "image_size", "synthetic_rows", "synthetic_tasks")
"""What the synthetic source renders from (only when ``source`` is ``synthetic``)."""

REWARD_FIELDS = ("reward_funcs", "reward_weights", "reward_max_val", "reward_min_val", "rehearsal_reward_weight")
"""What the reward set GSPO trains with, and the records score with, is made of."""
FEED_WHEN_SET = {("data", "validation_size"), ("gspo", "eval_steps"), ("gspo", "keep_checkpoint"),
                 ("gspo", "reward_funcs"), ("gspo", "reward_weights")}
"""Fields added after artifacts were first versioned: they feed only when set away from their default, so a
profile that leaves them alone keeps its versions (and its materializations stay synced)."""

SETTINGS_FEEDING: dict[str, dict[str, tuple[str, ...] | None]] = {
    "mathvista_filtered": {"data": SOURCE_FIELDS},
    "resized_images": {"data": ("image_size", "eval_size", "seed", "validation_size")},
    # The demo model is built and warm-started here (on the prompts); a hub model is only named.
    "base_model": {"model": ("model_name", "revision", "tiny_model"), "warm_start": ALL, "data": PROMPT_FIELDS},
    "baseline_completions": {"model": LOADING_FIELDS, "generation": ALL, "data": PROMPT_FIELDS},
    "lora_adapter": {"model": LOADING_FIELDS + ("fast_inference", "vllm_standby", "lora"), "gspo": ALL,
                     "data": PROMPT_FIELDS},
    "after_completions": {"model": LOADING_FIELDS, "generation": ALL, "data": PROMPT_FIELDS},
    # Scored with the training's reward set (core.rewards.gspo_reward_set): its functions, weights and values.
    "baseline_records": {"data": ("answer_format",), "gspo": REWARD_FIELDS},
    "after_records": {"data": ("answer_format",), "gspo": REWARD_FIELDS},
    "merged_model": {"export": ("merged_dtype", "merged_4bit")},
    "gguf_model": {"export": ("gguf_types", "mmproj_type", "verify_with_llama_cpp")},
    # The shipped artifacts' evaluations: the bytes they run reach them as the export assets' data versions
    # (hashes), the generation and prompt settings through after_completions (whose rows they answer); they score
    # with the training's reward set, as after_records does.
    "merged_records": {"data": ("answer_format",), "gspo": REWARD_FIELDS},
    "gguf_records": {"export": ("shipped_logit_samples", "llama_cpp_extra_buffer_types"), "data": ("answer_format",),
                     "gspo": REWARD_FIELDS},
    "eval_diff_report": {},
}
"""Asset -> settings group -> the fields of it that change the asset's artifact."""
DEMO_ONLY = {("base_model", "warm_start"), ("base_model", "data")}
"""Feeds only when the demo model is built and warm-started here; a hub model is only named."""

NOT_RESULTS = {
    "gspo": KEY_EXCLUDED_SETTINGS,  # logging and checkpoint cadence: the same adapter either way
    "generation": ("vllm_gpu_memory_utilization",),
    "model": ("gpu_memory_utilization",),
}
"""Fields of a group that ``ALL`` leaves out: they change how a stage runs, not what it writes."""


def _groups(profile: Profile) -> dict[str, Any]:
    return {"data": profile.data, "model": profile.model, "warm_start": profile.warm_start, "gspo": profile.gspo,
            "generation": profile.generation, "export": profile.export}


def feeding_settings(profile: Profile, asset: str) -> dict[str, dict[str, Any]]:
    """The settings values that feed ``asset`` under ``profile``, by group.

    >>> from vlmrl_pipeline.core.profiles import demo_profile
    >>> feeding_settings(demo_profile(), "resized_images")
    {'data': {'image_size': 128, 'eval_size': 100, 'seed': 0}}
    """
    groups = _groups(profile)
    out: dict[str, dict[str, Any]] = {}
    for group, names in SETTINGS_FEEDING[asset].items():
        values = dataclasses.asdict(groups[group])
        if names is ALL:
            names = tuple(k for k in values if k not in NOT_RESULTS.get(group, ()))
        if asset == "mathvista_filtered" and profile.data.source == SYNTHETIC_SOURCE:
            names = names + SYNTHETIC_FIELDS
        if (asset, group) in DEMO_ONLY and not profile.model.is_demo:
            continue
        defaults = dataclasses.asdict(type(groups[group])())
        out[group] = {name: values[name] for name in names
                      if (group, name) not in FEED_WHEN_SET or values[name] != defaults[name]}
        if group == "gspo" and values.get("reward_funcs"):
            out[group]["reward_source"] = _reward_source(tuple(values["reward_funcs"]))
    return out


def _reward_source(reward_funcs: tuple[str, ...]) -> str:
    """The plugged-in rewards' source version (``core.rewards.reward_set_version``), so editing one makes what it
    scores stale; a reward that does not import gets a marker here and is refused when a run starts."""
    from vlmrl_pipeline.core.reward_plugins import load_reward_function
    from vlmrl_pipeline.core.rewards import RewardSet, reward_set_version

    try:
        functions = tuple(load_reward_function(path) for path in reward_funcs)
    except ValueError as exc:
        return f"unimportable: {exc}"
    return reward_set_version(RewardSet(functions=functions, weights=(1.0,) * len(functions)))


def settings_versions(profile: Profile) -> dict[str, str]:
    """A 10-character hash of :func:`feeding_settings` per asset (``""`` for an asset no setting feeds)."""
    versions = {}
    for asset in SETTINGS_FEEDING:
        feeding = feeding_settings(profile, asset)
        text = json.dumps(feeding, sort_keys=True, default=str)
        versions[asset] = hashlib.sha256(text.encode()).hexdigest()[:10] if feeding else ""
    return versions
