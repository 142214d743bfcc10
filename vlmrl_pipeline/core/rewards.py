"""GRPO reward functions (Unsloth Qwen3-VL GSPO notebook), in TRL's signature.

TRL calls each reward function as ``f(prompts=..., completions=..., completion_ids=...,
trainer_state=..., **dataset_columns)`` and logs it under ``f.__name__``. Pass
``REWARD_FUNCTIONS`` as ``reward_funcs`` and ``REWARD_WEIGHTS`` as
``GRPOConfig(reward_weights=...)`` to get ``0.3 * format + 1.0 * correctness``.

The functions never raise: an exception inside the reward loop would abort a
training run hours in, so odd inputs score 0.0 (or whatever the rules give their
text) instead.
"""

from __future__ import annotations

import hashlib
import inspect
import pathlib
from typing import Any

from vlmrl_pipeline.core import answers
from vlmrl_pipeline.core.answers import (
    completion_text,
    count_reasoning_blocks,
    count_solution_blocks,
    extract_solution,
    gold_text,
    is_addcriterion_spam,
    numeric_match,
    strict_match,
)

FORMAT_WEIGHT = 0.3
CORRECTNESS_WEIGHT = 1.0

# Per-rule scores from the seed notebook.
_BLOCK_SCORE = 1.0
_SPAM_PENALTY = -2.0
_EXACT_SCORE = 2.0
_NUMERIC_SCORE = 1.5


def _as_list(values: Any) -> list:
    """Turn a batch argument into a list.

    None -> []; lists/tuples and other non-text iterables -> list(values); a bare
    string, dict or scalar -> a one-element batch (so a direct call with a single
    completion still works).
    """
    if values is None:
        return []
    if isinstance(values, list):
        return values
    if isinstance(values, (str, bytes, dict)):
        return [values]
    try:
        return list(values)
    except Exception:  # not iterable (int, object) or an iterator that fails midway
        return [values]


def _is_batch(value: Any) -> bool:
    """True for list-like answer columns (list, tuple, numpy array, ...)."""
    if isinstance(value, (str, bytes, dict)):
        return False
    try:
        iter(value)
    except TypeError:
        return False
    # 0-d numpy arrays claim iterability via __iter__ but fail on iteration.
    return getattr(value, "ndim", 1) != 0


def _format_score(completion: Any) -> float:
    """Formatting reward for one completion (see :func:`formatting_reward`)."""
    try:
        text = completion_text(completion)
        score = 0.0
        if count_reasoning_blocks(text) == 1:
            score += _BLOCK_SCORE
        if count_solution_blocks(text) == 1:
            score += _BLOCK_SCORE
        if is_addcriterion_spam(text):
            score += _SPAM_PENALTY
        return score
    except Exception:  # defensive: answers.* is total, but a reward must never raise
        return 0.0


def _correctness_score(completion: Any, gold: Any) -> float:
    """Correctness reward for one completion (see :func:`correctness_reward`)."""
    try:
        if gold_text(gold) is None:
            return 0.0
        pred = extract_solution(completion_text(completion))
        if pred is None:
            return 0.0
        if strict_match(pred, gold):
            return _EXACT_SCORE
        if numeric_match(pred, gold):
            return _NUMERIC_SCORE
        return 0.0
    except Exception:  # defensive, as above
        return 0.0


def formatting_reward(completions: Any, **kwargs: Any) -> list[float]:
    """Score the answer format of each completion.

    +1.0 for exactly one ``<REASONING>...</REASONING>`` block, +1.0 for exactly one
    ``<SOLUTION>...</SOLUTION>`` block, and -2.0 when "addCriterion" and newlines
    make up at least half of a non-empty completion. Range: -2.0 to 2.0.
    Completions may be strings or TRL chat-style message lists. Other keyword
    arguments (prompts, answer, trainer_state, ...) are ignored. Returns one float
    per completion; never raises.
    """
    return [_format_score(c) for c in _as_list(completions)]


def correctness_reward(completions: Any, answer: Any = None, **kwargs: Any) -> list[float]:
    """Score each completion's ``<SOLUTION>`` against the gold ``answer`` column.

    2.0 when the last solution block equals the gold answer as a string (after
    stripping), 1.5 when both parse as the same number ("3.0" vs "3"), else 0.0.
    ``answer`` is the dataset column TRL passes per completion; a missing column,
    a shorter list (unmatched completions get no gold), None/NaN/empty entries all
    score 0.0. A bare scalar answer applies to every completion. Returns one float
    per completion; never raises.
    """
    items = _as_list(completions)
    if answer is None:
        golds: list = []
    elif not _is_batch(answer):
        golds = [answer] * len(items)
    else:
        golds = _as_list(answer)
    golds = golds[: len(items)] + [None] * max(0, len(items) - len(golds))
    return [_correctness_score(c, g) for c, g in zip(items, golds)]


REWARD_FUNCTIONS = (formatting_reward, correctness_reward)
REWARD_WEIGHTS = (FORMAT_WEIGHT, CORRECTNESS_WEIGHT)


def reward_breakdown(completion: Any, answer: Any) -> dict:
    """Both rewards and their weighted total for one completion.

    Returns ``{"format_reward", "correctness_reward", "total_reward"}`` with
    ``total_reward = FORMAT_WEIGHT * format + CORRECTNESS_WEIGHT * correctness``,
    i.e. what GRPO optimises for this sample (before group normalisation).
    """
    fmt = _format_score(completion)
    corr = _correctness_score(completion, answer)
    return {
        "format_reward": fmt,
        "correctness_reward": corr,
        "total_reward": FORMAT_WEIGHT * fmt + CORRECTNESS_WEIGHT * corr,
    }


def _reward_version() -> str:
    """12-hex sha256 of answers.py + rewards.py, so records can say which reward code scored them."""
    digest = hashlib.sha256()
    for module in (answers, inspect.getmodule(_reward_version)):
        try:
            digest.update(pathlib.Path(inspect.getsourcefile(module)).read_bytes())
        except (OSError, TypeError):
            # Source not shipped (e.g. bytecode-only install): still hash something stable.
            digest.update(b"<source unavailable>")
        digest.update(b"\0")
    return digest.hexdigest()[:12]


REWARD_VERSION = _reward_version()
