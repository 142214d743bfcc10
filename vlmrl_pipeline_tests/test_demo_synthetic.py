"""The synthetic MathVista-format data set: determinism, schema, images, parquet layout."""

from __future__ import annotations

import io
import math
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmrl_pipeline.core.demo.synthetic import generate_synthetic_mathvista, write_synthetic_mathvista

HUB_COLUMNS = [
    "pid", "question", "image", "decoded_image", "choices", "unit", "precision", "answer", "question_type",
    "answer_type", "metadata", "query",
]
METADATA_KEYS = {
    "category", "context", "grade", "img_height", "img_width", "language", "skills", "source", "split", "task",
}
HINTS = {
    "multi_choice": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at "
                    "the end.\nQuestion: ",
    "integer": "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, "
               "2, 3, at the end.\nQuestion: ",
    "float": "Hint: Please answer the question requiring a floating-point number with one decimal place and provide "
             "the final value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: ",
}


@pytest.fixture(scope="module")
def table300() -> pd.DataFrame:
    return generate_synthetic_mathvista(300, seed=0, image_size=64)


def _image_bytes(frame: pd.DataFrame) -> list[bytes]:
    return [d["bytes"] for d in frame["decoded_image"]]


def test_same_seed_same_frame_other_seed_other_frame():
    a = generate_synthetic_mathvista(25, seed=7, image_size=64)
    b = generate_synthetic_mathvista(25, seed=7, image_size=64)
    pd.testing.assert_frame_equal(a, b)
    assert _image_bytes(a) == _image_bytes(b)
    c = generate_synthetic_mathvista(25, seed=8, image_size=64)
    assert a["query"].tolist() != c["query"].tolist()
    assert sum(x != y for x, y in zip(_image_bytes(a), _image_bytes(c))) >= 20


def test_rows_depend_only_on_seed_and_index_and_answers_not_on_image_size():
    short = generate_synthetic_mathvista(8, seed=3, image_size=64)
    long = generate_synthetic_mathvista(20, seed=3, image_size=64)
    pd.testing.assert_frame_equal(short, long.head(8))
    big = generate_synthetic_mathvista(8, seed=3, image_size=96)
    assert big["query"].tolist() == short["query"].tolist()
    assert big["answer"].tolist() == short["answer"].tolist()
    assert Image.open(io.BytesIO(big["decoded_image"][0]["bytes"])).size == (96, 96)


def test_columns_and_cell_types_match_mathvista(table300):
    t = table300
    assert list(t.columns) == HUB_COLUMNS
    assert t["pid"].tolist() == [str(i) for i in range(1, 301)]
    assert t["precision"].dtype == "float64"
    for _, row in t.iterrows():
        assert isinstance(row["question"], str) and isinstance(row["answer"], str) and row["answer"]
        assert row["image"] == f"images/{row['pid']}.png"
        assert set(row["decoded_image"]) == {"bytes", "path"}
        assert row["decoded_image"]["path"] == row["image"] and isinstance(row["decoded_image"]["bytes"], bytes)
        assert row["unit"] is None or isinstance(row["unit"], str)
        assert row["question_type"] in {"free_form", "multi_choice"}
        assert row["answer_type"] in {"integer", "float", "text"}
        meta = row["metadata"]
        assert set(meta) == METADATA_KEYS
        assert meta["img_height"] == meta["img_width"] == 64 and meta["split"] == "testmini"
        assert isinstance(meta["skills"], list) and meta["skills"] and all(isinstance(s, str) for s in meta["skills"])
        if row["question_type"] == "multi_choice":
            # MathVista: the answer is the choice text, not the letter, and answer_type is "text"
            assert isinstance(row["choices"], list) and all(isinstance(c, str) for c in row["choices"])
            assert len(set(row["choices"])) == len(row["choices"]) >= 2
            assert row["answer"] in row["choices"] and row["answer_type"] == "text"
        else:
            assert row["choices"] is None
        if row["answer_type"] == "float":
            assert row["precision"] == 1.0 and re.fullmatch(r"\d+\.\d", row["answer"])
        else:
            assert math.isnan(row["precision"])
        if row["answer_type"] == "integer":
            assert re.fullmatch(r"\d+", row["answer"])


def test_query_is_built_like_mathvistas(table300):
    for _, row in table300.iterrows():
        q = row["query"]
        if row["question_type"] == "multi_choice":
            assert q.startswith(HINTS["multi_choice"] + row["question"])
            letters = [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(row["choices"])]
            assert q.endswith("\nChoices:\n" + "\n".join(letters))
        elif row["answer_type"] in HINTS:
            assert q.startswith(HINTS[row["answer_type"]] + row["question"])
            assert "Choices:" not in q
        else:
            assert q.startswith("Hint: ") and f"\nQuestion: {row['question']}" in q
        if row["unit"]:
            assert f"{row['question']} (Unit: {row['unit']})" in q
        else:
            assert "(Unit:" not in q


def test_mix_of_families_and_answer_kinds(table300):
    t = table300
    families = {
        "bar chart": t["question"].str.contains("bar "),
        "counting": t["question"].str.contains("shapes"),
        "rectangle": t["question"].str.contains("rectangle"),
        "triangle": t["question"].str.contains("triangle"),
        "number line": t["question"].str.contains("number line"),
    }
    for name, mask in families.items():
        assert mask.sum() >= 30, name
    assert sum(m.astype(int) for m in families.values()).eq(1).all()  # every row in exactly one family
    mc = t["question_type"] == "multi_choice"
    numeric_answer = t["answer"].str.fullmatch(r"\d+(\.\d)?")
    assert 0.10 * len(t) <= (mc & numeric_answer).sum() <= 0.25 * len(t)
    assert 3 <= (mc & ~numeric_answer).sum() <= 0.10 * len(t)
    free_text = (t["question_type"] == "free_form") & (t["answer_type"] == "text")
    assert 3 <= free_text.sum() <= 0.10 * len(t) and not numeric_answer[free_text].any()
    assert (t["answer_type"] == "float").sum() >= 10
    assert (t["answer_type"] == "integer").sum() > 0.5 * len(t)


def test_answers_are_consistent_with_the_questions(table300):
    for _, row in table300.iterrows():
        if "triangle" in row["question"] and row["question_type"] == "free_form":
            assert 25 <= int(row["answer"]) <= 120 and int(row["answer"]) % 5 == 0
        if row["question"].startswith("How many") and row["question_type"] == "free_form":
            assert 1 <= int(row["answer"]) <= 16
        if "largest value" in row["question"] or "most of the shapes" in row["question"]:
            assert row["answer"].isalpha()


def test_images_are_rgb_pngs_of_the_requested_size():
    table = generate_synthetic_mathvista(15, seed=1, image_size=80)
    for item in table["decoded_image"]:
        assert item["bytes"].startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(item["bytes"])) as img:
            img.load()
            assert img.size == (80, 80) and img.mode == "RGB"
            lo, hi = img.convert("L").getextrema()
            assert lo < 60 and hi > 240  # something dark drawn on a light background


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_rows"):
        generate_synthetic_mathvista(0)
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic_mathvista(3, image_size=16)


def test_write_uses_the_hub_parquet_layout(tmp_path):
    path = write_synthetic_mathvista(tmp_path, num_rows=6, seed=2, image_size=64, split="test")
    assert path == tmp_path / "data" / "test-00000-of-00001.parquet" and path.is_file()
    assert [p.name for p in (tmp_path / "data").iterdir()] == [path.name]  # no temp file left behind
    table = pq.read_table(path)
    assert table.column_names == HUB_COLUMNS and table.num_rows == 6
    assert table.schema.field("decoded_image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert table.schema.field("choices").type == pa.list_(pa.string())
    rows = table.to_pylist()
    expected = generate_synthetic_mathvista(6, seed=2, image_size=64, split="test")
    assert [r["decoded_image"]["bytes"] for r in rows] == _image_bytes(expected)
    assert all(r["metadata"]["split"] == "test" for r in rows)
    assert [r["precision"] for r in rows] == [None if math.isnan(p) else p for p in expected["precision"]]
    # rewriting replaces the file in place
    write_synthetic_mathvista(tmp_path, num_rows=3, seed=2, image_size=64, split="test")
    assert pq.read_table(path).num_rows == 3


def test_the_readable_task_set_asks_small_integers_about_distinct_images():
    frame = generate_synthetic_mathvista(120, seed=0, image_size=128, tasks="readable")
    contexts = {m["context"] for m in frame["metadata"]}
    assert contexts == {"colour code", "grey level"}
    assert set(frame["answer"]) == {"1", "2", "3", "4"}
    assert set(frame["question_type"]) == {"free_form"} and set(frame["answer_type"]) == {"integer"}
    # the jitter keeps images apart, so the split's duplicate-image rule has little to drop
    assert len(set(_image_bytes(frame))) >= 115
    pd.testing.assert_frame_equal(frame, generate_synthetic_mathvista(120, seed=0, image_size=128, tasks="readable"))
    with pytest.raises(ValueError, match="tasks must be one of"):
        generate_synthetic_mathvista(5, tasks="imagenet")
