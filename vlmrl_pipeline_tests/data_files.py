"""Small data files the data tests build: PNG bytes and MathVista-schema tables."""

from __future__ import annotations

import io
import os

import pandas as pd
from PIL import Image

from vlmrl_pipeline.core.data.schema import MATHVISTA_COLUMNS


def png(colour="red", size=(20, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def noisy_png(size=64) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def mathvista_table(answers_, question_types=None, pids=None) -> pd.DataFrame:
    n = len(answers_)
    return pd.DataFrame({
        "pid": pids or [str(i) for i in range(n)],
        "question": [f"q{i}" for i in range(n)],
        "query": [f"Hint: ...\nQuestion: q{i}" for i in range(n)],
        "decoded_image": [{"bytes": png(), "path": f"images/{i}.png"} for i in range(n)],
        "choices": [None] * n, "unit": [None] * n, "precision": [None] * n, "answer": answers_,
        "question_type": question_types or ["free_form"] * n, "answer_type": ["integer"] * n,
        "metadata": [{"source": "test"}] * n,
    }, columns=list(MATHVISTA_COLUMNS))
