"""Loading, filtering, image preparation, splitting and prompts for MathVista-format data.

Plain Python on purpose (no dagster import): the assets call these functions, and the
tests exercise them without an orchestration layer. The Hugging Face ``datasets``
library is imported lazily, only when a hub id is actually loaded.
"""

from __future__ import annotations

import hashlib
import io
import math
import numbers
import os
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from vlmrl_pipeline.core.answers import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START, parse_number
from vlmrl_pipeline.core.atomic import atomic_file

__all__ = [
    "MATHVISTA_COLUMNS",
    "FORMAT_INSTRUCTION",
    "DataError",
    "load_mathvista",
    "is_numeric_answer",
    "filter_mathvista",
    "load_image",
    "resize_image",
    "prepare_images",
    "split_train_eval",
    "build_prompt_text",
    "chat_prompt",
]

# Required columns; `image` (the relative file name) is optional.
MATHVISTA_COLUMNS = (
    "pid",
    "question",
    "query",
    "decoded_image",
    "choices",
    "unit",
    "precision",
    "answer",
    "question_type",
    "answer_type",
    "metadata",
)

# The tags are the ones answers.py parses, so the prompt and the rewards cannot drift apart.
FORMAT_INSTRUCTION = (
    f"First think step by step inside {REASONING_START}{REASONING_END}, "
    f"then give only the final answer inside {SOLUTION_START}{SOLUTION_END}."
)


class DataError(ValueError):
    """Bad input data: the message says what is wrong and where."""


# --------------------------------------------------------------------------- loading


def _is_missing(value: Any) -> bool:
    """None, NaN (float or numpy), pd.NA or pd.NaT; containers and arrays are never "missing"."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isnan(value)


def _to_list(value: Any) -> list | None:
    """Turn a choices/skills value (list, tuple, numpy array or missing) into a list or None."""
    if _is_missing(value):
        return None
    if isinstance(value, str):
        return [value]
    return list(value)


def _normalise_frame(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Fill `query`, validate the columns and give the cells one Python shape."""
    df = df.copy()
    if "query" not in df.columns and "question" in df.columns:
        df["query"] = df["question"]
    missing = [c for c in MATHVISTA_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}: missing required column(s) {missing}; columns found: {list(df.columns)}"
        )
    if len(df) == 0:
        raise DataError(f"{where}: the table has no rows")
    df = df.reset_index(drop=True)
    df["pid"] = df["pid"].map(lambda v: None if _is_missing(v) else str(v))
    df["choices"] = pd.Series([_to_list(v) for v in df["choices"]], dtype=object)
    df["unit"] = pd.Series([None if _is_missing(v) else str(v) for v in df["unit"]], dtype=object)
    try:
        df["precision"] = pd.to_numeric(df["precision"], errors="raise").astype("float64")
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: column 'precision' is not numeric: {exc}") from exc
    metadata = []
    for v in df["metadata"]:
        if isinstance(v, Mapping):
            v = dict(v)
            if "skills" in v:
                v["skills"] = _to_list(v["skills"]) or []
        metadata.append(v)
    df["metadata"] = pd.Series(metadata, dtype=object)
    return df


def _read_parquet_records(path: Path) -> pd.DataFrame:
    # pyarrow -> Python objects keeps lists as lists and structs as dicts
    # (pandas' own conversion would turn lists into numpy arrays).
    try:
        table = pq.read_table(path)
    except Exception as exc:  # any arrow/IO decoding failure is a bad file
        raise DataError(f"cannot read parquet file {path}: {exc}") from exc
    return pd.DataFrame(table.to_pylist(), columns=table.column_names)


def _load_hub_dataset(source: str, split: str) -> pd.DataFrame:
    """Load ``source`` from the Hugging Face hub; images stay undecoded {"bytes", "path"} dicts."""
    import datasets  # lazy: heavy import, only needed for hub ids

    ds = datasets.load_dataset(source, split=split)
    if "decoded_image" in ds.column_names:
        ds = ds.cast_column("decoded_image", datasets.Image(decode=False))
    # list cells arrive as numpy arrays here; _normalise_frame turns them back into lists
    return ds.to_pandas()


def load_mathvista(source: str, split: str = "testmini") -> pd.DataFrame:
    """Load MathVista-format rows from a local folder or a hub id.

    If ``source`` is an existing directory, every parquet file below it (recursively)
    named ``{split}-*.parquet`` or ``{split}.parquet`` is read and concatenated in file
    name order (the hub layout ``data/testmini-00000-of-00001-xxxx.parquet``; ``test`` does not pick up
    ``testmini`` files). Otherwise ``source`` is a hub id loaded with
    ``datasets.load_dataset(source, split=split)`` (hub errors propagate unchanged).

    A missing ``query`` column is filled from ``question``. ``choices`` become lists
    (or None), ``unit`` str (or None), ``precision`` float64 (NaN for missing).
    Raises DataError for a missing folder-like path, no matching files, missing
    required columns, or an empty table.
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        root = Path(source)
        # ordered by file name (the shard number), wherever the shards sit
        files = sorted(
            (p for p in root.rglob("*.parquet") if p.is_file() and (p.name.startswith(f"{split}-") or p.stem == split)),
            key=lambda p: (p.name, str(p)),
        )
        if not files:
            raise DataError(
                f"no parquet files for split {split!r} under {root} "
                f"(looked for '{split}-*.parquet' and '{split}.parquet', recursively)"
            )
        df = pd.concat([_read_parquet_records(f) for f in files], ignore_index=True)
        where = f"{root} split {split!r} ({len(files)} file(s))"
    else:
        if os.path.exists(source):
            raise DataError(f"{source} is a file; pass the folder that holds the parquet files")
        if os.path.isabs(source) or source.startswith((".", "~")):
            raise DataError(f"local folder {source} does not exist")
        df = _load_hub_dataset(source, split)
        where = f"hub dataset {source!r} split {split!r}"
    return _normalise_frame(df, where)


# --------------------------------------------------------------------------- filtering


def is_numeric_answer(answer: Any) -> bool:
    """True if ``answer`` is a plain finite number: "3", " -2 ", "3.5", ".5", "1e3", 7, 2.5.

    The rule is ``answers.parse_number``'s, so the filter keeps exactly the answers the
    numeric reward can score: thousands separators ("1,000"), units ("3 cm"),
    underscores, "nan"/"inf"/overflow, "", None and bools are not numeric.
    """
    return parse_number(answer) is not None


def _answer_missing(answer: Any) -> bool:
    return _is_missing(answer) or (isinstance(answer, str) and not answer.strip())


def filter_mathvista(
    df: pd.DataFrame, numeric_only: bool = True, free_form_only: bool = False
) -> tuple[pd.DataFrame, dict]:
    """Keep the rows fit for numeric-reward training; return (kept rows, counts).

    Steps, in order, each counted on the rows left by the previous one: drop rows with
    a missing/blank answer; drop repeated pids (the first is kept); if ``numeric_only``,
    drop answers ``is_numeric_answer`` rejects; if ``free_form_only``, drop
    ``multi_choice`` rows. Counts: rows_in, rows_kept, dropped_missing_answer,
    dropped_duplicate_pid, dropped_non_numeric, dropped_multi_choice (they add up).
    """
    needed = ["pid", "answer"] + (["question_type"] if free_form_only else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"filter_mathvista: missing column(s) {missing}; columns found: {list(df.columns)}")
    counts = {
        "rows_in": len(df),
        "rows_kept": 0,
        "dropped_missing_answer": 0,
        "dropped_duplicate_pid": 0,
        "dropped_non_numeric": 0,
        "dropped_multi_choice": 0,
    }
    out = df.reset_index(drop=True)

    def _drop(mask: pd.Series, key: str) -> None:
        nonlocal out
        counts[key] = int(mask.sum())
        out = out[~mask]

    _drop(out["answer"].map(_answer_missing).astype(bool), "dropped_missing_answer")
    _drop(out["pid"].astype(str).duplicated(keep="first"), "dropped_duplicate_pid")
    if numeric_only:
        _drop(~out["answer"].map(is_numeric_answer).astype(bool), "dropped_non_numeric")
    if free_form_only:
        _drop((out["question_type"] == "multi_choice").astype(bool), "dropped_multi_choice")
    out = out.reset_index(drop=True)
    counts["rows_kept"] = len(out)
    return out, counts


# --------------------------------------------------------------------------- images


def _decode(open_stream, what: str) -> Image.Image:
    """Open and fully decode an image, turning every failure into a DataError."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse that range too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_stream() as fh:
                img = Image.open(fh)
                if limit is not None and img.width * img.height > limit:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                img.load()  # decode now, while the stream is open
        return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{what} is too large to decode safely (limit {limit} pixels): {exc}") from exc
    except Exception as exc:  # decoders raise many types (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"{what} is corrupt or unreadable: {type(exc).__name__}: {exc}") from exc


def load_image(value: Any) -> Image.Image:
    """Decode an image from a {"bytes", "path"} dict, raw bytes, a path or a PIL image.

    Dicts use ``bytes`` when present, else ``path``. The pixels are fully decoded
    (``img.load()``) so corrupt data fails here. Raises DataError for missing,
    unreadable or corrupt data, and for images above PIL's ``MAX_IMAGE_PIXELS``
    ("too large to decode safely").
    """
    data: Any = None
    path: Any = None
    if isinstance(value, Image.Image):
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and value.width * value.height > limit:
            raise DataError(f"PIL image of {value.width}x{value.height} is too large to decode safely")
        try:
            value.load()
        except Exception as exc:
            raise DataError(f"PIL image is corrupt or unreadable: {type(exc).__name__}: {exc}") from exc
        return value
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = value
    elif isinstance(value, (str, os.PathLike)):
        path = value
    elif _is_missing(value):
        raise DataError("image is missing")
    else:
        raise DataError(f"unsupported image value of type {type(value).__name__}")

    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > 0:
        blob = bytes(data)
        label = f"image bytes ({len(blob)} bytes" + (f", path {path}" if isinstance(path, str) and path else "") + ")"
        return _decode(lambda: io.BytesIO(blob), label)
    if isinstance(path, (str, os.PathLike)) and os.fspath(path):
        file = os.fspath(path)
        if not os.path.isfile(file):
            raise DataError(f"image file {file} does not exist (and there are no image bytes)")
        return _decode(lambda: open(file, "rb"), f"image file {file}")
    raise DataError("image has neither bytes nor a path")


def resize_image(img: Image.Image, size: int) -> Image.Image:
    """Return an RGB copy of ``img`` resized to exactly ``size`` x ``size`` (LANCZOS).

    Transparent images (RGBA, LA, palette with transparency) are composited on white;
    L, P, CMYK, 16-bit and other modes are converted to RGB. Aspect ratio is not kept.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise DataError(f"image size must be a positive integer, got {size!r}")
    try:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba).convert("RGB")
        elif img.mode.startswith("I;16"):
            # 16-bit grey: scale to 8 bits instead of clipping at 255
            img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
        elif img.mode != "RGB":
            img = img.convert("RGB")
        return img.resize((int(size), int(size)), Image.Resampling.LANCZOS)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot convert image of mode {img.mode} to RGB: {exc}") from exc


_SAFE_PID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def prepare_images(df: pd.DataFrame, out_dir: str | os.PathLike, size: int) -> tuple[pd.DataFrame, list[dict]]:
    """Decode, resize and save each row's image to ``out_dir/{pid}.png``.

    Returns (rows whose image was written, skipped) where the frame gains
    ``image_path`` (absolute path str) and ``image_sha256`` (sha256 of the resized
    image's raw RGB bytes, for de-duplication across splits) and loses
    ``decoded_image``; ``skipped`` lists {"pid", "reason"} for rows whose image is
    missing/corrupt/too large, whose pid is not a safe file name, or whose pid
    repeats. Each PNG is written to a temporary name and then renamed into place.
    """
    missing = [c for c in ("pid", "decoded_image") if c not in df.columns]
    if missing:
        raise DataError(f"prepare_images: missing column(s) {missing}; columns found: {list(df.columns)}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    kept_rows: list[int] = []
    paths: list[str] = []
    hashes: list[str] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    for pos, (pid, value) in enumerate(zip(df["pid"], df["decoded_image"])):
        pid = str(pid)
        if not _SAFE_PID.fullmatch(pid):
            skipped.append({"pid": pid, "reason": f"pid {pid!r} is not a safe file name"})
            continue
        if pid in seen:
            skipped.append({"pid": pid, "reason": f"duplicate pid {pid!r}"})
            continue
        try:
            img = resize_image(load_image(value), size)
        except DataError as exc:
            skipped.append({"pid": pid, "reason": str(exc)})
            continue
        seen.add(pid)
        final = out / f"{pid}.png"
        with atomic_file(final) as tmp:
            img.save(tmp, format="PNG")
        kept_rows.append(pos)
        paths.append(str(final))
        hashes.append(hashlib.sha256(img.tobytes()).hexdigest())
    result = df.iloc[kept_rows].drop(columns=["decoded_image"]).reset_index(drop=True)
    result["image_path"] = pd.Series(paths, dtype=object)
    result["image_sha256"] = pd.Series(hashes, dtype=object)
    return result, skipped


# --------------------------------------------------------------------------- split


def split_train_eval(df: pd.DataFrame, eval_size: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (train, eval) with ``eval_size`` eval rows, disjoint by pid.

    Deterministic for a seed: pids are sorted, shuffled with ``random.Random(seed)``
    and the first ``eval_size`` go to eval, so the result does not depend on row
    order. Both frames keep the input's row order, with a fresh index. If the frame
    has an ``image_sha256`` column, training rows whose image hash equals an eval
    row's are dropped too (no identical image on both sides), so train can be
    smaller than ``len(df) - eval_size``. Raises DataError if ``eval_size`` is not
    in 1..len(df)-1, pids repeat, or no training row is left.
    """
    if "pid" not in df.columns:
        raise DataError(f"split_train_eval: missing column 'pid'; columns found: {list(df.columns)}")
    n = len(df)
    if isinstance(eval_size, bool) or not isinstance(eval_size, numbers.Integral):
        raise DataError(f"eval_size must be an integer, got {eval_size!r}")
    if eval_size < 1 or eval_size >= n:
        raise DataError(
            f"eval_size must be between 1 and {n - 1} for {n} rows (training needs at least one row), "
            f"got {eval_size}"
        )
    pids = df["pid"].astype(str)
    dup = pids[pids.duplicated()].unique().tolist()
    if dup:
        raise DataError(f"split_train_eval: repeated pids {dup[:10]}; de-duplicate first (filter_mathvista)")
    order = sorted(pids)
    random.Random(seed).shuffle(order)
    eval_pids = set(order[: int(eval_size)])
    is_eval = pids.isin(eval_pids)
    eval_df = df[is_eval.to_numpy()]
    train_df = df[~is_eval.to_numpy()]
    if "image_sha256" in df.columns:
        eval_hashes = set(eval_df["image_sha256"].dropna())
        train_df = train_df[~train_df["image_sha256"].isin(eval_hashes).to_numpy()]
        if len(train_df) == 0:
            raise DataError("split_train_eval: every training row shares its image with an eval row")
    return train_df.reset_index(drop=True), eval_df.reset_index(drop=True)


# --------------------------------------------------------------------------- prompts


def build_prompt_text(row: Mapping, prompt_field: str = "query") -> str:
    """Prompt text: ``row[prompt_field]`` (else ``row["question"]``), a newline, FORMAT_INSTRUCTION."""
    text = row.get(prompt_field) if hasattr(row, "get") else None
    if _is_missing(text) or not str(text).strip():
        text = row.get("question") if hasattr(row, "get") else None
    if _is_missing(text) or not str(text).strip():
        pid = row.get("pid") if hasattr(row, "get") else None
        raise DataError(f"row pid={pid!r} has neither {prompt_field!r} nor 'question' text")
    return f"{str(text).rstrip()}\n{FORMAT_INSTRUCTION}"


def chat_prompt(text: str) -> list[dict]:
    """One user turn with an image placeholder then ``text`` (TRL's VLM conversational format)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
