"""The synthetic MathVista-format data set."""

from __future__ import annotations

import io

import pandas as pd
from PIL import Image

from vlmrl_pipeline.core.datasets import MATHVISTA_COLUMNS, filter_mathvista, is_numeric_answer
from vlmrl_pipeline.core.synthetic import generate_synthetic_mathvista


def test_same_seed_same_data_other_seed_other_data():
    a = generate_synthetic_mathvista(30, seed=7, image_size=64)
    b = generate_synthetic_mathvista(30, seed=7, image_size=64)
    pd.testing.assert_frame_equal(a, b)
    assert [d["bytes"] for d in a["decoded_image"]] == [d["bytes"] for d in b["decoded_image"]]
    c = generate_synthetic_mathvista(30, seed=8, image_size=64)
    assert a["answer"].tolist() != c["answer"].tolist()


def test_schema_is_mathvistas():
    table = generate_synthetic_mathvista(60, seed=0, image_size=64)
    assert set(MATHVISTA_COLUMNS) <= set(table.columns)
    assert table["pid"].is_unique
    assert set(table["question_type"]) == {"free_form", "multi_choice"}
    assert set(table["answer_type"]) <= {"integer", "float", "text"}
    for _, row in table.iterrows():
        if row["question_type"] == "multi_choice":
            assert row["answer"] in list(row["choices"])  # MathVista stores the choice text, not the letter
            assert "Choices:" in row["query"]
        assert row["question"] in row["query"]
        assert {"category", "source", "task", "skills"} <= set(row["metadata"])


def test_images_are_rgb_of_the_requested_size():
    table = generate_synthetic_mathvista(20, seed=1, image_size=96)
    for item in table["decoded_image"]:
        with Image.open(io.BytesIO(item["bytes"])) as img:
            assert img.size == (96, 96) and img.mode == "RGB"


def test_the_numeric_filter_has_rows_to_drop_and_keeps_most():
    table = generate_synthetic_mathvista(300, seed=0, image_size=64)
    kept, counts = filter_mathvista(table, numeric_only=True)
    numeric = table["answer"].map(is_numeric_answer)
    assert counts["rows_kept"] == int(numeric.sum()) == len(kept)
    assert 0 < counts["dropped_non_numeric"] < 0.2 * len(table)
    free, free_counts = filter_mathvista(table, numeric_only=True, free_form_only=True)
    assert free_counts["dropped_multi_choice"] > 0 and (free["question_type"] == "free_form").all()
    assert kept["question"].map(lambda q: q.split()[0]).nunique() >= 4  # several task families survive
