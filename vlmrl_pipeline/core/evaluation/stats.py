"""Paired statistics for a before/after evaluation on the same samples.

The baseline and the trained model answer the same questions, so their results are
paired: the question is not "are 5% and 6% different rates" but "did the samples
that changed move one way more than chance allows". McNemar's exact test answers
that from the discordant pairs alone; a paired bootstrap puts a confidence interval
on the accuracy difference. Both come from ``scipy.stats`` (``binomtest`` and
``bootstrap``); this module adds the pairing, the input checks and the result shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Largest index matrix (resamples x samples) drawn at once: 2**22 int64 indices is
# 32 MiB, plus as much again for the gathered values.
_MAX_CHUNK_ELEMENTS = 2**22


def _paired_flags(before: Sequence[bool], after: Sequence[bool]) -> tuple[list[bool], list[bool]]:
    """Both outcome sequences as lists of bools; ValueError when their lengths differ."""
    b = [bool(x) for x in before]
    a = [bool(x) for x in after]
    if len(b) != len(a):
        raise ValueError(f"paired outcomes need equal lengths, got {len(b)} before and {len(a)} after")
    return b, a


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> dict:
    """Exact two-sided McNemar test on paired boolean outcomes.

    Returns ``{"gained", "lost", "discordant", "p_value"}``: ``gained`` counts pairs
    that went False -> True, ``lost`` True -> False, ``discordant`` their sum. Under
    the null hypothesis (no change in accuracy) each discordant pair is a fair coin,
    so ``p = min(1, 2 * P(X <= min(gained, lost)))`` with ``X ~ Binomial(discordant,
    1/2)`` (``scipy.stats.binomtest``), and ``p = 1.0`` when nothing changed.
    Raises ValueError when the lengths differ.
    """
    from scipy.stats import binomtest

    b, a = _paired_flags(before, after)
    gained = sum(1 for x, y in zip(b, a) if not x and y)
    lost = sum(1 for x, y in zip(b, a) if x and not y)
    discordant = gained + lost
    # binomtest's two-sided p for p=1/2 is min(1, 2 * P(X <= min(gained, lost))): McNemar's exact test.
    p_value = 1.0 if discordant == 0 else float(binomtest(min(gained, lost), discordant, 0.5).pvalue)
    return {"gained": gained, "lost": lost, "discordant": discordant, "p_value": p_value}


def paired_bootstrap_ci(
    before: Sequence[float],
    after: Sequence[float],
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Observed mean difference (after - before) and its paired percentile bootstrap interval.

    Each resample draws sample indices with replacement and uses the SAME indices for
    both sides (that is what keeps the pairs together), so the resampled statistic is
    the mean of the per-sample differences at those indices. The interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    ``n_resamples`` resampled means (``scipy.stats.bootstrap``, percentile method, on
    the per-sample differences). Indices are drawn in batches of at most about four
    million, so memory stays bounded for large inputs. Deterministic for a given seed
    and input.

    Returns ``(difference, lower, upper)`` as floats. Raises ValueError for unequal
    lengths, empty or non-finite input, ``n_resamples < 1`` or a confidence outside
    (0, 1).
    """
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    if b.ndim != 1 or a.ndim != 1:
        raise ValueError("before and after must be one-dimensional sequences")
    if len(b) != len(a):
        raise ValueError(f"paired samples need equal lengths, got {len(b)} before and {len(a)} after")
    if len(b) == 0:
        raise ValueError("paired samples are empty")
    if not (np.isfinite(b).all() and np.isfinite(a).all()):
        raise ValueError("paired samples must be finite (no NaN or infinity)")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")

    from scipy.stats import bootstrap

    diffs = a - b
    if np.all(diffs == diffs[0]):  # every resample has the same mean (scipy would warn of a degenerate sample)
        return float(diffs[0]), float(diffs[0]), float(diffs[0])
    result = bootstrap((diffs,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                       method="percentile", vectorized=True, batch=max(1, _MAX_CHUNK_ELEMENTS // len(diffs)),
                       random_state=np.random.default_rng(seed))
    lower, upper = result.confidence_interval
    return float(diffs.mean()), float(lower), float(upper)


def paired_comparison(
    before: Sequence[bool],
    after: Sequence[bool],
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Compare a boolean metric (e.g. ``correct``) before and after training on the same samples.

    Returns ``{"before", "after", "difference", "ci_low", "ci_high", "confidence",
    "gained", "lost", "p_value", "n"}``: the two rates, their difference (the mean
    per-sample change, after - before) with its paired bootstrap interval
    (:func:`paired_bootstrap_ci`), and McNemar's exact test (:func:`mcnemar_exact`).
    Raises ValueError for unequal lengths or empty input.
    """
    b, a = _paired_flags(before, after)
    if not b:
        raise ValueError("paired outcomes are empty")
    difference, low, high = paired_bootstrap_ci(
        b, a, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    test = mcnemar_exact(b, a)
    return {
        "before": sum(b) / len(b),
        "after": sum(a) / len(a),
        "difference": difference,
        "ci_low": low,
        "ci_high": high,
        "confidence": float(confidence),
        "gained": test["gained"],
        "lost": test["lost"],
        "p_value": test["p_value"],
        "n": len(b),
    }
