"""The interfaces every ssl-bench component implements.

A *component* is one part of a model (frontend, encoder, masker, decoder, objective, and the
pretraining *method* that uses them) or a downstream *task*; evaluation *protocols* and CLI
*commands* are registered the same way.  Plugins register factories for them by name (see
:mod:`ssl_bench.hookspecs`); the core only ever talks to them through the interfaces below, so
a new masker, decoder, SSL method or probe is a plugin of a few dozen lines.

Component factories follow one convention, which is what makes ``--set encoder.depth=6`` work:

* the factory (usually the component class) has a ``Config`` attribute that is a dataclass;
  every field is a tunable setting with a default;
* it is called as ``factory(cfg, build)`` with an instance of that ``Config`` and a
  :class:`BuildContext` describing what the rest of the model looks like (input size,
  encoder width, patch grid, ...); a component keeps it as ``self.build``, the model as
  ``model.build``.

Tasks are registered the same way; their factory is called as ``factory(data_dir=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from .events import Event

#: The kinds of model part a plugin can register, in the order a model is built.
COMPONENT_KINDS = ("frontend", "encoder", "masker", "decoder", "objective", "method")
#: Everything a plugin can register (one ``register_<kind>s`` hook each).
KINDS = COMPONENT_KINDS + ("model", "task", "protocol", "metric", "command", "launcher", "suite")

#: Token layouts an encoder can use.  Index of the token at grid cell (t, f):
#: ``time-major``: t * n_freq + f (AudioMAE);  ``freq-major``: f * n_time + t (AST, SSAST).
TIME_MAJOR = "time-major"
FREQ_MAJOR = "freq-major"


# --------------------------------------------------------------------------- build context
@dataclass
class BuildContext:
    """What a component factory may need to know about the rest of the model.

    Filled in progressively while :func:`ssl_bench.create_model` builds the parts in the
    order of the model's slots: the frontend sets ``num_frames``/``num_bins``, the
    encoder sets ``encoder_dim``, ``grid``, ``layout``, ``patch_dim`` and
    ``num_prefix_tokens`` for the decoder and objective that follow.  ``parts`` holds every
    part built so far by slot (``build.parts["encoder"]``): a method or decoder that needs the
    encoder itself (an EMA teacher is a copy of it) takes it from there.
    """

    num_frames: int = 1024  # spectrogram frames the model is built for (T)
    num_bins: int = 128  # mel bins (F)
    encoder_dim: int | None = None
    grid: tuple[int, int] | None = None  # (n_time, n_freq) patches for num_frames x num_bins
    layout: str = TIME_MAJOR
    patch_dim: int | None = None  # values in one reconstruction target patch
    num_prefix_tokens: int = 0  # cls / distillation tokens in front of the patch tokens
    extra: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)  # slot -> the part built for it so far


# --------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class FrameTiming:
    """When a frontend's frames are: frame ``i`` is centred at ``first_s + i * hop_s`` seconds
    from the start of the audio (what a frontend's optional ``frame_timing()`` returns)."""

    hop_s: float
    first_s: float

    def seconds(self, frames: torch.Tensor) -> torch.Tensor:
        """Times in seconds of (fractional) frame positions ``frames``."""
        return self.first_s + frames.to(torch.float64) * self.hop_s


class EncoderOutput(NamedTuple):
    """What an encoder returns.

    ``tokens``: ``[B, P + L_kept, D]`` (P prefix tokens, then the kept patch tokens in the
    order of ``ids_keep``), after the final norm.  ``ids_keep``: ``[B, L_kept]`` indices (in
    the encoder's token order) of the patch tokens that were encoded, or ``None`` when all
    were.  ``hidden_states``: only when asked (``encoder(spec, hidden_states=True)``), the
    input of the first block and the output of every block, ``depth + 1`` tensors of the
    shape of ``tokens`` (s3prl / Hugging Face convention; the last one is before the final
    norm).  ``padding_mask``: ``[B, L]`` bool, True where a token covers only padding (an
    encoder given the clips' ``lengths``); ``None`` when every token is real.  ``pool`` leaves
    padded tokens out.
    """

    tokens: torch.Tensor
    ids_keep: torch.Tensor | None
    num_prefix_tokens: int
    hidden_states: tuple[torch.Tensor, ...] | None = None
    padding_mask: torch.Tensor | None = None


class PretrainOutput(NamedTuple):
    """``loss``: scalar; ``pred``: ``[B, L, patch_dim]``; ``mask``: ``[B, L]`` (1 = masked)."""

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


# --------------------------------------------------------------------------- protocols
@runtime_checkable
class Frontend(Protocol):
    """Waveform to features: the whole contract the core relies on.

    * ``sample_rate``: the rate it expects; the core resamples audio to it first.
    * ``num_bins``: the width ``F`` of a feature frame (mel bins; 1 for a waveform frontend).
    * ``compute(waveform[B, N]) -> [B, T, F]``: raw features of each clip, on the waveform's
      device (batches of equal-length clips).  These are what the feature cache stores.
    * ``num_frames_for(seconds) -> int``: the model input length ``T`` for clips of that length.
    * ``normalize(features[..., T, F])``: what the model sees; applied after the cache, on the
      device, every time features are used.
    * ``stats_key``: ``None`` when ``normalize`` needs no dataset statistics; otherwise a string
      naming everything the statistics depend on (frontend name, rate, bins, framing), so
      statistics are only ever reused for the same features.  Such a frontend has a
      ``set_norm_stats(mean, std)`` and ``norm_stats`` (``(mean, std)`` or ``None``), and the
      core fills them only when they are ``None`` (the config did not give them): with the
      task's published statistics for this ``stats_key``, else measured on the training
      features.
    * ``cache_config() -> dict``: every setting that changes ``compute``'s output (the feature
      cache key).
    * ``frame_timing() -> FrameTiming`` (optional): when its frames are, for frame-level
      timestamps (:mod:`ssl_bench.frames` measures it from ``compute`` when absent).
    """

    sample_rate: int
    num_bins: int
    stats_key: str | None

    def compute(self, waveform: torch.Tensor) -> torch.Tensor: ...
    def num_frames_for(self, seconds: float) -> int: ...
    def normalize(self, x: torch.Tensor) -> torch.Tensor: ...
    def cache_config(self) -> dict[str, Any]: ...


@runtime_checkable
class Encoder(Protocol):
    """Spectrogram patches to token embeddings.

    * ``grid_for(num_frames, num_bins) -> (n_time, n_freq)``: the patch grid for an input size.
    * ``layout``: :data:`TIME_MAJOR` or :data:`FREQ_MAJOR`, the order of patch tokens.
    * ``patchify(spec[B, T, F]) -> [B, L, patch_dim]``: reconstruction targets, in token order.
    * ``forward(spec[B, T, F], mask=None, hidden_states=False) -> EncoderOutput``: ``mask`` is
      ``[B, L]`` bool with True = drop; every row masks the same number of tokens; the encoder
      runs the visible tokens only.  ``hidden_states=True`` also returns every layer's tokens
      (one forward pass serves a per-layer probe).  An encoder of variable-length input may
      also take ``lengths`` (``[B]`` valid input frames per clip) and return a ``padding_mask``.
    * ``pool(out: EncoderOutput) -> [B, D]``: the clip embedding (mean of patch tokens, cls...).
    * ``dim``, ``depth``, ``num_prefix_tokens``;
      ``layer_id(param_name) -> int`` in ``0..depth+1`` for layer-wise lr decay
      (0 = embeddings, i+1 = block i, depth+1 = everything after the blocks).
    * Frame-level output (:mod:`ssl_bench.frames`), optional: ``column_centres(num_frames) ->
      [n_time]``, the centre of each time column of the grid in input frames (without it,
      columns are taken to tile the input evenly); or ``time_columns(spec, layers=False) ->
      (columns [B, n, D] or [B, K, n, D], centres [n] in input frames)`` for an encoder that
      makes its frames itself (a HEAR module).
    """

    dim: int
    depth: int
    layout: str
    num_prefix_tokens: int

    def grid_for(self, num_frames: int, num_bins: int) -> tuple[int, int]: ...
    def patchify(self, spec: torch.Tensor) -> torch.Tensor: ...
    def __call__(self, spec: torch.Tensor, mask: torch.Tensor | None = None,
                 hidden_states: bool = False) -> EncoderOutput: ...
    def pool(self, out: EncoderOutput) -> torch.Tensor: ...
    def layer_id(self, name: str) -> int: ...


@runtime_checkable
class Masker(Protocol):
    """Chooses which patch tokens to hide.

    ``__call__(batch_size, grid, layout, device, generator=None) -> mask[B, L]`` bool,
    True = masked/dropped, with the same count of True in every row, honouring ``layout``
    (e.g. a time masker hides whole time rows whatever the token order).
    """

    def __call__(
        self,
        batch_size: int,
        grid: tuple[int, int],
        layout: str,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor: ...


@runtime_checkable
class Decoder(Protocol):
    """Encoded visible tokens back to per-patch predictions.

    ``forward(out: EncoderOutput, mask[B, L], grid) -> pred[B, L, patch_dim]`` in the
    encoder's token order; mask tokens fill the hidden positions.
    """

    def __call__(self, out: EncoderOutput, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor: ...


@runtime_checkable
class Objective(Protocol):
    """``forward(pred[B, L, P], target[B, L, P], mask[B, L]) -> scalar loss``."""

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Method(Protocol):
    """One self-supervised pretraining step (MAE, EAT, ...), registered with ``register_methods``.

    A method is a component (``Config`` dataclass, ``factory(cfg, build)``; ``build.parts`` holds
    the encoder, masker, decoder and objective the model was built with) and an
    ``nn.Module``: whatever it keeps between steps (an EMA teacher, a step counter as a buffer)
    is its module state, so it lands in every checkpoint under ``method.`` and a resumed run
    continues bit for bit.  It uses the model's parts through the ``model`` argument rather
    than holding them, so each weight is saved once under its own slot.

    * ``loss(model, spec[B, T, F], step: StepContext) -> scalar``: the loss of one micro-batch
      of normalised features; randomness shared by the whole global batch comes from
      ``step.generator()`` and is sliced with ``step.offset`` (any world size, any resume).
    * ``after_step(model, global_step)`` (optional): after every optimiser step (EMA update).
    * ``on_epoch_end(model, epoch)`` (optional): may return numbers for the epoch record.
    """

    def loss(self, model: nn.Module, spec: torch.Tensor, step: Any) -> torch.Tensor: ...


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Clip:
    """One labelled audio example.

    ``path``: the audio file; ``labels``: class indices (one for multi-class tasks; for an
    events task, the set of labels among its events); ``key``: a stable identifier (relative
    path) used for caching, error messages and as the file name of its predictions;
    ``events``: for an events task, the clip's :class:`~ssl_bench.events.Event` s (label,
    onset and offset in seconds), empty otherwise.
    """

    path: Path
    labels: tuple[int, ...]
    key: str
    events: tuple[Event, ...] = ()


@dataclass
class Split:
    """One train/test partition of a task (a fold, or the official split).

    ``valid`` may be ``None``: the harness then carves a stratified validation set out of
    ``train`` (never out of ``test``).
    """

    name: str
    train: list[Clip]
    test: list[Clip]
    valid: list[Clip] | None = None


@runtime_checkable
class Task(Protocol):
    """A downstream task.

    Attributes: ``name``, ``classes`` (label names, index = class id), ``multilabel``,
    ``label_shape`` (optional: ``multiclass``, ``multilabel`` or ``events``, see
    :mod:`ssl_bench.events`; without it the shape follows ``multilabel``; an events task's
    clip-level targets are multi-hot, the labels present), ``sample_rate`` (rate
    the clips are resampled to, 16000), ``clip_seconds`` (length clips are padded/cropped to),
    ``metrics`` (names of registered metrics, see :mod:`ssl_bench.metrics`, of the kind the
    shape needs: clip scores, or events for an events task; the first is the primary one),
    ``split_protocol`` (a short human description recorded in every result row),
    ``norm_stats`` (published feature statistics: ``{frontend stats_key: (mean, std)}``, or
    ``{}``; the harness computes them on the training split for any other frontend).

    ``prepare()`` makes the data available (finds it, downloads it, or builds it) and raises
    a clear error naming what is missing; ``splits()`` returns the partitions.
    """

    name: str
    classes: list[str]
    multilabel: bool
    sample_rate: int
    clip_seconds: float
    metrics: list[str]
    split_protocol: str
    norm_stats: dict[str, tuple[float, float]]

    def prepare(self) -> None: ...
    def splits(self) -> list[Split]: ...


class Component(nn.Module):
    """Optional base class for components: stores ``cfg`` and ``build``."""

    Config: type

    def __init__(self, cfg: Any = None, build: BuildContext | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else self.Config()
        self.build = build if build is not None else BuildContext()
