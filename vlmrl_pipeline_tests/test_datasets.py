"""Loading, filtering, image preparation, splitting and prompting of MathVista-format data."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from vlmrl_pipeline.core import answers
from vlmrl_pipeline.core.datasets import (
    BOXED_SYSTEM_PROMPT,
    FORMAT_INSTRUCTION,
    MATHVISTA_COLUMNS,
    SKIP_KINDS,
    DataError,
    build_mathvista_query,
    build_prompt_text,
    chat_prompt,
    count_skips,
    filter_mathvista,
    filter_rows,
    is_numeric_answer,
    load_image,
    load_mathvista,
    load_rlinf,
    prepare_images,
    resize_image,
    split_train_eval,
    strip_boxed,
)
from vlmrl_pipeline.core.synthetic import (
    generate_synthetic_mathvista,
    write_synthetic_mathvista,
)


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
    assert counts == {"rows_in": 10, "rows_kept": 4, "dropped_unreadable": 0, "dropped_missing_pid": 0,
                      "dropped_missing_answer": 4, "dropped_duplicate_pid": 1, "dropped_non_numeric": 1,
                      "dropped_multi_choice": 0}
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


def test_every_dropped_row_is_named_with_its_column_and_why():
    table = _table(["3", "", "4", "5", "x"], pids=["a", "b", None, "a", "c"])
    table.loc[4, "pid"] = "  "  # blank: as unusable as null
    kept, counts, dropped = filter_rows(table, numeric_only=True)
    assert kept["pid"].tolist() == ["a"]
    assert counts["dropped_missing_pid"] == 2 and counts["dropped_missing_answer"] == 1
    assert counts["dropped_duplicate_pid"] == 1
    assert [(d["row"], d["pid"], d["column"], d["kind"]) for d in dropped] == [
        (2, None, "pid", "missing_pid"), (4, "  ", "pid", "missing_pid"), (1, "b", "answer", "missing_answer"),
        (3, "a", "pid", "duplicate_pid")]
    assert all(d["reason"] for d in dropped)
    assert counts["rows_kept"] + sum(v for k, v in counts.items() if k.startswith("dropped_")) == counts["rows_in"]


def _parquet_with_bad_utf8(path, bad_rows: set[int], n: int = 4):
    """MathVista's columns, with ``question`` holding bytes that are not UTF-8 in ``bad_rows`` (as a writer that
    never validated its text can leave them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(_table([str(i) for i in range(n)]), preserve_index=False)
    raw = [b"caf\xe9 ?" if i in bad_rows else f"q{i}".encode() for i in range(n)]
    question = pa.array(raw, type=pa.binary()).view(pa.string())  # view: no validation, as such a writer did
    table = table.set_column(table.column_names.index("question"), "question", question)
    pq.write_table(table, path)


def test_undecodable_text_is_a_named_skip_not_a_bare_error(tmp_path):
    (tmp_path / "data").mkdir()
    _parquet_with_bad_utf8(tmp_path / "data" / "testmini.parquet", bad_rows={1, 3})
    loaded = load_mathvista(str(tmp_path), "testmini")
    kept, counts, dropped = filter_rows(loaded)
    assert kept["pid"].tolist() == ["0", "2"] and kept.loc[1, "question"] == "q2"
    assert counts["dropped_unreadable"] == 2 and "_unreadable" not in kept.columns
    assert [(d["pid"], d["column"], d["kind"]) for d in dropped] == [("1", "question", "unreadable"),
                                                                     ("3", "question", "unreadable")]
    assert "not valid UTF-8" in dropped[0]["reason"] and "testmini.parquet" in dropped[0]["reason"]


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
    assert [s["kind"] for s in skipped] == ["corrupt_image", "unsafe_pid", "duplicate_pid"]
    assert count_skips(skipped) == {"missing_image": 0, "corrupt_image": 1, "image_too_large": 0, "image_count": 0,
                                    "unsafe_pid": 1, "duplicate_pid": 1, "total": 3}
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
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=root, timeout=60).returncode == 0


# --------------------------------------------------------------------------- MathVista's GitHub layout

_HINT_INT = ("Hint: Please answer the question requiring an integer answer and provide the final value, "
             "e.g., 1, 2, 3, at the end.")
_HINT_FLOAT1 = ("Hint: Please answer the question requiring a floating-point number with one decimal place and "
                "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.")
_HINT_FLOAT2 = ("Hint: Please answer the question requiring a floating-point number with two decimal places and "
                "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.")
_HINT_MC = "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
_HINT_LIST = ("Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
              "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.")

# Five problems as lupantech/MathVista's testmini.json holds them, with the query the hub's parquet carries.
_PROBLEMS = [
    ({"question": "what is the total volume of the measuring cup?", "choices": None, "unit": "g", "precision": None,
      "answer": "1000", "question_type": "free_form", "answer_type": "integer"},
     f"{_HINT_INT}\nQuestion: what is the total volume of the measuring cup? (Unit: g)"),
    ({"question": "How long is the line?", "choices": None, "unit": None, "precision": 1.0,
      "answer": "3.5", "question_type": "free_form", "answer_type": "float"},
     f"{_HINT_FLOAT1}\nQuestion: How long is the line?"),
    ({"question": "What is the slope?", "choices": None, "unit": "", "precision": 2.0,
      "answer": "0.25", "question_type": "free_form", "answer_type": "float"},
     f"{_HINT_FLOAT2}\nQuestion: What is the slope?"),
    ({"question": "Which bar is tallest?", "choices": ["red", "blue", "green"], "unit": None, "precision": None,
      "answer": "blue", "question_type": "multi_choice", "answer_type": "text"},
     f"{_HINT_MC}\nQuestion: Which bar is tallest?\nChoices:\n(A) red\n(B) blue\n(C) green"),
    ({"question": "List the x values.", "choices": None, "unit": None, "precision": None,
      "answer": "[1, 2]", "question_type": "free_form", "answer_type": "list"},
     f"{_HINT_LIST}\nQuestion: List the x values."),
]
_COLOURS = ["red", "green", "blue", "yellow", "purple"]


def _write_github_layout(root, with_query=True, skip_image=None):
    """testmini.json keyed by pid + images/ (+ query.json), as in lupantech/MathVista's data/ folder."""
    data = root / "data"
    (data / "images").mkdir(parents=True)
    problems = {}
    for i, (fields, _query) in enumerate(_PROBLEMS, start=1):
        pid = str(i)
        problems[pid] = {**fields, "pid": pid, "image": f"images/{pid}.png",
                         "metadata": {"source": "test", "skills": ["arithmetic"]}}
        if pid != skip_image:
            (data / "images" / f"{pid}.png").write_bytes(_png(_COLOURS[i - 1]))
    (data / "testmini.json").write_text(json.dumps(problems, indent=2))
    if with_query:
        (data / "query.json").write_text(json.dumps({str(i): q for i, (_, q) in enumerate(_PROBLEMS, start=1)}))
    return root


def _write_hub_layout(root):
    rows = [{**fields, "pid": str(i), "query": query, "image": f"images/{i}.png",
             "decoded_image": {"bytes": _png(_COLOURS[i - 1]), "path": f"images/{i}.png"},
             "metadata": {"source": "test", "skills": ["arithmetic"]}}
            for i, (fields, query) in enumerate(_PROBLEMS, start=1)]
    (root / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "data" / "testmini-00000-of-00001-abc.parquet")
    return root


@pytest.mark.parametrize("with_query", [True, False])
def test_github_and_hub_layouts_load_the_same_problems(tmp_path, with_query):
    github = load_mathvista(str(_write_github_layout(tmp_path / "github", with_query=with_query)), "testmini")
    hub = load_mathvista(str(_write_hub_layout(tmp_path / "hub")), "testmini")
    for column in ("pid", "question", "query", "choices", "unit", "answer", "question_type", "answer_type",
                   "metadata", "image"):
        assert github[column].tolist() == hub[column].tolist(), column
    pd.testing.assert_series_equal(github["precision"], hub["precision"])
    assert github["query"].tolist() == [q for _, q in _PROBLEMS]
    # images are path dicts pointing into images/, and prepare the same pixels as the hub's bytes
    first = github["decoded_image"][0]
    assert first["bytes"] is None and first["path"] == str(tmp_path / "github" / "data" / "images" / "1.png")
    rows_g, skipped_g = prepare_images(github, tmp_path / "out_g", 16)
    rows_h, skipped_h = prepare_images(hub, tmp_path / "out_h", 16)
    assert not skipped_g and not skipped_h
    assert rows_g["image_sha256"].tolist() == rows_h["image_sha256"].tolist()


def test_query_json_wins_and_missing_entries_are_built(tmp_path):
    root = _write_github_layout(tmp_path, with_query=False)
    (root / "data" / "query.json").write_text(json.dumps({"2": "my own query"}))
    loaded = load_mathvista(str(root / "data"), "testmini")  # the json's own folder works too
    assert loaded["query"].tolist() == [_PROBLEMS[0][1], "my own query"] + [q for _, q in _PROBLEMS[2:]]


def test_build_mathvista_query_matches_the_hub_text():
    for fields, query in _PROBLEMS:
        assert build_mathvista_query(fields) == query
    # floats of a precision build_query.py has no hint for get none
    assert build_mathvista_query({"question": "q?", "question_type": "free_form", "answer_type": "float",
                                  "precision": 3.0}) == "Question: q?"


def test_github_layout_as_a_list_with_a_missing_image_is_a_counted_skip(tmp_path):
    root = _write_github_layout(tmp_path, skip_image="3")
    problems = json.loads((root / "data" / "testmini.json").read_text())
    (root / "data" / "testmini.json").write_text(json.dumps(list(problems.values())))
    loaded = load_mathvista(str(root), "testmini")  # loading does not open the images
    assert loaded["pid"].tolist() == ["1", "2", "3", "4", "5"]
    rows, skipped = prepare_images(loaded, tmp_path / "out", 16)
    assert rows["pid"].tolist() == ["1", "2", "4", "5"]
    assert [(s["pid"], s["kind"]) for s in skipped] == [("3", "missing_image")]
    assert "3.png does not exist" in skipped[0]["reason"]
    assert count_skips(skipped)["missing_image"] == 1 and count_skips(skipped)["total"] == 1


def test_both_layouts_in_one_folder_is_a_data_error(tmp_path):
    _write_github_layout(tmp_path)
    _write_hub_layout(tmp_path / "hub")
    with pytest.raises(DataError, match=r"testmini-00000-of-00001-abc\.parquet.*testmini\.json.*point source"):
        load_mathvista(str(tmp_path), "testmini")


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "testmini.json").write_text("{not json")
    with pytest.raises(DataError, match=r"testmini\.json"):
        load_mathvista(str(tmp_path), "testmini")
    (tmp_path / "testmini.json").write_text(json.dumps({"1": {**_PROBLEMS[0][0], "image": "images/1.png"}}))
    (tmp_path / "query.json").write_text("[1, 2")
    with pytest.raises(DataError, match=r"query\.json"):
        load_mathvista(str(tmp_path), "testmini")


# --------------------------------------------------------------------------- filter, on a known composition

# pid -> (answer, question_type); "ff_int_a" repeats at the end with another answer.
_COMPOSITION = [
    ("ff_int_a", "3", "free_form"), ("ff_int_b", "12", "free_form"), ("ff_float_a", "1.5", "free_form"),
    ("ff_float_b", "0.25", "free_form"), ("mc_num_a", "4", "multi_choice"), ("mc_num_b", "7.5", "multi_choice"),
    ("mc_text_a", "circle", "multi_choice"), ("mc_text_b", "B is larger", "multi_choice"),
    ("ff_list", "[1, 2, 3]", "free_form"), ("empty", "", "free_form"), ("no_answer", None, "free_form"),
    ("ff_int_a", "99", "free_form"),
]


@pytest.mark.parametrize("numeric_only, free_form_only, expected, dropped_non_numeric, dropped_multi_choice", [
    (False, False, ["ff_int_a", "ff_int_b", "ff_float_a", "ff_float_b", "mc_num_a", "mc_num_b", "mc_text_a",
                    "mc_text_b", "ff_list"], 0, 0),
    (True, False, ["ff_int_a", "ff_int_b", "ff_float_a", "ff_float_b", "mc_num_a", "mc_num_b"], 3, 0),
    (False, True, ["ff_int_a", "ff_int_b", "ff_float_a", "ff_float_b", "ff_list"], 0, 4),
    (True, True, ["ff_int_a", "ff_int_b", "ff_float_a", "ff_float_b"], 3, 2),
])
def test_filter_keeps_exactly_the_expected_pids(tmp_path, numeric_only, free_form_only, expected,
                                                dropped_non_numeric, dropped_multi_choice):
    pids, answers_, types = zip(*_COMPOSITION)
    (tmp_path / "data").mkdir()
    _table(list(answers_), list(types), pids=list(pids)).to_parquet(tmp_path / "data" / "testmini.parquet")
    loaded = load_mathvista(str(tmp_path), "testmini")
    assert len(loaded) == 12
    kept, counts = filter_mathvista(loaded, numeric_only=numeric_only, free_form_only=free_form_only)
    assert kept["pid"].tolist() == expected
    assert kept.loc[0, "answer"] == "3"  # the first ff_int_a, not its repeat
    assert counts == {"rows_in": 12, "rows_kept": len(expected), "dropped_unreadable": 0, "dropped_missing_pid": 0,
                      "dropped_missing_answer": 2, "dropped_duplicate_pid": 1,
                      "dropped_non_numeric": dropped_non_numeric, "dropped_multi_choice": dropped_multi_choice}


# --------------------------------------------------------------------------- RLinf format


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{3}", "3"), (" \\boxed{ 4.5 } ", "4.5"), ("\\boxed{2\\sqrt{3}}", "2\\sqrt{3}"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), ("3", "3"), ("\\boxed{1}+\\boxed{2}", "\\boxed{1}+\\boxed{2}"),
    ("x = \\boxed{1}", "x = \\boxed{1}"), ("\\boxed{1", "\\boxed{1"), ("\\boxed{{1}", "\\boxed{{1}"), (None, None),
])
def test_strip_boxed_takes_only_a_whole_string_box(text, expected):
    assert strip_boxed(text) == expected


def _write_geo3k(root, split="train"):
    """geo3k as RLinf reads it: problem with <image>, images as a list of {"bytes", "path"}, boxed answers."""
    rows = [
        {"problem": "<image>Find x.", "images": [{"bytes": _png("red"), "path": None}], "answer": "\\boxed{3}"},
        {"problem": "<image>\nFind y. Round to the nearest tenth.", "images": [{"bytes": _png("blue"), "path": None}],
         "answer": "\\boxed{2\\sqrt{3}}"},
        {"problem": "Compare <image> with the other figure.",
         "images": [{"bytes": _png("red"), "path": None}, {"bytes": _png("blue"), "path": None}],
         "answer": "\\boxed{4.5}"},
        {"problem": "Find w.", "images": [], "answer": "5"},
    ]
    (root / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def test_rlinf_geo3k_rows_become_mathvista_rows(tmp_path):
    loaded = load_rlinf(str(_write_geo3k(tmp_path)))
    assert list(loaded.columns) == list(MATHVISTA_COLUMNS)
    assert loaded["pid"].tolist() == ["train-0", "train-1", "train-2", "train-3"]
    assert loaded["question"].tolist() == loaded["query"].tolist()
    assert loaded["query"][1] == "<image>\nFind y. Round to the nearest tenth."  # the placeholder stays
    assert loaded["answer"].tolist() == ["3", "2\\sqrt{3}", "4.5", "5"]
    assert loaded["answer_type"].tolist() == ["integer", "text", "float", "integer"]
    assert (loaded["question_type"] == "free_form").all() and loaded["precision"].isna().all()
    assert loaded["choices"].tolist() == [None] * 4 and loaded["unit"].tolist() == [None] * 4
    assert loaded["metadata"][1] == {"format": "rlinf", "raw_answer": "\\boxed{2\\sqrt{3}}", "num_images": 1}
    assert [m["num_images"] for m in loaded["metadata"]] == [1, 1, 2, 0]
    # always a list of {"bytes", "path"} dicts, so the column has one parquet type
    assert [len(images) for images in loaded["decoded_image"]] == [1, 1, 2, 0]
    assert set(loaded["decoded_image"][0][0]) == {"bytes", "path"}
    loaded.drop(columns=["metadata"]).to_parquet(tmp_path / "round_trip.parquet")

    kept, counts = filter_mathvista(loaded, numeric_only=True)
    assert kept["pid"].tolist() == ["train-0", "train-2", "train-3"] and counts["dropped_non_numeric"] == 1
    rows, skipped = prepare_images(loaded, tmp_path / "out", 16)
    assert rows["pid"].tolist() == ["train-0", "train-1"]
    assert [(s["pid"], s["kind"]) for s in skipped] == [("train-2", "image_count"), ("train-3", "image_count")]
    assert "row has 2 images; this pipeline uses exactly one image per sample" in skipped[0]["reason"]
    assert count_skips(skipped) == {**dict.fromkeys(SKIP_KINDS, 0), "image_count": 2, "total": 2}

    prompt = chat_prompt(build_prompt_text(rows.iloc[1], instruction=None), system_prompt=BOXED_SYSTEM_PROMPT)
    assert prompt == [
        {"role": "system", "content": [{"type": "text", "text": BOXED_SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "Find y. Round to the nearest tenth."}]},
    ]


def test_rlinf_custom_keys_jsonl_and_relative_image_paths(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(_png("green"))
    lines = [
        {"uid": "g1", "text": "Find x in <image>.", "pic": ["pics/a.png"], "final": "\\boxed{7}"},
        {"uid": "g2", "text": "<image> Find y.", "pic": "pics/a.png", "final": 2},
        {"uid": None, "text": "<image>Find z.", "pic": [{"bytes": None, "path": "pics/missing.png"}], "final": "1.25"},
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    loaded = load_rlinf(tmp_path, "test", prompt_key="text", answer_key="final", image_keys=["pic"], pid_key="uid")
    assert loaded["pid"].tolist() == ["g1", "g2", "test-2"]  # a row without its id falls back to the position
    assert loaded["answer"].tolist() == ["7", "2", "1.25"]
    expected = [{"bytes": None, "path": str(tmp_path / "pics" / "a.png")}]
    assert loaded["decoded_image"][0] == loaded["decoded_image"][1] == expected
    rows, skipped = prepare_images(loaded, tmp_path / "out", 8)
    assert rows["pid"].tolist() == ["g1", "g2"] and [s["kind"] for s in skipped] == ["missing_image"]
    # every missing key is named with the setting that fixes it and the columns found
    for kwargs, key, setting in [({}, "problem", "prompt_key"),
                                 ({"prompt_key": "text"}, "answer", "answer_key"),
                                 ({"prompt_key": "text", "answer_key": "final"}, "images", "image_keys")]:
        with pytest.raises(DataError, match=rf"'{key}'.*{setting}.*columns found.*'uid'"):
            load_rlinf(tmp_path, "test", **kwargs)


def test_rlinf_ids_come_from_an_id_column_and_json_files(tmp_path):
    rows = [{"id": 10, "problem": "<image>a", "images": [], "answer": "\\boxed{1}"},
            {"id": 11, "problem": "<image>b", "images": [], "answer": "\\boxed{2}"}]
    (tmp_path / "val.json").write_text(json.dumps(rows))
    assert load_rlinf(str(tmp_path), "val")["pid"].tolist() == ["10", "11"]
    with pytest.raises(DataError, match="no files for split 'train'"):
        load_rlinf(str(tmp_path))
    _write_geo3k(tmp_path, split="val")
    with pytest.raises(DataError, match="as parquet.*as JSON"):
        load_rlinf(str(tmp_path), "val")


def test_rlinf_hub_ids_keep_images_in_lists_undecoded(monkeypatch):
    import datasets

    features = datasets.Features({"problem": datasets.Value("string"), "images": datasets.Sequence(datasets.Image()),
                                  "answer": datasets.Value("string")})
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict(
            {"problem": ["<image>Find x."], "images": [[{"bytes": _png(), "path": None}]], "answer": ["\\boxed{3}"]},
            features=features,
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_rlinf("hiyouga/geometry3k", "train")
    assert calls == [(("hiyouga/geometry3k",), {"split": "train"})]
    [image] = loaded["decoded_image"][0]
    assert isinstance(image, dict) and isinstance(image["bytes"], bytes)
    assert load_image(image).size == (20, 10) and loaded["answer"].tolist() == ["3"]


# --------------------------------------------------------------------------- image counts and skips


def test_one_image_in_a_list_is_unwrapped_and_other_counts_are_refused():
    assert load_image([_png()]).size == (20, 10)
    assert load_image(({"bytes": _png(), "path": None},)).size == (20, 10)
    for value, n in (([], 0), ([_png(), _png()], 2), (pd.Series([_png()] * 3, dtype=object).to_numpy(), 3)):
        with pytest.raises(DataError, match=f"row has {n} images; this pipeline uses exactly one image per sample") as info:
            load_image(value)
        assert info.value.kind == "image_count"


@pytest.mark.parametrize("value, kind", [
    (None, "missing_image"), ({"bytes": None, "path": "/nope/x.png"}, "missing_image"), ({}, "missing_image"),
    (b"not an image", "corrupt_image"), (42, "corrupt_image"),
])
def test_image_errors_say_their_kind(value, kind):
    with pytest.raises(DataError) as info:
        load_image(value)
    assert info.value.kind == kind


def test_too_large_images_are_their_own_kind(monkeypatch, tmp_path):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    _, skipped = prepare_images(_table(["1"]), tmp_path, 4)
    assert [s["kind"] for s in skipped] == ["image_too_large"]


def test_count_skips_lists_every_kind():
    assert count_skips([]) == {**dict.fromkeys(SKIP_KINDS, 0), "total": 0}
    assert list(count_skips([])) == [*SKIP_KINDS, "total"]


# --------------------------------------------------------------------------- prompts with placeholders


def test_instruction_can_be_left_out():
    row = {"query": "<image>Find x.  "}
    assert build_prompt_text(row, instruction=None) == build_prompt_text(row, instruction="") == "<image>Find x."
    assert build_prompt_text(row, instruction="Be brief.") == "<image>Find x.\nBe brief."


@pytest.mark.parametrize("text, content", [
    ("<image>\n Find x.", [{"type": "image"}, {"type": "text", "text": "Find x."}]),
    ("Look at <image>\nthen answer.", [{"type": "text", "text": "Look at "}, {"type": "image"},
                                      {"type": "text", "text": "then answer."}]),
    ("Find x.<image>", [{"type": "text", "text": "Find x."}, {"type": "image"}]),
    ("<image>", [{"type": "image"}]),
    ("Find x.", [{"type": "image"}, {"type": "text", "text": "Find x."}]),
])
def test_chat_prompt_puts_the_image_at_its_placeholder(text, content):
    assert chat_prompt(text) == [{"role": "user", "content": content}]


def test_chat_prompt_system_turn_and_one_placeholder_only():
    assert chat_prompt("t", system_prompt=BOXED_SYSTEM_PROMPT)[0] == {
        "role": "system", "content": [{"type": "text", "text": BOXED_SYSTEM_PROMPT}]}
    assert BOXED_SYSTEM_PROMPT.endswith("Answer: \\boxed{$Answer}.")
    with pytest.raises(DataError, match="2 <image> placeholders"):
        chat_prompt("<image> and <image>")


def test_undecodable_text_in_json_sources_costs_its_row_only(tmp_path):
    # MathVista's GitHub layout: one JSON document; a bad byte used to make the whole file unreadable.
    (tmp_path / "mv" / "data").mkdir(parents=True)
    problems = {str(i): {"pid": str(i), "question": f"Q{i}?", "image": f"images/{i}.png", "choices": None,
                         "unit": None, "precision": None, "answer": "3", "question_type": "free_form",
                         "answer_type": "integer", "metadata": {}} for i in range(3)}
    raw = json.dumps(problems).encode().replace(b"Q1?", b"Q\xff1?")
    (tmp_path / "mv" / "data" / "testmini.json").write_bytes(raw)
    kept, counts, dropped = filter_rows(load_mathvista(str(tmp_path / "mv"), "testmini"))
    assert kept["pid"].tolist() == ["0", "2"] and counts["dropped_unreadable"] == 1
    assert [(d["pid"], d["column"], d["kind"]) for d in dropped] == [("1", "question", "unreadable")]
    assert "testmini.json" in dropped[0]["reason"]
    # RLinf's JSON lines: the same, per line
    (tmp_path / "rl").mkdir()
    lines = [json.dumps({"id": f"g{i}", "problem": f"<image>x{i}", "images": [], "answer": "1"}).encode()
             for i in range(3)]
    lines[2] = lines[2].replace(b"x2", b"x\xfe2")
    (tmp_path / "rl" / "train.jsonl").write_bytes(b"\n".join(lines))
    kept, counts, dropped = filter_rows(load_rlinf(str(tmp_path / "rl"), "train"), numeric_only=False)
    assert kept["pid"].tolist() == ["g0", "g1"]
    # named by the source file's column
    assert [(d["pid"], d["column"], d["kind"]) for d in dropped] == [("g2", "problem", "unreadable")]
