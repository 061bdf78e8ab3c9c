"""Frame-level embeddings: an encoder's time columns and their timestamps.

In timm's vocabulary this is ``forward_features`` before the pooling: where a probe sees one
vector per clip (:meth:`SSLModel.embed <ssl_bench.model.SSLModel.embed>`), an event detector
sees one per **time column** of the encoder's token grid, with the time it stands for.

* **Time columns.**  A patch encoder's tokens (prefix tokens such as cls dropped) averaged over
  the frequency patches of each time column of its ``(n_time, n_freq)`` grid, in either token
  layout: AudioMAE, EAT and BEATs (16-frame patches: a column every 160 ms), AST (16-frame
  patches every 10 frames: 100 ms).  A waveform encoder's grid is ``(frames, 1)``: wav2vec2,
  HuBERT and WavLM give a column per convolutional frame (20 ms).  An encoder may produce its
  columns itself with ``time_columns(spec, layers=False) -> (columns, centres)`` (a HEAR
  module's ``get_timestamp_embeddings``).
* **Timestamps** are the centre of each column's time span, in seconds from the start of the
  input: the mean of the centres of the input frames the column covers (the encoder's
  ``column_centres(num_frames)``, in input frames, or, for an encoder without one, columns
  spread evenly over its input), converted with the frontend's frame timing
  (:func:`frame_timing`: frame ``i`` is centred at ``first_s + i * hop_s``).  For AudioMAE's
  first column (Kaldi frames 0-15, 25 ms every 10 ms) that is 87.5 ms, the middle of the
  175 ms of audio it sees.
* **Per layer** (``layers=True``): the same columns of the input of the first block, of every
  block's output and of the final (normed) output, ``[B, depth + 2, N, D]`` from one forward
  pass, as :meth:`~ssl_bench.model.SSLModel.embed` does for pooled embeddings.
* **A finer hop** than the encoder's columns (:data:`HOP_METHODS`), stated in every result:

  - ``interpolate``: the column embeddings linearly interpolated (in time, between the two
    nearest column centres; held constant before the first and after the last) onto frames
    centred at ``(k + 0.5) * hop`` seconds, ``k = 0 .. floor(duration / hop) - 1``.  It costs
    no extra encoder pass; the frames are smooth blends, no new information.
  - ``overlap``: the encoder runs again on the input shifted by each multiple of the hop
    within one column stride (AudioMAE at 40 ms: shifts of 0, 4, 8 and 12 frames), and the
    columns of all shifts are interleaved: every frame is a real column of audio centred
    where it says.  It costs ``stride / hop`` encoder passes (4x for 160 ms -> 40 ms; 16x for
    10 ms); the hop must be a whole number of input frames that divides the column stride.

:func:`clip_frames` does this for whole clips of any length: the raw features are cut into
windows of the model's input length (the last zero-padded, as ssl-bench pads every clip),
normalised, encoded, and frames centred past the end of the audio are dropped (keeping at
least one).  ``ssl-bench export-hear``'s ``get_timestamp_embeddings`` and the frame embedding
cache of the ``events`` protocol both call it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .components import FREQ_MAJOR, EncoderOutput, FrameTiming
from .config import ConfigError

#: How frames finer than the encoder's columns are made (see the module docstring).
HOP_METHODS = ("interpolate", "overlap")
#: What :attr:`Frames.method` says when the encoder's own columns are returned.
NATIVE = "columns"
#: Windows encoded at once by :func:`clip_frames`.
WINDOW_BATCH = 16


class Frames(NamedTuple):
    """Frame-level embeddings of a batch.

    ``embeddings``: ``[B, N, D]`` (``[B, K, N, D]`` per layer); ``timestamps``: ``[N]`` float64
    seconds from the start of the input, increasing, the same for every clip of the batch;
    ``method``: :data:`NATIVE` (the encoder's columns) or one of :data:`HOP_METHODS`; ``hop_s``:
    the nominal seconds between frames.
    """

    embeddings: torch.Tensor
    timestamps: torch.Tensor
    method: str
    hop_s: float


def _frames_of(frontend: Any, num_samples: int) -> int:
    try:
        with torch.no_grad():
            return int(frontend.compute(torch.zeros(1, num_samples)).shape[1])
    except Exception:  # noqa: BLE001 - a frontend refuses audio shorter than one frame
        return 0


def frame_timing(frontend: Any) -> FrameTiming:
    """The frontend's own ``frame_timing()``, else measured: the frame rate from the frames of
    1 s and 2 s of silence, the first centre from the fewest samples that make one frame (the
    centre of that frame's samples)."""
    own = getattr(frontend, "frame_timing", None)
    if callable(own):
        return own()
    rate = int(frontend.sample_rate)
    one, two = _frames_of(frontend, rate), _frames_of(frontend, 2 * rate)
    if one <= 0 or two <= one:
        raise ConfigError(f"frontend {type(frontend).__name__} makes no frames of 1-2 s of audio")
    lo, hi = 1, rate  # the fewest samples that give one frame
    while lo < hi:
        mid = (lo + hi) // 2
        if _frames_of(frontend, mid) >= 1:
            hi = mid
        else:
            lo = mid + 1
    return FrameTiming(hop_s=1.0 / (two - one), first_s=(lo - 1) / 2 / rate)


def column_centres(encoder: Any, num_frames: int, num_bins: int) -> torch.Tensor:
    """Centres of the time columns of one window of ``num_frames`` input frames, in input
    frames (float64): the encoder's own ``column_centres(num_frames)`` when it has one, else
    ``num_frames / n_time`` frames per column, spread evenly (exact for patches that tile the
    window)."""
    n_time = encoder.grid_for(num_frames, num_bins)[0]
    own = getattr(encoder, "column_centres", None)
    if callable(own):
        centres = torch.as_tensor(own(num_frames), dtype=torch.float64)
        if centres.shape != (n_time,):
            raise ValueError(f"{type(encoder).__name__}.column_centres gave {tuple(centres.shape)} centres for "
                             f"{n_time} time columns")
        return centres
    width = num_frames / n_time
    return (torch.arange(n_time, dtype=torch.float64) + 0.5) * width - 0.5


def time_columns(encoder: Any, tokens: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, n_time, D]``: ``tokens`` (``[B, P + n_time * n_freq, D]``, every patch encoded)
    without the prefix, averaged over the frequency patches of each time column."""
    n_time, n_freq = grid
    patches = tokens[:, num_prefix_tokens:]
    if patches.shape[1] != n_time * n_freq:
        raise ValueError(f"{type(encoder).__name__} gave {patches.shape[1]} patch tokens for a "
                         f"{n_time} x {n_freq} grid (frame-level output needs every patch encoded)")
    if getattr(encoder, "layout", None) == FREQ_MAJOR:
        cells = patches.reshape(patches.shape[0], n_freq, n_time, -1).transpose(1, 2)
    else:
        cells = patches.reshape(patches.shape[0], n_time, n_freq, -1)
    return cells.mean(dim=2)


def window_frames(model: Any, spec: torch.Tensor, layers: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(columns, centres)`` of a batch of normalised windows ``spec`` ``[B, W, F]``:
    ``[B, n, D]`` (``[B, depth + 2, n, D]`` with ``layers``) and ``[n]`` centres in input
    frames (float64)."""
    encoder = model.encoder
    own = getattr(encoder, "time_columns", None)
    if callable(own):
        columns, centres = own(spec, layers=layers)
        return columns, torch.as_tensor(centres, dtype=torch.float64)
    grid = encoder.grid_for(spec.shape[1], spec.shape[2])
    centres = column_centres(encoder, spec.shape[1], spec.shape[2])
    if not layers:
        out = encoder(spec)
        return time_columns(encoder, out.tokens, out.num_prefix_tokens, grid), centres
    out: EncoderOutput = encoder(spec, hidden_states=True)
    if out.hidden_states is None:
        raise ConfigError(f"encoder {type(encoder).__name__} does not return hidden_states")
    states = list(out.hidden_states) + [out.tokens]
    return torch.stack([time_columns(encoder, h, out.num_prefix_tokens, grid) for h in states], dim=1), centres


def native_hop_frames(model: Any, num_frames: int) -> float:
    """Input frames between the encoder's time columns in a window of ``num_frames``."""
    centres = column_centres(model.encoder, num_frames, int(model.frontend.num_bins))
    return float(centres[1] - centres[0]) if len(centres) > 1 else float(num_frames)


def _shifts(model: Any, timing: FrameTiming, window: int, hop_s: float) -> list[int]:
    """Input-frame shifts for ``overlap`` at ``hop_s``: 0, h, 2h, ... below one column stride."""
    if callable(getattr(model.encoder, "time_columns", None)):
        raise ConfigError(f"encoder {type(model.encoder).__name__} makes its own frames (a HEAR module's timestamp "
                          "embeddings): a finer hop can only be interpolated; use method 'interpolate'")
    ms = timing.hop_s * 1000
    step = hop_s / timing.hop_s
    if abs(step - round(step)) > 1e-6 or round(step) < 1:
        raise ConfigError(f"hop {hop_s * 1000:g} ms with method 'overlap': not a whole number of the frontend's "
                          f"{ms:g} ms frames; choose a multiple of it or method 'interpolate'")
    stride = native_hop_frames(model, window)
    whole = round(stride)
    if abs(stride - whole) > 1e-6 or whole % round(step):
        divisors = [d for d in range(1, whole + 1) if whole % d == 0] if abs(stride - whole) <= 1e-6 else []
        hint = f"; choose one of {', '.join(f'{d * ms:g}' for d in divisors)} ms" if divisors else ""
        raise ConfigError(f"hop {hop_s * 1000:g} ms with method 'overlap': it must divide the encoder's column "
                          f"stride of {stride * ms:g} ms{hint}, or use method 'interpolate'")
    return list(range(0, whole, round(step)))


def interpolate_frames(embeddings: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``embeddings`` ``[..., N, D]`` at increasing times ``source`` ``[N]``, linearly
    interpolated onto times ``target`` ``[M]`` (held constant outside ``source``'s range)."""
    source, target = source.to(torch.float64), target.to(torch.float64)
    n = source.shape[0]
    if n == 1:
        return embeddings[..., :1, :].expand(*embeddings.shape[:-2], target.shape[0], embeddings.shape[-1])
    right = torch.searchsorted(source, target).clamp(1, n - 1)
    left = right - 1
    w = ((target - source[left]) / (source[right] - source[left])).clamp(0.0, 1.0)
    w = w.to(embeddings.dtype).to(embeddings.device)[:, None]
    left, right = left.to(embeddings.device), right.to(embeddings.device)
    return embeddings[..., left, :] * (1 - w) + embeddings[..., right, :] * w


def check_hop(hop_s: float | None, method: str) -> None:
    """A hop setting is positive (or None: the encoder's columns) and its method is known."""
    if method not in HOP_METHODS:
        raise ConfigError(f"frame hop method {method!r}: choose one of {', '.join(HOP_METHODS)}")
    if hop_s is not None and not (math.isfinite(hop_s) and hop_s > 0):
        raise ConfigError(f"frame hop must be a positive number of seconds (or null: the encoder's columns), got {hop_s}")


@torch.no_grad()
def clip_frames(model: Any, feats: torch.Tensor, *, window: int, duration_s: float | None = None,
                hop_s: float | None = None, method: str = "interpolate", layers: bool = False,
                batch_size: int = WINDOW_BATCH) -> Frames:
    """Frame-level embeddings of whole clips (see the module docstring).

    ``feats``: raw frontend features ``[B, T, F]`` of clips of one length (what the feature
    cache holds; normalised here, window by window); ``window``: the model's input length in
    frames; ``duration_s``: the clips' length in seconds (default ``T`` frames' worth), frames
    centred past it are dropped; ``hop_s``/``method``: a finer hop (``None``: the encoder's own
    columns).  The model is used as it is (call ``model.eval()`` first; autocast is the
    caller's).
    """
    check_hop(hop_s, method)
    frontend = model.frontend
    timing = frame_timing(frontend)
    B, T, _ = feats.shape
    duration = float(duration_s) if duration_s is not None else T * timing.hop_s
    native = hop_s is None
    shifts = _shifts(model, timing, window, hop_s) if not native and method == "overlap" else [0]
    normalize = getattr(frontend, "normalize", None)
    embs, positions = [], []
    step = None  # input frames between the encoder's columns, as its window gives them
    for shift in shifts:
        x = feats[:, shift:] if shift < T else feats[:, :0]
        count = max(1, math.ceil(x.shape[1] / window))
        x = torch.nn.functional.pad(x, (0, 0, 0, count * window - x.shape[1]))
        x = x.reshape(B * count, window, x.shape[-1])
        if normalize is not None:
            x = normalize(x)
        outs, centres = [], None
        for i in range(0, x.shape[0], batch_size):
            cols, centres = window_frames(model, x[i:i + batch_size], layers)
            outs.append(cols.float())
        cols = torch.cat(outs)  # [B * count, (K,) n, D]
        n = cols.shape[-2]
        if layers:  # [B * count, K, n, D] -> [B, K, count * n, D]
            K = cols.shape[1]
            cols = cols.reshape(B, count, K, n, -1).transpose(1, 2).reshape(B, K, count * n, -1)
        else:
            cols = cols.reshape(B, count * n, -1)
        if step is None:
            step = float(centres[1] - centres[0]) if len(centres) > 1 else float(window)
        starts = torch.arange(count, dtype=torch.float64)[:, None] * window + shift
        embs.append(cols)
        positions.append((starts + centres[None, :]).reshape(-1))
    emb = torch.cat(embs, dim=-2)
    pos = torch.cat(positions)
    order = torch.argsort(pos, stable=True)
    emb, times = emb[..., order.to(emb.device), :], timing.seconds(pos[order])
    if not native and method == "interpolate":
        count = max(1, math.floor(duration / hop_s + 1e-9))
        grid = (torch.arange(count, dtype=torch.float64) + 0.5) * hop_s
        return Frames(interpolate_frames(emb, times, grid), grid, method, float(hop_s))
    keep = max(1, int((times < duration).sum()))
    nominal = float(hop_s) if not native else step * timing.hop_s
    return Frames(emb[..., :keep, :].contiguous(), times[:keep], NATIVE if native else method, nominal)
