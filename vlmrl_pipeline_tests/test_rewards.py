"""Tests for the GRPO reward functions (vlmrl_pipeline.core.rewards)."""

from __future__ import annotations

import doctest
import hashlib
import pathlib
import re

import pytest

from vlmrl_pipeline.core import answers, rewards
from vlmrl_pipeline.core.rewards import (
    CORRECTNESS_WEIGHT,
    FORMAT_WEIGHT,
    REWARD_FUNCTIONS,
    REWARD_SETS,
    REWARD_VERSION,
    REWARD_WEIGHTS,
    RewardSet,
    boxed_reward,
    boxed_reward_valued,
    correctness_reward,
    formatting_reward,
    reward_breakdown,
    reward_set,
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
    kwargs = {
        "prompts": [[{"role": "user", "content": "q"}]] * 3,
        "completions": completions,
        "completion_ids": [[1, 2], [3], []],
        "trainer_state": object(),
        "answer": ["991", "991", "991"],
        "question": ["How tall?"] * 3,
        "image": [None] * 3,
    }
    assert formatting_reward(**kwargs) == [2.0, 1.0, 0.0]
    assert correctness_reward(**kwargs) == [2.0, 1.5, 0.0]


def test_rewards_return_python_floats():
    for scores in (formatting_reward([GOOD, "x"]), correctness_reward([GOOD, "x"], answer=["991", "991"])):
        assert [type(s) for s in scores] == [float, float]


@pytest.mark.parametrize("completions", [None, [], ()])
def test_empty_batches(completions):
    assert formatting_reward(completions) == []
    assert correctness_reward(completions, answer=[]) == []
    # a structural mismatch: one answer for no completions
    with pytest.raises(ValueError, match=r"correctness_reward got 0 completions but 1 answers"):
        correctness_reward(completions, answer=["991"])


def test_correctness_answer_column_edge_cases():
    batch = [GOOD, GOOD, GOOD]
    # structural mismatches raise, naming the reward and what is wrong
    with pytest.raises(ValueError, match=r"correctness_reward needs the dataset's 'answer' column \(got none\)"):
        correctness_reward(batch)  # no answer column at all
    with pytest.raises(ValueError, match=r"correctness_reward needs the dataset's 'answer' column \(got none\)"):
        correctness_reward(batch, answer=None)
    with pytest.raises(ValueError, match=r"correctness_reward got 3 completions but 1 answers"):
        correctness_reward(batch, answer=["991"])  # shorter column
    with pytest.raises(ValueError, match=r"correctness_reward got 3 completions but 4 answers"):
        correctness_reward(batch, answer=["991", "1", "991", "991"])  # longer
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


def test_reward_version_hashes_the_reward_sources(tmp_path):
    """Every file of the answers package, rewards.py and reward_plugins.py: a change to any of them (a scorer, a
    reward, how the set is built) changes the version, so records scored before it are stale."""
    from vlmrl_pipeline.core import reward_plugins

    assert re.fullmatch(r"[0-9a-f]{12}", REWARD_VERSION)
    package = pathlib.Path(answers.__file__).parent
    expected = {*package.glob("*.py"), pathlib.Path(rewards.__file__), pathlib.Path(reward_plugins.__file__)}
    assert set(rewards.REWARD_SOURCES) == expected and len(expected) >= 6
    digest = hashlib.sha256()
    for source in rewards.REWARD_SOURCES:
        digest.update(source.read_bytes())
        digest.update(b"\0")
    assert REWARD_VERSION == digest.hexdigest()[:12]
    copies = []
    for i, source in enumerate(rewards.REWARD_SOURCES):
        copy = tmp_path / f"{i}_{source.name}"
        copy.write_bytes(source.read_bytes())
        copies.append(copy)
    assert rewards.sources_version(tuple(copies)) == REWARD_VERSION
    for copy in copies:
        original = copy.read_bytes()
        copy.write_bytes(original + b"# edited\n")
        assert rewards.sources_version(tuple(copies)) != REWARD_VERSION, copy.name
        copy.write_bytes(original)


# --- boxed answers (geo3k / RLinf) -------------------------------------------------

BOXED_CASES = [
    (r"The answer is \boxed{3}.", "3", 1.0),
    (r"\boxed{3}", r"\boxed{3}", 1.0),  # gold written boxed is unboxed first
    (r"\boxed{3.0}", r"\boxed{3}", 1.0),  # numeric match
    (r"\boxed{ 3 }", "3", 1.0),
    (r"\boxed {3}", "3", 1.0),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),  # nested braces
    (r"\boxed{\frac{1}{2}}", r"\boxed{\frac{1}{2}}", 1.0),
    (r"\boxed{\frac{1}{2}}", "0.5", 0.0),  # no LaTeX evaluation: strict or numeric only
    (r"\boxed{1} wait \boxed{3}", "3", 1.0),  # several boxes: the last wins
    (r"\boxed{3} wait \boxed{1}", "3", 0.0),
    (r"\boxed{3", "3", 0.0),  # never closes
    ("3", "3", 0.0),  # no box
    ("<SOLUTION>3</SOLUTION>", "3", 0.0),
    (r"\boxed{4}", "3", 0.0),
    (r"\boxed{b}", "B", 0.0),
    (r"\boxed{3}", 3, 1.0),
    (r"\boxed{3}", None, 0.0),
    (r"\boxed{nan}", float("nan"), 0.0),
    (r"\boxed{}", "", 0.0),
    (r"\boxed{}", r"\boxed{}", 0.0),  # an empty gold is unusable even when boxed
]


@pytest.mark.parametrize(("completion", "gold", "expected"), BOXED_CASES)
def test_boxed_reward(completion, gold, expected):
    assert boxed_reward([completion], answer=[gold]) == [expected]


@pytest.mark.parametrize("wrap", [_chat, _chat_parts], ids=["content-str", "content-parts"])
def test_boxed_reward_chat_format(wrap):
    texts = [text for text, _, _ in BOXED_CASES]
    golds = [gold for _, gold, _ in BOXED_CASES]
    expected = [score for _, _, score in BOXED_CASES]
    assert boxed_reward([wrap(t) for t in texts], answer=golds) == expected


def test_boxed_reward_trl_signature_and_answer_column():
    batch = [r"\boxed{3}", r"\boxed{3.0}", "3"]
    assert boxed_reward(completions=batch, answer=["3"] * 3, prompts=None, trainer_state=object()) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match=r"boxed_reward needs the dataset's 'answer' column \(got none\)"):
        boxed_reward(batch)  # no answer column
    assert boxed_reward(batch, answer="3") == [1.0, 1.0, 0.0]  # bare gold broadcasts
    with pytest.raises(ValueError, match=r"boxed_reward got 3 completions but 1 answers"):
        boxed_reward(batch, answer=["3"])  # shorter column
    assert boxed_reward(r"\boxed{3}", answer="3") == [1.0]  # one bare completion
    assert boxed_reward(None, answer=[]) == []
    with pytest.raises(ValueError, match=r"boxed_reward needs the dataset's 'answer' column"):
        boxed_reward(None)  # no completions, but no answer column either
    assert [type(s) for s in boxed_reward(batch, answer=["3"] * 3)] == [float] * 3


def test_boxed_reward_junk_never_raises():
    class Broken:
        def __str__(self):
            raise RuntimeError("boom")

    odd = [None, 3, 3.5, {"a": [1]}, [[["deep"]]], Broken(), b"\\boxed{3}", "\\boxed{" * 5000, "}" * 100]
    scores = boxed_reward(odd, answer=["3", Broken(), object(), None, float("nan"), "3", "3", "3", "3"])
    assert len(scores) == len(odd)
    assert set(scores) <= {0.0, 1.0}


def test_reward_sets():
    assert set(REWARD_SETS) == set(answers.ANSWER_FORMATS)
    tags = reward_set("tags")
    assert tags == RewardSet(functions=(formatting_reward, correctness_reward), weights=(0.3, 1.0))
    assert (tags.functions, tags.weights) == (REWARD_FUNCTIONS, REWARD_WEIGHTS)  # the old names are the tags set
    assert reward_set("boxed") == RewardSet(functions=(boxed_reward,), weights=(1.0,))
    assert [f.__name__ for f in reward_set("boxed").functions] == ["boxed_reward"]
    for chosen in REWARD_SETS.values():
        assert len(chosen.functions) == len(chosen.weights)


@pytest.mark.parametrize("bad", ["latex", "", "TAGS", None, ["tags"]])
def test_reward_set_unknown_format(bad):
    with pytest.raises(ValueError, match="tags, boxed"):
        reward_set(bad)


def test_reward_set_is_frozen_and_checked():
    with pytest.raises(AttributeError):
        reward_set("tags").weights = (1.0, 1.0)
    with pytest.raises(ValueError, match="2 reward functions but 1 weights"):
        RewardSet(functions=(formatting_reward, correctness_reward), weights=(1.0,))


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (r"\boxed{3}", r"\boxed{3}", 1.0),
        (_chat(r"\boxed{3.0}"), "3", 1.0),
        (GOOD, "991", 0.0),  # tags earn nothing under the boxed recipe
        (r"\boxed{4}", "3", 0.0),
    ],
)
def test_reward_breakdown_boxed(completion, gold, expected):
    assert reward_breakdown(completion, gold, answer_format="boxed") == {
        "format_reward": 0.0,
        "correctness_reward": expected,
        "total_reward": expected,
    }


def test_reward_breakdown_formats_agree_with_batch_functions():
    for text, gold, _ in BOXED_CASES:
        assert reward_breakdown(text, gold, "boxed")["total_reward"] == boxed_reward([text], answer=[gold])[0]
    assert reward_breakdown(GOOD, "991", "tags") == reward_breakdown(GOOD, "991")
    with pytest.raises(ValueError, match="tags, boxed"):
        reward_breakdown(GOOD, "991", answer_format="latex")


# --- property tests -----------------------------------------------------------

# Property tests need hypothesis; without it only they are skipped (importorskip would skip the whole module).
try:
    from hypothesis import assume, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - depends on the environment
    st = None

if st is not None:
    # Text built from the fragments the rules look at, so the tag/penalty branches are hit.
    _fragment = st.sampled_from(
        ["<REASONING>", "</REASONING>", "<SOLUTION>", "</SOLUTION>", "addCriterion", "\n", "991", "3.0", " ", "x",
         "\\boxed{", "{", "}", "\\"]
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
    @given(data=st.data())
    def test_rewards_total_on_arbitrary_input(data):
        # Any completions, and an answer column of the right shape (one cell each, or one bare gold for all) whose
        # cells are anything: odd text and odd golds score, they never raise.
        completions = data.draw(st.one_of(st.none(), st.lists(_nested, max_size=8)), label="completions")
        n = len(completions or [])
        answer = data.draw(st.one_of(_scalar.filter(lambda a: a is not None), st.lists(_scalar, min_size=n, max_size=n)),
                           label="answer")
        fmt = formatting_reward(completions, answer=answer, prompts=None)
        corr = correctness_reward(completions, answer=answer)
        boxed = boxed_reward(completions, answer=answer)
        assert len(fmt) == n and len(corr) == n and len(boxed) == n
        assert all(type(s) is float for s in fmt + corr + boxed)
        assert set(fmt) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
        assert set(corr) <= {0.0, 1.5, 2.0}
        assert set(boxed) <= {0.0, 1.0}


    @settings(max_examples=100, deadline=None)
    @given(completions=st.lists(_nested, max_size=8), answer=st.one_of(st.none(), st.lists(_scalar, max_size=12)))
    def test_a_missing_or_mismatched_answer_column_raises(completions, answer):
        assume(answer is None or len(answer) != len(completions))
        assert len(formatting_reward(completions, answer=answer)) == len(completions)  # it reads no answers
        for reward in (correctness_reward, boxed_reward):
            with pytest.raises(ValueError, match=f"^{reward.__name__} (needs|got)"):
                reward(completions, answer=answer)


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


def test_a_multiple_choice_letter_earns_the_exact_score_only_for_the_gold_choice():
    # MathVista's query asks for the option letter; the gold answer is the choice's text
    completions = [f"<REASONING>r</REASONING><SOLUTION>{p}</SOLUTION>" for p in ("C", "(C)", "B", "145°", "c")]
    choices = [["135°", "140°", "145°", "150°"]] * 5
    scores = correctness_reward(completions, answer=["145°"] * 5, choices=choices,
                                question_type=["multi_choice"] * 5)
    assert scores == [2.0, 2.0, 0.0, 2.0, 0.0]
    # free-form rows never read a letter as an option
    assert correctness_reward(completions[:1], answer=["145°"], choices=choices[:1],
                              question_type=["free_form"]) == [0.0]
    total = reward_breakdown(completions[0], "145°", choices=choices[0], question_type="multi_choice")
    assert total["correctness_reward"] == 2.0


# --- docstring examples and batch shapes -------------------------------------------------------------------------

def test_docstring_examples_run():
    # pytest runs without --doctest-modules, so the examples in the rewards' docstrings are run here.
    results = doctest.testmod(rewards, optionflags=doctest.ELLIPSIS)
    assert results.failed == 0
    assert results.attempted > 0
    for public in (formatting_reward, correctness_reward, boxed_reward, boxed_reward_valued, rewards.BoxedRewardValued,
                   reward_breakdown, reward_set, rewards.training_reward_set, rewards.gspo_reward_set):
        assert ">>> " in public.__doc__, public.__name__


# The rewards that read the answer column; boxed_reward_valued's BoxedRewardValued keeps boxed_reward's name (and
# messages).
ANSWER_REWARDS = [correctness_reward, boxed_reward, boxed_reward_valued(2.0, -1.0)]
_IDS = ["correctness", "boxed", "boxed_valued"]


@pytest.mark.parametrize("reward", ANSWER_REWARDS, ids=_IDS)
@pytest.mark.parametrize("answers", [[], ["3"], ["3"] * 3, ["3"] * 5], ids=["empty", "short", "short-by-one", "long"])
def test_an_answer_column_of_another_length_raises(reward, answers):
    batch = [r"\boxed{3}", "<SOLUTION>3</SOLUTION>", "3", "x"]
    with pytest.raises(ValueError, match=rf"^{reward.__name__} got 4 completions but {len(answers)} answers"):
        reward(batch, answer=answers)
    with pytest.raises(ValueError, match=rf"^{reward.__name__} got 4 completions but {len(answers)} answers"):
        reward(batch, answer=tuple(answers))  # any list-like column is checked


@pytest.mark.parametrize("reward", ANSWER_REWARDS, ids=_IDS)
def test_a_missing_answer_column_raises(reward):
    message = rf"^{reward.__name__} needs the dataset's 'answer' column \(got none\)$"
    with pytest.raises(ValueError, match=message):
        reward([GOOD, GOOD])
    with pytest.raises(ValueError, match=message):
        reward(completions=[GOOD], answer=None, prompts=None, trainer_state=object())


def test_choices_and_question_type_columns_are_checked_when_given():
    batch = [GOOD, GOOD]
    with pytest.raises(ValueError, match=r"correctness_reward got 2 completions but 1 choice lists"):
        correctness_reward(batch, answer=["991", "991"], choices=[["991"]], question_type=["free_form"] * 2)
    with pytest.raises(ValueError, match=r"correctness_reward got 2 completions but 3 question types"):
        correctness_reward(batch, answer=["991", "991"], question_type=["free_form"] * 3)
    # absent (a dataset without them, e.g. geo3k) they are optional
    assert correctness_reward(batch, answer=["991", "991"]) == [2.0, 2.0]


def test_formatting_reward_ignores_the_answer_column():
    assert formatting_reward([GOOD, GOOD], answer=["991"]) == [2.0, 2.0]
    assert formatting_reward([GOOD]) == [2.0]


def test_odd_completion_text_still_scores_as_floats():
    class Broken:
        def __str__(self):
            raise RuntimeError("boom")

    odd = [None, 991, 3.5, {"a": [1]}, [[["deep"]]], [{"role": "assistant", "content": None}], Broken(),
           "\x00garbage\uffff", SPAM, "<SOLUTION>" * 1000, r"\boxed{" * 1000, b"<SOLUTION>3</SOLUTION>"]
    golds = ["3", None, float("nan"), "", Broken(), object(), 3, "3", "3", "3", "3", "3"]
    for scores in (formatting_reward(odd), correctness_reward(odd, answer=golds), boxed_reward(odd, answer=golds),
                   boxed_reward_valued(2.0, -1.0)(odd, answer=golds)):
        assert len(scores) == len(odd)
        assert all(type(s) is float for s in scores)
    assert formatting_reward(odd)[odd.index(SPAM)] == -2.0
    assert correctness_reward(odd, answer=golds)[-1] == 2.0  # bytes are str()-ed, and the block still reads 3
    for completion, gold in zip(odd, golds, strict=True):  # the per-row breakdown never raises either
        for answer_format in ("tags", "boxed"):
            assert set(reward_breakdown(completion, gold, answer_format)) == {"format_reward", "correctness_reward",
                                                                               "total_reward"}



# --- the reward set of every profile: picklable, and logged under the same names ----------------------------------

def _profile_reward_sets():
    """(label, reward set, the names TRL must log) for every profile, plus geo3k with RLinf's other values and a
    rehearsal's extra reward: every set training builds."""
    import dataclasses

    from vlmrl_pipeline.core.profiles import PROFILES

    expected = {"tags": ["formatting_reward", "correctness_reward"], "boxed": ["boxed_reward"]}
    for name, make in sorted(PROFILES.items()):
        profile = make()
        answer_format = profile.data.answer_format
        yield name, rewards.gspo_reward_set(answer_format, profile.gspo), expected[answer_format]
        valued = dataclasses.replace(profile.gspo, reward_max_val=2.0, reward_min_val=-1.0,
                                     rehearsal_reward_weight=0.1)
        yield (f"{name}-valued-rehearsal", rewards.gspo_reward_set(answer_format, valued),
               [*expected[answer_format], "ascii_share_reward"])


def test_every_profile_reward_set_pickles_and_keeps_its_metric_names():
    """TRL logs each reward as ``rewards/<name>/mean`` with ``getattr(f, "__name__", type(f).__name__)``: the
    names must not change with the values (geo3k's ``boxed_reward`` stays ``boxed_reward``), and every reward must
    survive pickle (a closure would not), e.g. for a process pool or a saved trainer."""
    import pickle

    completions = [[{"role": "assistant", "content": text}] for text in
                   (GOOD, r"so \boxed{991}", "<SOLUTION>991.0</SOLUTION>", "991", SPAM)]
    answer = ["991"] * len(completions)
    sets = list(_profile_reward_sets())
    assert len(sets) >= 16
    for label, reward_set_, names in sets:
        assert [getattr(f, "__name__", type(f).__name__) for f in reward_set_.functions] == names, label
        restored = pickle.loads(pickle.dumps(reward_set_))
        assert restored == reward_set_, label
        for function, copy in zip(reward_set_.functions, restored.functions, strict=True):
            assert copy.__name__ == function.__name__, label
            assert copy(completions, answer=answer) == function(completions, answer=answer), label


def test_trl_names_the_rewards_as_before():
    utils = pytest.importorskip("trl.trainer.utils")
    if not hasattr(utils, "get_callable_name"):
        pytest.skip("this TRL names rewards by __name__ directly")
    for label, reward_set_, names in _profile_reward_sets():
        assert [utils.get_callable_name(f) for f in reward_set_.functions] == names, label


def test_the_valued_boxed_reward_is_a_small_class_that_pays_the_same_as_the_closure_did():
    valued = boxed_reward_valued(2.0, -1.0)
    assert isinstance(valued, rewards.BoxedRewardValued) and valued == rewards.BoxedRewardValued(2.0, -1.0)
    completions = [r"\boxed{3}", r"\boxed{4}", "no box", r"\boxed{3.0}"]
    assert valued(completions, answer="3") == [-1.0 + 3.0 * s for s in boxed_reward(completions, answer="3")]
    for text in completions:
        breakdown = reward_breakdown(text, "3", answer_format="boxed", reward_max_val=2.0, reward_min_val=-1.0)
        assert breakdown["total_reward"] == valued([text], answer="3")[0]
