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
the ``predictions`` column (relative to the run directory); :func:`read` gives both parts back,
:func:`read_events` an event task's as :class:`~ssl_bench.events.Event` lists.  Event times are
written as ``seconds * 1000`` at full precision, so hear-eval-kit's scorer (which divides by
1000) reads the very seconds :mod:`ssl_bench.metrics.sed` scored: the same number, bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .events import Event
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


def events_from_layout(layout: dict[str, Sequence[Any]], labels: Sequence[str]) -> dict[str, list[Event]]:
    """The :class:`~ssl_bench.events.Event` lists of HEAR's event layout ``{file: [{"label",
    "start", "end"}]}`` (ms), the inverse of :func:`event_layout`; a label not in ``labels`` or
    an event that is not one raises ValueError naming the file."""
    index = {str(label): i for i, label in enumerate(labels)}
    out: dict[str, list[Event]] = {}
    for key, found in layout.items():
        events = []
        for e in found:
            try:
                label, start, end = str(e["label"]), float(e["start"]), float(e["end"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"predictions: file {key!r}: an event must be {{label, start, end}} in ms, "
                                 f"got {e!r}") from None
            if label not in index:
                raise ValueError(f"predictions: file {key!r}: unknown label {label!r}")
            try:
                events.append(Event(index[label], start / 1000.0, end / 1000.0))
            except ValueError as exc:
                raise ValueError(f"predictions: file {key!r}: {exc}") from None
        out[key] = events
    return out


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


def read_events(path: str | Path, labels: Sequence[str]) -> tuple[dict[str, list[Event]], dict[str, list[Event]]]:
    """``(predicted, reference)`` events of an event task's predictions file, by file."""
    predicted, reference = read(path)
    return events_from_layout(predicted, labels), events_from_layout(reference, labels)


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
