"""Which rows are fit to train and evaluate on (every drop counted and named), and the train/eval split."""

from __future__ import annotations

import numbers
import random
from collections.abc import Mapping
from typing import Any

import pandas as pd

from vlmrl_pipeline.core.answers.matching import parse_number
from vlmrl_pipeline.core.data.schema import UNREADABLE_COLUMN, DataError, is_missing


def is_numeric_answer(answer: Any) -> bool:
    """True if ``answer`` is a plain finite number: "3", " -2 ", "3.5", ".5", "1e3", 7, 2.5.

    The rule is ``answers.parse_number``'s, so the filter keeps exactly the answers the
    numeric reward can score: thousands separators ("1,000"), units ("3 cm"),
    underscores, "nan"/"inf"/overflow, "", None and bools are not numeric.
    """
    return parse_number(answer) is not None


def _answer_missing(answer: Any) -> bool:
    return is_missing(answer) or (isinstance(answer, str) and not answer.strip())


def filter_mathvista(
    df: pd.DataFrame, numeric_only: bool = True, free_form_only: bool = False
) -> tuple[pd.DataFrame, dict]:
    """:func:`filter_rows` without the list of named drops: (kept rows, counts)."""
    kept, counts, _ = filter_rows(df, numeric_only, free_form_only)
    return kept, counts


def _pid_label(pid: Any) -> str | None:
    return None if is_missing(pid) else str(pid)


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
    _drop(out["pid"].map(lambda p: is_missing(p) or not str(p).strip()), "dropped_missing_pid", "pid",
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


def split_validation(train: pd.DataFrame, validation_size: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve ``validation_size`` rows out of the training rows: ``(train, validation)``, disjoint by pid and image.

    Chosen like :func:`split_train_eval` (sorted pids shuffled with ``random.Random(seed)``), from the training rows
    only, so the held-out rows are never touched. Training rows whose image hash equals a validation row's are
    dropped from training. ``validation_size=0`` returns the rows unchanged and an empty frame. Raises DataError
    unless ``0 <= validation_size < len(train)`` (training needs a row) or when no training row is left.
    """
    if isinstance(validation_size, bool) or not isinstance(validation_size, numbers.Integral):
        raise DataError(f"validation_size must be an integer, got {validation_size!r}")
    if validation_size == 0:
        return train, train.iloc[0:0]
    if validation_size < 0 or validation_size >= len(train):
        raise DataError(f"data_settings.validation_size must be between 0 and {len(train) - 1} for {len(train)} "
                        f"training rows (training needs at least one row), got {validation_size}")
    order = sorted(train["pid"].astype(str))
    random.Random(seed).shuffle(order)
    chosen = set(order[: int(validation_size)])
    is_validation = train["pid"].astype(str).isin(chosen).to_numpy()
    validation, rest = train[is_validation], train[~is_validation]
    if "image_sha256" in train.columns:
        rest = rest[~rest["image_sha256"].isin(set(validation["image_sha256"].dropna())).to_numpy()]
    if len(rest) == 0:
        raise DataError("split_validation: every training row is a validation row or shares its image")
    return rest.reset_index(drop=True), validation.reset_index(drop=True)
