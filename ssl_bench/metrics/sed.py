"""Sound event detection metrics: event-based F-measure and segment-based error rate.

The definitions are sed_eval's (Mesaros, Heittola and Virtanen, "Metrics for polyphonic sound
event detection", 2016), in the settings hear-eval-kit scores HEAR 2021 with, and give the same
numbers as ``sed_eval.sound_event`` 0.2.1 called the way hear-eval-kit calls it
(``tests/test_sed_metrics.py`` compares them on random event lists):

* **event-based** (:func:`event_based`): a system event is a true positive when it has the
  label of a reference event of the same file and its onset lies within ``collar`` seconds of
  that event's onset (``|onset_ref - onset_sys| <= collar``) and, with ``offsets``, its offset
  within ``max(collar, offset_fraction * reference duration)`` of the reference offset.  Each
  reference event matches at most one system event and vice versa, and the matching is a
  maximum one (sed_eval's ``optimal`` matching; Hopcroft-Karp here through scipy).  Counts add
  up over files and classes ("overall", micro-averaged): precision ``Ntp / Nsys``, recall
  ``Ntp / Nref``, F the harmonic mean.
* **segment-based** (:func:`segment_based`): each file is cut into segments of
  ``resolution`` seconds up to its last offset (reference or system); a class is active in a
  segment an event of it overlaps (``floor(onset / resolution)`` to ``ceil(offset /
  resolution)``).  Per segment, ``S = min(Nref, Nsys) - Ntp``, ``D = max(0, Nref - Nsys)``,
  ``I = max(0, Nsys - Nref)``; error rate ``(S + D + I) / Nref`` summed over segments of all
  files, given as the sum of the three rates as sed_eval does.

As in sed_eval, precision is NaN without system events and recall without reference events
(F is then NaN too, unless precision and recall are both 0); the error rate divides by
``Nref + eps``.  Every file of the reference is scored, and every file of the predictions: a
file missing from one side counts as having no events there (hear-eval-kit iterates over the
predicted files only; its predictions always hold every file, and then the numbers agree).

Events come as :class:`~ssl_bench.events.Event` (label index into ``labels``, seconds) or as
HEAR's dicts ``{"label": name, "start": ms, "end": ms}``.  Times pass through milliseconds as
HEAR's prediction files hold them (``seconds * 1000 / 1000``), so a score computed here equals
hear-eval-kit's on the file :func:`ssl_bench.events.write_predictions` wrote, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from ..events import Event

#: sed_eval's epsilon in its rates (``numpy.spacing(1)``).
EPS = float(np.spacing(1))

#: ``{file: {label name: (onsets [n], offsets [n])}}``: one side's events, by file and label.
Grouped = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


def _times(event: Any, labels: Sequence[str], known: set[str], file: str) -> tuple[str, float, float]:
    if isinstance(event, Event):
        if not 0 <= event.label < len(labels):
            raise ValueError(f"file {file!r}: event label {event.label} out of range for {len(labels)} classes")
        # through milliseconds, as a HEAR predictions file holds the times
        return labels[event.label], (event.onset * 1000.0) / 1000.0, (event.offset * 1000.0) / 1000.0
    if isinstance(event, Mapping):
        try:
            label, start, end = str(event["label"]), float(event["start"]), float(event["end"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"file {file!r}: an event must be an Event or a dict with label, start and end (ms); "
                             f"got {event!r}") from None
        if label not in known:
            raise ValueError(f"file {file!r}: unknown event label {label!r}")
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise ValueError(f"file {file!r}: an event needs 0 <= start <= end (ms), got {event!r}")
        return label, start / 1000.0, end / 1000.0
    raise ValueError(f"file {file!r}: an event must be an Event or a dict with label, start and end (ms); "
                     f"got {event!r}")


def group_events(events_by_file: Mapping[str, Sequence[Any]], labels: Sequence[str]) -> Grouped:
    """``{file: {label: (onsets, offsets)}}`` in seconds, events in their given order."""
    labels = list(labels)
    known = set(labels)
    out: Grouped = {}
    for file, events in events_by_file.items():
        by_label: dict[str, tuple[list[float], list[float]]] = {}
        for event in events:
            label, onset, offset = _times(event, labels, known, str(file))
            ons, offs = by_label.setdefault(label, ([], []))
            ons.append(onset)
            offs.append(offset)
        out[str(file)] = {k: (np.asarray(v[0], dtype=np.float64), np.asarray(v[1], dtype=np.float64))
                          for k, v in by_label.items()}
    return out


def _files(predicted: Grouped, reference: Grouped) -> list[str]:
    return list(dict.fromkeys([*reference, *predicted]))


def _precision_recall_f(ntp: float, nsys: float, nref: float) -> dict[str, float]:
    precision = math.nan if nsys == 0 else float(ntp / float(nsys))
    recall = math.nan if nref == 0 else float(ntp / float(nref))
    if precision == 0 and recall == 0:
        f = 0.0
    else:
        f = float((1 + 1.0 ** 2) * precision * recall / ((1.0 ** 2) * precision + recall))
    return {"f_measure": f, "precision": precision, "recall": recall}


def _max_matching(hits: np.ndarray) -> int:
    """The size of a maximum matching of the bipartite graph ``hits`` [n_ref, n_sys]."""
    if not hits.any():
        return 0
    matched = maximum_bipartite_matching(csr_matrix(hits), perm_type="column")
    return int((matched >= 0).sum())


def event_based(predicted: Mapping[str, Sequence[Any]], reference: Mapping[str, Sequence[Any]],
                labels: Sequence[str], *, collar: float, offsets: bool = False,
                offset_fraction: float = 0.0) -> dict[str, float]:
    """Overall event-based ``{"f_measure", "precision", "recall"}`` (see the module docstring):
    onsets within ``collar`` seconds, and with ``offsets`` offsets within
    ``max(collar, offset_fraction * reference duration)``."""
    sys_events, ref_events = group_events(predicted, labels), group_events(reference, labels)
    ntp = nsys = nref = 0.0
    for file in _files(sys_events, ref_events):
        sys_file, ref_file = sys_events.get(file, {}), ref_events.get(file, {})
        nsys += sum(len(on) for on, _ in sys_file.values())
        nref += sum(len(on) for on, _ in ref_file.values())
        for label, (ref_on, ref_off) in ref_file.items():
            if label not in sys_file:
                continue
            sys_on, sys_off = sys_file[label]
            hits = np.abs(ref_on[:, None] - sys_on[None, :]) <= collar
            if offsets:
                tolerance = np.maximum(collar, offset_fraction * (ref_off - ref_on))
                hits &= np.abs(ref_off[:, None] - sys_off[None, :]) <= tolerance[:, None]
            ntp += _max_matching(hits)
    return _precision_recall_f(ntp, nsys, nref)


def _roll(events: dict[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[str], segments: int,
          resolution: float) -> np.ndarray:
    roll = np.zeros((segments, len(labels)), dtype=np.int64)
    for label, (onsets, offsets) in events.items():
        k = labels.index(label)
        for onset, offset in zip(onsets.tolist(), offsets.tolist()):
            roll[int(math.floor(onset * 1 / float(resolution))):int(math.ceil(offset * 1 / float(resolution))), k] = 1
    return roll


def segment_based(predicted: Mapping[str, Sequence[Any]], reference: Mapping[str, Sequence[Any]],
                  labels: Sequence[str], *, resolution: float = 1.0) -> dict[str, float]:
    """Overall segment-based ``{"error_rate", "substitution_rate", "deletion_rate",
    "insertion_rate"}`` with segments of ``resolution`` seconds (see the module docstring)."""
    labels = list(labels)
    sys_events, ref_events = group_events(predicted, labels), group_events(reference, labels)
    subs = dels = ins = nref = 0.0
    for file in _files(sys_events, ref_events):
        sys_file, ref_file = sys_events.get(file, {}), ref_events.get(file, {})
        last = max([0.0] + [float(off.max()) for _, off in (*sys_file.values(), *ref_file.values()) if off.size])
        segments = int(math.ceil(last * 1 / float(resolution)))
        if segments == 0:
            continue
        ref, sys = _roll(ref_file, labels, segments, resolution), _roll(sys_file, labels, segments, resolution)
        n_ref, n_sys = ref.sum(axis=1), sys.sum(axis=1)
        ntp = (ref & sys).sum(axis=1)
        subs += float((np.minimum(n_ref, n_sys) - ntp).sum())
        dels += float(np.maximum(0, n_ref - n_sys).sum())
        ins += float(np.maximum(0, n_sys - n_ref).sum())
        nref += float(n_ref.sum())
    s, d, i = subs / (nref + EPS), dels / (nref + EPS), ins / (nref + EPS)
    return {"error_rate": float(s + d + i), "substitution_rate": float(s), "deletion_rate": float(d),
            "insertion_rate": float(i)}
