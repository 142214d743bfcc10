"""How a problem becomes a prompt: the answer-format instruction, RLinf's boxed system prompt, the image's place
in the user turn, and :class:`PromptStyle`, the one choice warm start, training, evaluation and export checks share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from vlmrl_pipeline.core.answers.extraction import (
    ANSWER_FORMATS,
    REASONING_END,
    REASONING_START,
    SOLUTION_END,
    SOLUTION_START,
)
from vlmrl_pipeline.core.data.schema import DataError, is_missing

# The tags are the ones answers/extraction.py parses, so the prompt and the rewards cannot drift apart.
FORMAT_INSTRUCTION = (
    f"First think step by step inside {REASONING_START}{REASONING_END}, "
    f"then give only the final answer inside {SOLUTION_START}{SOLUTION_END}."
)


# RLinf's geo3k system prompt: with it the instruction lives in the system turn and
# build_prompt_text is called with instruction=None.
BOXED_SYSTEM_PROMPT = (
    "Solve the following math problem step by step. "
    "The last line of your response should be of the form Answer: \\boxed{$Answer}."
)

# Where the image goes inside a prompt's text (RLinf / LLaVA convention).
IMAGE_PLACEHOLDER = "<image>"


def build_prompt_text(row: Mapping, prompt_field: str = "query", instruction: str | None = FORMAT_INSTRUCTION) -> str:
    """Prompt text: ``row[prompt_field]`` (else ``row["question"]``), a newline, ``instruction``.

    ``instruction`` None or "" appends nothing: RLinf-style prompts carry their
    instruction in the system turn (BOXED_SYSTEM_PROMPT) instead.
    """
    text = row.get(prompt_field) if hasattr(row, "get") else None
    if is_missing(text) or not str(text).strip():
        text = row.get("question") if hasattr(row, "get") else None
    if is_missing(text) or not str(text).strip():
        pid = row.get("pid") if hasattr(row, "get") else None
        raise DataError(f"row pid={pid!r} has neither {prompt_field!r} nor 'question' text")
    if not instruction:
        return str(text).rstrip()
    return f"{str(text).rstrip()}\n{instruction}"


def chat_prompt(text: str, system_prompt: str | None = None) -> list[dict]:
    """TRL's VLM conversational format: an optional system turn, then one user turn.

    The user turn places the image where ``text`` has its ``<image>`` placeholder (text
    before, image, text after; whitespace right after the placeholder dropped, empty
    text parts left out); without a placeholder the image comes first. More than one
    placeholder is a DataError: a sample here has exactly one image.
    """
    count = text.count(IMAGE_PLACEHOLDER)
    if count > 1:
        raise DataError(
            f"prompt has {count} {IMAGE_PLACEHOLDER} placeholders; this pipeline uses exactly one image per sample"
        )
    if count == 0:
        content = [{"type": "image"}, {"type": "text", "text": text}]
    else:
        before, after = text.split(IMAGE_PLACEHOLDER, 1)
        after = after.lstrip()
        content = ([{"type": "text", "text": before}] if before.strip() else []) + [{"type": "image"}]
        if after:
            content.append({"type": "text", "text": after})
    messages = [{"role": "user", "content": content}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return messages


@dataclass(frozen=True)
class PromptStyle:
    """How a row becomes a prompt; the same style is used for warm start, training, evaluation and export checks.

    ``answer_format="tags"`` (the seeds') appends the <REASONING>/<SOLUTION> instruction to the user turn;
    ``"boxed"`` (RLinf's geo3k) appends nothing and relies on ``system_prompt`` to ask for ``\\boxed{}``.
    """

    prompt_field: str = "query"
    answer_format: str = "tags"
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")

    @property
    def instruction(self) -> str | None:
        return FORMAT_INSTRUCTION if self.answer_format == "tags" else None


def chat_prompts(rows: pd.DataFrame, style: PromptStyle = PromptStyle()) -> list[list[dict]]:
    """TRL-style conversational prompts (optional system turn, image part + text parts), one per row."""
    return [
        chat_prompt(build_prompt_text(row, style.prompt_field, instruction=style.instruction),
                    system_prompt=style.system_prompt or None)
        for row in rows.to_dict(orient="records")
    ]
