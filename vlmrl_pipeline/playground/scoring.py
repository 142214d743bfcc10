"""The playground's scoring endpoint, as a plain function: validate a JSON request, score it, explain the score.

Every number comes from the project's own code (:mod:`vlmrl_pipeline.core.rewards` and
:mod:`vlmrl_pipeline.core.answers`), so the page can never drift from what GSPO optimises and what the
evaluation counts. This module only checks the request's shape and names which rule produced each part, so
the page can explain the score in words.
"""

from __future__ import annotations

import math
from typing import Any

from vlmrl_pipeline.core import answers, rewards

# Request limits. The body itself is capped by the server (MAX_BODY_BYTES); these bound the work one request
# can ask for. MathVista maps a multiple-choice answer to the nearest option by edit distance, which costs
# len(answer) * len(option) steps in pure Python (about 0.6 s per million), so that product is capped too.
MAX_CHOICES = 26  # option letters A-Z
MAX_CHOICE_CHARS = 200
MAX_EDIT_CELLS = 500_000

QUESTION_TYPES = ("free_form", "multi_choice")
ANSWER_TYPES = ("integer", "float", "text", "list")

_REQUIRED = ("completion", "answer")
_OPTIONAL = ("answer_format", "question_type", "choices", "answer_type", "precision")


class RequestError(ValueError):
    """A request the endpoint cannot score; the message is shown to the user as ``{"error": message}``."""


def _optional_choice(payload: dict, key: str, allowed: tuple[str, ...]) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in allowed:
        raise RequestError(f"{key!r} must be null or one of {', '.join(map(repr, allowed))}")
    return value


def _choices(payload: dict) -> list[str] | None:
    value = payload.get("choices")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise RequestError("'choices' must be null or a list of strings")
    if len(value) > MAX_CHOICES:
        raise RequestError(f"'choices' may hold at most {MAX_CHOICES} options")
    if any(len(c) > MAX_CHOICE_CHARS for c in value):
        raise RequestError(f"each choice may be at most {MAX_CHOICE_CHARS} characters")
    return value or None


def _precision(payload: dict) -> float | None:
    value = payload.get("precision")
    if value is None:
        return None
    # bool is an int subclass, but true/false is not a number of decimal places.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError("'precision' must be null or a finite number")
    if not 0 <= value <= 20:
        raise RequestError("'precision' must be between 0 and 20")
    return float(value)


def parse_request(payload: Any) -> dict:
    """Check a decoded JSON request and return its fields with defaults filled in.

    Required: ``completion`` and ``answer`` (strings). Optional: ``answer_format`` ("tags", the default, or
    "boxed"), ``question_type`` ("free_form" / "multi_choice" / null), ``choices`` (list of strings / null),
    ``answer_type`` ("integer" / "float" / "text" / "list" / null), ``precision`` (number / null).
    Unknown fields are rejected, so a misspelt one ("anwser") is reported instead of silently ignored.
    Raises :class:`RequestError` with a message that names the field.
    """
    if not isinstance(payload, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(str(k) for k in payload if k not in _REQUIRED + _OPTIONAL)
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(unknown)}")
    for key in _REQUIRED:
        if key not in payload:
            raise RequestError(f"missing field {key!r}")
        if not isinstance(payload[key], str):
            raise RequestError(f"{key!r} must be a string")
    answer_format = payload.get("answer_format", "tags")
    if answer_format not in answers.ANSWER_FORMATS:  # a non-string is never in the tuple
        raise RequestError(f"'answer_format' must be one of {', '.join(map(repr, answers.ANSWER_FORMATS))}")
    request = {
        "completion": payload["completion"],
        "answer": payload["answer"],
        "answer_format": answer_format,
        "question_type": _optional_choice(payload, "question_type", QUESTION_TYPES),
        "choices": _choices(payload),
        "answer_type": _optional_choice(payload, "answer_type", ANSWER_TYPES),
        "precision": _precision(payload),
    }
    _check_edit_budget(request)
    return request


def _check_edit_budget(request: dict) -> None:
    """Refuse multiple-choice requests whose nearest-option search would take seconds (see MAX_EDIT_CELLS)."""
    if request["question_type"] != "multi_choice" or not request["choices"]:
        return
    pred = answers.extract_answer(request["completion"], request["answer_format"]) or ""
    cells = len(pred) * sum(len(c) for c in request["choices"])
    if cells > MAX_EDIT_CELLS:
        raise RequestError(
            "the answer and the choices are too long to compare by edit distance "
            f"({len(pred)} x {sum(len(c) for c in request['choices'])} characters)"
        )


def _correctness_rule(request: dict, pred: str | None, correctness: float) -> str:
    """Name of the rule that produced the correctness part, so the page can say why it scored what it did."""
    gold = request["answer"]
    if request["answer_format"] == "boxed":
        if not answers.unbox_answer(gold):
            return "no_gold"
        if pred is None:
            return "no_box"
        if correctness > 0:
            return "exact" if answers.strict_match(pred, answers.unbox_answer(gold)) else "numeric"
        return "mismatch"
    if answers.gold_text(gold) is None:
        return "no_gold"
    if pred is None:
        return "no_solution"
    if correctness >= 2.0:
        return "exact" if answers.strict_match(pred, gold) else "option_letter"
    if correctness > 0:
        return "numeric"
    return "mismatch"


def score_request(request: dict) -> dict:
    """Score a request returned by :func:`parse_request` with the project's rewards and evaluation scorers.

    Returns the two reward parts, their weights, the weighted parts and total (``reward_breakdown``), the
    extracted answer and the evaluation verdicts (``score_completion``), and ``details``: block counts, the
    addCriterion penalty, and the name of the correctness rule that applied.
    """
    completion, gold, answer_format = request["completion"], request["answer"], request["answer_format"]
    breakdown = rewards.reward_breakdown(
        completion, gold, answer_format=answer_format, choices=request["choices"],
        question_type=request["question_type"],
    )
    verdicts = answers.score_completion(
        completion, gold, choices=request["choices"], question_type=request["question_type"],
        answer_type=request["answer_type"], precision=request["precision"], answer_format=answer_format,
    )
    if answer_format == "boxed":
        weights = {"format": 0.0, "correctness": rewards.BOXED_WEIGHT}
    else:
        weights = {"format": rewards.FORMAT_WEIGHT, "correctness": rewards.CORRECTNESS_WEIGHT}
    pred = verdicts["pred"]
    details = {
        "reasoning_blocks": answers.count_reasoning_blocks(completion),
        "solution_blocks": answers.count_solution_blocks(completion),
        "boxes": answers.count_boxed(completion),
        "addcriterion_spam": answers.is_addcriterion_spam(completion),
        "spam_share": answers.addcriterion_share(completion),
        "correctness_rule": _correctness_rule(request, pred, breakdown["correctness_reward"]),
        "gold": answers.unbox_answer(gold) if answer_format == "boxed" else (answers.gold_text(gold) or ""),
    }
    return {
        "answer_format": answer_format,
        "format_reward": breakdown["format_reward"],
        "correctness_reward": breakdown["correctness_reward"],
        "total_reward": breakdown["total_reward"],
        "weights": weights,
        "weighted": {
            "format": weights["format"] * breakdown["format_reward"],
            "correctness": weights["correctness"] * breakdown["correctness_reward"],
        },
        "pred": pred,
        "verdicts": {key: bool(verdicts[key]) for key in ("correct", "correct_numeric", "correct_mathvista",
                                                          "format_ok")},
        "details": details,
        "reward_version": rewards.REWARD_VERSION,
    }


def score_payload(payload: Any) -> dict:
    """:func:`parse_request` then :func:`score_request`: what ``POST /api/score`` answers with.

    Raises :class:`RequestError` for a malformed request; anything else would be a bug (the rewards never
    raise by design), and the server answers it with a 500 JSON error rather than a dropped connection.
    """
    return score_request(parse_request(payload))
