"""The statistics of the tables: intervals and paired tests.

The interval is Student's t on the independent units: the per-split means when there are
several splits (seeds are averaged within a split first, as folds share nothing but seeds
share a test set), else the seeds.  Cross-validation folds overlap in training data, so fold
intervals are somewhat optimistic (Bengio & Grandvalet, 2004).  The paired test pairs each
(split, seed) of a value with the same (split, seed) of the baseline: a paired t-test below
:data:`WILCOXON_MIN_PAIRS` pairs (a signed-rank test cannot reach p < 0.05 with fewer than 6),
else the Wilcoxon signed-rank test.
"""

from __future__ import annotations

import math

import numpy as np

#: Pairs from which the Wilcoxon signed-rank test replaces the paired t-test.
WILCOXON_MIN_PAIRS = 8


def t_interval(values: np.ndarray, confidence: float = 0.95) -> float:
    """Half-width of Student's t interval of the mean of ``values`` (NaN for fewer than 2)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return float("nan")
    sd = float(np.std(values, ddof=1))
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def paired_test(diffs: np.ndarray) -> tuple[str, float]:
    """``(test, p)`` for paired differences: a two-sided paired t-test below
    :data:`WILCOXON_MIN_PAIRS` pairs, else the Wilcoxon signed-rank test.  ``p`` is NaN for
    fewer than two pairs or for identical non-zero differences (no spread to test against),
    1.0 when every difference is zero."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=float)
    n = len(diffs)
    test = "t" if n < WILCOXON_MIN_PAIRS else "W"
    if n < 2:
        return test, float("nan")
    if np.allclose(diffs, 0.0, atol=1e-12):
        return test, 1.0
    if np.allclose(diffs, diffs[0], atol=1e-12):
        return test, float("nan")
    if test == "t":
        return test, float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return test, float(stats.wilcoxon(diffs).pvalue)


def significance(p: float) -> str:
    """``***`` p < 0.001, ``**`` p < 0.01, ``*`` p < 0.05, ``ns`` otherwise, ``-`` untested."""
    if not math.isfinite(p):
        return "-"
    return "***" if p < 1e-3 else "**" if p < 1e-2 else "*" if p < 0.05 else "ns"
