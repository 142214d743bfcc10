"""Answer extraction and matching for the MathVista GRPO pipeline.

The tag format and scoring rules follow Unsloth's Qwen3-VL GSPO notebook (the
project seed): the model writes ``<REASONING>...</REASONING>`` then
``<SOLUTION>...</SOLUTION>``. Everything here is pure Python and total: the
functions never raise, because they run inside the trainer's reward loop and the
evaluation loop, where one odd sample must not kill a long run.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

REASONING_START = "<REASONING>"
REASONING_END = "</REASONING>"
SOLUTION_START = "<SOLUTION>"
SOLUTION_END = "</SOLUTION>"

# Non-greedy + DOTALL exactly as in the seed, so block counts match its rewards.
_REASONING_RE = re.compile(re.escape(REASONING_START) + r"(.*?)" + re.escape(REASONING_END), re.DOTALL)
_SOLUTION_RE = re.compile(re.escape(SOLUTION_START) + r"(.*?)" + re.escape(SOLUTION_END), re.DOTALL)

# Plain decimal / scientific notation only. float() alone would also accept
# "nan", "inf", "1_000" and non-ASCII digits, none of which is a numeric answer.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)

# The seed's penalty for Qwen-VL's degenerate "addCriterion\n" loops.
_SPAM_TOKEN = "addCriterion"
_SPAM_RATIO = 0.5

# Bound on nesting so self-referential or absurdly deep inputs cannot recurse forever.
_MAX_DEPTH = 32


def _content_text(content: Any, depth: int) -> str:
    """Text of a message's ``content``: a string, or a list of parts."""
    if depth > _MAX_DEPTH or content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        # A single part such as {"type": "text", "text": "..."}; image parts carry no text.
        text = content.get("text")
        if isinstance(text, str):
            return text
        if "content" in content:
            return _content_text(content.get("content"), depth + 1)
        return ""
    if isinstance(content, (list, tuple)):
        return "".join(_content_text(part, depth + 1) for part in content)
    return str(content)


def _message_text(message: dict, depth: int) -> str:
    """Text of one chat message; non-assistant turns contribute nothing."""
    role = message.get("role")
    # A message without a role is taken as model output (TRL completions only hold assistant turns).
    if role is not None and role != "assistant":
        return ""
    if "content" in message:
        return _content_text(message.get("content"), depth + 1)
    return _content_text(message, depth + 1)


def _safe_str(value: Any) -> str:
    """str(value), or "" when the object's __str__ itself fails."""
    try:
        return str(value)
    except Exception:  # a broken __str__ must not escape into the reward loop
        return ""


def completion_text(completion: Any) -> str:
    """Return the plain text of a completion in any shape TRL may hand over.

    - ``str``: returned unchanged.
    - ``None``: ``""``.
    - a chat-style list of messages (``[{"role": "assistant", "content": ...}]``):
      the assistant messages' text concatenated with no separator; ``content`` may
      be a string or a list of parts (``[{"type": "text", "text": ...}]``, where
      non-text parts such as images are skipped). Messages with another role
      (user, system) are skipped; a message with no role counts as assistant.
      Bare strings inside the list are kept as text.
    - a single message (or part) dict, i.e. one with a ``role``, ``content`` or
      ``text`` key: the same rule applied to that one message.
    - anything else (numbers, lists of non-dicts, ...): ``str(completion)``.

    Never raises.
    """
    try:
        if completion is None:
            return ""
        if isinstance(completion, str):
            return completion
        if isinstance(completion, dict):
            # Only message- or part-shaped dicts are read as chat; other dicts are just data.
            if any(key in completion for key in ("role", "content", "text")):
                return _message_text(completion, 0)
            return _safe_str(completion)
        if isinstance(completion, (list, tuple)):
            if all(isinstance(item, (dict, str)) for item in completion):
                return "".join(
                    item if isinstance(item, str) else _message_text(item, 0) for item in completion
                )
            return _safe_str(completion)
        return _safe_str(completion)
    except Exception:  # e.g. dicts with exotic keys or __eq__; keep the reward loop alive
        return _safe_str(completion)


def _as_text(text: Any) -> str:
    """Coerce the argument of the text helpers below to a string."""
    return text if isinstance(text, str) else completion_text(text)


def count_reasoning_blocks(text: Any) -> int:
    """Number of non-overlapping ``<REASONING>...</REASONING>`` blocks in ``text``."""
    return len(_REASONING_RE.findall(_as_text(text)))


def count_solution_blocks(text: Any) -> int:
    """Number of non-overlapping ``<SOLUTION>...</SOLUTION>`` blocks in ``text``."""
    return len(_SOLUTION_RE.findall(_as_text(text)))


def is_addcriterion_spam(text: Any) -> bool:
    """True when "addCriterion" plus newlines make up at least half of ``text``.

    This is the seed's rule verbatim, so a non-empty text of only newlines is
    penalised too; the empty string never is.
    """
    text = _as_text(text)
    if not text:
        return False
    removed = text.replace(_SPAM_TOKEN, "").replace("\n", "")
    return (len(text) - len(removed)) / len(text) >= _SPAM_RATIO


def extract_solution(text: Any) -> str | None:
    """Content of the LAST ``<SOLUTION>...</SOLUTION>`` block, or None if there is none.

    The last block is used because it is the model's final word: a completion that
    drafts an answer and then corrects itself is judged on the correction. Newlines
    (``\\n`` and ``\\r``) are removed and surrounding whitespace stripped, so
    ``"<SOLUTION>\\n991\\n</SOLUTION>"`` yields ``"991"``. An empty block yields ``""``.
    Non-string input goes through :func:`completion_text` first.
    """
    matches = _SOLUTION_RE.findall(_as_text(text))
    if not matches:
        return None
    return matches[-1].replace("\r", "").replace("\n", "").strip()


def parse_number(text: Any) -> float | None:
    """Parse a plain number, or return None.

    Strings are stripped and must then be entirely a decimal or scientific number
    with an optional leading sign (``"3"``, ``"-0.5"``, ``"+.5"``, ``"1e3"``); no
    thousands separators, units, underscores, or words. Real numbers (int, float,
    numpy scalars) are converted directly; bools are rejected since they are not
    answers. NaN and infinities (including overflow such as ``"1e999"``) give None,
    as does every other type.
    """
    try:
        if isinstance(text, bool):
            return None
        if isinstance(text, str):
            stripped = text.strip()
            if not _NUMBER_RE.fullmatch(stripped):
                return None
            value = float(stripped)
        elif isinstance(text, numbers.Real):
            value = float(text)
        else:
            return None
    except (ValueError, TypeError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def gold_text(gold: Any) -> str | None:
    """The gold answer as stripped text, or None when it cannot be scored against.

    None, NaN / infinite floats (e.g. missing values from pandas) and answers that
    are empty after stripping are unusable: scoring against them would reward an
    empty or literal "nan" solution.
    """
    if gold is None:
        return None
    if isinstance(gold, float) and not math.isfinite(gold):
        return None
    text = _safe_str(gold).strip()
    return text or None


def strict_match(pred: Any, gold: Any) -> bool:
    """The seed's evaluation metric: exact string equality after stripping.

    ``"991.0"`` does NOT match ``"991"``. False when ``pred`` is None or the gold
    answer is unusable (see :func:`gold_text`).
    """
    if pred is None:
        return False
    gold_s = gold_text(gold)
    if gold_s is None:
        return False
    return _as_text(pred).strip() == gold_s


def numeric_match(pred: Any, gold: Any) -> bool:
    """True when both sides parse as numbers (:func:`parse_number`) and are equal
    within ``rel_tol=abs_tol=1e-9``, so ``"3.0"`` matches ``"3"``."""
    p = parse_number(pred)
    g = parse_number(gold)
    if p is None or g is None:
        return False
    return math.isclose(p, g, rel_tol=1e-9, abs_tol=1e-9)


def format_ok(text: Any) -> bool:
    """True when the text earns the full format score: exactly one reasoning block,
    exactly one solution block, and no addCriterion penalty."""
    text = _as_text(text)
    return (
        count_reasoning_blocks(text) == 1
        and count_solution_blocks(text) == 1
        and not is_addcriterion_spam(text)
    )


def score_completion(completion: Any, gold: Any) -> dict:
    """Evaluate one completion against its gold answer.

    Returns ``{"pred", "correct", "correct_numeric", "format_ok"}``: ``pred`` is the
    extracted solution (str or None), ``correct`` the strict string match (the
    seed's metric), ``correct_numeric`` strict OR numeric match, and ``format_ok``
    as in :func:`format_ok`. Never raises.
    """
    text = completion_text(completion)
    pred = extract_solution(text)
    correct = strict_match(pred, gold)
    return {
        "pred": pred,
        "correct": correct,
        "correct_numeric": correct or numeric_match(pred, gold),
        "format_ok": format_ok(text),
    }
