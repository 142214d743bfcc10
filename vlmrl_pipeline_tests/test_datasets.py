"""Loading, filtering, image preparation, splitting and prompting of MathVista-format data."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from vlmrl_pipeline.core import answers
from vlmrl_pipeline.core.datasets import (
    FORMAT_INSTRUCTION,
    MATHVISTA_COLUMNS,
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


def _png(colour="red", size=(20, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _noisy_png(size=64) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _table(answers_, question_types=None, pids=None) -> pd.DataFrame:
    n = len(answers_)
    return pd.DataFrame({
        "pid": pids or [str(i) for i in range(n)],
        "question": [f"q{i}" for i in range(n)],
        "query": [f"Hint: ...\nQuestion: q{i}" for i in range(n)],
        "decoded_image": [{"bytes": _png(), "path": f"images/{i}.png"} for i in range(n)],
        "choices": [None] * n, "unit": [None] * n, "precision": [None] * n, "answer": answers_,
        "question_type": question_types or ["free_form"] * n, "answer_type": ["integer"] * n,
        "metadata": [{"source": "test"}] * n,
    }, columns=list(MATHVISTA_COLUMNS))


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return generate_synthetic_mathvista(300, seed=0, image_size=64)


# --------------------------------------------------------------------------- numeric answers


@pytest.mark.parametrize("answer, expected", [
    ("3", True), ("-2", True), ("+4", True), ("3.5", True), (".5", True), (" 7 ", True), ("1e3", True), (7, True),
    (2.5, True), ("", False), ("   ", False), ("nan", False), ("inf", False), ("1e999", False), ("1,000", False),
    ("1_000", False), ("3 cm", False), ("red", False), ("\u0663", False), (None, False), (True, False),
    (float("nan"), False),
])
def test_numeric_answers(answer, expected):
    assert is_numeric_answer(answer) is expected
    # the filter and the numeric reward must agree on what a number is
    assert is_numeric_answer(answer) is (answers.parse_number(answer) is not None)


# --------------------------------------------------------------------------- filter


def test_filter_counts_every_drop_and_the_counts_add_up():
    table = _table(
        ["3", "", "red", "4.5", "7", None, float("nan"), "  ", "9", "2"],
        ["free_form", "free_form", "free_form", "multi_choice", "free_form", "free_form", "free_form", "free_form",
         "free_form", "multi_choice"],
        pids=["a", "b", "c", "d", "e", "f", "g", "h", "a", "i"],
    )
    kept, counts = filter_mathvista(table, numeric_only=True, free_form_only=False)
    assert kept["pid"].tolist() == ["a", "d", "e", "i"] and kept.index.tolist() == [0, 1, 2, 3]
    assert counts == {"rows_in": 10, "rows_kept": 4, "dropped_missing_answer": 4, "dropped_duplicate_pid": 1,
                      "dropped_non_numeric": 1, "dropped_multi_choice": 0}
    kept, counts = filter_mathvista(table, numeric_only=True, free_form_only=True)
    assert kept["pid"].tolist() == ["a", "e"] and counts["dropped_multi_choice"] == 2
    kept, counts = filter_mathvista(table, numeric_only=False)
    assert kept["answer"].tolist() == ["3", "red", "4.5", "7", "2"] and counts["dropped_non_numeric"] == 0
    for _, c in [filter_mathvista(table, n, f) for n in (True, False) for f in (True, False)]:
        assert c["rows_kept"] + sum(v for k, v in c.items() if k.startswith("dropped_")) == c["rows_in"]


def test_duplicate_pid_keeps_the_first_row_with_an_answer():
    table = _table(["", "2", "3"], pids=["x", "x", "y"])
    kept, counts = filter_mathvista(table)
    assert kept["answer"].tolist() == ["2", "3"]
    assert counts["dropped_missing_answer"] == 1 and counts["dropped_duplicate_pid"] == 0


def test_numeric_filter_on_synthetic_data_keeps_exactly_the_parsable_answers(synthetic):
    kept, counts = filter_mathvista(synthetic, numeric_only=True)
    parsable = synthetic["answer"].map(lambda a: re.fullmatch(r"-?\d+(\.\d+)?", a) is not None)
    assert kept["pid"].tolist() == synthetic.loc[parsable, "pid"].tolist()
    assert counts["dropped_non_numeric"] == int((~parsable).sum()) > 0
    assert counts["rows_kept"] + counts["dropped_non_numeric"] == counts["rows_in"] == 300


def test_free_form_only_drops_multi_choice(synthetic):
    numeric, _ = filter_mathvista(synthetic, numeric_only=True)
    free, counts = filter_mathvista(synthetic, numeric_only=True, free_form_only=True)
    assert (free["question_type"] == "free_form").all()
    assert counts["dropped_multi_choice"] == int((numeric["question_type"] == "multi_choice").sum()) > 0
    assert len(free) == len(numeric) - counts["dropped_multi_choice"]


def test_filter_without_an_answer_column_is_a_data_error():
    with pytest.raises(DataError, match="answer"):
        filter_mathvista(_table(["1"]).drop(columns=["answer"]))


# --------------------------------------------------------------------------- loading


def test_load_round_trips_the_synthetic_parquet(tmp_path):
    write_synthetic_mathvista(tmp_path, num_rows=12, seed=3, image_size=64)
    loaded = load_mathvista(str(tmp_path), "testmini")
    expected = generate_synthetic_mathvista(12, seed=3, image_size=64)
    pd.testing.assert_frame_equal(loaded, expected)
    assert isinstance(loaded["metadata"][0]["skills"], list)
    pd.testing.assert_frame_equal(load_mathvista(tmp_path / "data", "testmini"), expected)  # PathLike works too


def test_load_reads_every_file_of_the_split_recursively_and_only_that_split(tmp_path):
    frame = generate_synthetic_mathvista(4, seed=0, image_size=64)
    (tmp_path / "a" / "b").mkdir(parents=True)
    frame.head(2).to_parquet(tmp_path / "a" / "testmini-00000-of-00002-xyz.parquet")
    frame.tail(2).to_parquet(tmp_path / "a" / "b" / "testmini-00001-of-00002-xyz.parquet")
    frame.to_parquet(tmp_path / "a" / "test-00000-of-00001.parquet")
    loaded = load_mathvista(str(tmp_path), "testmini")
    assert loaded["pid"].tolist() == ["1", "2", "3", "4"] and loaded.index.tolist() == [0, 1, 2, 3]
    assert isinstance(loaded["metadata"][0]["skills"], list)  # numpy arrays from pandas' writer become lists
    assert len(load_mathvista(str(tmp_path), "test")) == 4
    with pytest.raises(DataError, match=r"'train-\*\.parquet'") as info:
        load_mathvista(str(tmp_path), "train")
    assert str(tmp_path) in str(info.value)


def test_missing_query_is_filled_from_question(tmp_path):
    (tmp_path / "data").mkdir()
    _table(["1", "2"]).drop(columns=["query"]).to_parquet(tmp_path / "data" / "testmini-0.parquet")
    loaded = load_mathvista(str(tmp_path))
    assert loaded["query"].tolist() == loaded["question"].tolist() == ["q0", "q1"]


def test_missing_column_names_it_and_the_columns_found(tmp_path):
    (tmp_path / "data").mkdir()
    _table(["1"]).drop(columns=["answer"]).to_parquet(tmp_path / "data" / "testmini-0.parquet")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['answer'\].*found.*'question_type'"):
        load_mathvista(str(tmp_path))


def test_empty_table_is_a_data_error(tmp_path):
    (tmp_path / "data").mkdir()
    _table([]).to_parquet(tmp_path / "data" / "testmini-0.parquet")
    with pytest.raises(DataError, match="no rows"):
        load_mathvista(str(tmp_path))


def test_missing_local_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError("the hub must not be called for a local path")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(DataError, match="does not exist"):
        load_mathvista(str(tmp_path / "nope"))
    path = write_synthetic_mathvista(tmp_path, num_rows=2, seed=0, image_size=64)
    with pytest.raises(DataError, match="is a file"):
        load_mathvista(str(path))


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    import datasets

    expected = generate_synthetic_mathvista(5, seed=4, image_size=64)
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(expected.to_dict(orient="records"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_mathvista("AI4Math/MathVista", split="testmini")
    assert calls == [(("AI4Math/MathVista",), {"split": "testmini"})]
    pd.testing.assert_frame_equal(loaded, expected)
    # datasets hands over numpy arrays for list cells: they come back as lists
    assert all(c is None or isinstance(c, list) for c in loaded["choices"])
    assert all(isinstance(m["skills"], list) for m in loaded["metadata"])
    assert all(set(d) == {"bytes", "path"} and isinstance(d["bytes"], bytes) for d in loaded["decoded_image"])


# --------------------------------------------------------------------------- images


def test_images_decode_from_every_form(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(_png("blue"))
    forms = [
        {"bytes": _png(), "path": None}, _png(), bytearray(_png()), str(path), path,
        {"bytes": None, "path": str(path)}, {"bytes": b"", "path": str(path)}, Image.new("RGB", (20, 10)),
    ]
    for value in forms:
        img = load_image(value)
        assert img.size == (20, 10)
        img.getpixel((0, 0))  # pixels are there
    # bytes win over the path
    assert load_image({"bytes": _png("red"), "path": str(path)}).convert("RGB").getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("bad", [
    {"bytes": b"not an image", "path": None}, _noisy_png()[:2000], None, float("nan"), {}, {"bytes": None, "path": None},
    {"bytes": None, "path": "/nope/x.png"}, "/nope/x.png", 42,
])
def test_missing_or_corrupt_images_are_data_errors(bad):
    with pytest.raises(DataError):
        load_image(bad)


@pytest.mark.parametrize("limit", [150, 50])  # 200 px: PIL only warns at 150, refuses at 50
def test_decompression_bombs_are_refused(monkeypatch, limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match="too large to decode safely"):
        load_image(_png(size=(20, 10)))
    assert load_image(_png(size=(5, 5))).size == (5, 5)


def test_resize_gives_exact_square_rgb_and_composites_transparency_on_white():
    clear = resize_image(Image.new("RGBA", (30, 10), (255, 0, 0, 0)), 16)
    assert clear.mode == "RGB" and clear.size == (16, 16) and clear.getpixel((8, 8)) == (255, 255, 255)
    half = resize_image(Image.new("RGBA", (8, 8), (255, 0, 0, 128)), 4).getpixel((2, 2))
    assert half[0] == 255 and 120 <= half[1] <= 135 and half[1] == half[2]
    grey = resize_image(Image.new("L", (5, 7), 90), 8)
    assert grey.mode == "RGB" and grey.size == (8, 8) and grey.getpixel((4, 4)) == (90, 90, 90)
    palette = Image.new("P", (6, 6), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert resize_image(palette, 3).getpixel((1, 1)) == (255, 255, 255)
    deep = resize_image(Image.new("I;16", (4, 4), 32768), 2)  # 16-bit grey is scaled, not clipped
    assert deep.mode == "RGB" and deep.getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(DataError):
        resize_image(Image.new("RGB", (4, 4)), 0)


def test_prepare_images_skips_and_reports_bad_images(tmp_path):
    table = _table(["1", "2", "3", "4", "5"], pids=["0", "1", "2", "../evil", "2"])
    table.at[1, "decoded_image"] = {"bytes": b"\x89PNG corrupt", "path": "images/1.png"}
    table.at[2, "decoded_image"] = {"bytes": _png("blue", mode="RGBA"), "path": "images/2.png"}
    out_dir = tmp_path / "images"
    rows, skipped = prepare_images(table, out_dir, 32)
    assert rows["pid"].tolist() == ["0", "2"] and rows["answer"].tolist() == ["1", "3"]
    assert [s["pid"] for s in skipped] == ["1", "../evil", "2"]
    assert "corrupt" in skipped[0]["reason"] and "duplicate" in skipped[2]["reason"]
    assert "decoded_image" not in rows.columns and "answer" in rows.columns
    for pid, path, digest in zip(rows["pid"], rows["image_path"], rows["image_sha256"]):
        assert os.path.isabs(path) and path == str((out_dir / f"{pid}.png").resolve())
        with Image.open(path) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
            assert hashlib.sha256(img.tobytes()).hexdigest() == digest
    assert rows["image_sha256"].nunique() == 2  # red and blue differ
    assert sorted(p.name for p in out_dir.iterdir()) == ["0.png", "2.png"]  # no temp files, nothing outside
    assert not (tmp_path / "evil.png").exists()


def test_identical_images_hash_identically(tmp_path):
    rows, skipped = prepare_images(_table(["1", "2"]), tmp_path, 16)
    assert not skipped and rows["image_sha256"].nunique() == 1


# --------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_independent_of_row_order():
    table = _table([str(i) for i in range(40)])
    train, held_out = split_train_eval(table, 10, seed=1)
    assert len(held_out) == 10 and len(train) == 30
    assert not set(train["pid"]) & set(held_out["pid"])
    assert set(train["pid"]) | set(held_out["pid"]) == set(table["pid"])
    again_train, again_eval = split_train_eval(table, 10, seed=1)
    pd.testing.assert_frame_equal(held_out, again_eval)
    pd.testing.assert_frame_equal(train, again_train)
    shuffled = table.sample(frac=1.0, random_state=5).reset_index(drop=True)
    assert set(split_train_eval(shuffled, 10, seed=1)[1]["pid"]) == set(held_out["pid"])
    assert set(split_train_eval(table, 10, seed=2)[1]["pid"]) != set(held_out["pid"])


def test_split_keeps_copies_of_eval_images_out_of_train():
    table = _table([str(i) for i in range(10)]).drop(columns=["decoded_image"])
    table["image_sha256"] = [f"h{i}" for i in range(10)]
    _, held_out = split_train_eval(table, 3, seed=1)
    copy_of = held_out["pid"][0]
    table.loc[table["pid"] != copy_of, "image_sha256"] = [f"h{i}" for i in range(9)]
    table.loc[table["pid"] == copy_of, "image_sha256"] = "h9"
    clone = table.index[table["pid"] != copy_of][0]
    table.loc[clone, "image_sha256"] = "h9"  # the same picture as an eval row, under another pid
    train, held_out2 = split_train_eval(table, 3, seed=1)
    assert held_out2["pid"].tolist() == held_out["pid"].tolist()
    assert table.loc[clone, "pid"] not in set(train["pid"])
    assert not set(train["image_sha256"]) & set(held_out2["image_sha256"])
    assert len(train) == 6


@pytest.mark.parametrize("bad", [0, -1, 10, 11])
def test_split_refuses_bad_eval_sizes(bad):
    with pytest.raises(DataError, match="eval_size"):
        split_train_eval(_table([str(i) for i in range(10)]), bad, seed=1)


def test_split_refuses_repeated_pids():
    with pytest.raises(DataError, match="repeated pids"):
        split_train_eval(_table(["1", "2", "3"], pids=["a", "a", "b"]), 1, seed=0)


# --------------------------------------------------------------------------- prompts


def test_prompts_use_the_field_and_fall_back_to_question():
    row = {"query": "Hint: integer.\nQuestion: How many?", "question": "How many?"}
    assert build_prompt_text(row) == f"Hint: integer.\nQuestion: How many?\n{FORMAT_INSTRUCTION}"
    assert build_prompt_text(row, prompt_field="question") == f"How many?\n{FORMAT_INSTRUCTION}"
    for fallback in ({"query": "", "question": "Bare?"}, {"question": "Bare?"}, {"query": None, "question": "Bare?"},
                     pd.Series({"query": float("nan"), "question": "Bare?"})):
        assert build_prompt_text(fallback) == f"Bare?\n{FORMAT_INSTRUCTION}"
    with pytest.raises(DataError, match="pid='7'"):
        build_prompt_text({"pid": "7", "query": "", "question": " "})


def test_format_instruction_names_the_tags_the_rewards_parse():
    for tag in (answers.REASONING_START, answers.REASONING_END, answers.SOLUTION_START, answers.SOLUTION_END):
        assert tag in FORMAT_INSTRUCTION


def test_chat_prompt_is_trls_vlm_format():
    assert chat_prompt("t") == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "t"}]}]


def test_core_data_modules_do_not_import_dagster():
    code = ("import sys, vlmrl_pipeline.core.datasets, vlmrl_pipeline.core.synthetic; "
            "sys.exit(1 if 'dagster' in sys.modules else 0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0
