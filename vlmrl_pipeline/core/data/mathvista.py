"""MathVista's two local layouts (the hub's parquet shards, the GitHub repository's JSON) and hub ids."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from vlmrl_pipeline.core.answers.matching import parse_number
from vlmrl_pipeline.core.data.schema import (
    MATHVISTA_COLUMNS,
    UNREADABLE_COLUMN,
    DataError,
    is_missing,
    normalise_frame,
    to_list,
)
from vlmrl_pipeline.core.data.sources import (
    check_local_source,
    load_hub_dataset,
    mark_undecodable,
    read_json,
    read_parquet_records,
    split_files,
)

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
    elif answer_type == "float" and not is_missing(precision) and parse_number(precision) in _HINT_FLOAT:
        hint = _HINT_FLOAT[int(parse_number(precision))]
    elif answer_type == "list":
        hint = _HINT_LIST
    question = "" if is_missing(row.get("question")) else str(row.get("question"))
    unit = row.get("unit")
    question_text = f"Question: {question}"
    if not is_missing(unit) and str(unit):
        question_text += f" (Unit: {unit})"
    choices = to_list(row.get("choices"))
    choices_text = ""
    if choices:
        choices_text = "\n".join(["Choices:"] + [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices)])
    return "\n".join(e for e in (hint, question_text, choices_text) if e)


JSON_REQUIRED_FIELDS = ("question", "answer")
"""Fields of MathVista's GitHub JSON that at least one problem must have (the others may be absent everywhere)."""


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
    data = read_json(path)
    if isinstance(data, Mapping):
        # Every pair, a repeated pid too: filter_rows then drops the later one as a counted duplicate_pid, as
        # it does in the list form and the parquet layout (json itself would keep the later one, silently).
        items = [(str(k), v) for k, v in getattr(data, "pairs", data.items())]
    elif isinstance(data, list):
        items = [(None, v) for v in data]
    else:
        raise DataError(f"{path}: expected a JSON object keyed by pid or a list of problems, got {type(data).__name__}")
    fields = {str(k) for _, problem in items if isinstance(problem, Mapping) for k in problem}
    missing = [name for name in JSON_REQUIRED_FIELDS if name not in fields]
    if items and missing:
        # As the parquet layout's missing column: named, not a table emptied row by row by the filter.
        raise DataError(f"{path}: no problem has the field(s) {missing} (required); fields found: {sorted(fields)}")
    queries: Mapping = {}
    query_file = path.parent / "query.json"
    if query_file.is_file():
        queries = read_json(query_file)
        if not isinstance(queries, Mapping):
            raise DataError(f"{query_file}: expected a JSON object mapping pid to query text")
    rows = []
    for pos, (key, problem) in enumerate(items):
        if not isinstance(problem, Mapping):
            raise DataError(f"{path}: problem {key or pos} is a {type(problem).__name__}, not an object")
        problem = mark_undecodable({"pid": key, **problem} if key is not None else problem, path)
        pid = problem.get("pid", key)
        pid = None if is_missing(pid) else str(pid)  # no pid: a counted, named drop in filter_rows
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
            "answer": None if is_missing(answer) else str(answer),
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
            df = pd.concat([read_parquet_records(f) for f in files], ignore_index=True)
            where = f"{root} split {split!r} ({len(files)} file(s))"
        else:
            raise DataError(
                f"no parquet files for split {split!r} under {root} "
                f"(looked for '{split}-*.parquet' and '{split}.parquet', recursively, "
                f"and for '{split}.json' in it or in its data/ folder)"
            )
    else:
        check_local_source(source)
        df = load_hub_dataset(source, split)
        where = f"hub dataset {source!r} split {split!r}"
    return normalise_frame(df, where)
