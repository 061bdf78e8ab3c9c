"""Validation sets carved out of training data, and labelled subsets of it: stratified and deterministic.

Tasks without an official validation set (ESC-50 folds, a user's folder) get one from the
training split only, never from the test split, so model selection cannot see test data.
Stratification follows the task's label shape (:mod:`ssl_bench.events`): by class, by the
rarest label of a multi-label clip, by the set of labels an events clip holds.
:func:`label_subset` draws the labelled clips of a label-efficiency run (``data.shots`` clips
per class, or ``data.fraction`` of each class) from what remains for training.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

from .components import Clip
from .events import EVENTS, MULTICLASS, SHAPES


def _stratum(clip: Clip, shape: str, label_counts: Counter, set_counts: Counter) -> tuple[int, ...]:
    if not clip.labels:
        return ()  # an events clip with no event, an unlabelled clip: a stratum of their own
    if shape == MULTICLASS:
        return (clip.labels[0],)
    label_set = tuple(sorted(set(clip.labels)))
    if shape == EVENTS and set_counts[label_set] > 1:
        # Events: clips with the same set of labels present (a recording with speech and a
        # door, one with speech only) are one stratum, so both sides see the same mixtures.
        return label_set
    # Multi-label, and an events clip whose label set is unique: stratify on the clip's rarest
    # label, the usual cheap approximation of iterative stratification; it keeps rare classes
    # represented on both sides.
    return (min(clip.labels, key=lambda c: (label_counts[c], c)),)


def _order_key(clip: Clip, seed: int) -> str:
    # A per-clip hash instead of a shuffle of the input list: the result then depends only on
    # the set of clips and the seed, not on the order a task happened to list them in.
    return hashlib.sha1(f"{seed}:{clip.key}".encode("utf-8", "surrogateescape")).hexdigest()


def carve_validation(
    clips: Sequence[Clip], fraction: float, seed: int, shape: str = MULTICLASS
) -> tuple[list[Clip], list[Clip]]:
    """Split ``clips`` into ``(train, valid)`` with about ``fraction`` of them in ``valid``.

    Stratified by the task's label ``shape``: by class (``multiclass``), by each clip's rarest
    label (``multilabel``), by each clip's set of labels present (``events``; a set no other
    clip shares falls back to its rarest label, clips without events form one stratum);
    deterministic for a given ``seed``, and independent of the input order.  When ``fraction > 0`` and there
    are at least two clips, both parts are non-empty; classes with a single clip keep it in
    ``train`` where possible.  Both lists keep the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if shape not in SHAPES:
        raise ValueError(f"unknown label shape {shape!r}; shapes: {', '.join(SHAPES)}")
    clips = list(clips)
    n = len(clips)
    if fraction == 0.0 or n < 2:
        return clips, []
    target = min(max(1, int(round(fraction * n))), n - 1)

    label_counts: Counter = Counter(c for clip in clips for c in clip.labels)
    set_counts: Counter = Counter(tuple(sorted(set(clip.labels))) for clip in clips)
    strata: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        strata[_stratum(clip, shape, label_counts, set_counts)].append(i)
    keys = sorted(strata)
    for k in keys:
        strata[k].sort(key=lambda i: (_order_key(clips[i], seed), clips[i].key))

    # Largest-remainder allocation of `target` over the strata, proportional to their size.
    quota = {k: fraction * len(strata[k]) for k in keys}
    alloc = {k: min(int(quota[k]), len(strata[k]) - 1) if len(strata[k]) > 1 else 0 for k in keys}
    remaining = target - sum(alloc.values())
    if remaining < 0:  # int(quota) can exceed the rounded target only by rounding; trim
        for k in sorted(keys, key=lambda k: quota[k] - alloc[k]):
            while remaining < 0 and alloc[k] > 0:
                alloc[k] -= 1
                remaining += 1

    def tie(k):  # deterministic, seed-dependent tie-break between equal remainders
        return hashlib.sha1(f"{seed}:{k}".encode("utf-8", "surrogateescape")).hexdigest()

    # First pass keeps at least one clip of each stratum in train; the second may not.
    for keep_one in (True, False):
        order = sorted(keys, key=lambda k: (-(quota[k] - alloc[k]), tie(k)))
        while remaining > 0:
            progressed = False
            for k in order:
                limit = len(strata[k]) - (1 if keep_one else 0)
                if remaining > 0 and alloc[k] < limit:
                    alloc[k] += 1
                    remaining -= 1
                    progressed = True
            if not progressed:
                break

    valid_idx = set()
    for k in keys:
        valid_idx.update(strata[k][: alloc[k]])
    train = [c for i, c in enumerate(clips) if i not in valid_idx]
    valid = [c for i, c in enumerate(clips) if i in valid_idx]
    return train, valid


def label_subset(clips: Sequence[Clip], *, shots: int | None = None, fraction: float | None = None, seed: int = 0,
                 shape: str = MULTICLASS) -> list[Clip]:
    """The labelled clips of a label-efficiency run, drawn from ``clips`` (a split's training
    part): ``shots`` clips of every class, or ``fraction`` of each class's clips (at least one),
    in the input order.

    The draw depends only on the set of clips and ``seed`` (each draw of a sweep is a seed), not
    on the order a task lists them; a class with fewer clips than asked keeps all of them.
    Multi-label and events (a clip's labels: those of its events): clips are taken in the draw's
    order whenever one of their labels still needs examples, so every class reaches its count (a
    clip counts for each of its labels); with ``fraction``, that fraction of the clips without
    any label (recordings without an event) comes along.
    """
    if shots is None and fraction is None:
        return list(clips)
    clips = list(clips)
    multilabel = shape != MULTICLASS
    counts: Counter = Counter(c for clip in clips for c in (clip.labels if multilabel else clip.labels[:1]))
    if shots is not None:
        wanted = {c: min(int(shots), n) for c, n in counts.items()}
    else:
        wanted = {c: min(n, max(1, int(round(float(fraction) * n)))) for c, n in counts.items()}
    order = sorted(range(len(clips)), key=lambda i: (_order_key(clips[i], seed), clips[i].key))
    have: Counter = Counter()
    keep: set[int] = set()
    for i in order:
        labels = clips[i].labels if multilabel else clips[i].labels[:1]
        if any(have[c] < wanted[c] for c in labels):
            keep.add(i)
            have.update(labels)
    if fraction is not None:
        empty = [i for i in order if not clips[i].labels]
        keep.update(empty[:int(round(float(fraction) * len(empty)))])
    return [c for i, c in enumerate(clips) if i in keep]


def label_histogram(clips: Sequence[Clip], num_classes: int) -> np.ndarray:
    """Number of clips carrying each class, ``[num_classes]``."""
    hist = np.zeros(num_classes, dtype=np.int64)
    for clip in clips:
        for c in clip.labels:
            hist[c] += 1
    return hist
