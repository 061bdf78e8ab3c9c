"""The statistics of the tables: intervals and paired comparisons, from per-clip predictions.

A table cell (one model / task / protocol / encoder / metric, and any setting that varies)
pools evaluations, one per (split, seed), and each evaluation wrote its per-clip test
predictions (:mod:`ssl_bench.predictions`, the row's ``predictions_file``).  So:

* **Interval** (:func:`cell_interval`): a percentile bootstrap of :data:`BOOTSTRAP` replicates
  (seeded: a table prints the same numbers twice) that resamples what varies: the splits when
  there are several, the test clips of each split (one resample for all the seeds of a split,
  which share its test set), and the seeds of a split when there are several.  Each replicate
  recomputes the metric on the resampled clips and averages it as the cell's mean is averaged
  (seeds within a split, then splits), so every replicate is a value the metric can take and
  the interval stays inside the metric's range (an accuracy's in [0, 1]).  Metrics that are
  not a mean over clips (mAP, AUC) are recomputed from the scores, on
  :data:`RECOMPUTED_BOOTSTRAP` replicates.  Without per-clip predictions (a pretraining loss,
  an event task, records written before predictions were kept) the bootstrap resamples the
  evaluations' own values (splits, then seeds): an interval within the values seen, rough when
  there are few.  A single value has no interval.
* **Paired comparison** (:func:`paired_comparison`) of a variant with a baseline over the
  splits and seeds both have, clip by clip on the clips both scored: an accuracy with one seed
  per split by McNemar's exact test on the discordant clips (right in one, wrong in the
  other) pooled over the splits; any other metric, or several seeds, by a paired bootstrap of
  the difference (the same resampled splits, clips and seeds for both; p two-sided).  Without
  per-clip predictions, the paired t-test over (split, seed) pairs (the Wilcoxon signed-rank
  test from :data:`WILCOXON_MIN_PAIRS` pairs: with fewer it cannot reach p < 0.05).
* **Holm** (:func:`holm`): the p-values of the variants compared with one baseline are
  adjusted together, Holm's step-down, so that a ``*`` keeps its 5 % meaning among them.
* The pretraining rows of one encoder that several splits reuse are one evaluation, not one
  per split.

Cross-validation folds overlap in training data, so intervals over folds are somewhat
optimistic (Bengio & Grandvalet, 2004).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Bootstrap replicates of an interval or a paired test.
BOOTSTRAP = 2000
#: Replicates where the metric is recomputed from the scores (mAP, AUC: a sort per class each).
RECOMPUTED_BOOTSTRAP = 200
#: The level of every interval.
CONFIDENCE = 0.95
#: The seed of every resample.
SEED = 0
#: Pairs from which the Wilcoxon signed-rank test replaces the paired t-test (no per-clip data).
WILCOXON_MIN_PAIRS = 8
#: Clips resampled per chunk of replicates (bounds the memory of large test sets).
CHUNK = 2_000_000


# --------------------------------------------------------------------------- per-clip data
@dataclass
class Evaluation:
    """One evaluation's test clips: ``files`` and ``scores`` / multi-hot ``targets`` ``[n, C]``."""

    files: list[str]
    scores: np.ndarray
    targets: np.ndarray

    def take(self, files: list[str]) -> Evaluation:
        """The same evaluation restricted to ``files``, in that order."""
        index = {f: i for i, f in enumerate(self.files)}
        rows = np.array([index[f] for f in files], dtype=np.int64)
        return Evaluation(list(files), self.scores[rows], self.targets[rows])


class ClipData:
    """The per-clip predictions of rows, each file read once (``None`` where a row has none)."""

    def __init__(self) -> None:
        self._read: dict[str, Evaluation | None] = {}

    def get(self, path: Any) -> Evaluation | None:
        if not isinstance(path, str) or not path:
            return None
        if path not in self._read:
            from ..predictions import scores_and_targets

            try:
                files, _, scores, targets = scores_and_targets(Path(path))
                self._read[path] = Evaluation(files, scores, targets) if files else None
            except (OSError, ValueError, KeyError, TypeError, StopIteration):
                self._read[path] = None  # events, or a damaged file: the values' statistics instead
        return self._read[path]


def clip_statistic(metric: str) -> Callable[[Evaluation], np.ndarray] | None:
    """For a metric that is a mean over clips, each clip's contribution (accuracy: whether the
    top class is a positive); ``None`` for the others."""
    if metric == "accuracy":
        return lambda e: (e.targets[np.arange(len(e.files)), np.argmax(e.scores, axis=1)] > 0).astype(np.float64)
    return None


def _metric(metric: str) -> Callable[[np.ndarray, np.ndarray], float] | None:
    """The registered clip metric ``metric`` as ``fn(scores, targets) -> value`` (its first
    value when it returns several), or ``None`` (an event metric, a loss, an unknown name)."""
    from ..errors import UserError
    from ..metrics import CLIP, evaluate, get_metric

    try:
        if get_metric(metric).input != CLIP:
            return None
    except (UserError, KeyError):
        return None
    return lambda scores, targets: evaluate([metric], scores, targets)[metric]


# --------------------------------------------------------------------------- a cell's units
def units(group: pd.DataFrame) -> dict[str, dict[Any, pd.Series]]:
    """The evaluations of a cell, ``{split: {seed: row}}``; pretraining rows of one encoder
    that several splits reused (one ``pretrain_hash``) are one evaluation."""
    if "pretrain_hash" in group.columns and "protocol" in group.columns and (group["protocol"] == "pretrain").all():
        hashes = group["pretrain_hash"].astype(str)
        if hashes.nunique() < len(group) and not hashes.isin(["", "nan", "None"]).any():
            group = group.drop_duplicates(subset=["pretrain_hash", "seed"])
    out: dict[str, dict[Any, pd.Series]] = {}
    for _, row in group.iterrows():
        out.setdefault(str(row["split"]), {})[row.get("seed", 0)] = row
    return out


def _clip_units(cell: dict[str, dict[Any, pd.Series]], clips: ClipData, metric: str
                ) -> dict[str, list[Evaluation]] | None:
    """Each split's evaluations restricted to the clips all its seeds scored, or ``None`` when
    some evaluation has no per-clip predictions (or the metric cannot be recomputed)."""
    if clip_statistic(metric) is None and _metric(metric) is None:
        return None
    out = {}
    for split, seeds in cell.items():
        found = [clips.get(row.get("predictions_file")) for row in seeds.values()]
        if any(e is None for e in found):
            return None
        common = [f for f in found[0].files if all(f in set(e.files) for e in found[1:])] if len(found) > 1 \
            else found[0].files
        if not common:
            return None
        out[split] = [e if e.files == common else e.take(common) for e in found]
    return out


# --------------------------------------------------------------------------- the bootstrap
def _resamples(rng: np.random.Generator, n: int, replicates: int):
    """Clip indices ``[chunk, n]``, ``replicates`` of them in all, in chunks."""
    step = max(1, CHUNK // max(n, 1))
    for start in range(0, replicates, step):
        yield rng.integers(0, n, size=(min(step, replicates - start), n))


def _split_replicates(evaluations: list[list[Evaluation]], metric: str, rng: np.random.Generator,
                      replicates: int) -> list[np.ndarray]:
    """For one split: per variant (``evaluations[v]``: its seeds, on the same clips), the metric
    of each replicate, the clips resampled once for all variants and seeds, the seeds resampled
    per replicate (the same picks for every variant)."""
    n = len(evaluations[0][0].files)
    per_clip = clip_statistic(metric)
    values = [np.empty((len(seeds), replicates)) for seeds in evaluations]  # [variant][seed, replicate]
    done = 0
    for idx in _resamples(rng, n, replicates):
        for v, seeds in enumerate(evaluations):
            for s, e in enumerate(seeds):
                if per_clip is not None:
                    values[v][s, done:done + len(idx)] = per_clip(e)[idx].mean(axis=1)
                else:
                    fn = _metric(metric)
                    values[v][s, done:done + len(idx)] = [fn(e.scores[i], e.targets[i]) for i in idx]
        done += len(idx)
    n_seeds = len(evaluations[0])
    if n_seeds == 1:
        return [v[0] for v in values]
    picks = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    cols = np.arange(replicates)[:, None]
    return [np.nanmean(v[picks, cols], axis=1) for v in values]


def _over_splits(per_split: list[list[np.ndarray]], rng: np.random.Generator, replicates: int) -> list[np.ndarray]:
    """Per variant, the replicates of the mean over splits, the splits resampled (the same picks
    for every variant) and each pick's clips an independent replicate of that split."""
    n_splits = len(per_split)
    if n_splits == 1:
        return list(per_split[0])
    picks = rng.integers(0, n_splits, size=(replicates, n_splits))
    cols = rng.integers(0, replicates, size=(replicates, n_splits))
    out = []
    for v in range(len(per_split[0])):
        table = np.stack([split[v] for split in per_split])  # [split, replicate]
        out.append(np.nanmean(table[picks, cols], axis=1))
    return out


def _replicates(metric: str, variants: list[dict[str, list[Evaluation]]] | None,
                values: list[dict[str, list[float]]] | None) -> list[np.ndarray]:
    """Bootstrap replicates of each variant's cell value, resampled together (paired): from
    per-clip evaluations (``variants``), else from the evaluations' values (``values``)."""
    rng = np.random.default_rng(SEED)
    if variants is not None:
        splits = list(variants[0])
        replicates = BOOTSTRAP if clip_statistic(metric) is not None else RECOMPUTED_BOOTSTRAP
        per_split = [_split_replicates([v[s] for v in variants], metric, rng, replicates) for s in splits]
        return _over_splits(per_split, rng, replicates)
    assert values is not None
    splits = list(values[0])
    per_split = []
    for s in splits:
        seeds = [np.asarray(v[s], dtype=float) for v in values]
        n_seeds = len(seeds[0])
        if n_seeds == 1:
            per_split.append([np.full(BOOTSTRAP, x[0]) for x in seeds])
        else:
            picks = rng.integers(0, n_seeds, size=(BOOTSTRAP, n_seeds))
            per_split.append([x[picks].mean(axis=1) for x in seeds])
    return _over_splits(per_split, rng, BOOTSTRAP)


# --------------------------------------------------------------------------- what the tables use
@dataclass
class Interval:
    """A cell's 95% interval (``low``, ``high``; NaN when there is none), how it was made
    (``method``: ``clips``, ``splits and clips``, ``values``, or ``-``) and the test clips it
    resampled (0 without per-clip data)."""

    low: float
    high: float
    method: str
    clips: int


def cell_interval(group: pd.DataFrame, clips: ClipData, metric: str | None = None) -> Interval:
    """The bootstrap interval of one table cell (see the module docstring)."""
    metric = metric or str(group["metric"].iloc[0])
    cell = units(group)
    evaluations = _clip_units(cell, clips, metric)
    n_units = sum(len(seeds) for seeds in cell.values())
    if evaluations is not None:
        reps = _replicates(metric, [evaluations], None)[0]
        method = "splits and clips" if len(cell) > 1 else "clips"
        n_clips = sum(len(seeds[0].files) for seeds in evaluations.values())
    elif n_units > 1:
        reps = _replicates(metric, None, [{s: [float(r["value"]) for r in seeds.values()]
                                           for s, seeds in cell.items()}])[0]
        method, n_clips = "values", 0
    else:
        return Interval(math.nan, math.nan, "-", 0)
    reps = reps[np.isfinite(reps)]
    if not len(reps):
        return Interval(math.nan, math.nan, "-", 0)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return Interval(float(low), float(high), method, n_clips)


def paired_comparison(variant: pd.DataFrame, baseline: pd.DataFrame, clips: ClipData,
                      metric: str | None = None) -> tuple[str, float, str]:
    """``(test, p, over)`` of ``variant`` against ``baseline`` on the (split, seed) pairs both
    have: ``McNemar`` or ``paired bootstrap`` over clips, else ``t`` or ``W`` over the pairs'
    values (see the module docstring); ``over`` says on what (``800 clips``, ``5 pairs``)."""
    metric = metric or str(variant["metric"].iloc[0])
    a, b = units(variant), units(baseline)
    shared = {s: sorted(set(a[s]) & set(b[s]), key=str) for s in a if s in b}
    shared = {s: seeds for s, seeds in shared.items() if seeds}
    if not shared:
        return "-", math.nan, "no shared splits"
    a = {s: {k: a[s][k] for k in seeds} for s, seeds in shared.items()}
    b = {s: {k: b[s][k] for k in seeds} for s, seeds in shared.items()}
    ea, eb = _clip_units(a, clips, metric), _clip_units(b, clips, metric)
    if ea is not None and eb is not None:
        both: dict[str, tuple[list[Evaluation], list[Evaluation]]] = {}
        for s in shared:
            files = [f for f in ea[s][0].files if f in set(eb[s][0].files)]
            if files:
                both[s] = ([e.take(files) for e in ea[s]], [e.take(files) for e in eb[s]])
        n_clips = sum(len(x[0][0].files) for x in both.values())
        if both and metric == "accuracy" and all(len(x[0]) == 1 for x in both.values()):
            stat = clip_statistic(metric)
            wins = sum(int(((stat(x[0][0]) > 0) & (stat(x[1][0]) == 0)).sum()) for x in both.values())
            losses = sum(int(((stat(x[0][0]) == 0) & (stat(x[1][0]) > 0)).sum()) for x in both.values())
            return "McNemar", mcnemar_exact(wins, losses), f"{n_clips} clips"
        if both:
            reps_a, reps_b = _replicates(metric, [{s: x[0] for s, x in both.items()},
                                                  {s: x[1] for s, x in both.items()}], None)
            return "paired bootstrap", bootstrap_p(reps_a - reps_b), f"{n_clips} clips"
    da = pd.Series({(s, k): float(a[s][k]["value"]) for s in shared for k in shared[s]})
    db = pd.Series({(s, k): float(b[s][k]["value"]) for s in shared for k in shared[s]})
    test, p = paired_test((da - db).to_numpy())
    return test, p, f"{len(da)} pair{'' if len(da) == 1 else 's'}"


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p of ``wins`` and ``losses`` discordant pairs (a binomial test
    of ``wins`` in ``wins + losses`` at one half); 1 with no discordant pair."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def bootstrap_p(differences: np.ndarray) -> float:
    """Two-sided p of a bootstrap distribution of a difference: twice the smaller share of
    replicates on either side of zero (each count plus one, so p is never 0)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan
    below, above = (int((d <= 0).sum()) + 1) / (len(d) + 1), (int((d >= 0).sum()) + 1) / (len(d) + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (NaN ones are left out and stay NaN)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def paired_test(diffs: np.ndarray) -> tuple[str, float]:
    """``(test, p)`` for paired differences without per-clip data: a two-sided paired t-test
    below :data:`WILCOXON_MIN_PAIRS` pairs, else the Wilcoxon signed-rank test.  ``p`` is NaN
    for fewer than two pairs or for identical non-zero differences (no spread to test
    against), 1.0 when every difference is zero."""
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
