"""``beats-fbank``: the log-mel filterbank the released BEATs models were trained on.

It differs from AudioMAE/AST's ``kaldi-fbank`` in ways that change every number, so it is its
own frontend:

* the waveform (16 kHz, in [-1, 1]) is scaled to the 16-bit range (times 2**15) and its mean is
  NOT removed (Kaldi's per-frame DC removal still applies);
* Kaldi's defaults otherwise: povey window, pre-emphasis 0.97, 512-point power spectrum, 128
  mel bins from 20 Hz to Nyquist, log floored at float32 epsilon, 25 ms frames every 10 ms with
  ``snip_edges`` (``1 + (N - 400) // 160`` frames);
* fixed normalisation ``(fbank - 15.41663) / (2 * 6.55582)``: constants of the release, not
  statistics of the task (``stats_key`` is ``None``, so the runner never replaces them).

``compute`` calls ``torchaudio.compliance.kaldi.fbank`` once per clip, as the release does:
the reimplementation in ``kaldi-fbank`` rounds differently by up to ~1e-3 in weak bands, more
than the 1e-4 an import must meet.  Features are cached, so this runs once per clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

from ssl_bench.components import BuildContext, Component, FrameTiming
from ssl_bench.errors import UserError

#: The release's normalisation constants (``BEATs.extract_features`` keyword defaults).
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
#: The waveform scale the release applies before Kaldi (16-bit PCM range).
PCM_SCALE = 2 ** 15
SAMPLE_RATE = 16000


class BEATsFrontendError(UserError, ValueError):
    """A waveform the frontend cannot process."""


class BEATsFbank(Component):
    """Waveform ``[B, N]`` -> BEATs' normalised log-mel ``[B, T, 128]`` (time first)."""

    @dataclass
    class Config:
        sample_rate: int = SAMPLE_RATE
        num_bins: int = 128
        num_frames: int | None = None  # None: every frame of the clip (the release pads nothing)
        mean: float = FBANK_MEAN
        std: float = FBANK_STD

    #: The frontend needs no dataset statistics: its constants are the release's.
    stats_key = None

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg = self.cfg
        if cfg.sample_rate != SAMPLE_RATE:
            raise ValueError(f"frontend.sample_rate: BEATs was trained on {SAMPLE_RATE} Hz audio, "
                             f"got {cfg.sample_rate}")
        if cfg.num_bins <= 3:
            raise ValueError(f"frontend.num_bins must be at least 4 (Kaldi mel banks), got {cfg.num_bins}")
        if cfg.num_frames is not None and cfg.num_frames <= 0:
            raise ValueError(f"frontend.num_frames must be positive or null, got {cfg.num_frames}")
        if not cfg.std > 0:
            raise ValueError(f"frontend.std must be positive, got {cfg.std}")
        self.window_size, self.window_shift = 400, 160  # 25 ms / 10 ms at 16 kHz
        if self.build is not None:
            self.build.num_bins = cfg.num_bins
            if cfg.num_frames is not None:
                self.build.num_frames = cfg.num_frames

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def num_bins(self) -> int:
        return self.cfg.num_bins

    @property
    def norm_stats(self) -> tuple[float, float]:
        return float(self.cfg.mean), float(self.cfg.std)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"num_bins={c.num_bins}, num_frames={c.num_frames}, mean={c.mean}, std={c.std} (fixed)"

    def frame_timing(self) -> FrameTiming:
        """Frame ``i`` is centred on samples ``160 i .. 160 i + 399``."""
        rate = float(self.cfg.sample_rate)
        return FrameTiming(hop_s=self.window_shift / rate, first_s=(self.window_size - 1) / 2 / rate)

    def frames_for_samples(self, num_samples: int) -> int:
        """Frames Kaldi makes of ``num_samples`` samples (``snip_edges``)."""
        return 0 if num_samples < self.window_size else 1 + (num_samples - self.window_size) // self.window_shift

    def num_frames_for(self, seconds: float) -> int:
        """Every frame of a clip of ``seconds`` (5 s -> 498): nothing is padded, and the patch
        embedding drops the frames past the last whole 16-frame patch, as the release does."""
        if seconds <= 0:
            raise ValueError(f"clip length must be positive, got {seconds} s")
        return max(self.frames_for_samples(round(seconds * self.cfg.sample_rate)), 1)

    def cache_config(self) -> dict[str, Any]:
        return {"name": "beats-fbank", "sample_rate": self.cfg.sample_rate, "num_bins": self.cfg.num_bins,
                "scale": PCM_SCALE}

    def compute(self, waveform: torch.Tensor) -> torch.Tensor:
        """Raw log-mel of each clip, ``[B, N]`` -> ``[B, T, F]`` (``[N]`` -> ``[T, F]``), float32."""
        if not torch.is_tensor(waveform) or not waveform.is_floating_point():
            raise TypeError("beats-fbank expects a float torch.Tensor waveform in [-1, 1]")
        single = waveform.ndim == 1
        batch = waveform[None] if single else waveform
        if batch.ndim != 2:
            raise BEATsFrontendError(f"beats-fbank expects a waveform [batch, samples], "
                                     f"got shape {tuple(waveform.shape)}")
        if batch.shape[1] < self.window_size:
            raise BEATsFrontendError(f"waveform of {batch.shape[1]} samples is shorter than one 25 ms frame "
                                     "(400 samples)")
        with torch.autocast(batch.device.type, enabled=False):
            out = torch.stack([
                kaldi.fbank(clip[None].float() * PCM_SCALE, num_mel_bins=self.cfg.num_bins,
                            sample_frequency=self.cfg.sample_rate, frame_length=25, frame_shift=10)
                for clip in batch
            ])
        return out[0] if single else out

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The release's fixed normalisation ``(x - mean) / (2 * std)``."""
        return (x - self.cfg.mean) / (2.0 * self.cfg.std)

    def fit_frames(self, x: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Crop ``x[..., T, F]`` to ``num_frames`` (default: the config's; ``None`` keeps all), or
        pad it with the log-mel of silence (``ln(eps)``), what a zero-padded waveform gives."""
        num_frames = self.cfg.num_frames if num_frames is None else num_frames
        if num_frames is None or x.shape[-2] == num_frames:
            return x
        if x.shape[-2] > num_frames:
            return x[..., :num_frames, :]
        return F.pad(x, (0, 0, 0, num_frames - x.shape[-2]), value=math.log(torch.finfo(torch.float32).eps))

    def forward(self, waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """``normalize(fit_frames(compute(waveform)))``."""
        if sample_rate != self.cfg.sample_rate:
            raise BEATsFrontendError(f"beats-fbank expects {self.cfg.sample_rate} Hz audio, got {sample_rate} Hz; "
                                     "resample first (ssl_bench.audio.resample)")
        return self.normalize(self.fit_frames(self.compute(waveform)))
