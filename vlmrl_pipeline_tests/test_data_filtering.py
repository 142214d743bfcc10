"""Which rows the filter keeps (every drop counted and named) and the train/eval split."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from vlmrl_pipeline.core import answers
from vlmrl_pipeline.core.data.filtering import filter_mathvista, filter_rows, is_numeric_answer, split_train_eval
from vlmrl_pipeline.core.data.mathvista import load_mathvista
from vlmrl_pipeline.core.data.schema import DataError
from vlmrl_pipeline.core.demo.synthetic import (
    generate_synthetic_mathvista,
)
from vlmrl_pipeline_tests.data_files import mathvista_table


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
    table = mathvista_table(
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
    table = mathvista_table(["", "2", "3"], pids=["x", "x", "y"])
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
    table = mathvista_table(["3", "", "4", "5", "x"], pids=["a", "b", None, "a", "c"])
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


def test_filter_without_an_answer_column_is_a_data_error():
    with pytest.raises(DataError, match="answer"):
        filter_mathvista(mathvista_table(["1"]).drop(columns=["answer"]))


# --------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_independent_of_row_order():
    table = mathvista_table([str(i) for i in range(40)])
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
    table = mathvista_table([str(i) for i in range(10)]).drop(columns=["decoded_image"])
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
        split_train_eval(mathvista_table([str(i) for i in range(10)]), bad, seed=1)


def test_split_refuses_repeated_pids():
    with pytest.raises(DataError, match="repeated pids"):
        split_train_eval(mathvista_table(["1", "2", "3"], pids=["a", "a", "b"]), 1, seed=0)


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
    mathvista_table(list(answers_), list(types), pids=list(pids)).to_parquet(tmp_path / "data" / "testmini.parquet")
    loaded = load_mathvista(str(tmp_path), "testmini")
    assert len(loaded) == 12
    kept, counts = filter_mathvista(loaded, numeric_only=numeric_only, free_form_only=free_form_only)
    assert kept["pid"].tolist() == expected
    assert kept.loc[0, "answer"] == "3"  # the first ff_int_a, not its repeat
    assert counts == {"rows_in": 12, "rows_kept": len(expected), "dropped_unreadable": 0, "dropped_missing_pid": 0,
                      "dropped_missing_answer": 2, "dropped_duplicate_pid": 1,
                      "dropped_non_numeric": dropped_non_numeric, "dropped_multi_choice": dropped_multi_choice}
