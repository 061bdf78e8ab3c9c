"""The HEAR 2021 API on top of any ssl-bench model: what an exported module calls.

HEAR (Turian et al., 2022, hearbenchmark.com) evaluates a Python module that offers
``load_model(model_file_path)`` (a ``torch.nn.Module`` with ``sample_rate``,
``scene_embedding_size`` and ``timestamp_embedding_size``), ``get_scene_embeddings(audio,
model) -> [n_sounds, D]`` and ``get_timestamp_embeddings(audio, model) -> (embeddings [n_sounds,
n_timestamps, D], timestamps [n_sounds, n_timestamps] in milliseconds)``; ``audio`` is a float
tensor ``[n_sounds, n_samples]`` at ``sample_rate``, on the model's device.

:class:`HearModel` does this for an :class:`~ssl_bench.model.SSLModel`:

* the frontend's features of the whole clip (a clip too short for even one frame is
  zero-padded to one) are cut into windows of the model's input length ``W`` frames
  (``frontend.num_frames``), the last one padded with zero features as ssl-bench pads every
  clip, and normalised;
* **timestamp embeddings**: the model's frame-level output, the same code as
  :meth:`SSLModel.frames <ssl_bench.model.SSLModel.frames>` and the ``events`` protocol
  (:func:`ssl_bench.frames.clip_frames`): the encoder's tokens of each window averaged over
  the frequency patches of each time column, timestamped at the centre of the audio the
  column spans, in ms from the start of the clip (AudioMAE's 16-frame patches: 87.5 ms, then
  every 160 ms; wav2vec2: the centre of each conv frame's receptive field, every 20 ms).
  Frames centred past the end of the audio are dropped, keeping at least one.  A finer hop
  (``hop_s``, e.g. the 50 ms or less HEAR's validator asks for) is made by ``hop_method``
  ``interpolate`` (no extra cost) or ``overlap`` (``stride / hop`` encoder passes), as
  :mod:`ssl_bench.frames` describes;
* **scene embeddings**: the encoder's own clip embedding (``SSLModel.embed``) of each window,
  averaged over the windows (one window for clips up to the model's length: then exactly the
  embedding ssl-bench's probes use);
* ``layer_embeddings`` (an ssl-bench extension): ``[n_sounds, K, D]``, every layer's pooled
  output averaged the same way, for per-layer probes of the exported module.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ssl_bench.checkpoint import CheckpointError, load_into, safe_load
from ssl_bench.config import ConfigError
from ssl_bench.frames import check_hop, clip_frames, frame_timing, native_hop_frames

#: How many windows go through the encoder at once.
WINDOW_BATCH = 16


def _frames(frontend: nn.Module, num_samples: int, device: torch.device | str = "cpu") -> int:
    """Frames the frontend makes of ``num_samples`` samples (0 when too short for one)."""
    try:
        with torch.no_grad():
            return int(frontend.compute(torch.zeros(1, num_samples, device=device)).shape[1])
    except Exception:  # noqa: BLE001 - the frontend refuses a clip shorter than one frame
        return 0


class HearModel(nn.Module):
    """An ssl-bench model behind the HEAR 2021 API (see the module docstring)."""

    def __init__(self, model: nn.Module, hop_s: float | None = None, hop_method: str = "interpolate"):
        super().__init__()
        check_hop(hop_s, hop_method)
        #: seconds between timestamps when finer than the encoder's columns (None: its columns)
        self.hop_s = None if hop_s is None else float(hop_s)
        self.hop_method = hop_method
        self.model = model.eval()
        frontend = model.frontend
        num_frames = (model.config.get("frontend") or {}).get("num_frames")
        if not num_frames:
            raise ConfigError("the model has no input length (frontend.num_frames): set it before exporting")
        stats_key = getattr(frontend, "stats_key", None)
        if stats_key is not None and getattr(frontend, "norm_stats", None) is None:
            raise ConfigError(f"frontend {stats_key.split(':')[0]!r} normalises with dataset statistics and none are "
                              "set: pass --set frontend.mean=M --set frontend.std=S (those the encoder was trained with)")
        self.window = int(num_frames)
        self.sample_rate = int(frontend.sample_rate)
        self.scene_embedding_size = int(model.encoder.dim)
        self.timestamp_embedding_size = int(model.encoder.dim)
        # the frontend's frame rate, measured: T(n) = n / sr * fps + offset
        one, two = _frames(frontend, self.sample_rate), _frames(frontend, 2 * self.sample_rate)
        if one <= 0 or two <= one:
            raise ConfigError(f"frontend {type(frontend).__name__} makes no frames of 1-2 s of audio")
        self.frames_per_second = float(two - one)
        offset = one - self.frames_per_second
        need = max(1, math.ceil((self.window - offset) / self.frames_per_second * self.sample_rate))
        while _frames(frontend, need) < self.window:  # rounding: step up to the first length that fills a window
            need += max(1, self.sample_rate // 1000)
        #: samples that fill one window
        self.window_samples = need
        least = max(1, math.floor((1 - offset) / self.frames_per_second * self.sample_rate) - self.sample_rate // 100)
        while _frames(frontend, least) < 1:
            least += 1
        #: the fewest samples the frontend makes a frame of; shorter clips are zero-padded to it
        self.min_samples = least

    # ------------------------------------------------------------------ windows
    def _windows(self, audio: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Normalised windows ``[n * K, W, F]`` (sound-major) and ``K``."""
        if not torch.is_tensor(audio) or audio.ndim != 2:
            raise ValueError(f"HEAR audio must be a tensor [n_sounds, n_samples], got "
                             f"{tuple(audio.shape) if torch.is_tensor(audio) else type(audio).__name__}")
        frontend = self.model.frontend
        n, length = audio.shape
        if length < self.min_samples:  # too short for one frame: zero samples up to one
            audio = torch.nn.functional.pad(audio, (0, self.min_samples - length))
        feats = frontend.compute(audio.float())  # [n, T, F] raw, of the audio as given
        count = max(1, math.ceil(feats.shape[1] / self.window))
        total = count * self.window
        if feats.shape[1] < total:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, total - feats.shape[1]))
        feats = feats[:, :total].reshape(n * count, self.window, feats.shape[-1])
        return frontend.normalize(feats), count

    def _run(self, windows: torch.Tensor, fn) -> torch.Tensor:
        return torch.cat([fn(windows[i:i + WINDOW_BATCH]) for i in range(0, windows.shape[0], WINDOW_BATCH)])

    # ------------------------------------------------------------------ the API
    @torch.no_grad()
    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.is_tensor(audio) or audio.ndim != 2:
            raise ValueError(f"HEAR audio must be a tensor [n_sounds, n_samples], got "
                             f"{tuple(audio.shape) if torch.is_tensor(audio) else type(audio).__name__}")
        n, length = audio.shape
        if length < self.min_samples:  # too short for one frame: zero samples up to one
            audio = torch.nn.functional.pad(audio, (0, self.min_samples - length))
        feats = self.model.frontend.compute(audio.float())
        frames = clip_frames(self.model, feats, window=self.window, duration_s=length / self.sample_rate,
                             hop_s=self.hop_s, method=self.hop_method, batch_size=WINDOW_BATCH)
        ts = (frames.timestamps * 1000.0).to(torch.float32).to(audio.device).expand(n, -1).contiguous()
        return frames.embeddings.float().contiguous(), ts

    @torch.no_grad()
    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        n = audio.shape[0]
        windows, count = self._windows(audio)
        emb = self._run(windows, self.model.embed)
        return emb.reshape(n, count, -1).mean(dim=1).float()

    @torch.no_grad()
    def layer_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        n = audio.shape[0]
        windows, count = self._windows(audio)
        emb = self._run(windows, lambda w: self.model.embed(w, layers=True))
        return emb.reshape(n, count, *emb.shape[1:]).mean(dim=1).float()

    @property
    def hop_ms(self) -> float:
        """Milliseconds between timestamps."""
        if self.hop_s is not None:
            return self.hop_s * 1000.0
        return native_hop_frames(self.model, self.window) * frame_timing(self.model.frontend).hop_s * 1000.0


def load_exported(path: str | Path, hop_s: float | None = None, hop_method: str = "interpolate") -> HearModel:
    """A :class:`HearModel` from an ssl-bench checkpoint that carries its resolved config
    (``hop_s``/``hop_method``: timestamps finer than the encoder's columns)."""
    from ssl_bench.checkpoint import is_ssl_bench
    from ssl_bench.model import build_model

    path = Path(path)
    obj = safe_load(path)
    if not is_ssl_bench(obj) or not isinstance(obj.get("config"), dict):
        raise CheckpointError(f"{path}: not an ssl-bench checkpoint with its config (what export-hear writes)")
    torch.manual_seed(0)
    model = build_model(obj["config"])
    load_into(model, path, strict=True)
    return HearModel(model, hop_s=hop_s, hop_method=hop_method)
