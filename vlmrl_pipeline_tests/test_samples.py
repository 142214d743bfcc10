"""Prepared rows to model inputs: the manifest, prompts, images and the TRL dataset."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from vlmrl_pipeline.core.samples import MANIFEST_NAME, chat_prompts, open_images, read_manifest, split_rows, trl_dataset


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
