"""Audio decoding: soundfile, mono, resampling, padding and cropping.

``torchaudio.load`` is not used (it needs TorchCodec and FFmpeg); ``soundfile`` reads WAV,
FLAC and OGG everywhere.  Resampling uses ``torchaudio.functional.resample``.
"""

from __future__ import annotations

from .errors import UserError
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class AudioError(UserError, ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read ``path`` as float32 mono at ``sample_rate``.

    Multi-channel audio is averaged to mono.  Raises :class:`AudioError` for a file that is
    missing, unreadable, empty, or holds NaN/inf samples.
    """
    path = Path(path)
    if not path.is_file():  # soundfile reports a missing file as an opaque "System error"
        raise AudioError(f"{path}: no such audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(f"{path}: no such audio file") from None
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types for bad files
        raise AudioError(f"{path}: cannot decode audio ({str(exc).strip() or type(exc).__name__})") from None
    if data.size == 0:
        raise AudioError(f"{path}: audio file is empty (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        wave = resample(wave, sr, sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited (sinc) resampling with torchaudio."""
    if orig_sr == new_sr:
        return wave
    return AF.resample(torch.from_numpy(np.asarray(wave, dtype=np.float32)), orig_sr, new_sr).numpy()


def fit_length(wave: np.ndarray, num_samples: int, random: bool = False,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Zero-pad at the end or crop to ``num_samples`` (random crop when ``random``)."""
    n = wave.shape[-1]
    if n == num_samples:
        return wave
    if n < num_samples:
        pad = [(0, 0)] * (wave.ndim - 1) + [(0, num_samples - n)]
        return np.pad(wave, pad)
    start = 0
    if random:
        rng = rng or np.random.default_rng()
        start = int(rng.integers(0, n - num_samples + 1))
    return wave[..., start : start + num_samples]
