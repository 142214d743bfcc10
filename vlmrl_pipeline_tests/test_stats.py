"""Tests for the paired before/after statistics (vlmrl_pipeline.core.evaluation.stats)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from vlmrl_pipeline.core.evaluation import stats
from vlmrl_pipeline.core.evaluation.stats import (
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_comparison,
)


def _pairs(gained: int, lost: int, both_right: int = 0, both_wrong: int = 0) -> tuple[list[bool], list[bool]]:
    """Before/after outcome lists with the given cell counts of the 2x2 table."""
    before = [False] * gained + [True] * lost + [True] * both_right + [False] * both_wrong
    after = [True] * gained + [False] * lost + [True] * both_right + [False] * both_wrong
    return before, after


# --- McNemar ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gained", "lost", "p_value"),
    [
        (0, 0, 1.0),
        (1, 0, 1.0),  # 2 * 1/2
        (6, 0, 0.03125),  # 2 * 1/64
        (8, 2, 0.109375),  # 2 * (1 + 10 + 45) / 1024
        (5, 5, 1.0),  # capped at 1
        (3, 1, 0.625),  # 2 * (1 + 4) / 16
        (10, 0, 2 / 1024),
    ],
)
def test_mcnemar_exact_by_hand(gained, lost, p_value):
    before, after = _pairs(gained, lost, both_right=7, both_wrong=11)  # concordant pairs do not matter
    result = mcnemar_exact(before, after)
    assert result == {"gained": gained, "lost": lost, "discordant": gained + lost, "p_value": p_value}
    assert type(result["p_value"]) is float


@pytest.mark.parametrize(("gained", "lost"), [(0, 3), (2, 9), (40, 25), (1, 0)])
def test_mcnemar_exact_is_symmetric(gained, lost):
    forward = mcnemar_exact(*_pairs(gained, lost))
    swapped = mcnemar_exact(*_pairs(lost, gained))
    assert forward["p_value"] == swapped["p_value"]
    assert (forward["gained"], forward["lost"]) == (swapped["lost"], swapped["gained"])
    # Swapping the roles of before and after is the same swap.
    before, after = _pairs(gained, lost)
    assert mcnemar_exact(after, before)["p_value"] == forward["p_value"]


@pytest.mark.parametrize(("gained", "lost"), [(1060, 0), (1000, 0), (1550, 1450), (1500, 1500), (250, 240),
                                             (60, 45), (3, 17)])
def test_mcnemar_from_scipy_equals_the_exact_binomial_tail(gained, lost):
    """scipy's binomtest against the exact tail in integers (one rounding, at the end): equal to 1e-12, also at
    1060 discordant pairs, where 2 * 2**-1060 is already a subnormal float."""
    result = mcnemar_exact(*_pairs(gained, lost))
    n = gained + lost
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1))
    exact = float(min(Fraction(1), Fraction(2 * tail, 2**n)))
    assert result["discordant"] == n
    assert result["p_value"] == pytest.approx(exact, rel=1e-12)


def test_mcnemar_exact_accepts_numpy_and_checks_lengths():
    before, after = _pairs(6, 0, both_right=3)
    assert mcnemar_exact(np.array(before), np.array(after))["p_value"] == 0.03125
    assert mcnemar_exact([], [])["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([True], [True, False])


# --- paired bootstrap -----------------------------------------------------------------


def test_bootstrap_contains_observed_difference():
    rng = np.random.default_rng(1)
    before = rng.random(200) < 0.4
    after = rng.random(200) < 0.5
    diff, low, high = paired_bootstrap_ci(before, after, n_resamples=2000)
    assert diff == pytest.approx(after.mean() - before.mean())
    assert low <= diff <= high
    assert low < high


def test_bootstrap_interval_shrinks_with_n():
    widths = []
    for n in (50, 500, 5000):
        rng = np.random.default_rng(n)
        before = rng.random(n) < 0.4
        after = rng.random(n) < 0.5
        _, low, high = paired_bootstrap_ci(before, after, n_resamples=2000)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # Roughly 1 / sqrt(n): ten times the samples, about a third of the width.
    assert widths[2] < 0.5 * widths[1] < 0.25 * widths[0]


def test_bootstrap_degenerate_when_all_pairs_move_alike():
    assert paired_bootstrap_ci([False] * 30, [True] * 30) == (1.0, 1.0, 1.0)
    assert paired_bootstrap_ci([True] * 30, [True] * 30) == (0.0, 0.0, 0.0)
    assert paired_bootstrap_ci([0.25] * 8, [0.75] * 8) == (0.5, 0.5, 0.5)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(7)
    before, after = rng.random(100), rng.random(100)
    first = paired_bootstrap_ci(before, after, n_resamples=500, seed=3)
    assert paired_bootstrap_ci(before, after, n_resamples=500, seed=3) == first
    assert paired_bootstrap_ci(list(before), list(after), n_resamples=500, seed=3) == first
    assert paired_bootstrap_ci(before, after, n_resamples=500, seed=4) != first
    assert all(type(x) is float for x in first)


def test_bootstrap_pairs_share_indices():
    # after == before + 1 everywhere: paired resampling sees a constant difference, so the
    # interval is a point even though each side alone varies a lot.
    before = np.arange(50, dtype=float)
    assert paired_bootstrap_ci(before, before + 1.0, n_resamples=300) == (1.0, 1.0, 1.0)


def test_bootstrap_confidence_widens_interval():
    rng = np.random.default_rng(5)
    before, after = rng.random(80) < 0.5, rng.random(80) < 0.5
    _, low90, high90 = paired_bootstrap_ci(before, after, confidence=0.90, n_resamples=3000)
    _, low99, high99 = paired_bootstrap_ci(before, after, confidence=0.99, n_resamples=3000)
    assert low99 <= low90 and high90 <= high99


def test_bootstrap_chunks_bound_memory(monkeypatch):
    # With a tiny chunk budget the resamples are drawn a few rows at a time; the answer stays sane.
    monkeypatch.setattr(stats, "_MAX_CHUNK_ELEMENTS", 64)
    rng = np.random.default_rng(2)
    before, after = rng.random(40) < 0.3, rng.random(40) < 0.6
    diff, low, high = paired_bootstrap_ci(before, after, n_resamples=301)
    assert low <= diff <= high
    assert paired_bootstrap_ci([False] * 100, [True] * 100, n_resamples=7) == (1.0, 1.0, 1.0)  # rows = 1


@pytest.mark.parametrize(
    ("before", "after", "kwargs", "message"),
    [
        ([1.0], [1.0, 2.0], {}, "equal lengths"),
        ([], [], {}, "empty"),
        ([1.0, math.nan], [1.0, 2.0], {}, "finite"),
        ([[1.0]], [[1.0]], {}, "one-dimensional"),
        ([1.0], [2.0], {"n_resamples": 0}, "n_resamples"),
        ([1.0], [2.0], {"confidence": 1.0}, "confidence"),
        ([1.0], [2.0], {"confidence": 0.0}, "confidence"),
    ],
)
def test_bootstrap_rejects_bad_input(before, after, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_ci(before, after, **kwargs)


# --- paired comparison ----------------------------------------------------------------


def test_paired_comparison_like_the_seed_result():
    # 5% -> 6% on 100 samples: one question gained, none lost. Not evidence of anything.
    before, after = _pairs(gained=1, lost=0, both_right=5, both_wrong=94)
    result = paired_comparison(before, after)
    assert set(result) == {
        "before", "after", "difference", "ci_low", "ci_high", "confidence", "gained", "lost", "p_value", "n",
    }
    assert (result["before"], result["after"]) == (0.05, 0.06)
    assert result["difference"] == pytest.approx(0.01)
    assert result["ci_low"] <= 0.0 <= result["ci_high"]
    assert (result["gained"], result["lost"], result["p_value"], result["n"]) == (1, 0, 1.0, 100)
    assert result["confidence"] == 0.95


def test_paired_comparison_clear_improvement():
    before, after = _pairs(gained=30, lost=2, both_right=20, both_wrong=48)
    result = paired_comparison(before, after, n_resamples=2000, confidence=0.9, seed=1)
    assert result["difference"] == pytest.approx(0.28)
    assert 0.0 < result["ci_low"] < 0.28 < result["ci_high"]
    assert result["p_value"] < 1e-6
    assert result["confidence"] == 0.9
    assert result == paired_comparison(before, after, n_resamples=2000, confidence=0.9, seed=1)


def test_paired_comparison_all_flipped():
    result = paired_comparison([False] * 12, [True] * 12)
    assert (result["difference"], result["ci_low"], result["ci_high"]) == (1.0, 1.0, 1.0)
    assert result["p_value"] == 2 / 2**12


def test_paired_comparison_accepts_pandas_like_columns():
    pd = pytest.importorskip("pandas")
    before, after = _pairs(gained=6, lost=0, both_wrong=4)
    result = paired_comparison(pd.Series(before), pd.Series(after), n_resamples=200)
    assert (result["gained"], result["lost"], result["p_value"], result["n"]) == (6, 0, 0.03125, 10)


@pytest.mark.parametrize(("before", "after"), [([], []), ([True], [True, False])])
def test_paired_comparison_rejects_bad_input(before, after):
    with pytest.raises(ValueError, match="empty|equal lengths"):
        paired_comparison(before, after)


def test_bootstrap_from_scipy_equals_the_percentile_bootstrap_written_out():
    """scipy's percentile bootstrap against the same resampling by hand (same generator, same index draws): the
    same interval."""
    rng = np.random.default_rng(11)
    before, after = rng.random(100) < 0.4, rng.random(100) < 0.6
    diffs = after.astype(float) - before.astype(float)
    indices = np.random.default_rng(0).integers(0, len(diffs), size=(10000, len(diffs)))
    by_hand = np.quantile(diffs[indices].mean(axis=1), [0.025, 0.975])
    assert paired_bootstrap_ci(before, after) == (pytest.approx(diffs.mean()), *map(pytest.approx, by_hand))
