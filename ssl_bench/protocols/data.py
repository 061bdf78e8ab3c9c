"""What the protocols train and evaluate on: cached raw log-mel features of one split.

A :class:`SplitData` holds the :class:`~ssl_bench.features.FeatureSet` of a task's clips, the
feature indices of the split's train/valid/test parts, and the targets.  Its datasets yield
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


def fit_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Zero-pad ``[T, F]`` at the end or keep its first ``num_frames`` frames (AudioMAE/AST)."""
    t = x.shape[0]
    if t == num_frames:
        return x
    if t > num_frames:
        return x[:num_frames]
    return F.pad(x, (0, 0, 0, num_frames - t))


def label_targets(clips: Sequence[Clip], num_classes: int, multilabel: bool) -> np.ndarray:
    """``[N]`` int64 class ids (multi-class) or ``[N, C]`` float32 multi-hot (multi-label)."""
    if multilabel:
        out = np.zeros((len(clips), num_classes), dtype=np.float32)
        for i, clip in enumerate(clips):
            for c in clip.labels:
                out[i, c] = 1.0
        return out
    out = np.zeros(len(clips), dtype=np.int64)
    for i, clip in enumerate(clips):
        if len(clip.labels) != 1:
            raise ValueError(f"clip {clip.key}: a multi-class task needs exactly one label, got {list(clip.labels)}")
        out[i] = clip.labels[0]
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
    (``[N]`` class ids or ``[N, C]`` multi-hot); ``metrics``: names for
    :func:`ssl_bench.metrics.evaluate`, the first is used for model selection;
    ``train_weights``: optional sampling weights of the training examples (aligned with
    ``train``) for class-balanced fine-tuning; ``clip_seconds``: the length the task's clips were
    cut or padded to before their features (frame-level timestamps end there).
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
    clip_seconds: float | None = None

    def dataset(self, part: str, with_targets: bool = True, random_crop: bool = False) -> SpecDataset:
        indices = {"train": self.train, "valid": self.valid, "test": self.test}[part]
        return SpecDataset(self.features, indices, self.num_frames, self.targets if with_targets else None,
                           random_crop=random_crop)

    def part_targets(self, part: str) -> np.ndarray:
        return self.targets[{"train": self.train, "valid": self.valid, "test": self.test}[part]]


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
