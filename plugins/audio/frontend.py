"""Kaldi-compatible log-mel filterbank frontend, batched, on any device.

AudioMAE and AST compute their input with ``torchaudio.compliance.kaldi.fbank`` one clip at
a time.  :class:`KaldiFbank` computes the same numbers (max abs difference well below 1e-3 on
the log-mel values) for a whole batch at once, on CPU or GPU, so training, probing and the
feature cache never loop over clips in Python.

The steps follow Kaldi's ``compute-fbank-feats`` with AudioMAE's arguments (``htk_compat=True,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10``) and
the remaining defaults: 25 ms frames every 10 ms with ``snip_edges=True``, per-frame DC
removal, pre-emphasis 0.97, a symmetric Hann window, a 512-point power spectrum, Kaldi's mel
banks from 20 Hz to Nyquist, and the log with a floor of float32 epsilon.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchaudio.compliance.kaldi import get_mel_banks

from ssl_bench.components import BuildContext, Component

#: Kaldi's floor on spectral values: ``std::numeric_limits<float>::epsilon()``.
FLOAT_EPS = float(torch.finfo(torch.float32).eps)
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Hz, Kaldi default
#: Frames the frontend processes per chunk: keeps the [frames, 512] work arrays in cache on
#: CPU.  On CUDA the whole batch goes at once.
CPU_CHUNK_FRAMES = 4096


class FrontendError(ValueError):
    """A waveform the frontend cannot process; the message says what is wrong."""


def _next_power_of_2(x: int) -> int:
    return 1 if x <= 1 else 2 ** (x - 1).bit_length()


class KaldiFbank(Component):
    """Waveform ``[B, N]`` -> normalised log-mel ``[B, T, F]`` (AudioMAE / AST input).

    ``compute`` gives the raw log-mel (Kaldi numbers); ``normalize`` applies AudioMAE's
    ``(x - mean) / (2 * std)``; ``fit_frames`` zero-pads at the end or crops to the model's
    length; ``forward`` does all three.
    """

    @dataclass
    class Config:
        sample_rate: int = 16000
        num_bins: int = 128
        frame_length_ms: float = 25.0
        frame_shift_ms: float = 10.0
        num_frames: int | None = 1024  # None: keep every frame (no padding or cropping)
        mean: float | None = None  # dataset statistics of the raw log-mel
        std: float | None = None

    def __init__(self, cfg: Config | None = None, ctx: BuildContext | None = None):
        super().__init__(cfg, ctx)
        cfg = self.cfg
        if cfg.sample_rate <= 0:
            raise ValueError(f"frontend.sample_rate must be positive, got {cfg.sample_rate}")
        if cfg.num_bins <= 3:
            raise ValueError(f"frontend.num_bins must be at least 4 (Kaldi mel banks), got {cfg.num_bins}")
        if cfg.num_frames is not None and cfg.num_frames <= 0:
            raise ValueError(f"frontend.num_frames must be positive or null, got {cfg.num_frames}")
        if cfg.std is not None and cfg.std <= 0:
            raise ValueError(f"frontend.std must be positive, got {cfg.std}")
        # Kaldi truncates the frame sizes to whole samples.
        self.window_size = int(cfg.sample_rate * cfg.frame_length_ms * 0.001)
        self.window_shift = int(cfg.sample_rate * cfg.frame_shift_ms * 0.001)
        if self.window_size < 2 or self.window_shift < 1:
            raise ValueError(
                f"frontend: frame_length_ms={cfg.frame_length_ms} / frame_shift_ms={cfg.frame_shift_ms} "
                f"give {self.window_size} / {self.window_shift} samples at {cfg.sample_rate} Hz; too short"
            )
        self.fft_size = _next_power_of_2(self.window_size)
        # Kaldi's "hanning" is the symmetric Hann window (periodic=False).
        window = torch.hann_window(self.window_size, periodic=False, dtype=torch.float32)
        banks, _ = get_mel_banks(cfg.num_bins, self.fft_size, float(cfg.sample_rate), LOW_FREQ, 0.0, 100.0, -500.0, 1.0)
        # Kaldi gives the Nyquist bin zero weight; [fft_size // 2 + 1, F] for a right-multiply.
        banks = F.pad(banks.float(), (0, 1)).t().contiguous()
        # Not persistent: derived from the config, and official checkpoints do not have them.
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_banks", banks, persistent=False)
        if self.ctx is not None:
            self.ctx.num_bins = cfg.num_bins
            if cfg.num_frames is not None:
                self.ctx.num_frames = cfg.num_frames

    # ------------------------------------------------------------------ protocol attributes
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def num_bins(self) -> int:
        return self.cfg.num_bins

    @property
    def num_frames(self) -> int | None:
        return self.cfg.num_frames

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"sample_rate={c.sample_rate}, num_bins={c.num_bins}, num_frames={c.num_frames}, "
                f"mean={c.mean}, std={c.std}")

    # ------------------------------------------------------------------ sizes
    def frames_for_samples(self, num_samples: int) -> int:
        """Frames Kaldi produces for ``num_samples`` samples (``snip_edges=True``)."""
        if num_samples < self.window_size:
            return 0
        return 1 + (num_samples - self.window_size) // self.window_shift

    def num_frames_for(self, seconds: float, multiple: int = 64) -> int:
        """Model length for clips of ``seconds``: their frame count rounded UP to ``multiple``.

        The default 64 is 16-frame patches times the 4-patch windows of AudioMAE's
        shifted-window decoder, and gives the paper's lengths: 10 s -> 1024, 5 s -> 512,
        1 s -> 128.
        """
        if seconds <= 0:
            raise ValueError(f"clip length must be positive, got {seconds} s")
        frames = max(self.frames_for_samples(int(round(seconds * self.cfg.sample_rate))), 1)
        return int(math.ceil(frames / multiple) * multiple)

    def with_length(self, num_frames: int | None) -> "KaldiFbank":
        """The same frontend producing ``num_frames`` frames (``None``: all of them)."""
        out = KaldiFbank(dataclasses.replace(self.cfg, num_frames=num_frames), BuildContext())
        return out.to(self.window.device)

    def set_norm_stats(self, mean: float, std: float) -> None:
        """Set the dataset statistics ``normalize`` uses."""
        if not (std > 0) or not math.isfinite(std) or not math.isfinite(mean):
            raise ValueError(f"frontend norm stats must be finite with std > 0, got mean={mean}, std={std}")
        self.cfg.mean, self.cfg.std = float(mean), float(std)

    # ------------------------------------------------------------------ computation
    def compute(self, waveform: torch.Tensor) -> torch.Tensor:
        """Raw Kaldi log-mel of each clip: ``[B, N]`` -> ``[B, T, F]`` (``[N]`` -> ``[T, F]``).

        Each clip's waveform mean is removed first, as AudioMAE and AST do.  Computed in
        float32 on the waveform's device.
        """
        if not torch.is_tensor(waveform):
            raise TypeError(f"frontend expects a torch.Tensor waveform, got {type(waveform).__name__}")
        if not waveform.is_floating_point():
            raise TypeError(f"frontend expects a float waveform in [-1, 1], got dtype {waveform.dtype}")
        single = waveform.ndim == 1
        if single:
            waveform = waveform[None]
        if waveform.ndim != 2:
            raise FrontendError(f"frontend expects a waveform [batch, samples], got shape {tuple(waveform.shape)}")
        n = waveform.shape[1]
        if n < self.window_size:
            raise FrontendError(
                f"waveform of {n} samples is shorter than one {self.cfg.frame_length_ms:g} ms frame "
                f"({self.window_size} samples at {self.cfg.sample_rate} Hz)"
            )
        wav = waveform.float()
        wav = wav - wav.mean(dim=1, keepdim=True)
        num_frames = self.frames_for_samples(n)
        out = torch.empty(wav.shape[0], num_frames, self.cfg.num_bins, device=wav.device, dtype=torch.float32)
        if wav.device.type == "cpu":
            per_chunk = max(1, CPU_CHUNK_FRAMES // num_frames)
        else:
            per_chunk = wav.shape[0]
        for start in range(0, wav.shape[0], per_chunk):
            stop = min(start + per_chunk, wav.shape[0])
            out[start:stop] = self._log_mel(wav[start:stop])
        return out[0] if single else out

    def _log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """Log-mel of mean-removed clips ``[b, N]`` -> ``[b, T, F]``."""
        frames = wav.unfold(1, self.window_size, self.window_shift)  # [b, T, W], a view
        frames = frames - frames.mean(dim=2, keepdim=True)  # per-frame DC removal
        # Pre-emphasis inside each frame; the first sample uses itself as its predecessor.
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)
        frames = (frames - PREEMPHASIS * prev) * self.window
        spectrum = torch.fft.rfft(frames, n=self.fft_size)  # zero-pads W -> fft_size
        power = spectrum.real.square() + spectrum.imag.square()
        mel = power @ self.mel_banks
        return mel.clamp_min_(FLOAT_EPS).log_()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """AudioMAE / AST normalisation ``(x - mean) / (2 * std)``."""
        if self.cfg.mean is None or self.cfg.std is None:
            raise ValueError(
                "frontend mean/std are not set: pass frontend.mean and frontend.std (the task's log-mel "
                "statistics) or call set_norm_stats()"
            )
        return (x - self.cfg.mean) / (2.0 * self.cfg.std)

    def fit_frames(
        self,
        x: torch.Tensor,
        num_frames: int | None = None,
        random: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Zero-pad at the end or crop ``x[..., T, F]`` to ``num_frames`` (default: the config's).

        Cropping keeps the start unless ``random``: then each clip of a ``[B, T, F]`` batch gets
        its own random offset (drawn with ``generator``, on the CPU).
        """
        num_frames = self.cfg.num_frames if num_frames is None else num_frames
        if num_frames is None:
            return x
        if x.ndim < 2:
            raise FrontendError(f"fit_frames expects [..., T, F], got shape {tuple(x.shape)}")
        t = x.shape[-2]
        if t == num_frames:
            return x
        if t < num_frames:
            return F.pad(x, (0, 0, 0, num_frames - t))
        if not random:
            return x[..., :num_frames, :]
        excess = t - num_frames
        if x.ndim == 3:
            offsets = torch.randint(0, excess + 1, (x.shape[0],), generator=generator).to(x.device)
            idx = offsets[:, None] + torch.arange(num_frames, device=x.device)
            return x[torch.arange(x.shape[0], device=x.device)[:, None], idx]
        offset = int(torch.randint(0, excess + 1, (1,), generator=generator))
        return x[..., offset:offset + num_frames, :]

    def forward(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``normalize(fit_frames(compute(waveform)))``; ``sample_rate`` must be the config's."""
        if sample_rate != self.cfg.sample_rate:
            raise FrontendError(
                f"frontend expects audio at {self.cfg.sample_rate} Hz, got {sample_rate} Hz; resample first "
                "(ssl_bench.audio.resample)"
            )
        return self.normalize(self.fit_frames(self.compute(waveform)))
