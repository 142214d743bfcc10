"""Tests for the GRPO reward functions (vlmrl_pipeline.core.rewards)."""

from __future__ import annotations

import hashlib
import inspect
import pathlib
import re

import pytest

from vlmrl_pipeline.core import answers, rewards
from vlmrl_pipeline.core.rewards import (
    CORRECTNESS_WEIGHT,
    FORMAT_WEIGHT,
    REWARD_FUNCTIONS,
    REWARD_VERSION,
    REWARD_WEIGHTS,
    correctness_reward,
    formatting_reward,
    reward_breakdown,
)

GOOD = "<REASONING>The bar is 991 tall.</REASONING><SOLUTION>991</SOLUTION>"
SPAM = "addCriterion\n" * 50

FORMAT_CASES = [
    ("no tags, just 991", 0.0),
    ("", 0.0),
    (GOOD, 2.0),
    ("<SOLUTION>991</SOLUTION>", 1.0),
    ("<REASONING>r</REASONING>", 1.0),
    ("<REASONING>a</REASONING><REASONING>b</REASONING><SOLUTION>991</SOLUTION>", 1.0),
    ("<REASONING>a</REASONING><SOLUTION>1</SOLUTION><SOLUTION>2</SOLUTION>", 1.0),
    ("<REASONING>a</REASONING><REASONING>b</REASONING><SOLUTION>1</SOLUTION><SOLUTION>2</SOLUTION>", 0.0),
    ("<REASONING>unclosed <SOLUTION>1</SOLUTION>", 1.0),
    (SPAM, -2.0),
    (GOOD + SPAM, 0.0),  # +2 for the tags, -2 for the spam
    ("<SOLUTION>1</SOLUTION>" + SPAM, -1.0),
    ("addCriterion" + "x" * 12, -2.0),  # ratio exactly 0.5 -> penalised
    ("addCriterion" + "x" * 13, 0.0),  # just under 0.5 -> not
    ("\n" * 5 + "x" * 5, -2.0),  # newlines count towards the ratio, as in the seed
    ("\n" * 5 + "x" * 6, 0.0),
]

CORRECTNESS_CASES = [
    (GOOD, "991", 2.0),
    ("<REASONING>r</REASONING><SOLUTION>991.0</SOLUTION>", "991", 1.5),
    ("<SOLUTION>3.0</SOLUTION>", "3", 1.5),
    ("<SOLUTION>991</SOLUTION>", "991", 2.0),  # correctness does not need the reasoning block
    ("<SOLUTION>\n 991 \n</SOLUTION>", "991", 2.0),
    ("<SOLUTION>12</SOLUTION>", "991", 0.0),
    ("<SOLUTION>-991</SOLUTION>", "991", 0.0),
    ("no tags, just 991", "991", 0.0),
    ("<SOLUTION>1</SOLUTION> actually <SOLUTION>991</SOLUTION>", "991", 2.0),  # last block counts
    ("<SOLUTION>991</SOLUTION> actually <SOLUTION>1</SOLUTION>", "991", 0.0),
    ("<SOLUTION>B</SOLUTION>", "B", 2.0),
    ("<SOLUTION>b</SOLUTION>", "B", 0.0),
    ("<SOLUTION>991</SOLUTION>", 991, 2.0),  # int gold from a typed column
    ("<SOLUTION>991</SOLUTION>", 991.0, 1.5),  # str(991.0) is "991.0": numeric only
    ("<SOLUTION>991</SOLUTION>", None, 0.0),
    ("<SOLUTION>nan</SOLUTION>", float("nan"), 0.0),
    ("<SOLUTION></SOLUTION>", "", 0.0),  # empty gold is unusable
    ("<SOLUTION>None</SOLUTION>", None, 0.0),
]


def _chat(text: str) -> list[dict]:
    """TRL conversational completion with string content."""
    return [{"role": "assistant", "content": text}]


def _chat_parts(text: str) -> list[dict]:
    """TRL conversational completion with a list of content parts."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


@pytest.mark.parametrize(("completion", "expected"), FORMAT_CASES)
def test_formatting_reward(completion, expected):
    assert formatting_reward([completion]) == [expected]


@pytest.mark.parametrize(("completion", "gold", "expected"), CORRECTNESS_CASES)
def test_correctness_reward(completion, gold, expected):
    assert correctness_reward([completion], answer=[gold]) == [expected]


@pytest.mark.parametrize("wrap", [_chat, _chat_parts], ids=["content-str", "content-parts"])
def test_chat_style_matches_plain(wrap):
    texts = [text for text, _ in FORMAT_CASES]
    assert formatting_reward([wrap(t) for t in texts]) == formatting_reward(texts)
    assert formatting_reward([wrap(t) for t in texts]) == [score for _, score in FORMAT_CASES]

    texts = [text for text, _, _ in CORRECTNESS_CASES]
    golds = [gold for _, gold, _ in CORRECTNESS_CASES]
    expected = [score for _, _, score in CORRECTNESS_CASES]
    assert correctness_reward([wrap(t) for t in texts], answer=golds) == expected
    assert correctness_reward(texts, answer=golds) == expected


def test_trl_call_signature():
    # TRL passes everything as keywords, including columns the function does not use.
    completions = [_chat(GOOD), _chat("<SOLUTION>991.0</SOLUTION>"), _chat("nope")]
    kwargs = dict(
        prompts=[[{"role": "user", "content": "q"}]] * 3,
        completions=completions,
        completion_ids=[[1, 2], [3], []],
        trainer_state=object(),
        answer=["991", "991", "991"],
        question=["How tall?"] * 3,
        image=[None] * 3,
    )
    assert formatting_reward(**kwargs) == [2.0, 1.0, 0.0]
    assert correctness_reward(**kwargs) == [2.0, 1.5, 0.0]


def test_rewards_return_python_floats():
    for scores in (formatting_reward([GOOD, "x"]), correctness_reward([GOOD, "x"], answer=["991", "991"])):
        assert [type(s) for s in scores] == [float, float]


@pytest.mark.parametrize("completions", [None, [], ()])
def test_empty_batches(completions):
    assert formatting_reward(completions) == []
    assert correctness_reward(completions, answer=["991"]) == []


def test_correctness_answer_column_edge_cases():
    batch = [GOOD, GOOD, GOOD]
    assert correctness_reward(batch) == [0.0, 0.0, 0.0]  # no answer column at all
    assert correctness_reward(batch, answer=None) == [0.0, 0.0, 0.0]
    assert correctness_reward(batch, answer=["991"]) == [2.0, 0.0, 0.0]  # shorter column
    assert correctness_reward(batch, answer=["991", "1", "991", "991"]) == [2.0, 0.0, 2.0]  # longer
    assert correctness_reward(batch, answer=[None, float("nan"), 991]) == [0.0, 0.0, 2.0]
    assert correctness_reward(batch, answer=("991", "991", "991")) == [2.0, 2.0, 2.0]
    assert correctness_reward(batch, answer="991") == [2.0, 2.0, 2.0]  # bare gold broadcasts
    assert correctness_reward(batch, answer=991) == [2.0, 2.0, 2.0]


def test_odd_completions_do_not_raise():
    odd = [None, 991, 3.5, {"a": {"b": [1, None]}}, [[["deep"]]], [{"role": "assistant", "content": [{"x": 1}]}], b"<SOLUTION>991</SOLUTION>"]
    fmt = formatting_reward(odd)
    corr = correctness_reward(odd, answer=["991"] * len(odd))
    # bytes are str()-ed to "b'<SOLUTION>991</SOLUTION>'", whose solution block still reads 991
    assert fmt == [0.0] * (len(odd) - 1) + [1.0]
    assert corr == [0.0] * (len(odd) - 1) + [2.0]


def test_single_bare_completion_is_one_sample():
    assert formatting_reward(GOOD) == [2.0]
    assert correctness_reward(GOOD, answer="991") == [2.0]
    assert formatting_reward(_chat(GOOD)[0]) == [2.0]


def test_weights_and_function_table():
    assert (FORMAT_WEIGHT, CORRECTNESS_WEIGHT) == (0.3, 1.0)
    assert REWARD_WEIGHTS == (FORMAT_WEIGHT, CORRECTNESS_WEIGHT)
    assert REWARD_FUNCTIONS == (formatting_reward, correctness_reward)
    # TRL logs each reward as rewards/<__name__>/mean
    assert [f.__name__ for f in REWARD_FUNCTIONS] == ["formatting_reward", "correctness_reward"]


@pytest.mark.parametrize(
    ("completion", "gold", "fmt", "corr", "total"),
    [
        (GOOD, "991", 2.0, 2.0, 2.6),
        (_chat(GOOD), "991", 2.0, 2.0, 2.6),
        ("<REASONING>r</REASONING><SOLUTION>991.0</SOLUTION>", "991", 2.0, 1.5, 2.1),
        ("<SOLUTION>991</SOLUTION>", "991", 1.0, 2.0, 2.3),
        ("no tags", "991", 0.0, 0.0, 0.0),
        (SPAM, "991", -2.0, 0.0, -0.6),
        (GOOD, None, 2.0, 0.0, 0.6),
    ],
)
def test_reward_breakdown(completion, gold, fmt, corr, total):
    result = reward_breakdown(completion, gold)
    assert set(result) == {"format_reward", "correctness_reward", "total_reward"}
    assert result["format_reward"] == fmt
    assert result["correctness_reward"] == corr
    assert result["total_reward"] == pytest.approx(total)


def test_breakdown_agrees_with_batch_functions():
    batch = [text for text, _, _ in CORRECTNESS_CASES]
    golds = [gold for _, gold, _ in CORRECTNESS_CASES]
    fmt = formatting_reward(batch)
    corr = correctness_reward(batch, answer=golds)
    for text, gold, f, c in zip(batch, golds, fmt, corr):
        b = reward_breakdown(text, gold)
        assert (b["format_reward"], b["correctness_reward"]) == (f, c)
        assert b["total_reward"] == pytest.approx(sum(w * r for w, r in zip(REWARD_WEIGHTS, (f, c))))


def test_reward_version_hashes_both_sources():
    assert re.fullmatch(r"[0-9a-f]{12}", REWARD_VERSION)
    digest = hashlib.sha256()
    for module in (answers, rewards):
        digest.update(pathlib.Path(inspect.getsourcefile(module)).read_bytes())
        digest.update(b"\0")
    assert REWARD_VERSION == digest.hexdigest()[:12]


# --- property tests -----------------------------------------------------------

# Property tests need hypothesis; without it only they are skipped (importorskip would skip the whole module).
try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - depends on the environment
    st = None

if st is not None:
    # Text built from the fragments the rules look at, so the tag/penalty branches are hit.
    _fragment = st.sampled_from(
        ["<REASONING>", "</REASONING>", "<SOLUTION>", "</SOLUTION>", "addCriterion", "\n", "991", "3.0", " ", "x"]
    )
    _tagged_text = st.lists(st.one_of(_fragment, st.text(max_size=5)), max_size=30).map("".join)
    _scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10), _tagged_text)
    _nested = st.recursive(
        _scalar,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.sampled_from(["role", "content", "type", "text", "other"]), children, max_size=4),
            st.builds(lambda c: [{"role": "assistant", "content": c}], children),
        ),
        max_leaves=20,
    )
    _answers = st.one_of(st.none(), _scalar, st.lists(_scalar, max_size=12))


    @settings(max_examples=300, deadline=None)
    @given(completions=st.one_of(st.none(), st.lists(_nested, max_size=8)), answer=_answers)
    def test_rewards_total_on_arbitrary_input(completions, answer):
        n = len(completions or [])
        fmt = formatting_reward(completions, answer=answer, prompts=None)
        corr = correctness_reward(completions, answer=answer)
        assert len(fmt) == n and len(corr) == n
        assert all(type(s) is float for s in fmt + corr)
        assert set(fmt) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
        assert set(corr) <= {0.0, 1.5, 2.0}


    @settings(max_examples=300, deadline=None)
    @given(texts=st.lists(_tagged_text, max_size=6), gold=st.one_of(st.none(), st.sampled_from(["991", "3", "x"])))
    def test_chat_wrapping_never_changes_scores(texts, gold):
        golds = [gold] * len(texts)
        for wrap in (_chat, _chat_parts):
            assert formatting_reward([wrap(t) for t in texts]) == formatting_reward(texts)
            assert correctness_reward([wrap(t) for t in texts], answer=golds) == correctness_reward(texts, answer=golds)

else:

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_rewards_total_on_arbitrary_input():
        """Placeholder so the skipped property test shows up in the report."""
