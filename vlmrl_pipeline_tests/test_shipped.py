"""The shipped artifacts against the adapter: paired intervals, answers changed, the accuracy check's verdict, the
"what you ship" table and its float metadata, and the token-by-token comparison of a rehearsal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlmrl_pipeline.core.evaluation.shipped import (
    accuracy_kept,
    compare_to_adapter,
    logit_agreement,
    shipped_markdown,
    shipped_metadata,
    shipped_rows,
)


def _records(correct: list[bool], preds: list[str] | None = None) -> pd.DataFrame:
    n = len(correct)
    preds = preds or [("1" if c else "2") for c in correct]
    return pd.DataFrame({"pid": [str(i) for i in range(n)], "correct": correct, "correct_mathvista": correct,
                         "format_ok": [True] * n, "answered": [True] * n, "pred": preds,
                         "completion": [f"<SOLUTION>{p}</SOLUTION>" for p in preds]})


def test_an_identical_artifact_changes_nothing_and_keeps_its_accuracy():
    adapter = _records([True] * 60 + [False] * 40)
    comparison = compare_to_adapter(adapter, adapter.sample(frac=1.0, random_state=0))  # order does not matter
    m = comparison["metrics"]["accuracy"]
    assert (m["before"], m["after"], m["difference"], m["ci_low"], m["ci_high"]) == (0.6, 0.6, 0.0, 0.0, 0.0)
    assert comparison["answers_changed"] == 0 and comparison["completions_changed"] == 0
    assert accuracy_kept(comparison, 0.02) == []


def test_a_large_drop_fails_naming_the_metric_and_the_samples_lost():
    adapter = _records([True] * 60 + [False] * 40)
    broken = _records([True] * 40 + [False] * 60)  # samples 40..59 lost
    comparison = compare_to_adapter(adapter, broken)
    assert comparison["answers_changed"] == 20
    assert comparison["flips"]["accuracy"]["lost"] == [str(i) for i in range(40, 60)]
    problems = accuracy_kept(comparison, 0.02)
    assert len(problems) == 2  # strict and MathVista's
    assert "accuracy (strict) 40.0% vs the adapter's 60.0%" in problems[0] and "-20.0 pts" in problems[0]
    assert "lost on 20 samples: 40, 41," in problems[0]
    # a tolerance above the drop lets it pass: the setting decides
    assert accuracy_kept(comparison, 0.25) == []


def test_a_drop_within_noise_or_within_the_tolerance_passes():
    adapter = _records([True] * 60 + [False] * 40)
    noisy = _records([True] * 58 + [False] * 42)  # 2 lost of 100: the interval reaches 0
    comparison = compare_to_adapter(adapter, noisy)
    assert comparison["metrics"]["accuracy"]["ci_high"] >= 0
    assert accuracy_kept(comparison, 0.0) == []
    # a gain never fails
    better = _records([True] * 80 + [False] * 20)
    assert accuracy_kept(compare_to_adapter(adapter, better), 0.0) == []


def test_records_over_other_samples_are_refused():
    adapter = _records([True, False, True])
    other = _records([True, False, True, True])
    with pytest.raises(ValueError, match="cover the adapter's samples exactly"):
        compare_to_adapter(adapter, other)


def test_the_table_has_every_artifact_with_its_interval_and_the_metadata_are_floats():
    adapter = _records([True] * 60 + [False] * 40)
    rows = shipped_rows(adapter, {"merged": adapter, "gguf-q8_0": _records([True] * 30 + [False] * 70),
                                  "gguf-f16": None}, 0.02, {"gguf-f16": {"reason": "not materialized yet"}})
    assert list(rows) == ["adapter", "merged", "gguf-q8_0", "gguf-f16"]
    assert rows["merged"]["accuracy_kept"] and not rows["gguf-q8_0"]["accuracy_kept"]
    text = shipped_markdown(rows, 0.02)
    assert "| adapter (reference) | 60.0% |" in text
    assert "| merged | 60.0% (+0.0 [+0.0, +0.0])" in text
    assert "| gguf-q8_0 | 30.0% (-30.0 [" in text and "| 30 of 100 | **FAILED** |" in text
    assert "| gguf-f16 |" in text and "not evaluated: not materialized yet" in text
    assert "- **gguf-q8_0**: accuracy (strict) 30.0%" in text
    metadata = shipped_metadata(rows)
    assert metadata["shipped_adapter_accuracy"] == 0.6 and metadata["shipped_gguf_q8_0_accuracy"] == 0.3
    assert metadata["shipped_gguf_q8_0_accuracy_difference"] == -0.3
    assert metadata["shipped_gguf_q8_0_accuracy_ci_high"] < 0
    assert all(isinstance(v, float) for v in metadata.values())
    assert not any(k.startswith("shipped_gguf_f16") for k in metadata)


def test_logit_agreement_counts_argmax_and_the_greedy_prefix():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(3, 50))
    other = reference + rng.normal(scale=0.01, size=reference.shape)
    other[2] = -reference[2]  # one sample disagrees
    out = logit_agreement(reference, other, [[1, 2, 3], [4, 5], [6]], [[1, 2, 3], [4, 9], [7]])
    assert out["samples"] == 3 and out["argmax_agree"] == 2
    assert out["relative_logit_diff"][0] < 0.05 and out["relative_logit_diff"][2] > 1.5
    assert out["greedy_agreeing_prefix"] == [3, 1, 0] and out["greedy_identical"] == 1
    with pytest.raises(ValueError, match="different shapes"):
        logit_agreement(reference, reference[:, :10])
