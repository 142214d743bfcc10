"""A small synthetic data set in MathVista's exact hub schema, rendered with PIL.

It stands in for ``AI4Math/MathVista`` where the hub cannot be reached (tests, CI,
offline smoke runs): same columns, same ``query`` wording, same parquet layout, so
every downstream step runs unchanged on it.  Everything is drawn from a seeded
``random.Random`` per row, so a seed always yields the same rows and the same PNG
bytes, and a row's content does not depend on ``num_rows`` or ``image_size``.

Task families (``figures.FAMILIES``): bar chart, counting coloured shapes, rectangle
with labelled sides, triangle with two labelled angles, number line with a dot.

This module deliberately does not import dagster: ``core`` is plain Python so it can
be used and tested without the orchestration layer.
"""

from __future__ import annotations

import io
import math
import os
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vlmrl_pipeline.core.atomic import atomic_file
from vlmrl_pipeline.core.data.mathvista import build_mathvista_query
from vlmrl_pipeline.core.demo.figures import FAMILIES, READABLE_FAMILIES, TASK_SETS, TEXT_FAMILIES

__all__ = [
    "MATHVISTA_HUB_SCHEMA",
    "generate_synthetic_mathvista",
    "write_synthetic_mathvista",
]

# Column order and types of MathVista's hub parquet (testmini / test).
MATHVISTA_HUB_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("question", pa.string()),
        ("image", pa.string()),
        ("decoded_image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("choices", pa.list_(pa.string())),
        ("unit", pa.string()),
        ("precision", pa.float64()),
        ("answer", pa.string()),
        ("question_type", pa.string()),
        ("answer_type", pa.string()),
        (
            "metadata",
            pa.struct(
                [
                    ("category", pa.string()),
                    ("context", pa.string()),
                    ("grade", pa.string()),
                    ("img_height", pa.int64()),
                    ("img_width", pa.int64()),
                    ("language", pa.string()),
                    ("skills", pa.list_(pa.string())),
                    ("source", pa.string()),
                    ("split", pa.string()),
                    ("task", pa.string()),
                ]
            ),
        ),
        ("query", pa.string()),
    ]
)

_SOURCE = "vlmrl-synthetic"

# Variant shares: ~15% multi_choice with numeric choices, a few multi_choice with
# word choices and a few free-form word answers (what a numeric filter must drop).
_P_MC_NUMERIC = 0.15
_P_MC_TEXT = 0.04
_P_FREE_TEXT = 0.04


# MathVista has no free-form word answers, so its query builder gives them no hint; the synthetic set's few get one.
_WORD_ANSWER_HINT = "Hint: Please answer the question with a single word and provide the final answer at the end."


def _mathvista_query(spec: dict[str, Any]) -> str:
    """The ``query`` text, worded by MathVista's own rules (:func:`build_mathvista_query`: hint, question, unit,
    choices), plus a hint for the free-form word answers MathVista does not have."""
    query = build_mathvista_query(spec)
    if spec["question_type"] == "free_form" and spec["answer_type"] == "text":
        return f"{_WORD_ANSWER_HINT}\n{query}"
    return query


def _row_rng(seed: int, index: int) -> random.Random:
    # str seeds are hashed with SHA-512 by `random`, so this is stable across runs and
    # platforms, and row i's content does not depend on how many rows are generated.
    return random.Random(f"vlmrl-synthetic:{seed}:{index}")


def _make_row(seed: int, index: int, image_size: int, split: str, tasks: str = "mathvista") -> dict[str, Any]:
    rng = _row_rng(seed, index)
    if tasks == "readable":
        family = rng.choice(list(READABLE_FAMILIES))
        spec, image = READABLE_FAMILIES[family](rng, "free_num", image_size)
        return _row(index, spec, image, image_size, split)
    u = rng.random()
    if u < _P_MC_NUMERIC:
        variant = "mc_num"
    elif u < _P_MC_NUMERIC + _P_MC_TEXT:
        variant = "mc_text"
    elif u < _P_MC_NUMERIC + _P_MC_TEXT + _P_FREE_TEXT:
        variant = "free_text"
    else:
        variant = "free_num"
    family = rng.choice(TEXT_FAMILIES if variant in ("mc_text", "free_text") else list(FAMILIES))
    spec, image = FAMILIES[family](rng, variant, image_size)
    return _row(index, spec, image, image_size, split)


def _row(index: int, spec: dict[str, Any], image: Image.Image, image_size: int, split: str) -> dict[str, Any]:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    pid = str(index + 1)
    path = f"images/{pid}.png"
    return {
        "pid": pid,
        "question": spec["question"],
        "image": path,
        "decoded_image": {"bytes": buf.getvalue(), "path": path},
        "choices": spec["choices"],
        "unit": spec["unit"],
        "precision": spec["precision"],
        "answer": spec["answer"],
        "question_type": spec["question_type"],
        "answer_type": spec["answer_type"],
        "metadata": {
            "category": spec["category"],
            "context": spec["context"],
            "grade": spec["grade"],
            "img_height": image_size,
            "img_width": image_size,
            "language": "english",
            "skills": list(spec["skills"]),
            "source": _SOURCE,
            "split": split,
            "task": spec["task"],
        },
        "query": _mathvista_query(spec),
    }


# --------------------------------------------------------------------------- public API


def generate_synthetic_mathvista(
    num_rows: int = 300, seed: int = 0, image_size: int = 128, *, split: str = "testmini", tasks: str = "mathvista"
) -> pd.DataFrame:
    """Generate ``num_rows`` MathVista-schema rows with PIL-rendered images.

    Columns, in the hub order: pid, question, image, decoded_image ({"bytes": PNG,
    "path": "images/<pid>.png"}), choices (list[str] or None), unit (str or None),
    precision (float64; NaN where MathVista has null, 1.0 for one-decimal floats),
    answer (str; the choice text for multi_choice rows), question_type, answer_type,
    metadata (dict with MathVista's keys) and query (hint + question [+ choices]).

    The same ``seed`` always gives an identical frame (PNG bytes included); row ``i``
    depends only on ``(seed, i)``, and answers do not depend on ``image_size``.
    ``split`` only sets ``metadata["split"]``; ``tasks`` picks the task set (:data:`TASK_SETS`).
    """
    if tasks not in TASK_SETS:
        raise ValueError(f"tasks must be one of {TASK_SETS}, got {tasks!r}")
    if int(num_rows) < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    if int(image_size) < 64:
        raise ValueError(f"image_size must be >= 64 pixels for the labels to stay readable, got {image_size}")
    rows = [_make_row(int(seed), i, int(image_size), split, tasks) for i in range(int(num_rows))]
    df = pd.DataFrame(rows, columns=MATHVISTA_HUB_SCHEMA.names)
    # keep None (not NaN) for a missing unit, as the hub rows have; pandas would infer NaN
    df["unit"] = pd.Series([r["unit"] for r in rows], dtype=object)
    df["precision"] = df["precision"].astype("float64")
    return df


def write_synthetic_mathvista(
    folder: str | os.PathLike,
    num_rows: int = 300,
    seed: int = 0,
    image_size: int = 128,
    split: str = "testmini",
    tasks: str = "mathvista",
) -> Path:
    """Write a synthetic set in the hub parquet layout and return the file's path.

    The file is ``folder/data/{split}-00000-of-00001.parquet`` with MathVista's arrow
    schema (``decoded_image`` as ``struct<bytes: binary, path: string>``). It is written
    to a temporary name in the same folder and then atomically renamed into place,
    so a reader never sees a half-written file.
    """
    df = generate_synthetic_mathvista(num_rows=num_rows, seed=seed, image_size=image_size, split=split, tasks=tasks)
    records = df.to_dict(orient="records")
    for r in records:
        if r["precision"] is not None and math.isnan(r["precision"]):
            r["precision"] = None
    table = pa.Table.from_pylist(records, schema=MATHVISTA_HUB_SCHEMA)

    out_dir = Path(folder) / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{split}-00000-of-00001.parquet"
    with atomic_file(final) as tmp:
        pq.write_table(table, tmp)
    return final
