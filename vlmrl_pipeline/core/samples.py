"""Turning prepared rows (the ``resized_images`` manifest) into model inputs: chat prompts, images, TRL datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from PIL import Image

from vlmrl_pipeline.core.datasets import build_prompt_text, chat_prompt

MANIFEST_NAME = "manifest.parquet"
SPLIT_TRAIN = "train"
SPLIT_EVAL = "eval"


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


def chat_prompts(rows: pd.DataFrame, prompt_field: str = "query") -> list[list[dict]]:
    """TRL-style conversational prompts (image part + text part), one per row."""
    return [chat_prompt(build_prompt_text(row, prompt_field)) for row in rows.to_dict(orient="records")]


def open_images(rows: pd.DataFrame) -> list[Image.Image]:
    """The prepared RGB images of ``rows``, fully loaded (files are closed again)."""
    images = []
    for path in rows["image_path"]:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return images


def trl_dataset(rows: pd.DataFrame, prompt_field: str = "query"):
    """A ``datasets.Dataset`` in TRL's VLM format: ``prompt`` (chat), ``image`` (decoded lazily), ``answer``, ``pid``.

    Every column besides ``prompt`` and ``image`` reaches the reward functions as a keyword list, which is how
    ``correctness_reward`` gets ``answer``.
    """
    import datasets

    ds = datasets.Dataset.from_dict(
        {
            "prompt": chat_prompts(rows, prompt_field),
            "image": [str(p) for p in rows["image_path"]],
            "answer": [str(a) for a in rows["answer"]],
            "pid": [str(p) for p in rows["pid"]],
        }
    )
    return ds.cast_column("image", datasets.Image())
