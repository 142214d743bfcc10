"""Tests for answer extraction and matching (vlmrl_pipeline.core.answers)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmrl_pipeline.core.answers import (
    ANSWER_FORMATS,
    REASONING_END,
    REASONING_START,
    SOLUTION_END,
    SOLUTION_START,
    boxed_format_ok,
    completion_text,
    count_boxed,
    edit_distance,
    extract_boxed,
    extract_solution,
    format_ok,
    gold_text,
    is_addcriterion_spam,
    mathvista_match,
    mathvista_normalize,
    numeric_match,
    parse_number,
    score_completion,
    strict_match,
    unbox_answer,
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
        (GOOD, "991", {"pred": "991", "correct": True, "correct_numeric": True, "correct_mathvista": True, "format_ok": True}),
        (
            "<REASONING>r</REASONING><SOLUTION>991.0</SOLUTION>",
            "991",
            {"pred": "991.0", "correct": False, "correct_numeric": True, "correct_mathvista": False, "format_ok": True},
        ),
        (
            "<SOLUTION>12</SOLUTION>",
            "991",
            {"pred": "12", "correct": False, "correct_numeric": False, "correct_mathvista": False, "format_ok": False},
        ),
        ("no tags", "991", {"pred": None, "correct": False, "correct_numeric": False, "correct_mathvista": False, "format_ok": False}),
        (
            [{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}],
            "991",
            {"pred": "991", "correct": True, "correct_numeric": True, "correct_mathvista": True, "format_ok": True},
        ),
        (GOOD, None, {"pred": "991", "correct": False, "correct_numeric": False, "correct_mathvista": False, "format_ok": True}),
        (GOOD, float("nan"), {"pred": "991", "correct": False, "correct_numeric": False, "correct_mathvista": False, "format_ok": True}),
    ],
)
def test_score_completion(completion, gold, expected):
    record = score_completion(completion, gold)
    # ``answered`` is checked in its own tests; here a pred is an answer exactly when it is non-empty text
    assert record.pop("answered") == bool(record["pred"] and record["pred"].strip())
    assert record == expected


def test_score_completion_never_raises_on_junk():
    record = score_completion({"role": "assistant", "content": [{"nested": {"deep": [None]}}]}, object())
    assert set(record) == {"pred", "correct", "correct_numeric", "correct_mathvista", "format_ok", "answered"}
    assert record == {
        "pred": None, "correct": False, "correct_numeric": False, "correct_mathvista": False, "format_ok": False,
        "answered": False,
    }


# --- MathVista scoring ----------------------------------------------------------

ANGLES = ["135°", "140°", "145°", "150°"]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("", "", 0),
        ("abc", "abc", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("145", "145°", 1),
        ("是", "否", 1),
        (12, "12", 0),  # non-strings are str()-ed
    ],
)
def test_edit_distance(a, b, expected):
    assert edit_distance(a, b) == expected
    assert edit_distance(b, a) == expected


# (pred, gold, choices, question_type, answer_type, precision, expected) following MathVista's
# calculate_score.py: normalise the extraction, then compare strings.
MATHVISTA_CASES = [
    # integer answers truncate through float
    ("3", "3", None, "free_form", "integer", np.nan, True),
    ("3.7", "3", None, "free_form", "integer", np.nan, True),
    ("-3.7", "-3", None, "free_form", "integer", np.nan, True),
    ("4", "3", None, "free_form", "integer", np.nan, False),
    ("991.0", "991", None, "free_form", "integer", np.nan, True),
    ("1e3", "1000", None, "free_form", "integer", np.nan, True),
    ("three", "3", None, "free_form", "integer", np.nan, False),  # unparsable -> wrong
    ("3 cm", "3", None, "free_form", "integer", np.nan, False),
    ("1e999", "3", None, "free_form", "integer", np.nan, False),  # int(inf) overflows -> wrong, no crash
    # float answers round to the question's precision (Python's round on the binary value)
    ("1.25", "1.2", None, "free_form", "float", 1.0, True),
    ("1.26", "1.3", None, "free_form", "float", 1.0, True),
    ("1.20", "1.2", None, "free_form", "float", 1.0, True),
    ("1.234", "1.23", None, "free_form", "float", 2.0, True),
    ("1.235", "1.24", None, "free_form", "float", 2.0, True),  # 1.235 is stored just above: rounds up
    ("1.2", "1.20", None, "free_form", "float", 2.0, False),  # MathVista's gold for precision 2 reads "1.2"
    ("1.2", "1.2", None, "free_form", "float", np.float64(2), True),  # numpy precision
    ("1.2", "1.2", None, "free_form", "float", 2, True),  # int precision
    ("1.3", "1.2", None, "free_form", "float", 1.0, False),
    ("1.2", "1.2", None, "free_form", "float", np.nan, True),  # missing precision: str(float(x))
    ("1.20", "1.2", None, "free_form", "float", None, True),
    ("abc", "1.2", None, "free_form", "float", 1.0, False),
    # multiple choice: a letter picks the option by position
    ("B", "140°", ANGLES, "multi_choice", "text", np.nan, True),
    ("B", "145°", ANGLES, "multi_choice", "text", np.nan, False),
    ("(C) 145°", "145°", ANGLES, "multi_choice", "text", np.nan, True),
    ("The answer is (c).", "145°", ANGLES, "multi_choice", "text", np.nan, True),  # "(c)" is upper-cased
    ("E", "135°", ANGLES, "multi_choice", "text", np.nan, True),  # no 5th option: nearest text ("E" ties, first wins)
    # ... anything else picks the nearest option by edit distance
    ("145", "145°", ANGLES, "multi_choice", "text", np.nan, True),
    ("150 degrees", "150°", ANGLES, "multi_choice", "text", np.nan, True),
    ("b", "135°", ANGLES, "multi_choice", "text", np.nan, True),  # lower-case bare letter is not a letter answer
    ("Yes", "Yes", ["Yes", "No"], "multi_choice", "text", np.nan, True),
    ("no", "No", ["Yes", "No"], "multi_choice", "text", np.nan, True),
    ("A", "Yes", ["Yes", "No"], "multi_choice", "text", np.nan, True),
    ("是", "是", ["是", "否"], "multi_choice", "text", np.nan, True),
    ("B", "否", ["是", "否"], "multi_choice", "text", np.nan, True),
    ("否", "是", ["是", "否"], "multi_choice", "text", np.nan, False),
    ("C", "145°", np.array(ANGLES, dtype=object), "multi_choice", "text", np.nan, True),  # pandas hands arrays over
    ("C", "145°", np.array(ANGLES), "multi_choice", "text", np.nan, True),  # numpy str_ options
    ("C", "145°", tuple(ANGLES), "multi_choice", "text", np.nan, True),
    # multi_choice without options: the text is compared as is
    ("145°", "145°", None, "multi_choice", "text", np.nan, True),
    ("C", "145°", [], "multi_choice", "text", np.nan, False),
    ("C", "145°", np.nan, "multi_choice", "text", np.nan, False),
    # an empty or missing extraction is wrong, never mapped to the nearest option
    ("", "135°", ANGLES, "multi_choice", "text", np.nan, False),
    ("   ", "135°", ANGLES, "multi_choice", "text", np.nan, False),
    (None, "135°", ANGLES, "multi_choice", "text", np.nan, False),
    (None, "3", None, "free_form", "integer", np.nan, False),
    # list and free-form text answers: plain string equality after stripping
    ("[1, 2]", "[1, 2]", None, "free_form", "list", np.nan, True),
    ("[1,2]", "[1, 2]", None, "free_form", "list", np.nan, False),
    (" hello ", "hello", None, "free_form", "text", np.nan, True),
    ("991.0", "991", None, None, None, None, False),
    ("991", "991", None, None, None, None, True),
    ("991", "991", None, np.nan, np.nan, np.nan, True),  # missing types from pandas
    # unusable gold is never matched
    ("3", None, None, "free_form", "integer", np.nan, False),
    ("nan", float("nan"), None, "free_form", "text", np.nan, False),
]


@pytest.mark.parametrize(
    ("pred", "gold", "choices", "question_type", "answer_type", "precision", "expected"), MATHVISTA_CASES
)
def test_mathvista_match(pred, gold, choices, question_type, answer_type, precision, expected):
    assert mathvista_match(pred, gold, choices, question_type, answer_type, precision) is expected


@pytest.mark.parametrize(
    ("extraction", "choices", "question_type", "answer_type", "precision", "expected"),
    [
        ("3.7", None, "free_form", "integer", None, "3"),
        ("1.25", None, "free_form", "float", 1, "1.2"),
        ("1.234", None, "free_form", "float", 2.0, "1.23"),
        ("1.2", None, "free_form", "float", float("nan"), "1.2"),
        ("1", None, "free_form", "float", None, "1.0"),
        ("x", None, "free_form", "float", 1, None),
        ("B", ["a", "b"], "multi_choice", "text", None, "b"),
        ("zzz", ["abc", "zz", "zzzz"], "multi_choice", "text", None, "zz"),  # tie at distance 1: first wins
        ("", ["a"], "multi_choice", "text", None, None),
        (None, None, None, None, None, None),
        (" free text ", None, "free_form", "text", None, "free text"),
        (3, None, "free_form", "integer", None, "3"),
        (float("nan"), None, "free_form", "float", 1, None),  # a pandas missing value is no answer
    ],
)
def test_mathvista_normalize(extraction, choices, question_type, answer_type, precision, expected):
    assert mathvista_normalize(extraction, choices, question_type, answer_type, precision) == expected


def test_mathvista_normalize_never_raises_on_junk():
    class Broken:
        def __str__(self):
            raise RuntimeError("boom")

        def __iter__(self):
            raise RuntimeError("boom")

    junk = [None, float("nan"), Broken(), object(), {"a": 1}, np.array(5), "x", [Broken()]]
    for extraction in junk:
        for choices in junk:
            for question_type in ("multi_choice", "free_form", None):
                for answer_type in ("integer", "float", "list", "text", None):
                    for precision in (None, float("nan"), "x", Broken(), 1e300, -3):
                        result = mathvista_normalize(extraction, choices, question_type, answer_type, precision)
                        assert result is None or isinstance(result, str)


# --- boxed answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "boxes"),
    [
        (r"The answer is \boxed{3}.", "3", 1),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1),
        (r"\boxed{ 42 }", "42", 1),
        (r"\boxed {7}", "7", 1),  # a space before the brace is accepted
        (r"first \boxed{1}, then \boxed{2}", "2", 2),  # the last box is the final word
        (r"\boxed{\boxed{3}}", r"\boxed{3}", 2),  # the outer box closes last
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}", 1),  # escaped braces do not count
        (r"$\boxed{x^{2}}$ and stray }} braces {", "x^{2}", 1),
        (r"\boxed{3", None, 1),  # never closes
        (r"\boxed{1} and \boxed{2", "1", 2),  # an unclosed box is skipped, as extract_solution skips unclosed blocks
        (r"\boxed{}", "", 1),
        (r"\boxedx{3}", None, 0),
        ("no box", None, 0),
        ("", None, 0),
        (None, None, 0),
        ([{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{5}"}]}], "5", 1),
        (12, None, 0),
    ],
)
def test_extract_boxed(text, expected, boxes):
    assert extract_boxed(text) == expected
    assert count_boxed(text) == boxes


def test_extract_boxed_is_fast_on_hostile_input():
    # One pass with a brace stack: thousands of unclosed openers stay linear.
    text = "\\boxed{" * 20000 + "\\boxed{9}"
    assert extract_boxed(text) == "9"
    assert count_boxed(text) == 20001


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        (r"\boxed{3}", "3"),
        (r"  \boxed{ \frac{1}{2} } ", r"\frac{1}{2}"),
        ("3", "3"),
        (" 3 ", "3"),
        (r"\boxed{1}+\boxed{2}", r"\boxed{1}+\boxed{2}"),
        (r"x = \boxed{1}", r"x = \boxed{1}"),
        (r"\boxed{3", r"\boxed{3"),
        (7, "7"),
        (None, ""),
        (float("nan"), ""),
        ("", ""),
    ],
)
def test_unbox_answer(gold, expected):
    assert unbox_answer(gold) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"reasoning ... \boxed{3}", True),
        (r"\boxed{1} \boxed{2}", False),
        (r"\boxed{3", False),
        ("3", False),
        (r"\boxed{3}" + "addCriterion\n" * 50, False),
        ([{"role": "assistant", "content": r"\boxed{3}"}], True),
    ],
)
def test_boxed_format_ok(text, expected):
    assert boxed_format_ok(text) is expected


# --- score_completion with MathVista metadata and answer formats --------------------


def test_seed_example_strict_numeric_mathvista():
    # The seed's headline case: "991.0" for an integer answer of 991.
    record = score_completion(
        "<REASONING>r</REASONING><SOLUTION>991.0</SOLUTION>", "991", question_type="free_form", answer_type="integer"
    )
    assert record == {
        "pred": "991.0", "correct": False, "correct_numeric": True, "correct_mathvista": True, "format_ok": True,
        "answered": True,
    }


def test_score_completion_multiple_choice_letter():
    record = score_completion(
        "<REASONING>r</REASONING><SOLUTION>(C) 145°</SOLUTION>", "145°",
        choices=np.array(ANGLES, dtype=object), question_type="multi_choice", answer_type="text", precision=np.nan,
    )
    assert (record["correct"], record["correct_numeric"], record["correct_mathvista"]) == (False, False, True)


@pytest.mark.parametrize(
    ("completion", "gold", "kwargs", "expected"),
    [
        (r"so \boxed{3}", "3", {}, {"pred": "3", "correct": True, "correct_numeric": True, "correct_mathvista": True, "format_ok": True}),
        (r"so \boxed{3}", r"\boxed{3}", {}, {"pred": "3", "correct": True, "correct_numeric": True, "correct_mathvista": True, "format_ok": True}),
        (r"so \boxed{3.0}", r"\boxed{3}", {}, {"pred": "3.0", "correct": False, "correct_numeric": True, "correct_mathvista": False, "format_ok": True}),
        (
            r"so \boxed{3.0}", "3", {"question_type": "free_form", "answer_type": "integer"},
            {"pred": "3.0", "correct": False, "correct_numeric": True, "correct_mathvista": True, "format_ok": True},
        ),
        (r"\boxed{1} no, \boxed{2}", "2", {}, {"pred": "2", "correct": True, "correct_numeric": True, "correct_mathvista": True, "format_ok": False}),
        ("<SOLUTION>3</SOLUTION>", "3", {}, {"pred": None, "correct": False, "correct_numeric": False, "correct_mathvista": False, "format_ok": False}),
        (
            [{"role": "assistant", "content": r"\boxed{\frac{1}{2}}"}], r"\boxed{\frac{1}{2}}", {},
            {"pred": r"\frac{1}{2}", "correct": True, "correct_numeric": True, "correct_mathvista": True, "format_ok": True},
        ),
        (r"\boxed{3}", None, {}, {"pred": "3", "correct": False, "correct_numeric": False, "correct_mathvista": False, "format_ok": True}),
    ],
)
def test_score_completion_boxed(completion, gold, kwargs, expected):
    record = score_completion(completion, gold, answer_format="boxed", **kwargs)
    assert record.pop("answered") == bool(record["pred"])
    assert record == expected


def test_score_completion_tags_ignores_boxes():
    # The default format reads only <SOLUTION>, and does not unbox the gold.
    record = score_completion(r"\boxed{3}", "3")
    assert record["pred"] is None and record["correct"] is False


def test_score_completion_unknown_format_raises():
    assert ANSWER_FORMATS == ("tags", "boxed")
    with pytest.raises(ValueError, match="tags, boxed"):
        score_completion(GOOD, "991", answer_format="latex")


# --- linear time on any string, with the seed's matches --------------------------------------------------------

_SEED_BLOCK = {  # the seed's definition: non-greedy, DOTALL, non-overlapping findall
    (REASONING_START, REASONING_END): re.compile(r"<REASONING>(.*?)</REASONING>", re.DOTALL),
    (SOLUTION_START, SOLUTION_END): re.compile(r"<SOLUTION>(.*?)</SOLUTION>", re.DOTALL),
}

_TAG_PIECES = st.sampled_from([REASONING_START, REASONING_END, SOLUTION_START, SOLUTION_END, "<SOLUTION", "SOLUTION>",
                               "</", "<", ">", "x", "9", "\n", " ", "addCriterion"])


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(_TAG_PIECES, max_size=40))
def test_block_scan_finds_exactly_what_the_seeds_regex_finds(pieces):
    from vlmrl_pipeline.core.answers.extraction import _blocks

    text = "".join(pieces)
    for (start, end), pattern in _SEED_BLOCK.items():
        assert _blocks(text, start, end) == pattern.findall(text)
    seed_solutions = _SEED_BLOCK[(SOLUTION_START, SOLUTION_END)].findall(text)
    expected = seed_solutions[-1].replace("\r", "").replace("\n", "").strip() if seed_solutions else None
    assert extract_solution(text) == expected


def _best_of(fn, repeats=5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("unit", [SOLUTION_START, REASONING_START, SOLUTION_START + "x" + REASONING_START])
def test_rewards_grow_linearly_on_unclosed_openers(unit):
    from vlmrl_pipeline.core.rewards import correctness_reward, formatting_reward

    def score(n):
        text = unit * n
        return lambda: (formatting_reward([text]), correctness_reward([text], answer=["3"]))

    assert formatting_reward([SOLUTION_START * 6553]) == [0.0]  # the 64 KiB case, scored as before
    small, large = _best_of(score(5_000)), _best_of(score(40_000))
    # 8x the text: a linear scan takes ~8x as long, the old regex ~64x. 30 leaves room for timer noise.
    assert large / max(small, 1e-6) < 30, (small, large)
