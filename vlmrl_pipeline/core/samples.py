"""Turning prepared rows (the ``resized_images`` manifest) into model inputs: chat prompts, images, TRL datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from PIL import Image

from vlmrl_pipeline.core.prompts import PromptStyle, chat_prompts

MANIFEST_NAME = "manifest.parquet"
SPLIT_TRAIN = "train"
SPLIT_EVAL = "eval"
SPLIT_VALIDATION = "validation"
"""Rows carved from the training rows (``data_settings.validation_size``) for evaluation during training."""


def read_manifest(folder: str | os.PathLike) -> pd.DataFrame:
    """The manifest that ``resized_images`` wrote: one row per usable sample, with ``split`` and ``image_path``.

    Image paths are stored relative to ``folder`` and returned absolute.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {folder}: materialize resized_images first")
    manifest = pd.read_parquet(path)
    manifest["image_path"] = [str((Path(folder) / p).resolve()) for p in manifest["image_path"]]
    return manifest


def split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split, in manifest order; an empty split is an error, not an empty evaluation."""
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"the manifest has no {split!r} rows")
    return rows


def open_images(rows: pd.DataFrame) -> list[Image.Image]:
    """The prepared RGB images of ``rows``, fully loaded (files are closed again)."""
    images = []
    for path in rows["image_path"]:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return images


def prompt_token_counts(processor, rows: pd.DataFrame, style: PromptStyle = PromptStyle()) -> list[int]:
    """Tokens each row's prompt takes in the model, image tokens included (what the context must hold)."""
    counts = []
    for prompt, image in zip(chat_prompts(rows, style), open_images(rows)):
        text = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        encoded = processor(text=[text], images=[image])
        counts.append(len(encoded["input_ids"][0]))
    return counts


def filter_context_overflow(
    rows: pd.DataFrame, processor, style: PromptStyle, max_seq_length: int, max_new_tokens: int
) -> tuple[pd.DataFrame, list[dict]]:
    """Drop rows whose prompt plus ``max_new_tokens`` would not fit in ``max_seq_length``; list each drop.

    TRL no longer truncates prompts (``max_prompt_length`` is gone), and a truncated prompt would cut image
    placeholders and fail on an image-token mismatch, so overlong rows are removed up front and counted.
    Returns ``(kept rows with a prompt_tokens column, dropped [{"pid", "prompt_tokens", "budget"}])``.
    """
    budget = int(max_seq_length) - int(max_new_tokens)
    if budget <= 0:
        raise ValueError(
            f"max_seq_length ({max_seq_length}) leaves no room for a prompt after {max_new_tokens} new tokens"
        )
    counts = prompt_token_counts(processor, rows, style)
    fits = [c <= budget for c in counts]
    dropped = [{"pid": str(pid), "prompt_tokens": c, "budget": budget}
               for pid, c, ok in zip(rows["pid"], counts, fits) if not ok]
    kept = rows.assign(prompt_tokens=counts)[fits].reset_index(drop=True)
    return kept, dropped


def trl_dataset(rows: pd.DataFrame, style: PromptStyle = PromptStyle()):
    """A ``datasets.Dataset`` in TRL's VLM format: ``prompt`` (chat), ``image`` (decoded lazily), ``answer``, ``pid``.

    Every column besides ``prompt`` and ``image`` reaches the reward functions as a keyword list: ``answer`` for
    the correctness rewards, and ``choices``/``question_type`` so a multiple-choice letter can be scored.
    """
    import datasets

    columns = {
        "prompt": chat_prompts(rows, style),
        "image": [str(p) for p in rows["image_path"]],
        "answer": [str(a) for a in rows["answer"]],
        "pid": [str(p) for p in rows["pid"]],
    }
    if "question_type" in rows and "choices" in rows:
        columns["question_type"] = [str(q) for q in rows["question_type"]]
        columns["choices"] = [[str(x) for x in c] if c is not None else [] for c in rows["choices"]]
    return datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
