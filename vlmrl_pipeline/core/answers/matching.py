"""A predicted answer against the gold one: the seed's strict match, numbers, option letters, and MathVista's
own answer normalisation (:func:`mathvista_normalize`, so our accuracy is comparable with the MathVista
leaderboard's rules). Never raises on model output (see the package's docstring).
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from vlmrl_pipeline.core.answers.extraction import _as_text, _safe_str, _scan_boxes

# Plain decimal / scientific notation only. float() alone would also accept
# "nan", "inf", "1_000" and non-ASCII digits, none of which is a numeric answer.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)

# MathVista's "(A)" letter pattern (calculate_score.py), searched anywhere in the extraction.
_MC_LETTER_RE = re.compile(r"\(([a-zA-Z])\)")


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


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and
    substitutions that turn ``a`` into ``b``.

    MathVista maps a free-text multiple-choice answer to the nearest option by this
    distance. Non-string arguments are str()-ed. Two-row dynamic programme, so memory
    is linear in the shorter string.
    """
    a = a if isinstance(a, str) else _safe_str(a)
    b = b if isinstance(b, str) else _safe_str(b)
    if len(a) < len(b):
        a, b = b, a  # keep the row over the shorter string
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(
                    previous[j] + 1,  # delete char_a
                    current[j - 1] + 1,  # insert char_b
                    previous[j - 1] + (char_a != char_b),  # substitute (free when equal)
                )
            )
        previous = current
    return previous[-1]


def choice_list(choices: Any) -> list[str]:
    """Options of a multiple-choice question as strings; [] when there are none.

    Accepts a list, tuple or numpy array (pandas hands over arrays); None, NaN, a bare
    string or anything not iterable means "no usable options".
    """
    if choices is None or isinstance(choices, (str, bytes, dict)):
        return []
    try:
        return [item if isinstance(item, str) else _safe_str(item) for item in choices]
    except Exception:  # noqa: BLE001 - NaN, 0-d arrays, broken iterators: no options
        return []


def choice_for_letter(letter: str, choices: Any) -> str | None:
    """The option that an option letter names ("A" -> the first of ``choices``), or None.

    Only upper-case single letters within the number of options count; ``choices`` may be
    anything :func:`choice_list` accepts.
    """
    options = choice_list(choices)
    is_letter = isinstance(letter, str) and len(letter) == 1 and "A" <= letter <= "Z"
    index = ord(letter) - ord("A") if is_letter else -1
    return options[index] if 0 <= index < len(options) else None


def _extraction_text(extraction: Any) -> str | None:
    """The extraction as stripped text, or None when the model gave no answer."""
    if extraction is None:
        return None
    if isinstance(extraction, float) and not math.isfinite(extraction):
        return None  # a pandas missing value, not an answer
    text = _as_text(extraction).strip()
    return text or None


def _precision_digits(precision: Any) -> int | None:
    """``int(precision)``, or None when it is missing (None, NaN) or not a number."""
    try:
        if precision is None or isinstance(precision, bool):
            return None
        value = float(precision)
        if not math.isfinite(value):
            return None
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def mathvista_normalize(
    extraction: Any, choices: Any, question_type: Any, answer_type: Any, precision: Any
) -> str | None:
    """Normalise an extracted answer the way MathVista's ``calculate_score.py`` does.

    MathVista then scores with plain string equality against its gold answer (see
    :func:`mathvista_match`). The rules, in order:

    - ``question_type == "multi_choice"``: if the text contains ``"(X)"`` for a letter
      X, the first such letter, upper-cased, replaces it. A text equal to one of the
      option letters "A", "B", ... maps to that option; anything else maps to the
      option with the smallest :func:`edit_distance` (the first one on ties).
    - else ``answer_type == "integer"``: ``str(int(float(x)))``, which truncates
      (``"3.7"`` -> ``"3"``).
    - else ``answer_type == "float"``: ``str(round(float(x), int(precision)))``
      (``"1.25"`` at precision 1 -> ``"1.2"``, Python's round-half-even on the binary
      value).
    - else ``answer_type == "list"``: ``str(x)``.
    - anything else (free-form text, None, NaN): the text unchanged.

    Deliberate differences, because we have no GPT extractor and read the answer
    straight from the model's text:

    - A missing or empty extraction gives None (scored wrong), as MathVista does with
      ``ignore_empty_extractions``, instead of being mapped to the nearest option: a
      model that answered nothing must not get a free guess.
    - The extraction is turned into stripped text first (MathVista strips only for
      multiple choice; ``float()`` ignores the whitespace anyway).
    - A multiple-choice question without usable ``choices`` keeps the text unchanged
      (MathVista would crash), so an answer that spells out the option can still match.
    - A float answer without a precision (None/NaN; MathVista always has one) is
      compared as ``str(float(x))``.

    Numbers that do not parse give None. ``choices`` may be a list, tuple, numpy array,
    None or NaN; the types and precision may be numpy scalars or NaN from pandas.
    Never raises.
    """
    try:
        text = _extraction_text(extraction)
        if text is None:
            return None
        if question_type == "multi_choice":
            options = choice_list(choices)
            if not options:
                return text
            letter = _MC_LETTER_RE.search(text)
            if letter:
                text = letter.group(1).upper()
            chosen = choice_for_letter(text, options)
            if chosen is not None:
                return chosen
            distances = [edit_distance(text, option) for option in options]
            return options[distances.index(min(distances))]  # index() keeps the first on ties
        if answer_type == "integer":
            return str(int(float(text)))
        if answer_type == "float":
            digits = _precision_digits(precision)
            value = float(text)
            return str(value) if digits is None else str(round(value, digits))
        return text  # "list" (str(x) of a string is itself) and free-form text
    except Exception:  # noqa: BLE001 - unparsable numbers (ValueError, OverflowError) and the like
        return None


def mathvista_match(
    pred: Any,
    gold: Any,
    choices: Any = None,
    question_type: Any = None,
    answer_type: Any = None,
    precision: Any = None,
) -> bool:
    """MathVista's correctness: :func:`mathvista_normalize` the prediction, then compare
    it with the stripped gold answer as strings.

    With no question or answer type this is the strict match (equality after
    stripping). False when the prediction normalises to None or the gold answer is
    unusable (see :func:`gold_text`). Never raises.
    """
    gold_s = gold_text(gold)
    if gold_s is None:
        return False
    normalized = mathvista_normalize(pred, choices, question_type, answer_type, precision)
    return normalized is not None and normalized.strip() == gold_s


def unbox_answer(gold: Any) -> str:
    """The gold answer with one enclosing ``\\boxed{...}`` removed.

    Returns the stripped box content when the whole stripped gold is a single box
    (``"\\boxed{3}"`` -> ``"3"``), else the stripped gold (``"3"``,
    ``"\\boxed{1}+\\boxed{2}"`` unchanged). Unusable golds (None, NaN, empty) give
    ``""``, which every matcher treats as unusable. Never raises.
    """
    text = gold_text(gold)
    if text is None:
        return ""
    try:
        _, last = _scan_boxes(text)
    except Exception:  # noqa: BLE001 - defensive
        return text
    if last is not None and last[0] == 0 and last[2] == len(text) - 1:
        return text[last[1] : last[2]].strip()
    return text


def answer_given(pred: Any, choices: Any = None, question_type: Any = None, answer_type: Any = None) -> bool:
    """True when ``pred`` (an extracted answer) is a non-empty answer of the question's kind.

    A number for integer and float questions; a number, an option letter or one of the options' texts for a
    multiple-choice question; any non-empty text for a free-form word question. An empty ``<SOLUTION>`` block
    counts as a well-formed completion (:func:`format_ok`) but not as an answer: this is what tells a policy that
    learned the tags from one that learned the task.
    """
    if not isinstance(pred, str) or not pred.strip():
        return False
    text = pred.strip()
    if question_type == "multi_choice":
        letter = _OPTION_LETTER_TEXT.fullmatch(text)
        if letter and choice_for_letter(letter.group(1), choices) is not None:
            return True
        if text in [c.strip() for c in choice_list(choices)]:
            return True
        return parse_number(text) is not None
    if answer_type in ("integer", "float"):
        return parse_number(text) is not None
    return True


_OPTION_LETTER_TEXT = re.compile(r"\(?([A-Z])\)?")
