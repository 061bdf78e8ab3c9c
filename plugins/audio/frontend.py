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
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchaudio.compliance.kaldi import get_mel_banks

from ssl_bench.components import BuildContext, Component, FrameTiming
from ssl_bench.errors import UserError

#: Kaldi's floor on spectral values: ``std::numeric_limits<float>::epsilon()``.
FLOAT_EPS = float(torch.finfo(torch.float32).eps)
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Hz, Kaldi default
#: Frames per CPU run on one thread: keeps the [frames, 512] work arrays in the core's cache.
#: With more torch threads each op is spread over them (OpenMP) on longer runs.
CPU_CHUNK_FRAMES = 1024
CPU_WIDE_CHUNK_FRAMES = 2048
#: Frames per CUDA batch (bounds the float64 work arrays to ~0.3 GB each).
GPU_CHUNK_FRAMES = 65536
#: Mel filters per band GEMM on the CPU.
MEL_GROUP = 16

#: Per-thread work buffers: feature extraction calls ``compute`` from several threads at once.
_THREAD_STATE = threading.local()


class FrontendError(UserError, ValueError):
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

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
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
        # CPU path: groups of MEL_GROUP filters and the contiguous FFT-bin band they cover,
        # with weights repeated for the interleaved (re^2, im^2) layout of the power.
        self._bands: list[tuple[int, int, int, int]] = []
        for i, f0 in enumerate(range(0, cfg.num_bins, MEL_GROUP)):
            f1 = min(f0 + MEL_GROUP, cfg.num_bins)
            used = (banks[:, f0:f1] != 0).any(dim=1).nonzero().flatten()
            lo, hi = (int(used.min()), int(used.max()) + 1) if len(used) else (0, 1)
            self._bands.append((lo, hi, f0, f1))
            weights = banks[lo:hi, f0:f1].repeat_interleave(2, dim=0).contiguous()
            self.register_buffer(f"band_weights_{i}", weights, persistent=False)
        if self.build is not None:
            self.build.num_bins = cfg.num_bins
            if cfg.num_frames is not None:
                self.build.num_frames = cfg.num_frames

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
    def frame_timing(self) -> FrameTiming:
        """Frame ``i`` covers samples ``i * shift .. i * shift + length - 1`` (``snip_edges``): its
        centre is ``(i * shift + (length - 1) / 2) / sample_rate`` seconds."""
        rate = float(self.cfg.sample_rate)
        return FrameTiming(hop_s=self.window_shift / rate, first_s=(self.window_size - 1) / 2 / rate)

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
        frames = max(self.frames_for_samples(round(seconds * self.cfg.sample_rate)), 1)
        return int(math.ceil(frames / multiple) * multiple)

    def with_length(self, num_frames: int | None) -> KaldiFbank:
        """The same frontend producing ``num_frames`` frames (``None``: all of them)."""
        out = KaldiFbank(dataclasses.replace(self.cfg, num_frames=num_frames), BuildContext())
        return out.to(self.window.device)

    @property
    def cpu_implementation(self) -> str:
        """Which CPU path :meth:`compute` takes (``ssl-bench bench`` reports it)."""
        return "torch ops"

    @property
    def stats_key(self) -> str:
        """What dataset statistics of these features depend on (the frontend contract)."""
        c = self.cfg
        return (f"kaldi-fbank:sample_rate={c.sample_rate},num_bins={c.num_bins},"
                f"frame_length_ms={float(c.frame_length_ms)},frame_shift_ms={float(c.frame_shift_ms)}")

    @property
    def norm_stats(self) -> tuple[float, float] | None:
        """``(mean, std)`` that ``normalize`` uses, or ``None`` while they are unset."""
        if self.cfg.mean is None or self.cfg.std is None:
            return None
        return float(self.cfg.mean), float(self.cfg.std)

    def cache_config(self) -> dict[str, Any]:
        """The settings that change :meth:`compute` (not the length, not the statistics)."""
        c = self.cfg
        return {"name": "kaldi-fbank", "sample_rate": c.sample_rate, "num_bins": c.num_bins,
                "frame_length_ms": c.frame_length_ms, "frame_shift_ms": c.frame_shift_ms}

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
        num_frames = self.frames_for_samples(n)
        out = torch.empty(waveform.shape[0], num_frames, self.cfg.num_bins, device=waveform.device,
                          dtype=torch.float32)
        # The numbers must not depend on the caller's autocast (bf16 would cost ~1e-2).
        with torch.autocast(waveform.device.type, enabled=False):
            if waveform.device.type == "cuda":
                self._compute_float64(waveform, out)
            else:
                wav = waveform.float()
                # One full reduction per clip, as AudioMAE's loader computes ``waveform.mean()``:
                # a row-wise batched mean rounds differently (~1e-9), and Kaldi's float32 output
                # turns that into up to ~1e-3 in the weakest bands.
                means = torch.stack([row.mean() for row in wav])
                if wav.device.type == "cpu":
                    self._compute_cpu(wav, means, out)
                else:  # other accelerators: Kaldi's float32 steps on the whole batch
                    wav = wav - means[:, None]
                    frames = wav.unfold(1, self.window_size, self.window_shift)
                    padded = wav.new_zeros(wav.shape[0], num_frames, self.fft_size)
                    centred, work = torch.empty_like(frames), torch.empty_like(frames)
                    self._windowed_frames(frames, centred, work, padded)
                    self._log_mel(padded, out)
        return out[0] if single else out

    def _compute_float64(self, waveform: torch.Tensor, out: torch.Tensor) -> None:
        """CUDA path: Kaldi's steps in float64, whole batches of clips at once.

        cuFFT cannot round like the CPU FFT Kaldi's reference runs on, and in the weakest bands
        of tonal clips Kaldi's float32 values carry rounding errors of a few 1e-3.  Computing in
        float64 gives the exact values of Kaldi's formula instead, so the difference to
        ``kaldi.fbank`` is Kaldi's own float32 error and never depends on the batch.
        """
        window = torch.hann_window(self.window_size, periodic=False, dtype=torch.float64, device=waveform.device)
        banks = self.mel_banks.double()  # Kaldi computes its banks in float32 whatever the input
        per_chunk = max(1, GPU_CHUNK_FRAMES // out.shape[1])
        for start in range(0, waveform.shape[0], per_chunk):
            wav = waveform[start:start + per_chunk].double()
            wav = wav - wav.mean(dim=1, keepdim=True)
            frames = wav.unfold(1, self.window_size, self.window_shift)
            frames = frames - frames.mean(dim=-1, keepdim=True)
            emphasised = torch.cat([frames[..., :1] * (1 - PREEMPHASIS),
                                    frames[..., 1:] - PREEMPHASIS * frames[..., :-1]], dim=-1)
            spectrum = torch.fft.rfft(emphasised * window, n=self.fft_size)
            power = spectrum.real.square() + spectrum.imag.square()
            mel = (power @ banks).clamp_min_(FLOAT_EPS).log_()
            out[start:start + per_chunk] = mel

    def _compute_cpu(self, wav: torch.Tensor, means: torch.Tensor, out: torch.Tensor) -> None:
        """CPU path: torch ops on runs of frames small enough to stay in cache.

        A run is part of one clip (long clips) or several whole clips (short ones), so its
        slice of ``out`` is contiguous.  Feature extraction runs this on one torch thread per
        worker, batches in parallel; other callers get each op spread over torch's threads.
        """
        batch, num_frames = out.shape[0], out.shape[1]
        step = CPU_CHUNK_FRAMES if torch.get_num_threads() == 1 else CPU_WIDE_CHUNK_FRAMES
        if num_frames >= step:  # long clips: runs of frames within a clip
            jobs = [(i, i + 1, f0, min(f0 + step, num_frames))
                    for i in range(batch) for f0 in range(0, num_frames, step)]
        else:  # short clips: several whole clips per job
            per_job = step // num_frames
            jobs = [(i, min(i + per_job, batch), 0, num_frames) for i in range(0, batch, per_job)]
        frames = (wav - means[:, None]).unfold(1, self.window_size, self.window_shift)  # [B, T, W]
        centred, work, padded = self._thread_buffers(step)
        for i0, i1, f0, f1 in jobs:
            shape = (i1 - i0, f1 - f0)
            rows = shape[0] * shape[1]
            self._windowed_frames(frames[i0:i1, f0:f1], centred[:rows].view(*shape, -1),
                                  work[:rows].view(*shape, -1), padded[:rows].view(*shape, -1))
            self._log_mel(padded[:rows].view(*shape, -1), out[i0:i1, f0:f1])

    def _thread_buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This thread's reusable work buffers of ``rows`` frames (the FFT padding stays zero)."""
        key = (rows, self.fft_size, self.window_size)
        cached = getattr(_THREAD_STATE, "buffers", None)
        if cached is None or cached[0] != key:
            cached = (key, torch.empty(rows, self.window_size), torch.empty(rows, self.window_size),
                      torch.zeros(rows, self.fft_size))
            _THREAD_STATE.buffers = cached
        return cached[1], cached[2], cached[3]

    def _windowed_frames(self, frames: torch.Tensor, centred: torch.Tensor, work: torch.Tensor,
                         padded: torch.Tensor) -> None:
        """Frames ``[..., W]`` of mean-removed clips, DC-removed, pre-emphasised and windowed,
        into ``padded[..., :W]`` (``centred`` and ``work`` are scratch of the frames' shape).

        Every float operation is Kaldi's, in Kaldi's order: the FFT amplifies rounding
        differences here into ~3e-3 in the weakest bands of tonal clips, so this part must
        round exactly like ``kaldi.fbank``.  Written with ``out=`` to save passes over memory.
        """
        torch.sub(frames, frames.mean(dim=-1, keepdim=True), out=centred)  # per-frame DC removal
        # Pre-emphasis y[j] - 0.97 * y[j - 1]; the first sample is its own predecessor.
        torch.mul(centred[..., :-1], PREEMPHASIS, out=work[..., 1:])
        torch.mul(centred[..., :1], PREEMPHASIS, out=work[..., :1])
        torch.sub(centred, work, out=work)
        torch.mul(work, self.window, out=padded[..., : self.window_size])

    def _log_mel(self, padded: torch.Tensor, out: torch.Tensor) -> None:
        """Windowed, zero-padded frames ``[c, T, fft_size]`` -> log-mel into ``out`` ``[c, T, F]``."""
        spectrum = torch.fft.rfft(padded)
        # Everything after the FFT sums positive numbers: any order rounds to ~1e-7 in the log.
        power = torch.view_as_real(spectrum).square_()  # [c, T, bins, 2]: re^2, im^2
        if padded.device.type == "cpu":
            # The mel banks are banded: a few small GEMMs over each band's bins do a tenth of
            # the work of one dense [bins, F] product.
            flat = power.reshape(-1, power.shape[-2] * 2)
            rows = out.reshape(-1, out.shape[-1])  # a view: out is [n, F] with contiguous rows
            for i, (lo, hi, f0, f1) in enumerate(self._bands):
                torch.mm(flat[:, 2 * lo: 2 * hi], getattr(self, f"band_weights_{i}"), out=rows[:, f0:f1])
        else:
            # float64 keeps TF32 (if the caller enabled it) out of the mel sums; cheap on GPUs.
            mel = power.sum(-1).double() @ self.mel_banks.double()
            out.copy_(mel)
        out.clamp_min_(FLOAT_EPS).log_()

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
