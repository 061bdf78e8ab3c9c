"""The ``waveform`` frontend: the samples themselves, for encoders that read raw audio.

wav2vec2, HuBERT and WavLM take the 16 kHz waveform and learn their own features with a
convolutional stack.  Under the frontend contract (:class:`ssl_bench.components.Frontend`) a
waveform is a feature sequence with one value per frame: ``compute`` turns ``[B, N]`` into
``[B, N, 1]``, ``num_frames_for`` counts samples, and ``num_bins`` is 1.  It needs no dataset
statistics (``stats_key`` is ``None``): ``normalize`` is the identity, or, with
``normalize: true``, each clip's own zero-mean unit-variance scaling (fairseq's
``normalize=True``, which the large wav2vec2 LV-60k and WavLM-Large checkpoints were trained with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssl_bench.components import BuildContext, Component, FrameTiming
from ssl_bench.errors import UserError


class WaveformError(UserError, ValueError):
    """A waveform the frontend cannot take (wrong shape, dtype or rate)."""


class Waveform(Component):
    """Raw samples as ``[B, N, 1]`` features.  Registered as frontend ``waveform``."""

    @dataclass
    class Config:
        sample_rate: int = 16000
        num_frames: int | None = None  # samples the model takes; None: the task's clip length
        normalize: bool = False  # per-clip zero mean, unit variance (fairseq normalize=True)

    num_bins = 1
    stats_key = None  # no dataset statistics: nothing for the runner to measure or fill in
    norm_stats = None

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        if self.cfg.sample_rate <= 0:
            raise ValueError(f"frontend.sample_rate must be positive, got {self.cfg.sample_rate}")
        if self.cfg.num_frames is not None and self.cfg.num_frames <= 0:
            raise ValueError(f"frontend.num_frames (samples) must be positive or null, got {self.cfg.num_frames}")
        self.build.num_bins = 1
        if self.cfg.num_frames is not None:
            self.build.num_frames = int(self.cfg.num_frames)

    @property
    def sample_rate(self) -> int:
        return int(self.cfg.sample_rate)

    @property
    def num_frames(self) -> int | None:
        return self.cfg.num_frames

    def frame_timing(self) -> FrameTiming:
        """A frame is a sample: sample ``i`` is at ``i / sample_rate`` seconds."""
        return FrameTiming(hop_s=1.0 / self.cfg.sample_rate, first_s=0.0)

    def num_frames_for(self, seconds: float) -> int:
        """Samples in a clip of ``seconds``."""
        if seconds <= 0:
            raise ValueError(f"clip length must be positive, got {seconds} s")
        return max(1, int(round(seconds * self.cfg.sample_rate)))

    def cache_config(self) -> dict[str, Any]:
        return {"name": "waveform", "sample_rate": self.cfg.sample_rate}

    def compute(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` -> ``[B, N, 1]`` float32 (``[N]`` -> ``[N, 1]``)."""
        if not torch.is_tensor(waveform) or not waveform.is_floating_point():
            raise WaveformError(f"frontend 'waveform' expects a float tensor in [-1, 1], got "
                                f"{getattr(waveform, 'dtype', type(waveform).__name__)}")
        if waveform.ndim not in (1, 2):
            raise WaveformError(f"frontend 'waveform' expects [batch, samples], got shape {tuple(waveform.shape)}")
        return waveform.float().unsqueeze(-1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Identity, or each clip scaled to zero mean and unit variance over its samples."""
        if not self.cfg.normalize:
            return x
        mean = x.mean(dim=(-2, -1), keepdim=True)
        var = x.var(dim=(-2, -1), keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + 1e-5)

    def forward(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``normalize(compute(waveform))``, cropped or zero-padded to ``num_frames`` samples."""
        if sample_rate != self.cfg.sample_rate:
            raise WaveformError(f"frontend 'waveform' expects audio at {self.cfg.sample_rate} Hz, got {sample_rate} Hz; "
                                "resample first (ssl_bench.audio.resample)")
        x = self.compute(waveform)
        n = self.cfg.num_frames
        if n is not None and x.shape[-2] != n:
            x = x[..., :n, :] if x.shape[-2] > n else torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[-2]))
        return self.normalize(x)
