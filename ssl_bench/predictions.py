"""Per-clip predictions of an evaluation, in HEAR's layout, beside the rows they produced.

Every evaluated split of every protocol and init writes two JSON files under the run
directory, ``predictions/<split>/<protocol>-<init>[-<layer>].json`` and the same name with
``.reference.json``, so an outside scorer can check any number and statistics can resample
clips:

* clip tasks: predictions ``{file: {label: score}}`` (the class probabilities), reference
  ``{file: [label, ...]}`` (HEAR's scene label layout);
* event tasks: predictions and reference ``{file: [{"label", "start", "end"}]}`` with times in
  milliseconds (HEAR's event layout).

``file`` is the clip's key (its path relative to the task's root).  Each row names its file in
the ``predictions`` column (relative to the run directory); :func:`read` gives both parts back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_text

REFERENCE_SUFFIX = ".reference.json"


def scene_layout(keys: Sequence[str], scores: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{file: {label: score}}`` of ``scores`` ``[n, classes]`` (rows aligned with ``keys``)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(keys), len(labels)):
        raise ValueError(f"predictions: {scores.shape} scores for {len(keys)} clips and {len(labels)} classes")
    return {key: {label: float(s) for label, s in zip(labels, row)} for key, row in zip(keys, scores)}


def scene_reference(keys: Sequence[str], targets: np.ndarray, labels: Sequence[str]) -> dict[str, list[str]]:
    """``{file: [label, ...]}`` of targets: class ids ``[n]`` or multi-hot ``[n, classes]``."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        return {key: [labels[int(t)]] for key, t in zip(keys, targets)}
    return {key: [labels[c] for c in np.flatnonzero(row)] for key, row in zip(keys, targets)}


def event_layout(events: dict[str, Sequence[Any]], labels: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """``{file: [{"label", "start", "end"}]}`` in milliseconds, of events with an integer
    ``label`` and ``onset``/``offset`` in seconds (``ssl_bench.events.Event`` or the like)."""
    return {key: [{"label": labels[int(e.label)], "start": float(e.onset) * 1000.0, "end": float(e.offset) * 1000.0}
                  for e in found] for key, found in events.items()}


def write(directory: Path, name: str, predictions: dict[str, Any], reference: dict[str, Any]) -> Path:
    """Write ``<directory>/<name>.json`` and its reference atomically; returns the first path."""
    path = Path(directory) / f"{name}.json"
    atomic_write_text(path, json.dumps(predictions))
    atomic_write_text(path.with_name(name + REFERENCE_SUFFIX), json.dumps(reference))
    return path


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(predictions, reference)`` of a predictions file written by :func:`write`."""
    path = Path(path)
    reference = path.with_name(path.name[: -len(".json")] + REFERENCE_SUFFIX)
    return json.loads(path.read_text()), json.loads(reference.read_text())


def scores_and_targets(path: str | Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """``(files, labels, scores [n, classes], multi-hot targets [n, classes])`` of a clip task's
    predictions file, in the file's order: what per-clip statistics resample."""
    predicted, reference = read(path)
    files = list(predicted)
    labels = list(next(iter(predicted.values()), {}))
    index = {label: i for i, label in enumerate(labels)}
    scores = np.array([[predicted[f][label] for label in labels] for f in files], dtype=np.float64)
    targets = np.zeros((len(files), len(labels)), dtype=np.float32)
    for i, f in enumerate(files):
        for label in reference.get(f, []):
            targets[i, index[label]] = 1.0
    return files, labels, scores, targets
