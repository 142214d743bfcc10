"""How a row becomes a prompt: the instruction, the system turn, the image's place."""

from __future__ import annotations

import pandas as pd
import pytest

from vlmrl_pipeline.core import answers
from vlmrl_pipeline.core.data.schema import DataError
from vlmrl_pipeline.core.prompts import BOXED_SYSTEM_PROMPT, FORMAT_INSTRUCTION, build_prompt_text, chat_prompt

# --------------------------------------------------------------------------- prompts


def test_prompts_use_the_field_and_fall_back_to_question():
    row = {"query": "Hint: integer.\nQuestion: How many?", "question": "How many?"}
    assert build_prompt_text(row) == f"Hint: integer.\nQuestion: How many?\n{FORMAT_INSTRUCTION}"
    assert build_prompt_text(row, prompt_field="question") == f"How many?\n{FORMAT_INSTRUCTION}"
    for fallback in ({"query": "", "question": "Bare?"}, {"question": "Bare?"}, {"query": None, "question": "Bare?"},
                     pd.Series({"query": float("nan"), "question": "Bare?"})):
        assert build_prompt_text(fallback) == f"Bare?\n{FORMAT_INSTRUCTION}"
    with pytest.raises(DataError, match="pid='7'"):
        build_prompt_text({"pid": "7", "query": "", "question": " "})


def test_format_instruction_names_the_tags_the_rewards_parse():
    for tag in (answers.REASONING_START, answers.REASONING_END, answers.SOLUTION_START, answers.SOLUTION_END):
        assert tag in FORMAT_INSTRUCTION


def test_chat_prompt_is_trls_vlm_format():
    assert chat_prompt("t") == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "t"}]}]


# --------------------------------------------------------------------------- prompts with placeholders


def test_instruction_can_be_left_out():
    row = {"query": "<image>Find x.  "}
    assert build_prompt_text(row, instruction=None) == build_prompt_text(row, instruction="") == "<image>Find x."
    assert build_prompt_text(row, instruction="Be brief.") == "<image>Find x.\nBe brief."


@pytest.mark.parametrize("text, content", [
    ("<image>\n Find x.", [{"type": "image"}, {"type": "text", "text": "Find x."}]),
    ("Look at <image>\nthen answer.", [{"type": "text", "text": "Look at "}, {"type": "image"},
                                      {"type": "text", "text": "then answer."}]),
    ("Find x.<image>", [{"type": "text", "text": "Find x."}, {"type": "image"}]),
    ("<image>", [{"type": "image"}]),
    ("Find x.", [{"type": "image"}, {"type": "text", "text": "Find x."}]),
])
def test_chat_prompt_puts_the_image_at_its_placeholder(text, content):
    assert chat_prompt(text) == [{"role": "user", "content": content}]


def test_chat_prompt_system_turn_and_one_placeholder_only():
    assert chat_prompt("t", system_prompt=BOXED_SYSTEM_PROMPT)[0] == {
        "role": "system", "content": [{"type": "text", "text": BOXED_SYSTEM_PROMPT}]}
    assert BOXED_SYSTEM_PROMPT.endswith("Answer: \\boxed{$Answer}.")
    with pytest.raises(DataError, match="2 <image> placeholders"):
        chat_prompt("<image> and <image>")
