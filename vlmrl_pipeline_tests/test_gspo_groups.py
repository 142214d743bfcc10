"""The groups GSPOSettings is composed of (core/training/gspo_groups.py): every field in exactly one group, the
project's fields exactly the project groups' fields, every field documented, every GRPOConfig group's field a real
GRPOConfig option, and each group's own check refusing a bad value with the field's name."""

from __future__ import annotations

import dataclasses

import pytest

from vlmrl_pipeline.core.training.gspo_config import (
    GRPO_CONFIG_GROUPS,
    PROJECT_FIELDS,
    PROJECT_GROUPS,
    GSPOSettings,
)

ALL_GROUPS = GRPO_CONFIG_GROUPS + PROJECT_GROUPS


def group_fields(group) -> set[str]:
    return {f.name for f in dataclasses.fields(group)}


def test_every_field_is_in_exactly_one_group():
    owners: dict[str, list[str]] = {}
    for group in ALL_GROUPS:
        for name in group_fields(group):
            owners.setdefault(name, []).append(group.__name__)
    shared = {name: groups for name, groups in owners.items() if len(groups) > 1}
    assert not shared, f"fields in more than one group: {shared}"
    assert set(owners) == {f.name for f in dataclasses.fields(GSPOSettings)}


def test_project_fields_are_the_project_groups_fields():
    assert set(PROJECT_FIELDS) == set().union(*(group_fields(g) for g in PROJECT_GROUPS))
    assert not set(PROJECT_FIELDS) & set().union(*(group_fields(g) for g in GRPO_CONFIG_GROUPS))


def test_every_field_has_help():
    undocumented = [f.name for f in dataclasses.fields(GSPOSettings) if not f.metadata.get("help", "").strip()]
    assert not undocumented


def test_grpo_config_takes_every_non_project_field():
    trl = pytest.importorskip("trl")
    options = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    for group in GRPO_CONFIG_GROUPS:
        assert group_fields(group) <= options, (group.__name__, group_fields(group) - options)
    # Project fields that share a name with a GRPOConfig option are the ones the project handles itself:
    # build_grpo_config passes report_to and reward_weights in their resolved form, and eval_steps drives the
    # project's own validation pass (GRPOConfig's would run Trainer.evaluate). Any other overlap is a field that
    # looks like it reaches TRL but never does.
    assert set(PROJECT_FIELDS) & options == {"report_to", "reward_weights", "eval_steps"}


# One bad value for a field of each group; the refusal must come when the settings are made and name the field.
BAD_VALUES = [
    ("OptimizerSettings", "learning_rate", 0.0),
    ("OptimizerSettings", "max_steps", 0),
    ("BatchGenerationSettings", "num_generations", 1),
    ("BatchGenerationSettings", "temperature", 0.0),
    ("BatchGenerationSettings", "per_device_train_batch_size", 0),
    ("GSPOLossSettings", "importance_sampling_level", "tokens"),
    ("GSPOLossSettings", "num_iterations", 0),
    ("VLLMRolloutSettings", "vllm_mode", "remote"),
    ("VLLMRolloutSettings", "vllm_gpu_memory_utilization", 1.5),
    ("CheckpointLoggingSettings", "save_steps", -1),
    ("CheckpointLoggingSettings", "logging_steps", 0),
    ("LaunchSettings", "distributed", "deepspeed"),
    ("RolloutEngineSettings", "rollout_engine", "sglang"),
    ("RewardSettings", "reward_funcs", ("no_colon_here",)),
    ("ValidationSettings", "eval_steps", -1),
    ("DynamicSamplingSettings", "dynamic_sampling_max_rounds", 0),
    ("ReportingSettings", "report_to", "comet"),
]


def test_the_bad_values_cover_every_group():
    assert {group for group, _, _ in BAD_VALUES} == {g.__name__ for g in ALL_GROUPS}


@pytest.mark.parametrize(("group", "name", "bad"), BAD_VALUES, ids=[f"{g}.{n}" for g, n, _ in BAD_VALUES])
def test_each_group_refuses_a_bad_value_naming_the_field(group, name, bad):
    owner = next(g for g in ALL_GROUPS if g.__name__ == group)
    assert name in group_fields(owner)
    with pytest.raises(ValueError, match=name):
        GSPOSettings(**{name: bad})


def test_cross_group_rules_are_checked_once_the_groups_are_combined():
    with pytest.raises(ValueError, match="rollout_engine='generate'"):
        GSPOSettings(rollout_engine="generate", use_vllm=True)
    with pytest.raises(ValueError, match="dynamic_sampling"):
        GSPOSettings(dynamic_sampling=True, num_processes=2)
