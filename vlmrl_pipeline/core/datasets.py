"""Loading, filtering, image preparation, splitting and prompting for MathVista-format data.

Bad input never passes silently: a missing column, an empty table or an unreadable image raises ``DataError``
(or, for images inside :func:`prepare_images`, is skipped and reported).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from vlmrl_pipeline.core.answers import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START

MATHVISTA_COLUMNS = (
    "pid", "question", "query", "decoded_image", "choices", "unit", "precision", "answer", "question_type",
    "answer_type", "metadata",
)
REQUIRED_COLUMNS = ("pid", "question", "decoded_image", "answer")

FORMAT_INSTRUCTION = (
    f"First reason inside {REASONING_START}{REASONING_END}, then give only the final answer inside "
    f"{SOLUTION_START}{SOLUTION_END}."
)

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class DataError(ValueError):
    """Input data that cannot be used, with what and where in the message."""


def _load_hub_dataset(source: str, split: str) -> pd.DataFrame:
    """Load ``source`` from the hub with ``datasets`` and keep images as ``{"bytes", "path"}`` dicts."""
    import datasets

    ds = datasets.load_dataset(source, split=split)
    if "decoded_image" in ds.column_names:
        ds = ds.cast_column("decoded_image", datasets.Image(decode=False))
    return ds.to_pandas()


def load_mathvista(source: str, split: str = "testmini") -> pd.DataFrame:
    """MathVista rows from a local folder in the hub's parquet layout or from a hub id.

    A folder is searched recursively for parquet files named after ``split``
    (``data/testmini-00000-of-00001-....parquet``, or ``testmini.parquet``). Missing ``query`` is filled from ``question``.
    """
    folder = Path(source)
    if folder.is_dir():
        # "test-00000-..." must not also pick up "testmini-00000-...": the split name ends at '-' or '.'.
        files = sorted(p for p in folder.rglob("*.parquet") if re.match(rf"{re.escape(split)}[-.]", p.name))
        if not files:
            raise DataError(f"no parquet file named {split}-*.parquet or {split}.parquet under {folder}")
        table = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    else:
        table = _load_hub_dataset(source, split)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{source} ({split}) lacks column(s) {missing}; found {sorted(table.columns)}")
    if table.empty:
        raise DataError(f"{source} ({split}) has no rows")
    if "query" not in table.columns:
        table["query"] = table["question"]
    for column in ("choices", "unit", "precision", "question_type", "answer_type", "metadata"):
        if column not in table.columns:
            table[column] = None
    table["pid"] = table["pid"].astype(str)
    return table


def is_numeric_answer(answer: Any) -> bool:
    """True for an answer written as a plain finite number ("3", "-2", "3.5", "1e3")."""
    if answer is None or isinstance(answer, bool):
        return False
    text = str(answer).strip()
    if not _NUMBER.fullmatch(text):
        return False
    return math.isfinite(float(text))


def _missing(answer: Any) -> bool:
    if answer is None:
        return True
    if isinstance(answer, float) and math.isnan(answer):
        return True
    return str(answer).strip() == ""


def filter_mathvista(df: pd.DataFrame, numeric_only: bool = True, free_form_only: bool = False):
    """Keep usable rows; return ``(kept, counts)`` with every reason for a drop counted."""
    counts = {"rows_in": len(df), "dropped_missing_answer": 0, "dropped_duplicate_pid": 0,
              "dropped_non_numeric": 0, "dropped_multi_choice": 0}
    keep = ~df["answer"].map(_missing)
    counts["dropped_missing_answer"] = int((~keep).sum())
    dup = df["pid"].astype(str).duplicated() & keep
    counts["dropped_duplicate_pid"] = int(dup.sum())
    keep &= ~dup
    if numeric_only:
        numeric = df["answer"].map(is_numeric_answer)
        counts["dropped_non_numeric"] = int((keep & ~numeric).sum())
        keep &= numeric
    if free_form_only:
        multi = df["question_type"].astype(str) == "multi_choice"
        counts["dropped_multi_choice"] = int((keep & multi).sum())
        keep &= ~multi
    kept = df[keep].reset_index(drop=True)
    counts["rows_kept"] = len(kept)
    return kept, counts


def load_image(value: Any) -> Image.Image:
    """A fully decoded PIL image from ``{"bytes", "path"}``, raw bytes, a path or a PIL image."""
    if isinstance(value, Image.Image):
        return value
    data, path = None, None
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, (str, os.PathLike)):
        path = value
    try:
        if data:
            img = Image.open(io.BytesIO(data))
        elif path and Path(path).is_file():
            img = Image.open(path)
        else:
            raise DataError(f"no image data (path {path!r})")
        img.load()
    except Image.DecompressionBombError as exc:
        raise DataError(f"image too large to decode safely: {exc}") from exc
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DataError(f"corrupt or unreadable image: {type(exc).__name__}: {exc}") from exc
    return img


def resize_image(img: Image.Image, size: int) -> Image.Image:
    """RGB (transparency composited on white), exactly ``size`` x ``size``."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[-1])
        img = background
    return img.convert("RGB").resize((size, size), Image.LANCZOS)


def prepare_images(df: pd.DataFrame, out_dir, size: int):
    """Decode, resize and save every row's image as ``{pid}.png``; skip (and list) the ones that fail.

    Returns ``(rows with image_path and image_sha256, skipped)``; ``decoded_image`` is dropped.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for record in df.to_dict(orient="records"):
        pid = str(record["pid"])
        try:
            img = resize_image(load_image(record.get("decoded_image")), size)
        except DataError as exc:
            skipped.append({"pid": pid, "reason": str(exc)})
            continue
        target = out / f"{pid}.png"
        fd, tmp = tempfile.mkstemp(prefix=f".{pid}.", suffix=".png", dir=out)
        os.close(fd)
        img.save(tmp, format="PNG")
        os.replace(tmp, target)
        record.pop("decoded_image", None)
        record["image_path"] = str(target.resolve())
        record["image_sha256"] = hashlib.sha256(img.tobytes()).hexdigest()
        rows.append(record)
    columns = [c for c in df.columns if c != "decoded_image"] + ["image_path", "image_sha256"]
    return pd.DataFrame.from_records(rows, columns=columns), skipped


def split_train_eval(df: pd.DataFrame, eval_size: int, seed: int):
    """Deterministic held-out split, disjoint by pid; train rows whose image equals an eval image are dropped."""
    if eval_size < 1 or eval_size >= len(df):
        raise DataError(f"eval_size must be between 1 and {len(df) - 1} for {len(df)} rows, got {eval_size}")
    shuffled = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    held_out = shuffled.iloc[:eval_size].reset_index(drop=True)
    train = shuffled.iloc[eval_size:]
    if "image_sha256" in df.columns:
        train = train[~train["image_sha256"].isin(set(held_out["image_sha256"]))]
    if train.empty:
        raise DataError("no training rows left after holding out the evaluation set")
    return train.reset_index(drop=True), held_out


def build_prompt_text(row: Mapping, prompt_field: str = "query") -> str:
    """The user text: ``row[prompt_field]`` (falling back to ``question``) and the format instruction."""
    text = row.get(prompt_field)
    if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
        text = row.get("question", "")
    return f"{str(text).strip()}\n{FORMAT_INSTRUCTION}"


def chat_prompt(text: str) -> list[dict]:
    """TRL's conversational VLM prompt: one user turn with the image, then the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
