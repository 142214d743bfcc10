"""Evaluation records, summaries and the before/after diff."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from vlmrl_pipeline.core.evaluation import (
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
    assert "(no SOLUTION)" in report_markdown(diff)
