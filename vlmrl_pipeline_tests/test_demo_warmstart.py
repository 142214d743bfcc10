"""The demo model's supervised warm start."""

from __future__ import annotations

from PIL import Image

from vlmrl_pipeline.core.answers import format_ok
from vlmrl_pipeline.core.demo.warmstart import (
    WarmStartSettings,
    family_format_rates,
    question_family,
    supervised_warm_start,
    warm_start_targets,
)
from vlmrl_pipeline.core.model.loading import load_model

QUESTIONS = ["What is the value of bar A?", "How many red shapes are there?", "Find the area of it?",
             "In triangle ABC, what is angle C?"] * 25


def test_question_family_is_the_template_prefix():
    assert question_family("What is the value of bar elk?") == "what is the"
    assert question_family("  HOW many shapes?") == "how many shapes"


def test_families_alternate_between_high_and_low_format_rates():
    settings = WarmStartSettings(formatted_rate_high=0.9, formatted_rate_low=0.2)
    rates = family_format_rates(QUESTIONS, settings)
    assert len(rates) == 4
    assert sorted(rates.values()) == [0.2, 0.2, 0.9, 0.9]


def test_targets_mix_tagged_and_plain_answers_by_family():
    settings = WarmStartSettings(formatted_rate_high=1.0, formatted_rate_low=0.0)
    answers = [str(i) for i in range(len(QUESTIONS))]
    targets = warm_start_targets(QUESTIONS, answers, settings)
    rates = family_format_rates(QUESTIONS, settings)
    for question, answer, target in zip(QUESTIONS, answers, targets):
        assert format_ok(target) == (rates[question_family(question)] == 1.0)
        assert answer in target


def test_warm_start_lowers_the_loss(tiny_checkpoint):
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the value?"}]}]
    targets = ["<REASONING>look</REASONING>\n<SOLUTION>12</SOLUTION>", "The answer is 3.5."] * 4
    losses = supervised_warm_start(model, processor, [prompt] * 8, [Image.new("RGB", (64, 64), "white")] * 8,
                                   targets, WarmStartSettings(steps=30, batch_size=4, learning_rate=6e-3))
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_the_misreading_habit_changes_the_answer_of_a_share_of_targets_only():
    from vlmrl_pipeline.core.demo.warmstart import misread

    assert (misread("3"), misread(" 12 "), misread("1.5"), misread("C")) == ("4", "13", "1.5", "C")
    answers = [str(1 + i % 4) for i in range(len(QUESTIONS))]
    honest = warm_start_targets(QUESTIONS, answers, WarmStartSettings(right_answer_rate=1.0))
    habit = warm_start_targets(QUESTIONS, answers, WarmStartSettings(right_answer_rate=0.4))
    changed = [h != t for h, t in zip(habit, honest)]
    assert 0.4 < sum(changed) / len(changed) < 0.8  # about 60% misread
    for answer, h, t, c in zip(answers, habit, honest, changed):
        assert format_ok(h) == format_ok(t)  # the tagged/plain choice does not depend on the habit
        if c:
            assert h == t.replace(answer, str(int(answer) + 1))
