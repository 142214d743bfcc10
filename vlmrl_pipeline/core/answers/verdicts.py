"""Evaluation's verdicts on one completion (:func:`score_completion`): the extracted answer, the three accuracies,
format compliance and whether it answered; what the records and the playground report. The rewards
(``core.rewards``) score the same completions for training.
"""

from __future__ import annotations

from typing import Any

from vlmrl_pipeline.core.answers.extraction import (
    _as_text,
    completion_text,
    count_boxed,
    count_reasoning_blocks,
    count_solution_blocks,
    extract_answer,
    extract_boxed,
    is_addcriterion_spam,
)
from vlmrl_pipeline.core.answers.matching import (
    answer_given,
    mathvista_match,
    numeric_match,
    strict_match,
    unbox_answer,
)


def format_ok(text: Any) -> bool:
    """True when the text earns the full format score: exactly one reasoning block,
    exactly one solution block, and no addCriterion penalty."""
    text = _as_text(text)
    return (
        count_reasoning_blocks(text) == 1
        and count_solution_blocks(text) == 1
        and not is_addcriterion_spam(text)
    )


def boxed_format_ok(text: Any) -> bool:
    """True when the text is a well-formed boxed answer: exactly one ``\\boxed{`` opener,
    that box closes, and no addCriterion penalty."""
    text = _as_text(text)
    return count_boxed(text) == 1 and extract_boxed(text) is not None and not is_addcriterion_spam(text)


def score_completion(
    completion: Any,
    gold: Any,
    *,
    choices: Any = None,
    question_type: Any = None,
    answer_type: Any = None,
    precision: Any = None,
    answer_format: str = "tags",
) -> dict:
    """Evaluate one completion against its gold answer.

    Returns ``{"pred", "correct", "correct_numeric", "correct_mathvista",
    "format_ok", "answered"}``: ``pred`` is the extracted answer (str or None), ``correct`` the
    strict string match (the seed's metric), ``correct_numeric`` strict OR numeric
    match, ``correct_mathvista`` MathVista's own scoring (:func:`mathvista_match`
    with the question's ``choices``, ``question_type``, ``answer_type`` and
    ``precision``; without them it equals ``correct``), ``answered`` whether ``pred``
    is a non-empty answer of the question's kind (:func:`answer_given`).

    ``answer_format`` says where the answer is:

    - ``"tags"`` (default, the seed): ``pred`` is the last ``<SOLUTION>`` block and
      ``format_ok`` is :func:`format_ok`.
    - ``"boxed"`` (geo3k / RLinf style): ``pred`` is :func:`extract_boxed`, the gold
      is compared after :func:`unbox_answer`, and ``format_ok`` is
      :func:`boxed_format_ok`.

    Raises ValueError for an unknown ``answer_format`` (a configuration error, not
    model output); otherwise never raises.
    """
    text = completion_text(completion)
    pred = extract_answer(text, answer_format)
    if answer_format == "boxed":
        gold = unbox_answer(gold)
        well_formed = boxed_format_ok(text)
    else:
        well_formed = format_ok(text)
    correct = strict_match(pred, gold)
    return {
        "pred": pred,
        "correct": correct,
        "correct_numeric": correct or numeric_match(pred, gold),
        "correct_mathvista": mathvista_match(pred, gold, choices, question_type, answer_type, precision),
        "format_ok": well_formed,
        "answered": answer_given(pred, choices, question_type, answer_type),
    }
