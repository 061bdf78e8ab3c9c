"""Evaluation metrics: top-1 accuracy, mAP, macro ROC AUC and d-prime.

One entry point, :func:`evaluate`, so every protocol scores predictions the same way::

    evaluate(["accuracy", "mAP"], scores, targets)  # -> {"accuracy": 0.9, "mAP": 0.81}

``scores`` is ``[N, C]`` (logits, probabilities or decision values: only their order within a
column or row matters); ``targets`` is either ``[N]`` integer class ids (multi-class) or
``[N, C]`` multi-hot (multi-label).  Class-wise metrics follow the AudioSet/HEAR convention:
mAP averages the average precision of the classes that have at least one positive, AUC
averages the ROC AUC of the classes that have both positives and negatives, and
d' = sqrt(2) * Phi^-1(AUC).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

#: AUC is clipped to [AUC_EPS, 1 - AUC_EPS] for d' so that a perfect score gives a large
#: finite number (about 6.7) instead of infinity, which JSON and result tables cannot hold.
AUC_EPS = 1e-6


def _as_arrays(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, C], got shape {scores.shape}")
    n, c = scores.shape
    if n == 0:
        raise ValueError("cannot evaluate zero examples")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    if targets.ndim == 1:
        if targets.shape[0] != n:
            raise ValueError(f"targets has {targets.shape[0]} entries, scores has {n} rows")
        if not np.issubdtype(targets.dtype, np.integer):
            if not np.all(np.mod(targets, 1) == 0):
                raise ValueError("1-D targets must be integer class ids")
            targets = targets.astype(np.int64)
        if targets.min() < 0 or targets.max() >= c:
            raise ValueError(f"class ids must lie in [0, {c}), got {targets.min()}..{targets.max()}")
    elif targets.ndim == 2:
        if targets.shape != scores.shape:
            raise ValueError(f"multi-hot targets {targets.shape} do not match scores {scores.shape}")
    else:
        raise ValueError(f"targets must be [N] class ids or [N, C] multi-hot, got shape {targets.shape}")
    return scores, targets


def to_multi_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """``[N]`` class ids -> ``[N, C]`` 0/1 matrix; ``[N, C]`` input is returned as 0/1 ints."""
    targets = np.asarray(targets)
    if targets.ndim == 2:
        return (targets > 0).astype(np.int64)
    out = np.zeros((targets.shape[0], num_classes), dtype=np.int64)
    out[np.arange(targets.shape[0]), targets.astype(np.int64)] = 1
    return out


def accuracy(scores, targets) -> float:
    """Top-1 accuracy; for multi-hot targets, the fraction whose top class is a positive."""
    scores, targets = _as_arrays(scores, targets)
    top = scores.argmax(axis=1)
    if targets.ndim == 1:
        return float(np.mean(top == targets))
    return float(np.mean(targets[np.arange(len(top)), top] > 0))


def average_precision_per_class(scores, targets) -> np.ndarray:
    """Average precision of each class; NaN for a class without positives.

    scikit-learn's ``average_precision_score`` (the step sum ``sum_t (R_t - R_t-1) P_t`` over
    the distinct score values ``t``, ties counted together), all classes at once: one sort per
    column instead of one scikit-learn call per class (527 of them for AudioSet).
    """
    scores, targets = _as_arrays(scores, targets)
    hot = to_multi_hot(targets, scores.shape[1])
    if scores.shape[0] == 0:
        return np.full(scores.shape[1], np.nan)
    order = np.argsort(-scores, axis=0, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=0)
    tp = np.cumsum(np.take_along_axis(hot, order, axis=0), axis=0, dtype=np.float64)
    # the last clip of each run of equal scores closes a threshold
    last = np.ones(ranked.shape, dtype=bool)
    last[:-1] = ranked[:-1] != ranked[1:]
    tp_at = np.where(last, tp, 0.0)
    before = np.zeros_like(tp_at)
    before[1:] = np.maximum.accumulate(tp_at, axis=0)[:-1]  # tp is non-decreasing
    precision = tp / np.arange(1, len(tp) + 1, dtype=np.float64)[:, None]
    positives = tp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(last, (tp_at - before) * precision, 0.0).sum(axis=0) / positives
    out[positives == 0] = np.nan
    return out


def mean_average_precision(scores, targets) -> float:
    """Mean over classes with at least one positive of the average precision."""
    ap = average_precision_per_class(scores, targets)
    ap = ap[~np.isnan(ap)]
    return float(ap.mean()) if ap.size else math.nan


def roc_auc_per_class(scores, targets) -> np.ndarray:
    """ROC AUC of each class; NaN for a class with no positives or no negatives."""
    scores, targets = _as_arrays(scores, targets)
    hot = to_multi_hot(targets, scores.shape[1])
    out = np.full(scores.shape[1], np.nan)
    from sklearn.metrics import roc_auc_score  # here: importing scikit-learn takes seconds, and few tasks need AUC

    for k in range(scores.shape[1]):
        pos = hot[:, k].sum()
        if 0 < pos < hot.shape[0]:
            out[k] = roc_auc_score(hot[:, k], scores[:, k])
    return out


def macro_auc(scores, targets) -> float:
    """Macro-averaged ROC AUC over classes that have both positives and negatives."""
    auc = roc_auc_per_class(scores, targets)
    auc = auc[~np.isnan(auc)]
    return float(auc.mean()) if auc.size else math.nan


def d_prime_from_auc(auc: float) -> float:
    """d' = sqrt(2) * Phi^-1(AUC), the sensitivity index AudioSet papers report."""
    if math.isnan(auc):
        return math.nan
    auc = min(max(auc, AUC_EPS), 1.0 - AUC_EPS)
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def d_prime(scores, targets) -> float:
    """d' computed from the macro AUC."""
    return d_prime_from_auc(macro_auc(scores, targets))


#: Metric name -> function(scores, targets) -> float.  Tasks list names from here.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "mAP": mean_average_precision,
    "AUC": macro_auc,
    "d_prime": d_prime,
}


def evaluate(names: Sequence[str], scores, targets) -> dict[str, float]:
    """Compute each named metric of ``scores`` ``[N, C]`` against ``targets``.

    ``targets``: ``[N]`` integer class ids or ``[N, C]`` multi-hot.  Returns ``{name: value}``
    in the order of ``names``.  An unknown name raises ``KeyError`` listing the valid ones.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise KeyError(f"unknown metric {', '.join(map(repr, unknown))}; available: {', '.join(METRICS)}")
    scores, targets = _as_arrays(scores, targets)
    out: dict[str, float] = {}
    auc = None
    for name in names:
        if name in ("AUC", "d_prime"):
            if auc is None:  # the per-class AUCs are the slow part: compute them once
                auc = macro_auc(scores, targets)
            out[name] = auc if name == "AUC" else d_prime_from_auc(auc)
        else:
            out[name] = METRICS[name](scores, targets)
    return out
