"""Evaluation records, summaries and the before/after diff."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from vlmrl_pipeline.core.evaluation.records import (
    RECORD_COLUMNS,
    diff_records,
    report_markdown,
    save_records,
    score_records,
    summarize_records,
)

GOOD = "<REASONING>r</REASONING>\n<SOLUTION>{}</SOLUTION>"
ROWS = pd.DataFrame({"pid": ["1", "2", "3", "4"], "question": ["q"] * 4, "answer": ["991", "3", "5", "2.5"]})


def test_records_carry_strict_and_numeric_scores_and_rewards():
    completions = [GOOD.format("991.0"), GOOD.format("3"), "The answer is 5.", GOOD.format("7")]
    records = score_records(ROWS, completions)
    assert list(records.columns) == list(RECORD_COLUMNS)
    assert records["pred"].tolist() == ["991.0", "3", None, "7"]
    # the seed's strict metric marks 991.0 wrong; the numeric match (and the reward's 1.5) accepts it
    assert records["correct"].tolist() == [False, True, False, False]
    assert records["correct_numeric"].tolist() == [True, True, False, False]
    assert records["format_ok"].tolist() == [True, True, False, True]
    assert records["total_reward"].tolist() == pytest.approx([0.6 + 1.5, 0.6 + 2.0, 0.0, 0.6])


def test_summary_is_the_mean_of_each_score():
    records = score_records(ROWS, [GOOD.format("991"), "no tags", GOOD.format("5"), GOOD.format("1")])
    summary = summarize_records(records)
    assert summary["num_samples"] == 4
    assert summary["accuracy"] == pytest.approx(0.5)
    assert summary["format_compliance"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        summarize_records(records.iloc[0:0])


def test_mismatched_rows_and_completions_are_rejected():
    with pytest.raises(ValueError, match="4 evaluation rows but 3 completions"):
        score_records(ROWS, ["a", "b", "c"])


def test_diff_lists_gained_and_lost_samples():
    before = score_records(ROWS, ["plain 991", GOOD.format("3"), GOOD.format("5"), "plain"])
    # after rows are in reverse order: the diff must align by pid, not by position
    after = score_records(ROWS.iloc[::-1].reset_index(drop=True),
                          [GOOD.format("2.5"), GOOD.format("5"), "plain 3", GOOD.format("991")])
    diff = diff_records(before, after)
    h = diff["headline"]
    assert h["baseline_accuracy"] == pytest.approx(0.5) and h["after_accuracy"] == pytest.approx(0.75)
    assert h["baseline_format_compliance"] == pytest.approx(0.5)
    assert h["after_format_compliance"] == pytest.approx(0.75)
    assert diff["flips"]["correct"] == {"gained": ["1", "4"], "lost": ["2"]}
    assert diff["flips"]["format_ok"] == {"gained": ["1", "4"], "lost": ["2"]}
    assert {r["pid"] for r in diff["flipped_samples"]} == {"1", "2", "4"}
    md = report_markdown(diff)
    assert "50.0%" in md and "75.0%" in md and "+25.0 pts" in md


def test_diff_refuses_different_sample_sets():
    before = score_records(ROWS, ["a"] * 4)
    after = score_records(ROWS.iloc[:3], ["a"] * 3)
    with pytest.raises(ValueError, match="same"):
        diff_records(before, after)


def test_records_are_saved_with_provenance(tmp_path):
    records = score_records(ROWS, [GOOD.format("991")] * 4)
    paths = save_records(records, tmp_path, "baseline_records", {"base_model": "m", "reward_version": "abc"})
    payload = json.loads(paths["json"].read_text())
    assert payload["base_model"] == "m" and len(payload["records"]) == 4
    assert pd.read_parquet(paths["parquet"])["pid"].tolist() == ["1", "2", "3", "4"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_missing_predictions_stay_null_through_parquet(tmp_path):
    before = score_records(ROWS, ["no tags at all"] * 4)
    after = score_records(ROWS, [GOOD.format("991"), GOOD.format("3"), GOOD.format("5"), GOOD.format("2.5")])
    save_records(before, tmp_path / "b", "baseline_records", {})
    save_records(after, tmp_path / "a", "after_records", {})
    diff = diff_records(pd.read_parquet(tmp_path / "b" / "baseline_records.parquet"),
                        pd.read_parquet(tmp_path / "a" / "after_records.parquet"))
    assert [r["pred_before"] for r in diff["flipped_samples"]] == [None] * 4
    json.dumps(diff, allow_nan=False)  # strict JSON: no NaN sneaks in for "no prediction"
    assert "(no answer)" in report_markdown(diff)


MATHVISTA_ROWS = pd.DataFrame({
    "pid": ["int", "float", "mc", "mc-near"],
    "question": ["q"] * 4,
    "answer": ["3", "1.2", "145°", "6cm"],
    "question_type": ["free_form", "free_form", "multi_choice", "multi_choice"],
    "answer_type": ["integer", "float", "text", "text"],
    "choices": [None, None, ["135°", "140°", "145°", "150°"], ["6cm", "7cm", "4cm", "5cm"]],
    "precision": [float("nan"), 1.0, float("nan"), float("nan")],
})


def test_records_carry_mathvistas_normalised_score_beside_strict_and_numeric():
    completions = [GOOD.format("3.7"), GOOD.format("1.24"), GOOD.format("C"), GOOD.format("6")]
    records = score_records(MATHVISTA_ROWS, completions)
    # MathVista truncates integers, rounds floats to `precision`, maps letters and nearest choices
    assert records["correct_mathvista"].tolist() == [True, True, True, True]
    assert records["correct"].tolist() == [False, False, False, False]
    assert records["correct_numeric"].tolist() == [False, False, False, False]
    assert records["choices"].tolist()[2] == ["135°", "140°", "145°", "150°"]
    assert records["precision"].tolist() == [None, 1.0, None, None]
    summary = summarize_records(records)
    assert summary["accuracy_mathvista"] == 1.0 and summary["accuracy"] == 0.0


def test_boxed_answer_format_scores_the_last_box_with_the_boxed_reward():
    rows = pd.DataFrame({"pid": ["1", "2"], "question": ["q", "q"], "answer": ["3", "2\\sqrt{3}"]})
    records = score_records(rows, ["so x = 3. Answer: \\boxed{3}", "Answer: \\boxed{2}"], answer_format="boxed")
    assert records["pred"].tolist() == ["3", "2"]
    assert records["correct"].tolist() == [True, False]
    assert records["total_reward"].tolist() == [1.0, 0.0]


def _bool_records(before: list[bool], after: list[bool]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = pd.DataFrame({"pid": [str(i) for i in range(len(before))], "question": "q", "answer": "1"})
    right, wrong = GOOD.format("1"), GOOD.format("2")
    return (score_records(rows, [right if ok else wrong for ok in before]),
            score_records(rows, [right if ok else wrong for ok in after]))


def test_diff_gives_each_metric_a_paired_interval_and_an_exact_mcnemar_p():
    # the seed's honest result: 5% -> 6% on 100 samples, one sample gained
    before, after = _bool_records([True] * 5 + [False] * 95, [True] * 6 + [False] * 94)
    diff = diff_records(before, after, n_resamples=2000)
    c = diff["comparison"]["accuracy"]
    assert c["difference"] == pytest.approx(0.01)
    assert c["ci_low"] <= 0.0 <= c["ci_high"]  # one point on 100 samples is noise
    assert c["p_value"] == 1.0 and (c["gained"], c["lost"]) == (1, 0)
    assert set(diff["comparison"]) == {"accuracy", "accuracy_numeric", "accuracy_mathvista", "format_compliance",
                                       "answer_rate"}
    md = report_markdown(diff)
    assert "95% interval" in md and "McNemar" in md and "+1.0 pts" in md


def test_a_large_paired_change_has_an_interval_away_from_zero_and_a_small_p():
    before, after = _bool_records([False] * 40 + [True] * 60, [True] * 30 + [False] * 10 + [True] * 60)
    c = diff_records(before, after, n_resamples=2000)["comparison"]["accuracy"]
    assert c["difference"] == pytest.approx(0.30)
    assert 0.0 < c["ci_low"] < 0.30 < c["ci_high"]
    assert c["p_value"] < 1e-6


def test_an_empty_solution_block_is_compliant_but_not_an_answer():
    rows = pd.DataFrame({"pid": ["1", "2", "3", "4"], "question": "q", "answer": ["4", "5", "C", "6"],
                         "question_type": ["free_form", "free_form", "multi_choice", "free_form"],
                         "answer_type": ["integer", "integer", "text", "integer"],
                         "choices": [None, None, ["1", "2", "C"], None]})
    completions = [GOOD.format(""), GOOD.format("five"), GOOD.format("B"), "The answer is 6."]
    records = score_records(rows, completions)
    assert records["format_ok"].tolist() == [True, True, True, False]
    # empty; a word where a number is asked; an option letter; no block at all
    assert records["answered"].tolist() == [False, False, True, False]
    assert summarize_records(records)["answer_rate"] == 0.25


def test_collapse_is_flagged_for_empty_answers_and_for_one_answer_everywhere():
    rows = pd.DataFrame({"pid": [str(i) for i in range(10)], "question": "q", "answer": [str(i) for i in range(10)],
                         "answer_type": "integer"})
    healthy = score_records(rows, [GOOD.format(str(i)) for i in range(10)])
    empty = score_records(rows, [GOOD.format("")] * 7 + [GOOD.format("1")] * 3)
    constant = score_records(rows, [GOOD.format("6")] * 8 + [GOOD.format("1")] * 2)
    assert summarize_records(healthy)["collapse"] == []
    [flag] = summarize_records(empty)["collapse"]
    assert flag.startswith("empty answers: 7 of 10")
    [flag] = summarize_records(constant)["collapse"]
    assert flag.startswith("one answer for most samples: '6' for 8 of 10")
    diff = diff_records(healthy, constant, n_resamples=200)
    assert diff["collapse"] == {"baseline": [], "after": [flag]}
    assert "COLLAPSE" in report_markdown(diff)
    # when the gold answers themselves are mostly one value, answering it is no collapse
    same = rows.assign(answer="6")
    assert summarize_records(score_records(same, [GOOD.format("6")] * 10))["collapse"] == []


def test_the_report_gives_accuracy_per_task_family():
    rows = pd.DataFrame({"pid": ["1", "2", "3"], "question": "q", "answer": ["1", "2", "3"],
                         "metadata": [{"context": "bar chart"}, {"context": "bar chart"}, {"context": "number line"}]})
    before = score_records(rows, [GOOD.format("1"), GOOD.format("0"), GOOD.format("0")])
    after = score_records(rows, [GOOD.format("1"), GOOD.format("2"), GOOD.format("0")])
    table = diff_records(before, after, n_resamples=200)["per_family"]
    assert table["bar chart"]["n"] == 2 and table["bar chart"]["baseline_accuracy"] == 0.5
    assert table["bar chart"]["after_accuracy"] == 1.0 and table["number line"]["after_accuracy"] == 0.0
