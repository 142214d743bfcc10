"""Answer extraction and matching for the MathVista GRPO pipeline.

The tag format and scoring rules follow Unsloth's Qwen3-VL GSPO notebook (the
project seed): the model writes ``<REASONING>...</REASONING>`` then
``<SOLUTION>...</SOLUTION>``. Everything here is pure Python and total: the
functions never raise, because they run inside the trainer's reward loop and the
evaluation loop, where one odd sample must not kill a long run.

Two more scorers sit beside the seed's strict match: MathVista's own answer
normalisation (:func:`mathvista_normalize`, so our accuracy is comparable with the
MathVista leaderboard's rules) and the ``\\boxed{...}`` answer format used by
geo3k-style recipes (:func:`extract_boxed`).
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



def _blocks(text: str, start: str, end: str) -> list[str]:
    """The contents of ``start(.*?)end`` blocks, exactly as the seed's non-greedy DOTALL regex finds them.

    ``re.findall`` with that pattern is quadratic on many unclosed openers (``"<SOLUTION>" * 6553`` rescans the
    rest of the text from every opener); this is one left-to-right pass with ``str.find``. Same matches: the
    leftmost opener that has a closer after it starts the next block and the first closer after it ends it; once
    an opener has no closer after it, no later opener has one either, so the search stops.
    """
    found, pos = [], 0
    while True:
        opened = text.find(start, pos)
        if opened < 0:
            return found
        content = opened + len(start)
        closed = text.find(end, content)
        if closed < 0:
            return found
        found.append(text[content:closed])
        pos = closed + len(end)

# Plain decimal / scientific notation only. float() alone would also accept
# "nan", "inf", "1_000" and non-ASCII digits, none of which is a numeric answer.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)

# The seed's penalty for Qwen-VL's degenerate "addCriterion\n" loops.
_SPAM_TOKEN = "addCriterion"
_SPAM_RATIO = 0.5

# "\boxed{" and "\boxed {": the opener of a boxed answer.
_BOXED_OPEN = r"\\boxed\s*\{"
# Tokens that matter for brace matching. The opener comes first so it wins over the escape;
# "\\." swallows escaped characters ("\{", "\}", "\\") so LaTeX's literal braces do not count.
_BRACE_TOKEN_RE = re.compile(_BOXED_OPEN + r"|\\.|[{}]", re.DOTALL)

# MathVista's "(A)" letter pattern (calculate_score.py), searched anywhere in the extraction.
_MC_LETTER_RE = re.compile(r"\(([a-zA-Z])\)")

ANSWER_FORMATS = ("tags", "boxed")

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
    except Exception:  # noqa: BLE001 - a broken __str__ must not escape into the reward loop
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
    except Exception:  # noqa: BLE001 - e.g. dicts with exotic keys or __eq__; keep the reward loop alive
        return _safe_str(completion)


def _as_text(text: Any) -> str:
    """Coerce the argument of the text helpers below to a string."""
    return text if isinstance(text, str) else completion_text(text)


def count_reasoning_blocks(text: Any) -> int:
    """Number of non-overlapping ``<REASONING>...</REASONING>`` blocks in ``text``."""
    return len(_blocks(_as_text(text), REASONING_START, REASONING_END))


def count_solution_blocks(text: Any) -> int:
    """Number of non-overlapping ``<SOLUTION>...</SOLUTION>`` blocks in ``text``."""
    return len(_blocks(_as_text(text), SOLUTION_START, SOLUTION_END))


def addcriterion_share(text: Any) -> float:
    """Share of ``text``'s characters that are "addCriterion" or newlines (0.0 for the empty string)."""
    text = _as_text(text)
    if not text:
        return 0.0
    removed = text.replace(_SPAM_TOKEN, "").replace("\n", "")
    return (len(text) - len(removed)) / len(text)


def is_addcriterion_spam(text: Any) -> bool:
    """True when "addCriterion" plus newlines make up at least half of ``text``.

    This is the seed's rule verbatim, so a non-empty text of only newlines is
    penalised too; the empty string never is.
    """
    text = _as_text(text)
    return bool(text) and addcriterion_share(text) >= _SPAM_RATIO


def extract_solution(text: Any) -> str | None:
    """Content of the LAST ``<SOLUTION>...</SOLUTION>`` block, or None if there is none.

    The last block is used because it is the model's final word: a completion that
    drafts an answer and then corrects itself is judged on the correction. Newlines
    (``\\n`` and ``\\r``) are removed and surrounding whitespace stripped, so
    ``"<SOLUTION>\\n991\\n</SOLUTION>"`` yields ``"991"``. An empty block yields ``""``.
    Non-string input goes through :func:`completion_text` first.
    """
    matches = _blocks(_as_text(text), SOLUTION_START, SOLUTION_END)
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


def _scan_boxes(text: str) -> tuple[int, tuple[int, int, int] | None]:
    """Count ``\\boxed{`` openers and locate the last box that closes.

    Returns ``(openers, last)`` where ``last`` is ``(opener_start, content_start,
    content_end)`` of the closed box that ends last (an outer box beats the boxes
    nested in it), or None. One pass with a brace stack, so long or hostile text
    stays linear.
    """
    openers = 0
    stack: list[tuple[int, int] | None] = []  # (opener_start, content_start) for boxes, None for plain "{"
    last = None
    for token in _BRACE_TOKEN_RE.finditer(text):
        value = token.group()
        if value == "{":
            stack.append(None)
        elif value == "}":
            if stack:  # a stray "}" closes nothing
                opened = stack.pop()
                if opened is not None:
                    last = (opened[0], opened[1], token.start())
        elif value.startswith("\\boxed"):
            openers += 1
            stack.append((token.start(), token.end()))
        # any other token is an escaped character: not a brace
    return openers, last


def extract_boxed(text: Any) -> str | None:
    """Content of the LAST ``\\boxed{...}`` in ``text``, stripped, or None.

    Braces are matched with nesting, so ``\\boxed{\\frac{1}{2}}`` yields
    ``\\frac{1}{2}``; escaped braces (``\\{``) do not count and ``\\boxed {x}`` (with a
    space) is accepted. "Last" means the box that closes last, like
    :func:`extract_solution`'s last block; a box whose braces never close is skipped,
    so ``"\\boxed{3"`` yields None. Non-string input goes through
    :func:`completion_text` first. Never raises.
    """
    try:
        text = _as_text(text)
        _, last = _scan_boxes(text)
        if last is None:
            return None
        return text[last[1] : last[2]].strip()
    except Exception:  # noqa: BLE001 - defensive: the reward loop must survive any input
        return None


def count_boxed(text: Any) -> int:
    """Number of ``\\boxed{`` openers in ``text`` (closed or not, nested or not)."""
    try:
        return _scan_boxes(_as_text(text))[0]
    except Exception:  # noqa: BLE001 - defensive, as above
        return 0


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


def boxed_format_ok(text: Any) -> bool:
    """True when the text is a well-formed boxed answer: exactly one ``\\boxed{`` opener,
    that box closes, and no addCriterion penalty."""
    text = _as_text(text)
    return count_boxed(text) == 1 and extract_boxed(text) is not None and not is_addcriterion_spam(text)


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


def extract_answer(text: Any, answer_format: str = "tags") -> str | None:
    """The model's answer in ``answer_format``: the last ``<SOLUTION>`` block (``"tags"``) or
    the last ``\\boxed{}`` (``"boxed"``); None when there is none. Raises ValueError for an
    unknown format (a configuration error, not model output)."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer_format {answer_format!r}; expected one of {', '.join(ANSWER_FORMATS)}")
    return extract_boxed(text) if answer_format == "boxed" else extract_solution(text)


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
