"""Reading a completion: its text in any shape TRL hands over, and the answer in it.

The tag format follows Unsloth's Qwen3-VL GSPO notebook (the project seed): the model writes
``<REASONING>...</REASONING>`` then ``<SOLUTION>...</SOLUTION>``; geo3k-style recipes answer in ``\\boxed{...}``
instead (:func:`extract_boxed`). Block counts and the addCriterion-spam rule are here too, since the format reward
and the verdicts both read them. Never raises on model output (see the package's docstring).
"""

from __future__ import annotations

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

# The seed's penalty for Qwen-VL's degenerate "addCriterion\n" loops.
_SPAM_TOKEN = "addCriterion"
_SPAM_RATIO = 0.5

# "\boxed{" and "\boxed {": the opener of a boxed answer.
_BOXED_OPEN = r"\\boxed\s*\{"
# Tokens that matter for brace matching. The opener comes first so it wins over the escape;
# "\\." swallows escaped characters ("\{", "\}", "\\") so LaTeX's literal braces do not count.
_BRACE_TOKEN_RE = re.compile(_BOXED_OPEN + r"|\\.|[{}]", re.DOTALL)

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


def extract_answer(text: Any, answer_format: str = "tags") -> str | None:
    """The model's answer in ``answer_format``: the last ``<SOLUTION>`` block (``"tags"``) or
    the last ``\\boxed{}`` (``"boxed"``); None when there is none. Raises ValueError for an
    unknown format (a configuration error, not model output)."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer_format {answer_format!r}; expected one of {', '.join(ANSWER_FORMATS)}")
    return extract_boxed(text) if answer_format == "boxed" else extract_solution(text)
