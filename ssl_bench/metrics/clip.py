"""Clip metrics: top-1 accuracy, mAP, macro ROC AUC, d-prime, and HEAR's pitch and chroma accuracy.

Each takes ``scores`` ``[N, C]`` (logits, probabilities or decision values: only their order
within a column or row matters) and ``targets``, either ``[N]`` integer class ids (multi-class)
or ``[N, C]`` multi-hot (multi-label), and returns a float.  Class-wise metrics are macro
averages: mAP averages the average precision of the classes that have at least one positive,
AUC the ROC AUC of the classes that have both positives and negatives, and ``d_prime`` is
hear-eval-kit's: the mean over those classes of each class's d' = sqrt(2) * Phi^-1(AUC_k).
``d_prime_mean_auc`` is the AudioSet papers' (PANNs, AST): sqrt(2) * Phi^-1 of the macro AUC,
no larger than ``d_prime`` when every class's AUC is at least 0.5 (Phi^-1 is convex there).
They are registered by name in :mod:`ssl_bench.metrics.builtin`.

Against hear-eval-kit (``heareval.score``): mAP, AUC and ``d_prime`` are its numbers when every
class has positives and negatives and no class's AUC is 0 or 1, and ``accuracy`` is its
``top1_acc`` for multi-class (one-hot) targets.  They differ in three cases: a class with no
positives (or, for AUC and d', no negatives) is left out of the average here, where
hear-eval-kit's AUC and d' are NaN for the whole matrix and its mAP counts the class as AP 0
(what scikit-learn 1.9's ``average_precision_score`` gives it); a class's AUC is clipped to
``[AUC_EPS, 1 - AUC_EPS]`` for d', where hear-eval-kit's d' is infinite; and for multi-hot
targets ``accuracy`` counts the top class being any positive, where ``top1_acc`` (which HEAR
scores multi-class tasks only with) compares it with the first positive.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

#: AUC is clipped to [AUC_EPS, 1 - AUC_EPS] for d' so that a perfect score gives a large
#: finite number (about 6.7) instead of infinity, which JSON and result tables cannot hold.
AUC_EPS = 1e-6


def check_scores(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, targets)`` as arrays, checked: ``scores`` ``[N, C]`` finite, ``N > 0``;
    ``targets`` ``[N]`` class ids in ``[0, C)`` or ``[N, C]`` multi-hot."""
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
    scores, targets = check_scores(scores, targets)
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
    scores, targets = check_scores(scores, targets)
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
    scores, targets = check_scores(scores, targets)
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


def d_prime_from_auc(auc):
    """d' = sqrt(2) * Phi^-1(AUC) of one AUC (a float; NaN stays NaN) or of each of an array of
    them, the AUC clipped to ``[AUC_EPS, 1 - AUC_EPS]`` (see :data:`AUC_EPS`)."""
    if np.ndim(auc) == 0:
        auc = float(auc)
        if math.isnan(auc):
            return math.nan
        auc = min(max(auc, AUC_EPS), 1.0 - AUC_EPS)
        return math.sqrt(2.0) * NormalDist().inv_cdf(auc)
    return np.array([d_prime_from_auc(a) for a in np.asarray(auc, dtype=np.float64).ravel()]).reshape(np.shape(auc))


def mean_d_prime(auc_per_class: np.ndarray) -> float:
    """hear-eval-kit's d': the mean of the per-class d' of the classes whose AUC is defined."""
    auc = np.asarray(auc_per_class, dtype=np.float64)
    auc = auc[~np.isnan(auc)]
    return float(np.mean(d_prime_from_auc(auc))) if auc.size else math.nan


def d_prime(scores, targets) -> float:
    """hear-eval-kit's ``d_prime``: the mean over classes of sqrt(2) * Phi^-1(AUC_k)."""
    return mean_d_prime(roc_auc_per_class(scores, targets))


def d_prime_mean_auc(scores, targets) -> float:
    """The AudioSet papers' d' (PANNs, AST): sqrt(2) * Phi^-1(macro AUC)."""
    return d_prime_from_auc(macro_auc(scores, targets))


def _class_ids(targets: np.ndarray) -> np.ndarray:
    """``[N]`` class ids: the targets themselves, or the first positive of one-hot rows (as
    hear-eval-kit's ``argmax`` of a one-hot target)."""
    return targets if targets.ndim == 1 else targets.argmax(axis=1)


def pitch_accuracy(scores, targets) -> float:
    """HEAR's ``pitch_acc``: top-1 accuracy over pitch classes (NSynth pitch, 88 MIDI notes)."""
    scores, targets = check_scores(scores, targets)
    return float(np.mean(scores.argmax(axis=1) == _class_ids(targets)))


def chroma_accuracy(scores, targets) -> float:
    """HEAR's ``chroma_acc``: top-1 accuracy that ignores octave errors, the predicted and the
    true class index compared modulo 12 (the task's classes are consecutive semitones, as
    hear-eval-kit assumes)."""
    scores, targets = check_scores(scores, targets)
    return float(np.mean(scores.argmax(axis=1) % 12 == _class_ids(targets) % 12))
