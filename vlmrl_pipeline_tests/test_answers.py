"""Tests for answer extraction and matching (vlmrl_pipeline.core.answers)."""

from __future__ import annotations

import pytest

from vlmrl_pipeline.core.answers import (
    REASONING_END,
    REASONING_START,
    SOLUTION_END,
    SOLUTION_START,
    completion_text,
    extract_solution,
    format_ok,
    gold_text,
    is_addcriterion_spam,
    numeric_match,
    parse_number,
    score_completion,
    strict_match,
)

GOOD = "<REASONING>The bar is 991 tall.</REASONING><SOLUTION>991</SOLUTION>"


def test_tag_constants():
    assert (REASONING_START, REASONING_END) == ("<REASONING>", "</REASONING>")
    assert (SOLUTION_START, SOLUTION_END) == ("<SOLUTION>", "</SOLUTION>")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("plain text", "plain text"),
        ("", ""),
        (None, ""),
        ([{"role": "assistant", "content": GOOD}], GOOD),
        ({"role": "assistant", "content": GOOD}, GOOD),
        # content as a list of parts; the image part carries no text
        ([{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "ab"),
        # several assistant turns are concatenated, other roles skipped
        ([{"role": "user", "content": "question"}, {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}], "xy"),
        ([{"role": "system", "content": "sys"}], ""),
        ([{"content": "no role"}], "no role"),
        ([{"role": "assistant", "content": None}], ""),
        ([{"role": "assistant"}], ""),
        ([], ""),
        (["a", {"role": "assistant", "content": "b"}], "ab"),
        ({"type": "text", "text": "part"}, "part"),
        (42, "42"),
        (1.5, "1.5"),
        ([1, 2], "[1, 2]"),
        ({"foo": 1}, "{'foo': 1}"),
        ({"role": "assistant", "content": 7}, "7"),
    ],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


def test_completion_text_survives_self_reference_and_deep_nesting():
    looped: list = []
    looped.append({"role": "assistant", "content": looped})
    assert isinstance(completion_text(looped), str)

    deep: object = "leaf"
    for _ in range(5000):
        deep = {"role": "assistant", "content": [deep]}
    assert completion_text(deep) == ""  # deeper than the nesting bound -> dropped, not a crash


def test_completion_text_survives_broken_str():
    class Broken:
        def __str__(self):
            raise RuntimeError("boom")

    assert completion_text(Broken()) == ""
    assert "Broken object" in completion_text([Broken()])  # list str() uses repr, which works


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, "991"),
        ("no tags at all", None),
        ("<SOLUTION>unclosed", None),
        ("<SOLUTION></SOLUTION>", ""),
        ("<SOLUTION>\n 12\n</SOLUTION>", "12"),
        ("<SOLUTION>1\n2</SOLUTION>", "12"),
        ("<SOLUTION>\r\n5\r\n</SOLUTION>", "5"),
        # last block is the model's final word
        ("<SOLUTION>1</SOLUTION> wait, no <SOLUTION>2</SOLUTION>", "2"),
        ("<solution>3</solution>", None),
        (None, None),
        ([{"role": "assistant", "content": "<SOLUTION>4</SOLUTION>"}], "4"),
    ],
)
def test_extract_solution(text, expected):
    assert extract_solution(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" -0.5 ", -0.5),
        ("+.5", 0.5),
        ("1.", 1.0),
        ("1e3", 1000.0),
        ("2.5E-2", 0.025),
        ("007", 7.0),
        (3, 3.0),
        (2.5, 2.5),
        ("1,000", None),
        ("1_000", None),
        ("3 cm", None),
        ("$3", None),
        ("3/4", None),
        ("--3", None),
        (".", None),
        ("", None),
        ("   ", None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-Infinity", None),
        ("1e999", None),
        ("\u0663", None),  # Arabic-Indic digit three: float() accepts it, we do not
        (float("nan"), None),
        (float("inf"), None),
        (10**400, None),
        (True, None),
        (None, None),
        ([1], None),
        ({"x": 1}, None),
    ],
)
def test_parse_number(value, expected):
    assert parse_number(value) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("991", "991", True),
        ("991.0", "991", False),  # the seed's metric is a string match
        (" 991 ", "991", True),
        ("991", " 991\n", True),
        ("991", 991, True),
        ("991", 991.0, False),  # str(991.0) == "991.0"
        ("B", "B", True),
        ("b", "B", False),
        (None, "991", False),
        ("None", None, False),
        ("nan", float("nan"), False),
        ("", "", False),  # empty gold is unusable
        ("", "   ", False),
    ],
)
def test_strict_match(pred, gold, expected):
    assert strict_match(pred, gold) is expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("3.0", "3", True),
        ("3", 3, True),
        ("991.0", "991", True),
        ("1e3", "1000", True),
        ("0.1", 0.1, True),
        ("-2", "2", False),
        ("3.1", "3", False),
        ("3", "three", False),
        (None, "3", False),
        ("3", None, False),
        ("nan", "nan", False),
        ("3", float("nan"), False),
    ],
)
def test_numeric_match(pred, gold, expected):
    assert numeric_match(pred, gold) is expected


@pytest.mark.parametrize(
    ("gold", "expected"),
    [("991", "991"), (" B\n", "B"), (991, "991"), (None, None), (float("nan"), None), ("", None), ("  ", None)],
)
def test_gold_text(gold, expected):
    assert gold_text(gold) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", False),
        ("addCriterion", True),
        ("addCriterion" + "x" * 12, True),  # ratio exactly 0.5 -> penalised
        ("addCriterion" + "x" * 13, False),  # just under 0.5
        ("\n" * 5 + "x" * 5, True),  # newlines count, as in the seed
        ("\n" * 5 + "x" * 6, False),
        ("addCriterion\n" * 50, True),
        (GOOD, False),
    ],
)
def test_is_addcriterion_spam(text, expected):
    assert is_addcriterion_spam(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, True),
        ("<SOLUTION>991</SOLUTION>", False),
        ("<REASONING>r</REASONING>", False),
        ("<REASONING>a</REASONING><REASONING>b</REASONING><SOLUTION>1</SOLUTION>", False),
        ("<REASONING>a</REASONING><SOLUTION>1</SOLUTION><SOLUTION>2</SOLUTION>", False),
        (GOOD + "addCriterion\n" * 50, False),
        ([{"role": "assistant", "content": GOOD}], True),
        (None, False),
    ],
)
def test_format_ok(text, expected):
    assert format_ok(text) is expected


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (GOOD, "991", {"pred": "991", "correct": True, "correct_numeric": True, "format_ok": True}),
        (
            "<REASONING>r</REASONING><SOLUTION>991.0</SOLUTION>",
            "991",
            {"pred": "991.0", "correct": False, "correct_numeric": True, "format_ok": True},
        ),
        (
            "<SOLUTION>12</SOLUTION>",
            "991",
            {"pred": "12", "correct": False, "correct_numeric": False, "format_ok": False},
        ),
        ("no tags", "991", {"pred": None, "correct": False, "correct_numeric": False, "format_ok": False}),
        (
            [{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}],
            "991",
            {"pred": "991", "correct": True, "correct_numeric": True, "format_ok": True},
        ),
        (GOOD, None, {"pred": "991", "correct": False, "correct_numeric": False, "format_ok": True}),
        (GOOD, float("nan"), {"pred": "991", "correct": False, "correct_numeric": False, "format_ok": True}),
    ],
)
def test_score_completion(completion, gold, expected):
    assert score_completion(completion, gold) == expected


def test_score_completion_never_raises_on_junk():
    record = score_completion({"role": "assistant", "content": [{"nested": {"deep": [None]}}]}, object())
    assert set(record) == {"pred", "correct", "correct_numeric", "format_ok"}
    assert record == {"pred": None, "correct": False, "correct_numeric": False, "format_ok": False}
