"""Prepared rows to model inputs: the manifest, prompts, images and the TRL dataset."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from vlmrl_pipeline.core.prompts import PromptStyle, chat_prompts
from vlmrl_pipeline.core.samples import (
    MANIFEST_NAME,
    filter_context_overflow,
    open_images,
    prompt_token_counts,
    read_manifest,
    split_rows,
    trl_dataset,
)


@pytest.fixture()
def manifest_folder(tmp_path):
    (tmp_path / "images").mkdir()
    for pid, colour in (("a", "red"), ("b", "blue"), ("c", "green")):
        Image.new("RGB", (32, 32), colour).save(tmp_path / "images" / f"{pid}.png")
    pd.DataFrame({
        "pid": ["a", "b", "c"], "question": ["How many?", "What value?", "Which?"],
        "query": ["Hint: int.\nQuestion: How many?", "", "Q3"], "answer": ["3", "4.5", "7"],
        "split": ["train", "train", "eval"], "image_path": ["images/a.png", "images/b.png", "images/c.png"],
    }).to_parquet(tmp_path / MANIFEST_NAME)
    return tmp_path


def test_manifest_paths_resolve_against_its_folder_wherever_it_moved(manifest_folder, tmp_path_factory):
    moved = tmp_path_factory.mktemp("moved") / "resized_images"
    manifest_folder.rename(moved)
    manifest = read_manifest(moved)
    assert manifest["image_path"].tolist() == [str(moved / "images" / f"{p}.png") for p in "abc"]
    with pytest.raises(FileNotFoundError, match="resized_images"):
        read_manifest(manifest_folder)


def test_split_rows_and_empty_splits(manifest_folder):
    manifest = read_manifest(manifest_folder)
    assert split_rows(manifest, "train")["pid"].tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="'test'"):
        split_rows(manifest, "test")


def test_prompts_and_images_line_up_with_rows(manifest_folder):
    rows = split_rows(read_manifest(manifest_folder), "train")
    prompts = chat_prompts(rows)
    assert prompts[0][0]["content"][0] == {"type": "image"}
    assert prompts[0][0]["content"][1]["text"].startswith("Hint: int.\nQuestion: How many?")
    assert prompts[1][0]["content"][1]["text"].startswith("What value?")  # empty query falls back to question
    images = open_images(rows)
    assert [img.getpixel((0, 0)) for img in images] == [(255, 0, 0), (0, 0, 255)]


def test_trl_dataset_has_the_columns_grpo_trainer_and_the_rewards_read(manifest_folder):
    rows = split_rows(read_manifest(manifest_folder), "train")
    dataset = trl_dataset(rows)
    assert set(dataset.column_names) == {"prompt", "image", "answer", "pid"}
    first = dataset[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (32, 32)
    assert first["answer"] == "3" and first["prompt"][0]["role"] == "user"


def test_boxed_style_uses_a_system_turn_and_no_tag_instruction(manifest_folder):
    rows = split_rows(read_manifest(manifest_folder), "train")
    tags = chat_prompts(rows, PromptStyle())
    boxed = chat_prompts(rows, PromptStyle(answer_format="boxed", system_prompt="Put the answer in \\boxed{}."))
    assert "<SOLUTION>" in tags[0][-1]["content"][-1]["text"]
    assert boxed[0][0] == {"role": "system", "content": [{"type": "text", "text": "Put the answer in \\boxed{}."}]}
    assert "<SOLUTION>" not in boxed[0][-1]["content"][-1]["text"]
    with pytest.raises(ValueError, match="answer_format"):
        PromptStyle(answer_format="json")


def test_rows_whose_prompt_overflows_the_context_are_dropped_and_listed(manifest_folder, tiny_checkpoint):
    from vlmrl_pipeline.core.model.loading import load_processor

    processor = load_processor(tiny_checkpoint)
    rows = split_rows(read_manifest(manifest_folder), "train")
    counts = prompt_token_counts(processor, rows)
    assert counts[0] != counts[1] and min(counts) > 4  # text differs; 4 image tokens are in every prompt
    budget = min(counts)  # exactly the shorter prompt fits
    kept, dropped = filter_context_overflow(rows, processor, PromptStyle(), budget + 10, 10)
    longer = rows["pid"][counts.index(max(counts))]
    assert kept["pid"].tolist() == [p for p in rows["pid"] if p != longer]
    assert dropped == [{"pid": longer, "prompt_tokens": max(counts), "budget": budget}]
    kept_all, none = filter_context_overflow(rows, processor, PromptStyle(), max(counts) + 10, 10)
    assert len(kept_all) == 2 and none == [] and kept_all["prompt_tokens"].tolist() == counts
    with pytest.raises(ValueError, match="no room"):
        filter_context_overflow(rows, processor, PromptStyle(), 10, 10)


def test_trl_dataset_passes_choices_and_question_type_to_the_rewards(manifest_folder):
    rows = split_rows(read_manifest(manifest_folder), "train").assign(
        question_type=["multi_choice", "free_form"], choices=[["3", "4"], None])
    dataset = trl_dataset(rows)
    assert dataset["question_type"] == ["multi_choice", "free_form"]
    assert dataset["choices"] == [["3", "4"], []]
