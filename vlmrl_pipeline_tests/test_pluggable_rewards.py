"""Rewards users plug in (``training_settings.reward_funcs`` / ``reward_weights``): checked before any model loads,
versioned by their source, and the same set (with the same values) in training and in evaluation's records."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap

import pandas as pd
import pytest

from vlmrl_pipeline.core.evaluation.records import score_records
from vlmrl_pipeline.core.profiles import geo3k_profile, qwen3vl_8b_profile
from vlmrl_pipeline.core.prompts import PromptStyle
from vlmrl_pipeline.core.reward_plugins import reward_import_roots, reward_name, reward_problems
from vlmrl_pipeline.core.rewards import (
    REWARD_VERSION,
    boxed_reward,
    correctness_reward,
    formatting_reward,
    gspo_reward_set,
    reward_breakdown,
    reward_set_version,
    training_reward_set,
)
from vlmrl_pipeline.core.settings_check import settings_conflicts
from vlmrl_pipeline.core.settings_versions import settings_versions
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings

MODULE = textwrap.dedent("""
    def length_reward(prompts, completions, **kwargs):
        return [min(len(c[0]["content"]), 10) / 10 for c in completions]

    def returns_one(prompts, completions, **kwargs):
        return [1.0]

    def returns_nan(prompts, completions, **kwargs):
        return [float("nan")] * len(completions)

    def raises(prompts, completions, **kwargs):
        raise KeyError("needs a column the data set lacks")

    def maybe(prompts, completions, **kwargs):
        return [None] * len(completions)

    async def async_reward(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    NOT_CALLABLE = 3
""")


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    """A reward module outside the package, in a temp folder on sys.path (a fresh name per test)."""
    name = f"user_rewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


def test_a_reward_from_a_module_outside_the_package_is_loaded_checked_and_weighted(user_rewards, tmp_path):
    rewards = training_reward_set("tags", (f"{user_rewards}:length_reward",
                                           "vlmrl_pipeline.core.rewards:correctness_reward"), (0.5, 2.0))
    assert [reward_name(f) for f in rewards.functions] == ["length_reward", "correctness_reward"]
    assert rewards.weights == (0.5, 2.0)
    assert reward_problems((f"{user_rewards}:length_reward", f"{user_rewards}:maybe",
                            f"{user_rewards}:async_reward")) == []
    assert reward_import_roots((f"{user_rewards}:length_reward",)) == [str(tmp_path.resolve())]


@pytest.mark.parametrize("function, message", [
    ("returns_one", "must return one finite number (or None) per completion: for 2 completions it returned [1.0]"),
    ("returns_nan", "must return one finite number"),
    ("raises", "raised on a sample batch: KeyError"),
    ("NOT_CALLABLE", "names a int, not a function"),
    ("missing", "has no 'missing'"),
])
def test_a_reward_that_cannot_train_is_refused_naming_it(user_rewards, function, message):
    [problem] = reward_problems((f"{user_rewards}:{function}",))
    assert problem.startswith(f"training_settings.reward_funcs entry '{user_rewards}:{function}'")
    assert message in problem


def test_unimportable_or_malformed_reward_paths_are_refused_when_the_run_starts():
    [problem] = settings_conflicts(gspo=GSPOSettings(reward_funcs=("no_such_module_xyz:reward",)))
    assert "module 'no_such_module_xyz' does not import" in problem and "PYTHONPATH" in problem
    with pytest.raises(ValueError, match="import paths 'package.module:function'"):
        GSPOSettings(reward_funcs=("vlmrl_pipeline.core.rewards.boxed_reward",))
    with pytest.raises(ValueError, match="reward_weights has 1 weight"):
        GSPOSettings(reward_funcs=("a:b", "c:d"), reward_weights=(1.0,))
    with pytest.raises(ValueError, match="reward_weights has 3 weight"):
        training_reward_set("tags", reward_weights=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="must be finite"):
        GSPOSettings(reward_weights=(float("inf"),))


def test_the_default_reward_sets_are_the_seeds_and_geo3ks():
    tags = gspo_reward_set("tags", qwen3vl_8b_profile().gspo)
    assert tags.functions == (formatting_reward, correctness_reward) and tags.weights == (0.3, 1.0)
    assert gspo_reward_set("boxed", geo3k_profile().gspo).functions == (boxed_reward,)
    assert reward_set_version(tags) == REWARD_VERSION  # the package's own rewards: the version is unchanged


def test_editing_a_plugged_in_reward_changes_its_version_and_makes_training_and_records_stale(user_rewards,
                                                                                              tmp_path):
    path = f"{user_rewards}:length_reward"
    profile = qwen3vl_8b_profile()
    plugged = dataclasses.replace(profile, gspo=dataclasses.replace(profile.gspo, reward_funcs=(path,)))
    before_set = training_reward_set("tags", (path,))
    before, default = settings_versions(plugged), settings_versions(profile)
    before_version = reward_set_version(before_set)
    assert before_version != REWARD_VERSION
    changed = {k for k in before if before[k] != default[k]}
    # Not the completions: the adapter's evaluations re-score only; the shipped artifacts' records (which answer
    # and score in one step) run again.
    assert changed == {"lora_adapter", "baseline_records", "after_records", "merged_records", "gguf_records"}
    source = tmp_path / f"{user_rewards}.py"
    source.write_text(source.read_text().replace("/ 10 for c", "/ 20 for c"))
    sys.modules.pop(user_rewards)
    importlib.invalidate_caches()
    after = settings_versions(plugged)
    assert {k for k in before if before[k] != after[k]} == {"lora_adapter", "baseline_records", "after_records",
                                                             "merged_records", "gguf_records"}
    assert reward_set_version(training_reward_set("tags", (path,))) != before_version


def _rows():
    return pd.DataFrame({"pid": ["1", "2", "3"], "question": ["q"] * 3, "query": ["q"] * 3,
                         "answer": ["3", "4", "5"], "question_type": ["free_form"] * 3,
                         "answer_type": ["integer"] * 3, "choices": [None] * 3, "precision": [None] * 3})


def test_records_score_with_exactly_the_training_reward_set_and_values_geo3k_included(tmp_path):
    """geo3k trains with ``boxed_reward_valued(reward_max_val, reward_min_val)``: the records must pay the same."""
    from PIL import Image

    rows = _rows()
    paths = []
    for pid in rows["pid"]:
        Image.new("RGB", (8, 8)).save(tmp_path / f"{pid}.png")
        paths.append(str(tmp_path / f"{pid}.png"))
    rows["image_path"] = paths
    completions = [r"so \boxed{3}", r"\boxed{5}", "no box"]
    gspo = dataclasses.replace(geo3k_profile().gspo, reward_max_val=2.0, reward_min_val=-0.5)
    rewards = gspo_reward_set("boxed", gspo)
    trained = rewards.functions[0](completions, answer=list(rows["answer"]))  # what GSPO was paid
    assert trained == [2.0, -0.5, -0.5]
    style = PromptStyle("query", "boxed")
    records = score_records(rows, completions, "boxed", rewards=rewards, style=style)
    assert records["total_reward"].tolist() == trained
    assert records["correctness_reward"].tolist() == trained
    assert [r["boxed_reward"] for r in records["rewards"]] == trained
    # The breakdown the playground shows agrees once given the same values.
    assert [reward_breakdown(c, a, "boxed", reward_max_val=2.0, reward_min_val=-0.5)["total_reward"]
            for c, a in zip(completions, rows["answer"])] == trained
    # Before the fix the records paid +1/0 whatever geo3k trained with.
    assert score_records(rows, completions, "boxed")["total_reward"].tolist() == [1.0, 0.0, 0.0]


def test_the_default_tags_set_scores_records_as_before():
    rows = _rows()
    completions = ["<REASONING>r</REASONING><SOLUTION>3</SOLUTION>", "<SOLUTION>4.0</SOLUTION>", "5"]
    plain = score_records(rows, completions)
    for pid, completion, answer in zip(rows["pid"], completions, rows["answer"]):
        expected = reward_breakdown(completion, answer)
        got = plain.set_index("pid").loc[pid]
        assert (got["format_reward"], got["correctness_reward"], got["total_reward"]) == pytest.approx(
            (expected["format_reward"], expected["correctness_reward"], expected["total_reward"]))


def test_the_shipped_artifacts_records_pay_what_training_paid(tmp_path):
    """merged_records and gguf_records score with the training's reward set too (geo3k's values included)."""
    from PIL import Image

    from vlmrl_pipeline.assets.shipped import _records

    rows = _rows()
    rows["image_path"] = [str(tmp_path / f"{pid}.png") for pid in rows["pid"]]
    for path in rows["image_path"]:
        Image.new("RGB", (8, 8)).save(path)
    completions = [r"so \boxed{3}", r"\boxed{5}", "no box"]
    rewards = gspo_reward_set("boxed", dataclasses.replace(geo3k_profile().gspo, reward_max_val=2.0,
                                                           reward_min_val=-0.5))
    records = _records(rows, completions, "boxed", "gguf-q8_0", "0" * 64, "llama.cpp", rewards)
    assert records["total_reward"].tolist() == [2.0, -0.5, -0.5]
    assert set(records["artifact"]) == {"gguf-q8_0"}
