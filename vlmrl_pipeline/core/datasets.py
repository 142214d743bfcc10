"""Loading, filtering, image preparation, splitting and prompts for MathVista-format data.

Plain Python on purpose (no dagster import): the assets call these functions, and the
tests exercise them without an orchestration layer. The Hugging Face ``datasets``
library is imported lazily, only when a hub id is actually loaded.

Three input formats end up in one canonical schema (MATHVISTA_COLUMNS), so every later
stage is format-blind: MathVista's hub parquet layout, MathVista's GitHub layout
(``testmini.json`` + ``images/`` + ``query.json``) and RLinf's geo3k-style rows
(``load_rlinf``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from vlmrl_pipeline.core.answers import (
    REASONING_END,
    REASONING_START,
    SOLUTION_END,
    SOLUTION_START,
    parse_number,
    unbox_answer,
)
from vlmrl_pipeline.core.atomic import atomic_file

__all__ = [
    "BOXED_SYSTEM_PROMPT",
    "FORMAT_INSTRUCTION",
    "IMAGE_PLACEHOLDER",
    "MATHVISTA_COLUMNS",
    "SKIP_KINDS",
    "DataError",
    "build_mathvista_query",
    "build_prompt_text",
    "chat_prompt",
    "count_skips",
    "filter_rows",
    "filter_mathvista",
    "is_numeric_answer",
    "load_image",
    "load_mathvista",
    "load_rlinf",
    "prepare_images",
    "resize_image",
    "split_train_eval",
    "strip_boxed",
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


# RLinf's geo3k system prompt: with it the instruction lives in the system turn and
# build_prompt_text is called with instruction=None.
BOXED_SYSTEM_PROMPT = (
    "Solve the following math problem step by step. "
    "The last line of your response should be of the form Answer: \\boxed{$Answer}."
)

# Where the image goes inside a prompt's text (RLinf / LLaVA convention).
IMAGE_PLACEHOLDER = "<image>"

# Why prepare_images skipped a row; count_skips reports every one of them.
SKIP_KINDS = (
    "missing_image",
    "corrupt_image",
    "image_too_large",
    "image_count",
    "unsafe_pid",
    "duplicate_pid",
)


class DataError(ValueError):
    """Bad input data: the message says what is wrong and where.

    ``kind`` (one of SKIP_KINDS, or None) classifies per-row image problems where they
    are raised, so prepare_images can count skips without parsing messages.
    """

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


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


UNREADABLE_COLUMN = "_unreadable"
"""Set by the parquet reader on rows with a cell it could not decode (text that is not UTF-8): ``{"column",
"reason"}``; ``filter_rows`` drops such rows as counted, named skips. Never in the filtered output."""


def _read_parquet_records(path: Path) -> pd.DataFrame:
    # pyarrow -> Python objects keeps lists as lists and structs as dicts
    # (pandas' own conversion would turn lists into numpy arrays).
    try:
        table = pq.read_table(path)
    except Exception as exc:  # any arrow/IO decoding failure is a bad file
        raise DataError(f"cannot read parquet file {path}: {exc}") from exc
    try:
        return pd.DataFrame(table.to_pylist(), columns=table.column_names)
    except UnicodeDecodeError:
        pass  # some text cell is not UTF-8: decode cell by cell, and mark only the rows that fail
    columns: dict[str, list] = {}
    unreadable: list[dict | None] = [None] * table.num_rows
    for name in table.column_names:
        column = table.column(name)
        try:
            columns[name] = column.to_pylist()
            continue
        except UnicodeDecodeError:
            pass
        values = []
        for row in range(table.num_rows):
            try:
                values.append(column[row].as_py())
            except UnicodeDecodeError as exc:
                values.append(None)
                why = f"column {name!r} is not valid UTF-8 text ({exc.reason} at byte {exc.start}) in {path.name}"
                if unreadable[row] is None:
                    unreadable[row] = {"column": name, "reason": why}
                else:  # several bad cells in one row: name the first column, give every reason
                    unreadable[row]["reason"] += f"; {why}"
        columns[name] = values
    df = pd.DataFrame(columns, columns=table.column_names)
    df[UNREADABLE_COLUMN] = pd.Series(unreadable, dtype=object)
    return df


def _load_hub_dataset(source: str, split: str) -> pd.DataFrame:
    """Load ``source`` from the Hugging Face hub; images stay undecoded {"bytes", "path"} dicts."""
    import datasets  # lazy: heavy import, only needed for hub ids

    ds = datasets.load_dataset(source, split=split)
    if "decoded_image" in ds.column_names:
        ds = ds.cast_column("decoded_image", datasets.Image(decode=False))
    # list cells arrive as numpy arrays here; _normalise_frame turns them back into lists
    return ds.to_pandas()


def split_files(root: Path, split: str, suffix: str) -> list[Path]:
    """``{split}-*{suffix}`` and ``{split}{suffix}`` files below ``root`` (recursively), by file name.

    Ordered by file name (the shard number), wherever the shards sit; ``test`` does not
    pick up ``testmini`` files.
    """
    return sorted(
        (p for p in root.rglob(f"*{suffix}")
         if p.is_file() and (p.name.startswith(f"{split}-") or p.name == f"{split}{suffix}")),
        key=lambda p: (p.name, str(p)),
    )


def is_local_path(source: str) -> bool:
    """A path that is clearly local (it exists, is absolute, or starts with "." or "~"): never sent to the hub."""
    return os.path.exists(source) or os.path.isabs(source) or source.startswith((".", "~"))


def _check_local_source(source: str) -> None:
    """Refuse a file, or a path that is clearly local but missing (it must not go to the hub)."""
    if os.path.exists(source):
        raise DataError(f"{source} is a file; pass the folder that holds the data files")
    if is_local_path(source):
        raise DataError(f"local folder {source} does not exist")


def _read_json(path: Path) -> Any:
    # surrogateescape: bytes that are not UTF-8 survive as lone surrogates inside their string, so one bad cell
    # costs its row (a named skip, see _mark_undecodable), not the whole file.
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read JSON file {path}: {exc}") from exc


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _undecodable_column(record: Mapping) -> str | None:
    """The first top-level field of a JSON row whose text holds bytes that were not UTF-8 (lone surrogates from
    ``surrogateescape``), looking inside lists and objects; None when the row is clean."""
    def bad(value: Any, depth: int = 0) -> bool:
        if isinstance(value, str):
            return _LONE_SURROGATE.search(value) is not None
        if depth > 8:
            return False
        if isinstance(value, Mapping):
            return any(bad(k, depth + 1) or bad(v, depth + 1) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return any(bad(v, depth + 1) for v in value)
        return False

    return next((str(key) for key, value in record.items() if bad(value)), None)


def _replace_surrogates(value: Any, depth: int = 0) -> Any:
    """The value with every undecodable byte shown as U+FFFD: tables (pyarrow strings) cannot hold lone
    surrogates, and the row is dropped anyway."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if depth > 8:
        return value
    if isinstance(value, Mapping):
        return {_replace_surrogates(k, depth + 1): _replace_surrogates(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_surrogates(v, depth + 1) for v in value]
    return value


def _mark_undecodable(record: Mapping, path: Path) -> Mapping:
    """``record``, or, when some text in it was not UTF-8, a cleaned copy carrying ``UNREADABLE_COLUMN``."""
    column = _undecodable_column(record)
    if column is None:
        return record
    return {**_replace_surrogates(record), UNREADABLE_COLUMN: {
        "column": column, "reason": f"column {column!r} is not valid UTF-8 text in {path.name}"}}


# The GitHub layout's hints, by answer type (MathVista's evaluation/build_query.py, shot_type "solution").
_HINT_MULTI_CHOICE = (
    "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
)
_HINT_INTEGER = (
    "Hint: Please answer the question requiring an integer answer and provide the final value, "
    "e.g., 1, 2, 3, at the end."
)
_HINT_FLOAT = {
    1: "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the "
    "final value, e.g., 1.2, 1.3, 1.4, at the end.",
    2: "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the "
    "final value, e.g., 1.23, 1.34, 1.45, at the end.",
}
_HINT_LIST = (
    "Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
    "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end."
)


def build_mathvista_query(row: Mapping) -> str:
    """The ``query`` text MathVista's hub rows carry, rebuilt from a problem's fields.

    Lines joined by newlines: the hint (by question/answer type and precision), then
    ``Question: {question}`` plus `` (Unit: {unit})`` when there is a unit, then
    ``Choices:`` and ``(A) ...`` lines when there are choices. This is MathVista's
    build_query.py for shot_type "solution" without captions/OCR and without its
    trailing "Solution: " line; the hint comes first because that is how the hub's
    ``query`` column reads. Types with no hint there (free-form text, floats of
    another precision) get none.
    """
    question_type = row.get("question_type")
    answer_type = row.get("answer_type")
    precision = row.get("precision")
    hint = ""
    if question_type == "multi_choice":
        hint = _HINT_MULTI_CHOICE
    elif answer_type == "integer":
        hint = _HINT_INTEGER
    elif answer_type == "float" and not _is_missing(precision) and parse_number(precision) in _HINT_FLOAT:
        hint = _HINT_FLOAT[int(parse_number(precision))]
    elif answer_type == "list":
        hint = _HINT_LIST
    question = "" if _is_missing(row.get("question")) else str(row.get("question"))
    unit = row.get("unit")
    question_text = f"Question: {question}"
    if not _is_missing(unit) and str(unit):
        question_text += f" (Unit: {unit})"
    choices = _to_list(row.get("choices"))
    choices_text = ""
    if choices:
        choices_text = "\n".join(["Choices:"] + [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices)])
    return "\n".join(e for e in (hint, question_text, choices_text) if e)


def mathvista_json_files(root: Path, split: str) -> list[Path]:
    """The existing ``{split}.json`` files of MathVista's GitHub layout: in ``root`` and/or ``root/data``
    (lupantech/MathVista keeps it in data/)."""
    return [p for p in (root / f"{split}.json", root / "data" / f"{split}.json") if p.is_file()]


def _find_mathvista_json(root: Path, split: str) -> Path | None:
    """The one ``{split}.json`` of the GitHub layout under ``root``; both places at once is an error."""
    found = mathvista_json_files(root, split)
    if len(found) > 1:
        raise DataError(f"both {found[0]} and {found[1]} exist; point source at the folder of the one to use")
    return found[0] if found else None


def _load_mathvista_json(path: Path) -> pd.DataFrame:
    """Rows of MathVista's GitHub file: an object keyed by pid (or a list of problems).

    ``image`` paths are relative to the json's folder and become undecoded
    ``{"bytes": None, "path": <absolute>}`` dicts, so a missing file is a counted skip in
    prepare_images, not a load error. ``query.json`` (pid -> query) beside the file
    supplies the queries; problems it lacks (or all of them, without the file) get
    build_mathvista_query's text.
    """
    data = _read_json(path)
    if isinstance(data, Mapping):
        items = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, list):
        items = [(None, v) for v in data]
    else:
        raise DataError(f"{path}: expected a JSON object keyed by pid or a list of problems, got {type(data).__name__}")
    queries: Mapping = {}
    query_file = path.parent / "query.json"
    if query_file.is_file():
        queries = _read_json(query_file)
        if not isinstance(queries, Mapping):
            raise DataError(f"{query_file}: expected a JSON object mapping pid to query text")
    rows = []
    for pos, (key, problem) in enumerate(items):
        if not isinstance(problem, Mapping):
            raise DataError(f"{path}: problem {key or pos} is a {type(problem).__name__}, not an object")
        problem = _mark_undecodable({"pid": key, **problem} if key is not None else problem, path)
        pid = problem.get("pid", key)
        pid = None if _is_missing(pid) else str(pid)  # no pid: a counted, named drop in filter_rows
        image = problem.get("image")
        decoded = None
        if isinstance(image, str) and image:
            decoded = {"bytes": None, "path": os.path.abspath(path.parent / image)}
        answer = problem.get("answer")
        row = {
            "pid": pid,
            "question": problem.get("question"),
            "image": image,
            "decoded_image": decoded,
            "choices": problem.get("choices"),
            "unit": problem.get("unit"),
            "precision": problem.get("precision"),
            # the hub's answer column is text; JSON may hold bare numbers
            "answer": None if _is_missing(answer) else str(answer),
            "question_type": problem.get("question_type"),
            "answer_type": problem.get("answer_type"),
            "metadata": problem.get("metadata"),
            UNREADABLE_COLUMN: problem.get(UNREADABLE_COLUMN),
        }
        query = queries.get(pid)
        row["query"] = query if isinstance(query, str) and query else build_mathvista_query(row)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*MATHVISTA_COLUMNS, "image", UNREADABLE_COLUMN])
    if frame[UNREADABLE_COLUMN].isna().all():
        frame = frame.drop(columns=[UNREADABLE_COLUMN])  # only present when some text was undecodable
    return frame


def load_mathvista(source: str, split: str = "testmini") -> pd.DataFrame:
    """Load MathVista-format rows from a local folder or a hub id.

    If ``source`` is an existing directory it holds one of two layouts:

    - the hub's: every parquet file below it (recursively) named ``{split}-*.parquet``
      or ``{split}.parquet``, concatenated in file name order (``data/testmini-00000-of-00001-xxxx.parquet``;
      ``test`` does not pick up ``testmini`` files);
    - GitHub's (lupantech/MathVista): ``{split}.json`` directly in it or in ``data/``,
      with ``images/`` and optionally ``query.json`` beside it (see _load_mathvista_json).

    Both at once is a DataError: which one is meant is the user's call. Otherwise
    ``source`` is a hub id loaded with ``datasets.load_dataset(source, split=split)``
    (hub errors propagate unchanged).

    A missing ``query`` column is filled from ``question``. ``choices`` become lists
    (or None), ``unit`` str (or None), ``precision`` float64 (NaN for missing).
    Raises DataError for a missing folder-like path, no matching files, unreadable
    JSON, missing required columns, or an empty table.
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        root = Path(source)
        files = split_files(root, split, ".parquet")
        json_file = _find_mathvista_json(root, split)
        if files and json_file is not None:
            raise DataError(
                f"{root} holds split {split!r} twice: as parquet ({files[0]}"
                f"{f' and {len(files) - 1} more' if len(files) > 1 else ''}) and as MathVista's GitHub JSON "
                f"({json_file}); point source at the folder of the one to use"
            )
        if json_file is not None:
            df = _load_mathvista_json(json_file)
            where = f"{json_file}"
        elif files:
            df = pd.concat([_read_parquet_records(f) for f in files], ignore_index=True)
            where = f"{root} split {split!r} ({len(files)} file(s))"
        else:
            raise DataError(
                f"no parquet files for split {split!r} under {root} "
                f"(looked for '{split}-*.parquet' and '{split}.parquet', recursively, "
                f"and for '{split}.json' in it or in its data/ folder)"
            )
    else:
        _check_local_source(source)
        df = _load_hub_dataset(source, split)
        where = f"hub dataset {source!r} split {split!r}"
    return _normalise_frame(df, where)


# --------------------------------------------------------------------------- RLinf


def strip_boxed(text: Any) -> Any:
    """The content of a whole-string ``\\boxed{...}`` (balanced braces), else ``text`` unchanged.

    ``"\\boxed{2\\sqrt{3}}"`` gives ``"2\\sqrt{3}"``; ``"\\boxed{1}+\\boxed{2}"`` and
    ``"x = \\boxed{1}"`` are left alone, since the box is not the whole answer there.
    Surrounding whitespace is ignored; non-strings come back unchanged.
    """
    if not isinstance(text, str):
        return text
    # One brace matcher for gold answers everywhere: the scorers' (escapes and "\\boxed {" handled there).
    unboxed = unbox_answer(text)
    return text if unboxed == text.strip() else unboxed


def _image_list(value: Any) -> list:
    """An image cell as a list of images: lists/tuples/1-d arrays as they are, a single image wrapped."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype == object:
        return list(value)
    if _is_missing(value):
        return []
    return [value]


def _image_record(image: Any) -> Any:
    """One image as a {"bytes", "path"} dict, so a column of them has one parquet type whatever the source held.

    Values that are neither bytes, a path, a dict nor a PIL image are passed through for load_image to refuse.
    """
    if isinstance(image, Mapping):
        data = image.get("bytes")
        return {"bytes": bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else None,
                "path": None if _is_missing(image.get("path")) else str(image.get("path"))}
    if isinstance(image, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(image), "path": None}
    if isinstance(image, (str, os.PathLike)):
        return {"bytes": None, "path": os.fspath(image)}
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    return image


def _relative_to(image: Any, folder: Path) -> Any:
    """Resolve a relative image path (bare or in a {"bytes": None, "path"} dict) against ``folder``."""
    if isinstance(image, str) and image and not os.path.isabs(image):
        return os.path.abspath(folder / image)
    if isinstance(image, Mapping) and not image.get("bytes"):
        path = image.get("path")
        if isinstance(path, str) and path and not os.path.isabs(path):
            return {**image, "path": os.path.abspath(folder / path)}
    return image


def _read_json_records(path: Path) -> pd.DataFrame:
    """Rows of a ``.jsonl`` (one object a line) or ``.json`` (a list of objects, or objects keyed by id) file."""
    if path.suffix == ".jsonl":
        records = []
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as fh:  # see _read_json
                for number, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"cannot read JSON lines file {path}: line {number}: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read JSON lines file {path}: {exc}") from exc
    else:
        data = _read_json(path)
        if isinstance(data, Mapping):
            # keyed by id: the key is the id unless the row has its own
            records = [{"id": k, **v} if isinstance(v, Mapping) else v for k, v in data.items()]
        elif isinstance(data, list):
            records = data
        else:
            raise DataError(f"{path}: expected a list of rows or an object of rows, got {type(data).__name__}")
    bad = [i for i, r in enumerate(records) if not isinstance(r, Mapping)]
    if bad:
        raise DataError(f"{path}: row {bad[0]} is not a JSON object")
    return pd.DataFrame([_mark_undecodable(r, path) for r in records])


def _load_hub_rlinf(source: str, split: str, image_keys: tuple[str, ...]) -> pd.DataFrame:
    """Load ``source`` from the hub with every image (also inside lists) left undecoded."""
    import datasets  # lazy: heavy import, only needed for hub ids

    def undecoded(feature: Any) -> Any:
        if isinstance(feature, datasets.Image):
            return datasets.Image(decode=False)
        if isinstance(feature, datasets.Sequence):
            return datasets.Sequence(undecoded(feature.feature), length=feature.length)
        list_type = getattr(datasets, "List", None)  # datasets >= 4 spells list features this way
        if list_type is not None and isinstance(feature, list_type):
            return list_type(undecoded(feature.feature), length=feature.length)
        if isinstance(feature, list):
            return [undecoded(f) for f in feature]
        if isinstance(feature, dict):
            return {k: undecoded(v) for k, v in feature.items()}
        return feature

    ds = datasets.load_dataset(source, split=split)
    for key in image_keys:
        if key in ds.column_names:
            feature = ds.features[key]
            plain = undecoded(feature)
            if plain != feature:
                ds = ds.cast_column(key, plain)
    return ds.to_pandas()


def _answer_type(answer: Any) -> str:
    if parse_number(answer) is None:
        return "text"
    return "float" if "." in str(answer) else "integer"


def load_rlinf(
    source: str,
    split: str = "train",
    *,
    prompt_key: str = "problem",
    answer_key: str = "answer",
    image_keys: tuple[str, ...] | list[str] = ("images",),
    pid_key: str | None = None,
) -> pd.DataFrame:
    """Load RLinf-format rows (geo3k as RLinf trains on it) into the canonical MathVista schema.

    ``source`` is a local folder (``{split}-*.parquet`` / ``{split}.parquet``, or else
    ``{split}.jsonl`` / ``{split}.json`` and their ``{split}-*`` shards, recursively; relative
    image paths in JSON rows are taken from the file's folder) or a hub id read with
    ``datasets.load_dataset`` (images undecoded). Each row has a prompt (``prompt_key``)
    whose text may hold ``<image>`` placeholders, image columns (``image_keys``; a list
    of images, a single image, bytes or {"bytes", "path"} dicts) and an answer
    (``answer_key``), often ``\\boxed{x}``.

    The result has exactly MATHVISTA_COLUMNS, so filtering, image preparation and
    training work unchanged: ``pid`` from ``pid_key`` (when given and present), else
    ``id``/``pid``, else ``{split}-{row index}``; ``question`` = ``query`` = the prompt
    text, placeholders kept (chat_prompt places the image there); ``decoded_image`` =
    the row's images as a list of {"bytes", "path"} dicts (one parquet type for every
    row; a count other than one is a counted "image_count" skip in prepare_images);
    ``answer`` = strip_boxed(raw answer);
    ``question_type`` "free_form"; ``answer_type`` "integer"/"float"/"text";
    ``metadata`` {"format": "rlinf", "raw_answer", "num_images"}.
    Raises DataError naming the setting to change when a key is not a column.
    """
    source = os.fspath(source)
    image_keys = (image_keys,) if isinstance(image_keys, str) else tuple(image_keys)
    if not image_keys:
        raise DataError("load_rlinf: image_keys is empty; name the column(s) that hold the images")
    if os.path.isdir(source):
        root = Path(source)
        files = split_files(root, split, ".parquet")
        json_files = split_files(root, split, ".jsonl") + split_files(root, split, ".json")
        if files and json_files:
            raise DataError(
                f"{root} holds split {split!r} as parquet ({files[0]}) and as JSON ({json_files[0]}); "
                f"point source at the folder of the one to use"
            )
        if files:
            df = pd.concat([_read_parquet_records(f) for f in files], ignore_index=True)
            where = f"{root} split {split!r} ({len(files)} file(s))"
        elif json_files:
            frames = []
            for f in json_files:
                frame = _read_json_records(f)
                # relative image paths point from the JSON file's folder, as in MathVista's GitHub layout
                for key in image_keys:
                    if key in frame.columns:
                        frame[key] = pd.Series(
                            [[_relative_to(i, f.parent) for i in _image_list(v)] if isinstance(v, (list, tuple))
                             else _relative_to(v, f.parent) for v in frame[key]],
                            dtype=object, index=frame.index,
                        )
                frames.append(frame)
            df = pd.concat(frames, ignore_index=True)
            where = f"{root} split {split!r} ({len(json_files)} JSON file(s))"
        else:
            raise DataError(
                f"no files for split {split!r} under {root} (looked for '{split}-*.parquet', '{split}.parquet', "
                f"'{split}-*.jsonl', '{split}.jsonl' and '{split}.json', recursively)"
            )
    else:
        _check_local_source(source)
        df = _load_hub_rlinf(source, split, image_keys)
        where = f"hub dataset {source!r} split {split!r}"

    columns = list(df.columns)
    for setting, key in [("prompt_key", prompt_key), ("answer_key", answer_key)] + [
        ("image_keys", k) for k in image_keys
    ]:
        if key not in df.columns:
            raise DataError(
                f"{where}: no column {key!r} (set {setting} to the right column); columns found: {columns}"
            )
    if len(df) == 0:
        raise DataError(f"{where}: the table has no rows")
    df = df.reset_index(drop=True)
    id_column = next((c for c in ([pid_key] if pid_key else []) + ["id", "pid"] if c in df.columns), None)
    rows = []
    for i, record in enumerate(df.to_dict(orient="records")):
        pid = record.get(id_column) if id_column else None
        pid = f"{split}-{i}" if _is_missing(pid) or str(pid) == "" else str(pid)
        prompt = record[prompt_key]
        prompt = None if _is_missing(prompt) else str(prompt)
        raw = record[answer_key]
        raw = None if _is_missing(raw) else str(raw)
        answer = None if raw is None else strip_boxed(raw).strip()
        images = [img for key in image_keys for img in _image_list(record[key])]
        rows.append({
            "pid": pid,
            "question": prompt,
            "query": prompt,
            # Always a list of {"bytes", "path"} dicts (one parquet type); load_image takes exactly one.
            "decoded_image": [_image_record(img) for img in images],
            "choices": None,
            "unit": None,
            "precision": float("nan"),
            "answer": answer,
            "question_type": "free_form",
            "answer_type": _answer_type(answer),
            "metadata": {"format": "rlinf", "raw_answer": raw, "num_images": len(images)},
            UNREADABLE_COLUMN: record.get(UNREADABLE_COLUMN),  # an undecodable cell: dropped, named, by the filter
        })
    frame = pd.DataFrame(rows, columns=[*MATHVISTA_COLUMNS, UNREADABLE_COLUMN])
    if frame[UNREADABLE_COLUMN].isna().all():
        frame = frame.drop(columns=[UNREADABLE_COLUMN])  # only present when some cell was undecodable
    return _normalise_frame(frame, where)


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
    """:func:`filter_rows` without the list of named drops: (kept rows, counts)."""
    kept, counts, _ = filter_rows(df, numeric_only, free_form_only)
    return kept, counts


def _pid_label(pid: Any) -> str | None:
    return None if _is_missing(pid) else str(pid)


def filter_rows(
    df: pd.DataFrame, numeric_only: bool = True, free_form_only: bool = False
) -> tuple[pd.DataFrame, dict, list[dict]]:
    """Keep the rows fit for numeric-reward training; return (kept rows, counts, dropped rows).

    Steps, in order, each counted on the rows left by the previous one: drop rows with a cell that could not be
    decoded (``UNREADABLE_COLUMN``); drop rows without a pid (null or blank: every later stage keys samples by
    it); drop rows with a missing/blank answer; drop repeated pids (the first is kept); if ``numeric_only``,
    drop answers ``is_numeric_answer`` rejects; if ``free_form_only``, drop ``multi_choice`` rows. Counts:
    rows_in, rows_kept, dropped_unreadable, dropped_missing_pid, dropped_missing_answer, dropped_duplicate_pid,
    dropped_non_numeric, dropped_multi_choice (they add up). Each dropped row is named in the list:
    ``{"row", "pid", "column", "kind", "reason"}`` (``row``: its position in the source table).
    """
    needed = ["pid", "answer"] + (["question_type"] if free_form_only else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"filter_mathvista: missing column(s) {missing}; columns found: {list(df.columns)}")
    counts = {
        "rows_in": len(df),
        "rows_kept": 0,
        "dropped_unreadable": 0,
        "dropped_missing_pid": 0,
        "dropped_missing_answer": 0,
        "dropped_duplicate_pid": 0,
        "dropped_non_numeric": 0,
        "dropped_multi_choice": 0,
    }
    dropped: list[dict] = []
    out = df.reset_index(drop=True)
    if UNREADABLE_COLUMN not in out.columns:
        out[UNREADABLE_COLUMN] = None

    def _drop(mask: pd.Series, key: str, column, why) -> None:
        nonlocal out
        mask = mask.astype(bool)
        counts[key] = int(mask.sum())
        for row, record in out[mask].iterrows():
            dropped.append({"row": int(row), "pid": _pid_label(record.get("pid")),
                            "column": column(record) if callable(column) else column,
                            "kind": key.removeprefix("dropped_"), "reason": why(record)})
        out = out[~mask]

    _drop(out[UNREADABLE_COLUMN].map(lambda v: isinstance(v, Mapping)), "dropped_unreadable",
          lambda r: r[UNREADABLE_COLUMN]["column"], lambda r: r[UNREADABLE_COLUMN]["reason"])
    _drop(out["pid"].map(lambda p: _is_missing(p) or not str(p).strip()), "dropped_missing_pid", "pid",
          lambda r: "no pid (null or blank): samples are keyed by pid")
    _drop(out["answer"].map(_answer_missing), "dropped_missing_answer", "answer",
          lambda r: f"no answer ({r['answer']!r})")
    _drop(out["pid"].astype(str).duplicated(keep="first"), "dropped_duplicate_pid", "pid",
          lambda r: f"pid {r['pid']!r} already taken by an earlier row")
    if numeric_only:
        _drop(~out["answer"].map(is_numeric_answer).astype(bool), "dropped_non_numeric", "answer",
              lambda r: f"answer {str(r['answer'])[:80]!r} is not a number (numeric_only)")
    if free_form_only:
        _drop(out["question_type"] == "multi_choice", "dropped_multi_choice", "question_type",
              lambda r: "multiple choice (free_form_only)")
    out = out.drop(columns=[UNREADABLE_COLUMN]).reset_index(drop=True)
    counts["rows_kept"] = len(out)
    return out, counts, dropped


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
        raise DataError(
            f"{what} is too large to decode safely (limit {limit} pixels): {exc}", kind="image_too_large"
        ) from exc
    except Exception as exc:  # decoders raise many types (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"{what} is corrupt or unreadable: {type(exc).__name__}: {exc}", kind="corrupt_image") from exc


def load_image(value: Any) -> Image.Image:
    """Decode an image from a {"bytes", "path"} dict, raw bytes, a path or a PIL image.

    Dicts use ``bytes`` when present, else ``path``. A list/tuple/1-d array holding one
    image is unwrapped (RLinf rows keep images in lists); any other count is a
    DataError of kind "image_count", since a sample here has exactly one image. The
    pixels are fully decoded (``img.load()``) so corrupt data fails here. Raises
    DataError for missing, unreadable or corrupt data, and for images above PIL's
    ``MAX_IMAGE_PIXELS`` ("too large to decode safely"); its ``kind`` says which.
    """
    data: Any = None
    path: Any = None
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        if len(value) != 1:
            raise DataError(
                f"row has {len(value)} images; this pipeline uses exactly one image per sample", kind="image_count"
            )
        return load_image(value[0])
    if isinstance(value, Image.Image):
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and value.width * value.height > limit:
            raise DataError(
                f"PIL image of {value.width}x{value.height} is too large to decode safely", kind="image_too_large"
            )
        try:
            value.load()
        except Exception as exc:
            raise DataError(
                f"PIL image is corrupt or unreadable: {type(exc).__name__}: {exc}", kind="corrupt_image"
            ) from exc
        return value
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = value
    elif isinstance(value, (str, os.PathLike)):
        path = value
    elif _is_missing(value):
        raise DataError("image is missing", kind="missing_image")
    else:
        raise DataError(f"unsupported image value of type {type(value).__name__}", kind="corrupt_image")

    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > 0:
        blob = bytes(data)
        label = f"image bytes ({len(blob)} bytes" + (f", path {path}" if isinstance(path, str) and path else "") + ")"
        return _decode(lambda: io.BytesIO(blob), label)
    if isinstance(path, (str, os.PathLike)) and os.fspath(path):
        file = os.fspath(path)
        if not os.path.isfile(file):
            raise DataError(f"image file {file} does not exist (and there are no image bytes)", kind="missing_image")
        return _decode(lambda: open(file, "rb"), f"image file {file}")
    raise DataError("image has neither bytes nor a path", kind="missing_image")


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
        raise DataError(f"cannot convert image of mode {img.mode} to RGB: {exc}", kind="corrupt_image") from exc


_SAFE_PID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def prepare_images(df: pd.DataFrame, out_dir: str | os.PathLike, size: int) -> tuple[pd.DataFrame, list[dict]]:
    """Decode, resize and save each row's image to ``out_dir/{pid}.png``.

    Returns (rows whose image was written, skipped) where the frame gains
    ``image_path`` (absolute path str) and ``image_sha256`` (sha256 of the resized
    image's raw RGB bytes, for de-duplication across splits) and loses
    ``decoded_image``; ``skipped`` lists {"pid", "column", "reason", "kind"} for rows whose image
    is missing/corrupt/too large or not exactly one image, whose pid is not a safe file
    name, or whose pid repeats (``kind`` is one of SKIP_KINDS; count_skips tallies
    them). Each PNG is written to a temporary name and then renamed into place.
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
            skipped.append({"pid": pid, "column": "pid", "reason": f"pid {pid!r} is not a safe file name",
                            "kind": "unsafe_pid"})
            continue
        if pid in seen:
            skipped.append({"pid": pid, "column": "pid", "reason": f"duplicate pid {pid!r}", "kind": "duplicate_pid"})
            continue
        try:
            img = resize_image(load_image(value), size)
        except DataError as exc:
            # unclassified image errors are unusable data all the same
            skipped.append({"pid": pid, "column": "decoded_image", "reason": str(exc),
                            "kind": exc.kind or "corrupt_image"})
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


def count_skips(skipped: list[Mapping]) -> dict[str, int]:
    """How many of prepare_images' skipped entries there are of each kind, plus ``total``.

    Every kind in SKIP_KINDS is present (zeros included) so runs compare key by key;
    an entry with an unknown or no kind is counted under its own key ("unknown").
    """
    counts = dict.fromkeys(SKIP_KINDS, 0)
    for entry in skipped:
        kind = entry.get("kind") or "unknown"
        counts[kind] = counts.get(kind, 0) + 1
    counts["total"] = len(skipped)
    return counts


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


def build_prompt_text(row: Mapping, prompt_field: str = "query", instruction: str | None = FORMAT_INSTRUCTION) -> str:
    """Prompt text: ``row[prompt_field]`` (else ``row["question"]``), a newline, ``instruction``.

    ``instruction`` None or "" appends nothing: RLinf-style prompts carry their
    instruction in the system turn (BOXED_SYSTEM_PROMPT) instead.
    """
    text = row.get(prompt_field) if hasattr(row, "get") else None
    if _is_missing(text) or not str(text).strip():
        text = row.get("question") if hasattr(row, "get") else None
    if _is_missing(text) or not str(text).strip():
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
