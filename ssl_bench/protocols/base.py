"""The contract of an evaluation protocol, and what the runner hands it.

A protocol is registered by name with ``register_protocols`` and owns one evaluation of one
split: a linear probe, a kNN probe, fine-tuning, a per-layer probe, or the pretraining stage
itself.  The runner knows none of them by name: ``--protocols`` choices, the ``--set
NAME.field`` config sections (each protocol's ``Config`` dataclass), the ``ssl-bench NAME``
subcommands and the run order all come from the registry.

A protocol plugin in one file::

    from dataclasses import dataclass
    from ssl_bench import hookimpl
    from ssl_bench.protocols.base import Protocol, ProtocolResult

    class Centroid(Protocol):
        help = "nearest class centroid on frozen embeddings"
        frozen = True  # also run on the random-init encoder: the baseline row

        @dataclass
        class Config:
            enabled: bool = True

        def run(self, ctx):
            X, y = ctx.embeddings(), ctx.targets()
            ...
            return [ProtocolResult(metrics=ctx.evaluate(scores_test, "test"))]

    @hookimpl
    def register_protocols(register):
        register("centroid", Centroid)

Rows: the runner turns each :class:`ProtocolResult` into one row per metric with the split,
seed, init, protocol, the split's sizes and the result's ``extra`` columns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..config import data_settings
from ..events import CLIP_SHAPES
from .data import SplitData, Unlabeled
from .embeddings import FrameEmbeddings, extract_embeddings, extract_frame_embeddings

#: Stages, in run order: ``pretrain`` protocols make the encoder, ``evaluate`` ones score it.
STAGES = ("pretrain", "evaluate")


@dataclass(frozen=True)
class Pretrained:
    """What a pretraining-stage protocol made: the encoder's weights (``path``, their
    ``weights_sha256``), the ``pretrain_hash`` it is cached under, its ``name`` and whether a
    finished pretraining was ``reused``.  The runner names the encoder from it: the identity
    flows forward from this record, not through result rows."""

    path: str
    weights_sha256: str
    pretrain_hash: str
    name: str | None = None
    reused: bool = False


@dataclass
class Predictions:
    """What a protocol predicted for the test part of its split, clip by clip, so that an
    outside scorer can check its number and statistics can resample clips.

    ``scores``: ``[n_test, classes]`` class scores (probabilities) aligned with
    ``data.test``, for clip-level tasks; ``events``: predicted events per test clip key
    (``{clip key: [Event, ...]}``, seconds), for event tasks.  The runner writes them, with
    the reference, in HEAR's layout (:mod:`ssl_bench.predictions`)."""

    scores: np.ndarray | None = None
    events: dict[str, list[Any]] | None = None


@dataclass
class ProtocolResult:
    """One result of a protocol on one split: ``metrics`` (name -> value, on the test part)
    and ``extra`` row columns (chosen hyperparameters, validation scores, compute, ``layer``);
    ``predictions``: what it predicted for each test clip; ``pretrained``: for a
    pretraining-stage protocol, the encoder it made."""

    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    predictions: Predictions | None = None
    pretrained: Pretrained | None = None


class Protocol:
    """Base class of an evaluation protocol (see the module docstring).

    Class attributes:

    * ``Config``: a dataclass, the ``--set NAME.field`` section; an ``enabled`` field turns the
      protocol off from a config file or preset.  Protocols that train subclass
      :class:`ssl_bench.train.OptimConfig` so optimiser keys mean the same everywhere.
    * ``slots``: component slots inside the section (``{"masker": "masker"}`` makes
      ``--set NAME.masker=time`` choose a registered masker).
    * ``stage``: ``"evaluate"`` (default) or ``"pretrain"`` (runs first; trains the model in
      place; the others then evaluate the encoder it made).
    * ``frozen``: the encoder is not trained, so the runner also runs it on the randomly
      initialised encoder (``init=random``), the baseline every SSL number is read against.
    * ``help``: one line for ``--help`` and ``ssl-bench plugins``; ``subcommand``: whether
      ``ssl-bench NAME`` runs only this protocol.
    * ``trains_on``: what the section's ``batch_size`` batches, for a protocol that trains
      with :func:`ssl_bench.train.fit`: ``"unlabeled"`` (the split's whole training audio),
      ``"train"`` (its labelled training part, after any validation is carved out) or
      ``None``.  The runner checks that batch against the split's size before any feature
      is extracted, and caps it (with a warning naming ``NAME.batch_size``) for small data.
    * ``shapes``: the task label shapes it serves (:data:`ssl_bench.events.SHAPES`); default
      the clip shapes, ``multiclass`` and ``multilabel``.  The runner refuses a task of another
      shape before any data work, naming both.

    ``run(ctx)`` returns a list of :class:`ProtocolResult`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    slots: ClassVar[dict[str, str]] = {}
    stage: ClassVar[str] = "evaluate"
    frozen: ClassVar[bool] = False
    help: ClassVar[str] = ""
    subcommand: ClassVar[bool] = True
    trains_on: ClassVar[str | None] = None
    shapes: ClassVar[tuple[str, ...]] = CLIP_SHAPES

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        raise NotImplementedError(f"protocol {self.name!r} has no run()")


@dataclass
class ProtocolContext:
    """Everything a protocol may use on one split.

    ``model``: an :class:`~ssl_bench.model.SSLModel` on ``device`` with the weights under
    evaluation (``init``: ``random``, ``pretrained`` or a checkpoint's name); a protocol that
    trains works on a copy (``copy.deepcopy(ctx.model)``) unless it is a pretraining stage.
    ``section``: the protocol's own typed ``Config``; ``config``: the whole resolved config.
    ``state_dir``: a directory of this protocol on this split for resumable training
    checkpoints; ``cache_dir``: the shared cache root (embeddings, pretrained encoders).
    ``unlabeled``: for a pretraining-stage protocol, the audio it trains on (the split's
    training audio or the corpus it was asked for); None for the others.
    """

    name: str
    model: nn.Module
    init: str
    data: SplitData
    config: dict[str, Any]
    section: Any
    device: torch.device
    cache_dir: Path
    state_dir: Path
    resume: bool = True
    progress: bool = False
    log: Callable[[str], None] = print
    log_metrics: Callable[[dict[str, Any]], None] | None = None
    unlabeled: Unlabeled | None = None
    _embeddings: dict[tuple[int, bool], tuple[np.ndarray, bool]] = field(default_factory=dict, repr=False)
    _frames: dict[tuple[Any, ...], FrameEmbeddings] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ helpers
    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def split(self) -> str:
        return self.data.name

    def metrics(self, record: dict[str, Any]) -> None:
        """Record a per-epoch (or per-choice) line in the run's ``metrics.jsonl``."""
        if self.log_metrics is not None:
            self.log_metrics({"protocol": self.name, "init": self.init, **record})

    def embeddings(self, layers: bool = False, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Frozen clip embeddings of the train/valid/test parts, from the on-disk cache when the
        same encoder weights already embedded the same clips.

        ``layers=False``: ``{"train": [N, D], ...}`` (the encoder's pooled output).
        ``layers=True``: ``{"train": [N, K, D], ...}`` with ``K = depth + 2``: the pooled input
        of the first block, every block's pooled output, then the pooled final output; all
        from one forward pass, each layer cached in its own file.
        """
        parts = ("train", "valid", "test")
        indices = np.concatenate([getattr(self.data, p) for p in parts])
        key = (id(self.model), layers)
        if key not in self._embeddings:
            bs = int(batch_size or getattr(self.section, "batch_size", 0) or 64)
            self._embeddings[key] = extract_embeddings(
                self.model, self.data, indices, batch_size=bs, device=self.device,
                cache_dir=self.cache_dir / "embeddings", amp=bool(self.config.get("amp", True)),
                num_workers=data_settings(self.config).num_workers, progress=self.progress,
                layers=layers)
        emb, _ = self._embeddings[key]
        bounds = np.cumsum([0] + [len(getattr(self.data, p)) for p in parts])
        return {p: emb[bounds[i]:bounds[i + 1]] for i, p in enumerate(parts)}

    def embeddings_cached(self, layers: bool = False) -> bool:
        """Whether :meth:`embeddings` came from the disk cache (call it first)."""
        hit = self._embeddings.get((id(self.model), layers))
        return bool(hit[1]) if hit else False

    def frame_embeddings(self, *, hop_s: float | None = None, method: str = "interpolate", layers: bool = False,
                         dtype: str = "float16", batch_size: int | None = None) -> dict[str, FrameEmbeddings]:
        """Frozen frame-level embeddings of the train/valid/test parts (``{"train":
        FrameEmbeddings, ...}``, one entry per clip in the part's order), from the on-disk cache
        when the same encoder weights already made the same frames of the same clips.

        ``hop_s``/``method``: frames finer than the encoder's time columns
        (:mod:`ssl_bench.frames`); ``layers``: every layer (``values [frames, K, D]``);
        ``dtype``: ``float16`` or ``float32`` storage.  Extracted once per setting and served to
        every head and post-processing choice that reads them.
        """
        parts = ("train", "valid", "test")
        key = (id(self.model), hop_s, method, layers, dtype)
        if key not in self._frames:
            indices = np.concatenate([getattr(self.data, p) for p in parts])
            bs = int(batch_size or getattr(self.section, "batch_size", 0) or 16)
            self._frames[key] = extract_frame_embeddings(
                self.model, self.data, indices, batch_size=bs, device=self.device,
                cache_dir=self.cache_dir / "frames", amp=bool(self.config.get("amp", True)), hop_s=hop_s,
                method=method, layers=layers, dtype=dtype, progress=self.progress)
        frames = self._frames[key]
        bounds = np.cumsum([0] + [len(getattr(self.data, p)) for p in parts])
        return {p: frames.select(range(bounds[i], bounds[i + 1])) for i, p in enumerate(parts)}

    def targets(self) -> dict[str, np.ndarray]:
        """``{"train": y, "valid": y, "test": y}``: class ids ``[N]`` or multi-hot ``[N, C]``."""
        return {p: self.data.part_targets(p) for p in ("train", "valid", "test")}

    def evaluate(self, scores: np.ndarray, part: str) -> dict[str, float]:
        """The task's metrics of ``scores`` ``[N, classes]`` on ``part``."""
        from ..metrics import evaluate

        return evaluate(self.data.metrics, scores, self.data.part_targets(part))

    def evaluate_events(self, predicted: dict[str, list[Any]], part: str) -> dict[str, float]:
        """The task's event metrics of ``predicted`` (``{clip key: [Event, ...]}``) against the
        events of ``part`` (an events task); every clip of the part is scored, a clip missing
        from ``predicted`` as predicting nothing.  A key that is not a clip of ``part`` is a bug
        of the caller (ValueError)."""
        from ..metrics import evaluate_events

        reference = self.data.reference_events(part)
        foreign = [k for k in predicted if k not in reference]
        if foreign:
            raise ValueError(f"predictions for {len(foreign)} clip(s) not in the {part} part of split "
                             f"{self.data.name!r}, e.g. {foreign[0]!r}")
        return evaluate_events(self.data.metrics, predicted, reference, self.data.classes)


def section_config(protocol: type[Protocol] | Protocol, values: dict[str, Any] | None) -> Any:
    """The protocol's typed ``Config`` from its resolved section (slot values kept as dicts)."""
    cls = protocol.Config
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, f in known.items():
        if name not in values:
            continue
        value = values[name]
        if isinstance(value, list) and "tuple" in str(f.type):
            value = tuple(value)
        elif str(f.type).startswith("list") and isinstance(value, (bool, int, float, str)):
            value = [value]  # `--set linear.C=1.0`: a one-value grid
        kwargs[name] = value
    return cls(**kwargs)
