"""Finding and reading source files (parquet, JSON, the hub), shared by the MathVista and RLinf loaders.

The Hugging Face ``datasets`` library is imported lazily, only when a hub id is actually loaded. Text that is not
UTF-8 costs only its row: readers mark it (``UNREADABLE_COLUMN``) and the filter drops it as a named skip.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from vlmrl_pipeline.core.data.schema import UNREADABLE_COLUMN, DataError


def read_parquet_records(path: Path) -> pd.DataFrame:
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


def load_hub_dataset(source: str, split: str) -> pd.DataFrame:
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


def check_local_source(source: str) -> None:
    """Refuse a file, or a path that is clearly local but missing (it must not go to the hub)."""
    if os.path.exists(source):
        raise DataError(f"{source} is a file; pass the folder that holds the data files")
    if is_local_path(source):
        raise DataError(f"local folder {source} does not exist")


class JsonObject(dict):
    """A JSON object as ``json`` builds it (a repeated key keeps its last value), with ``pairs``: every key and
    value in file order, repeats included, so a loader can count a repeated key instead of losing a row unseen."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        self.pairs = pairs


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    # Plain dicts unless a key repeats: only then does anyone need the pairs.
    return JsonObject(pairs) if len({k for k, _ in pairs}) < len(pairs) else dict(pairs)


def read_json(path: Path) -> Any:
    """The parsed JSON file; an object with a repeated key is a :class:`JsonObject` (its ``pairs`` keep them)."""
    # surrogateescape: bytes that are not UTF-8 survive as lone surrogates inside their string, so one bad cell
    # costs its row (a named skip, see mark_undecodable), not the whole file.
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return json.load(fh, object_pairs_hook=_json_object)
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


def mark_undecodable(record: Mapping, path: Path) -> Mapping:
    """``record``, or, when some text in it was not UTF-8, a cleaned copy carrying ``UNREADABLE_COLUMN``."""
    column = _undecodable_column(record)
    if column is None:
        return record
    return {**_replace_surrogates(record), UNREADABLE_COLUMN: {
        "column": column, "reason": f"column {column!r} is not valid UTF-8 text in {path.name}"}}
