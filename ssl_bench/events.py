"""Label shapes, and sound events within a clip.

A task declares its **label shape** (``task.label_shape``, one of :data:`SHAPES`):

* ``multiclass``: one label per clip (ESC-50, Speech Commands);
* ``multilabel``: a set of labels per clip (AudioSet);
* ``events``: labelled time spans within each clip (DCASE, MAESTRO, DESED): every
  :class:`~ssl_bench.components.Clip` carries ``events``, a tuple of :class:`Event`, and its
  ``labels`` hold the set of labels present, so clip-level multi-hot targets stay derivable.

A task that declares no shape keeps working: its shape is derived from its ``multilabel`` flag
(:func:`label_shape_of`).  Frame targets at any hop come from the events with
:func:`frame_targets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"
EVENTS = "events"
#: Every label shape a task can declare.
SHAPES = (MULTICLASS, MULTILABEL, EVENTS)
#: The shapes with one target per clip: what a protocol serves unless it says otherwise.
CLIP_SHAPES = (MULTICLASS, MULTILABEL)


@dataclass(frozen=True, order=True)
class Event:
    """One sound event: class index ``label``, ``onset`` and ``offset`` in seconds from the start
    of its clip (``0 <= onset <= offset``)."""

    label: int
    onset: float
    offset: float

    def __post_init__(self) -> None:
        if isinstance(self.label, bool) or not isinstance(self.label, (int, np.integer)) or self.label < 0:
            raise ValueError(f"event label must be a class index >= 0, got {self.label!r}")
        onset, offset = float(self.onset), float(self.offset)
        if not (math.isfinite(onset) and math.isfinite(offset)):
            raise ValueError(f"event times must be finite, got onset {self.onset!r}, offset {self.offset!r}")
        if onset < 0 or offset < onset:
            raise ValueError(f"an event needs 0 <= onset <= offset, got onset {onset}, offset {offset}")
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "onset", onset)
        object.__setattr__(self, "offset", offset)

    @property
    def duration(self) -> float:
        return self.offset - self.onset


def label_shape_of(task: Any) -> str:
    """The task's declared ``label_shape``, else ``multilabel`` or ``multiclass`` from its
    ``multilabel`` flag (every task written before shapes existed)."""
    shape = getattr(task, "label_shape", None)
    if shape is None:
        return MULTILABEL if bool(getattr(task, "multilabel", False)) else MULTICLASS
    if shape not in SHAPES:
        name = getattr(task, "name", type(task).__name__)
        raise ValueError(f"task {name!r}: label_shape {shape!r} is not one of {', '.join(SHAPES)}")
    return shape


def labels_present(events: Iterable[Event]) -> tuple[int, ...]:
    """The sorted set of labels among ``events``: an events clip's ``labels``."""
    return tuple(sorted({e.label for e in events}))


def frame_targets(events: Sequence[Event], num_frames: int, hop_s: float, num_classes: int,
                  offset_s: float = 0.0) -> np.ndarray:
    """``[num_frames, num_classes]`` float32 0/1 targets of one clip's ``events``.

    Frame ``i`` spans ``[offset_s + i * hop_s, offset_s + (i + 1) * hop_s)`` seconds.  It is
    active for a class when that span overlaps an event of the class, i.e. when
    ``start < event.offset`` and ``event.onset < end``: an event shorter than the hop still
    marks the frame it falls in, an event that ends exactly where a frame starts does not mark
    it.  A zero-length event marks the frame whose span contains its onset.  Any hop works,
    finer or coarser than the events; ``offset_s`` places the first frame (a window's start
    within the clip, or half a hop for frames centred on their timestamps).
    """
    num_frames, hop_s = int(num_frames), float(hop_s)
    if num_frames < 0 or num_classes < 0:
        raise ValueError(f"num_frames and num_classes must be >= 0, got {num_frames}, {num_classes}")
    if not (hop_s > 0 and math.isfinite(hop_s)):
        raise ValueError(f"hop_s must be a positive number of seconds, got {hop_s}")
    out = np.zeros((num_frames, num_classes), dtype=np.float32)
    if num_frames == 0:
        return out
    starts = float(offset_s) + np.arange(num_frames, dtype=np.float64) * hop_s
    ends = float(offset_s) + np.arange(1, num_frames + 1, dtype=np.float64) * hop_s
    for event in events:
        if not 0 <= event.label < num_classes:
            raise ValueError(f"event label {event.label} out of range for {num_classes} classes")
        first = int(np.searchsorted(ends, event.onset, side="right"))  # first frame ending after the onset
        if event.offset > event.onset:
            stop = int(np.searchsorted(starts, event.offset, side="left"))  # first frame starting at/after it
        else:
            stop = first + 1 if first < num_frames and starts[first] <= event.onset else first
        out[first:stop, event.label] = 1.0
    return out


def trim_events(events: Sequence[Event], seconds: float) -> tuple[tuple[Event, ...], int, int]:
    """``events`` within a clip cut to ``seconds``: events starting at or after it are dropped,
    ends beyond it are cut (as hear-preprocess trims HEAR's event tasks).  Returns ``(kept,
    dropped, cut)``."""
    kept, dropped, cut = [], 0, 0
    for e in events:
        if e.onset >= seconds:
            dropped += 1
        elif e.offset > seconds:
            kept.append(Event(e.label, e.onset, seconds))
            cut += 1
        else:
            kept.append(e)
    return tuple(kept), dropped, cut
