"""The canonical schema every source layout is loaded into, the error bad data raises, and cell helpers.

Every loader (``mathvista``, ``rlinf``) ends in :func:`normalise_frame`, so filtering, image preparation and
training see one shape whatever the source was.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import pandas as pd

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

UNREADABLE_COLUMN = "_unreadable"
"""Set by the parquet reader on rows with a cell it could not decode (text that is not UTF-8): ``{"column",
"reason"}``; ``filter_rows`` drops such rows as counted, named skips. Never in the filtered output."""


class DataError(ValueError):
    """Bad input data: the message says what is wrong and where.

    ``kind`` (one of SKIP_KINDS, or None) classifies per-row image problems where they
    are raised, so prepare_images can count skips without parsing messages.
    """

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


def is_missing(value: Any) -> bool:
    """None, NaN (float or numpy), pd.NA or pd.NaT; containers and arrays are never "missing"."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isnan(value)


def to_list(value: Any) -> list | None:
    """Turn a choices/skills value (list, tuple, numpy array or missing) into a list or None."""
    if is_missing(value):
        return None
    if isinstance(value, str):
        return [value]
    return list(value)


def normalise_frame(df: pd.DataFrame, where: str) -> pd.DataFrame:
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
    df["pid"] = df["pid"].map(lambda v: None if is_missing(v) else str(v))
    df["choices"] = pd.Series([to_list(v) for v in df["choices"]], dtype=object)
    df["unit"] = pd.Series([None if is_missing(v) else str(v) for v in df["unit"]], dtype=object)
    try:
        df["precision"] = pd.to_numeric(df["precision"], errors="raise").astype("float64")
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: column 'precision' is not numeric: {exc}") from exc
    metadata = []
    for v in df["metadata"]:
        if isinstance(v, Mapping):
            v = dict(v)
            if "skills" in v:
                v["skills"] = to_list(v["skills"]) or []
        metadata.append(v)
    df["metadata"] = pd.Series(metadata, dtype=object)
    return df
