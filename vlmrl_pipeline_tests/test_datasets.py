"""Loading, filtering, image preparation, splitting and prompting of MathVista-format data."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from PIL import Image

from vlmrl_pipeline.core import datasets as ds
from vlmrl_pipeline.core.datasets import (
    DataError,
    build_prompt_text,
    chat_prompt,
    filter_mathvista,
    is_numeric_answer,
    load_image,
    load_mathvista,
    prepare_images,
    resize_image,
    split_train_eval,
)
from vlmrl_pipeline.core.synthetic import generate_synthetic_mathvista, write_synthetic_mathvista


def _png(colour="red", size=(20, 10), mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _table(answers, question_types=None):
    n = len(answers)
    return pd.DataFrame({
        "pid": [str(i) for i in range(n)], "question": [f"q{i}" for i in range(n)],
        "query": [f"Hint: ...\nQuestion: q{i}" for i in range(n)],
        "decoded_image": [{"bytes": _png(), "path": f"images/{i}.png"} for i in range(n)],
        "choices": [None] * n, "unit": [None] * n, "precision": [None] * n, "answer": answers,
        "question_type": question_types or ["free_form"] * n, "answer_type": ["integer"] * n,
        "metadata": [{"source": "test"}] * n,
    })


@pytest.mark.parametrize("answer, expected", [
    ("3", True), ("-2", True), ("3.5", True), (" 7 ", True), ("1e3", True), ("991.0", True),
    ("", False), ("nan", False), ("inf", False), ("1,000", False), ("3 cm", False), ("red", False), (None, False),
])
def test_numeric_answers(answer, expected):
    assert is_numeric_answer(answer) is expected


def test_filter_counts_every_drop():
    table = _table(["3", "", "red", "4.5", "7", None], ["free_form", "free_form", "free_form", "multi_choice",
                                                         "free_form", "free_form"])
    kept, counts = filter_mathvista(table, numeric_only=True, free_form_only=False)
    assert kept["answer"].tolist() == ["3", "4.5", "7"]
    assert counts == {"rows_in": 6, "rows_kept": 3, "dropped_missing_answer": 2, "dropped_duplicate_pid": 0,
                      "dropped_non_numeric": 1, "dropped_multi_choice": 0}
    kept, counts = filter_mathvista(table, numeric_only=True, free_form_only=True)
    assert kept["answer"].tolist() == ["3", "7"] and counts["dropped_multi_choice"] == 1
    kept, counts = filter_mathvista(table, numeric_only=False)
    assert kept["answer"].tolist() == ["3", "red", "4.5", "7"]


def test_duplicate_pids_keep_the_first():
    table = _table(["1", "2", "3"])
    table.loc[2, "pid"] = "0"
    kept, counts = filter_mathvista(table)
    assert kept["answer"].tolist() == ["1", "2"] and counts["dropped_duplicate_pid"] == 1


def test_local_hub_layout_round_trips(tmp_path):
    path = write_synthetic_mathvista(tmp_path, num_rows=12, seed=3, image_size=64)
    assert path == tmp_path / "data" / "testmini-00000-of-00001.parquet"
    loaded = load_mathvista(str(tmp_path), "testmini")
    expected = generate_synthetic_mathvista(12, seed=3, image_size=64)
    assert loaded["pid"].tolist() == expected["pid"].tolist()
    assert loaded["answer"].tolist() == expected["answer"].tolist()
    assert loaded["decoded_image"][0]["bytes"] == expected["decoded_image"][0]["bytes"]
    with pytest.raises(DataError, match="test"):
        load_mathvista(str(tmp_path), "test")


def test_wrong_columns_and_empty_tables_are_clear_errors(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _table(["1"]).rename(columns={"answer": "label"}).to_parquet(folder / "testmini-0.parquet")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['answer'\].*label"):
        load_mathvista(str(tmp_path), "testmini")
    _table([]).to_parquet(folder / "testmini-0.parquet")
    with pytest.raises(DataError, match="no rows"):
        load_mathvista(str(tmp_path), "testmini")


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    import datasets

    calls = []

    class FakeDataset:
        column_names = ["pid"]

        def to_pandas(self):
            return _table(["5"])

    def fake_load_dataset(source, split):
        calls.append((source, split))
        return FakeDataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    table = load_mathvista("AI4Math/MathVista", "testmini")
    assert calls == [("AI4Math/MathVista", "testmini")]
    assert table["answer"].tolist() == ["5"]


def test_images_decode_from_every_form(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(_png())
    for value in ({"bytes": _png(), "path": None}, _png(), str(path), {"bytes": None, "path": str(path)}):
        assert load_image(value).size == (20, 10)
    for bad in ({"bytes": b"not an image", "path": None}, None, {"bytes": None, "path": "/nope.png"}):
        with pytest.raises(DataError):
            load_image(bad)


def test_decompression_bombs_are_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 20x10 = 200 px is over 2x the limit: PIL refuses
    with pytest.raises(DataError, match="too large"):
        load_image(_png())


def test_resize_gives_square_rgb_and_composites_transparency_on_white():
    rgba = Image.new("RGBA", (30, 10), (255, 0, 0, 0))
    out = resize_image(rgba, 16)
    assert out.mode == "RGB" and out.size == (16, 16)
    assert out.getpixel((8, 8)) == (255, 255, 255)
    assert resize_image(Image.new("L", (5, 5), 0), 8).mode == "RGB"


def test_prepare_images_skips_and_reports_bad_images(tmp_path):
    table = _table(["1", "2", "3"])
    table.at[1, "decoded_image"] = {"bytes": b"\x89PNG corrupt", "path": "images/1.png"}
    rows, skipped = prepare_images(table, tmp_path / "images", 32)
    assert rows["pid"].tolist() == ["0", "2"]
    assert [s["pid"] for s in skipped] == ["1"] and "corrupt" in skipped[0]["reason"]
    assert "decoded_image" not in rows.columns
    for path in rows["image_path"]:
        with Image.open(path) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    assert rows["image_sha256"].nunique() == 1  # identical source images hash identically
    assert not [p for p in (tmp_path / "images").iterdir() if p.name.startswith(".")]


def test_split_is_deterministic_disjoint_and_drops_train_copies_of_eval_images():
    table = _table([str(i) for i in range(10)]).drop(columns=["decoded_image"])
    table["image_sha256"] = [f"h{i}" for i in range(10)]
    table.loc[9, "image_sha256"] = "h0"  # the same picture under another pid
    train, held_out = split_train_eval(table, 3, seed=1)
    again_train, again_eval = split_train_eval(table, 3, seed=1)
    assert held_out["pid"].tolist() == again_eval["pid"].tolist()
    assert not set(train["pid"]) & set(held_out["pid"])
    assert not set(train["image_sha256"]) & set(held_out["image_sha256"])
    assert len(train) + len(held_out) in (9, 10)
    assert split_train_eval(table, 3, seed=2)[1]["pid"].tolist() != held_out["pid"].tolist()
    for bad in (0, 10, 11):
        with pytest.raises(DataError, match="eval_size"):
            split_train_eval(table, bad, seed=1)


def test_prompts_use_query_and_fall_back_to_question():
    text = build_prompt_text({"query": "Hint: integer.\nQuestion: How many?", "question": "How many?"})
    assert text.startswith("Hint: integer.\nQuestion: How many?\n") and "<SOLUTION>" in text
    assert build_prompt_text({"query": "", "question": "Bare?"}).startswith("Bare?\n")
    assert build_prompt_text({"query": "Q", "question": "Bare?"}, prompt_field="question").startswith("Bare?")
    assert chat_prompt("t") == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "t"}]}]
