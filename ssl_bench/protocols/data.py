"""What the protocols train and evaluate on: cached raw log-mel features of one split.

A :class:`SplitData` holds the :class:`~ssl_bench.features.FeatureSet` of a task's clips, the
feature indices of the split's train/valid/test parts, the targets and the task's label shape
(:mod:`ssl_bench.events`); for an events task also each clip's events
(:meth:`SplitData.events`).  Its datasets yield
``{"spec": [T, F] raw log-mel padded/cropped to the model's length, "target": ..., "index": i}``;
augmentation and normalisation happen on the device inside the loss functions (after the
cache, as issue 6 asks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..components import Clip
from ..events import CLIP_SHAPES, EVENTS, MULTICLASS, MULTILABEL, SHAPES, Event, labels_present


def fit_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Zero-pad ``[T, F]`` at the end or keep its first ``num_frames`` frames (AudioMAE/AST)."""
    t = x.shape[0]
    if t == num_frames:
        return x
    if t > num_frames:
        return x[:num_frames]
    return F.pad(x, (0, 0, 0, num_frames - t))


def label_targets(clips: Sequence[Clip], num_classes: int, shape: str) -> np.ndarray:
    """Clip-level targets of a task of label ``shape`` (see :mod:`ssl_bench.events`):
    ``[N]`` int64 class ids (``multiclass``) or ``[N, C]`` float32 multi-hot (``multilabel``, and
    ``events``: the labels present among each clip's events)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown label shape {shape!r}; shapes: {', '.join(SHAPES)}")
    if shape == MULTICLASS:
        out = np.zeros(len(clips), dtype=np.int64)
        for i, clip in enumerate(clips):
            if len(clip.labels) != 1:
                raise ValueError(f"clip {clip.key}: a multi-class task needs exactly one label, "
                                 f"got {list(clip.labels)}")
            out[i] = clip.labels[0]
        return out
    out = np.zeros((len(clips), num_classes), dtype=np.float32)
    for i, clip in enumerate(clips):
        labels = clip.labels
        if shape == EVENTS:
            labels = labels_present(clip.events)
            if tuple(sorted(set(clip.labels))) != labels:
                raise ValueError(f"clip {clip.key}: labels {list(clip.labels)} are not the labels of its events "
                                 f"{list(labels)}")
        for c in labels:
            out[i, c] = 1.0
    return out


class SpecDataset(Dataset):
    """Examples ``features[indices[i]]`` at a fixed length, with their targets when given.

    ``random_crop``: a clip longer than ``num_frames`` is cropped at a random offset (torch's
    global RNG; training) instead of keeping its start (evaluation).
    """

    def __init__(self, features: Any, indices: Sequence[int], num_frames: int, targets: np.ndarray | None = None,
                 random_crop: bool = False):
        self.features = features
        self.indices = np.asarray(indices, dtype=np.int64)
        self.num_frames = int(num_frames)
        self.targets = targets
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.indices[i])
        x = self.features[j]
        excess = x.shape[0] - self.num_frames
        if self.random_crop and excess > 0:
            start = int(torch.randint(0, excess + 1, ()))
            x = x[start:start + self.num_frames]
        item: dict[str, Any] = {"spec": fit_frames(x, self.num_frames), "index": j}
        if self.targets is not None:
            item["target"] = torch.as_tensor(self.targets[j])
        return item


@dataclass
class SplitData:
    """One split of a task over a shared feature set.

    ``train``/``valid``/``test``: feature indices; ``targets``: aligned with the feature set
    (``[N]`` class ids or ``[N, C]`` multi-hot, see :func:`label_targets`); ``metrics``: names
    of registered metrics (:mod:`ssl_bench.metrics`), the first is used for model selection;
    ``train_weights``: optional sampling weights of the training examples (aligned with
    ``train``) for class-balanced fine-tuning; ``label_shape``: the task's shape (derived from
    ``multilabel`` when not given); ``classes``: the class names (event metrics and
    predictions name labels by them); ``clip_seconds``: the length the task's clips were cut
    or padded to before their features (frame-level timestamps end there).
    """

    features: Any
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    targets: np.ndarray
    num_classes: int
    multilabel: bool
    metrics: list[str]
    num_frames: int
    name: str = "split"
    train_weights: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    label_shape: str = ""
    classes: list[str] = field(default_factory=list)
    clip_seconds: float | None = None

    def __post_init__(self) -> None:
        if not self.label_shape:
            self.label_shape = MULTILABEL if self.multilabel else MULTICLASS
        if self.label_shape not in SHAPES:
            raise ValueError(f"unknown label shape {self.label_shape!r}; shapes: {', '.join(SHAPES)}")

    def indices(self, part: str) -> np.ndarray:
        """Feature indices of ``part`` (``train``, ``valid`` or ``test``)."""
        try:
            return {"train": self.train, "valid": self.valid, "test": self.test}[part]
        except KeyError:
            raise ValueError(f"unknown part {part!r}; parts: train, valid, test") from None

    def dataset(self, part: str, with_targets: bool = True, random_crop: bool = False) -> SpecDataset:
        return SpecDataset(self.features, self.indices(part), self.num_frames,
                           self.targets if with_targets else None, random_crop=random_crop)

    def part_targets(self, part: str) -> np.ndarray:
        return self.targets[self.indices(part)]

    def clips(self, part: str) -> list[Clip]:
        """The clips of ``part``, in the order of its indices."""
        return [self.features.clips[int(i)] for i in self.indices(part)]

    def keys(self, part: str) -> list[str]:
        """The keys of ``part``'s clips (the file names its predictions are written under)."""
        return [clip.key for clip in self.clips(part)]

    def events(self, part: str) -> list[tuple[Event, ...]]:
        """Each clip's events, aligned with ``part``'s indices (an events task only)."""
        if self.label_shape in CLIP_SHAPES:
            raise ValueError(f"split {self.name!r}: a {self.label_shape} task has no events")
        return [clip.events for clip in self.clips(part)]

    def reference_events(self, part: str) -> dict[str, list[Event]]:
        """``{clip key: [Event, ...]}`` of ``part``: the reference an event metric scores
        predictions against (every clip of the part, also those without events)."""
        return {key: list(events) for key, events in zip(self.keys(part), self.events(part))}


def normalize(model: Any, spec: torch.Tensor) -> torch.Tensor:
    """The model frontend's normalisation of a raw log-mel batch (identity if it has none)."""
    fn = getattr(getattr(model, "frontend", None), "normalize", None)
    return fn(spec) if fn is not None else spec


@dataclass
class Unlabeled:
    """The audio a pretraining-stage protocol trains on: ``clips``, their ``features`` (a
    feature set, indexed by ``indices``) and a ``label`` for its log lines (the split, or
    ``corpus``).  The runner gives the split's training audio or the corpus it was asked to
    pretrain on; never a test clip."""

    clips: list[Clip]
    features: Any
    indices: np.ndarray
    label: str = ""
