"""Audio decoding: soundfile, mono, resampling, padding and cropping.

``torchaudio.load`` is not used (it needs TorchCodec and FFmpeg); ``soundfile`` reads WAV,
FLAC and OGG everywhere.  Resampling is torchaudio's band-limited sinc interpolation with the
kernel of :class:`torchaudio.transforms.Resample`, built once per pair of rates and applied
to whole batches: ``torchaudio.functional.resample`` rebuilds the kernel on every call,
which costs more than the resampling itself.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as AT


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read ``path`` as float32 mono at its own rate: ``(samples, sample_rate)``.

    Multi-channel audio is averaged to mono.  Raises :class:`AudioError` for a file that is
    missing, unreadable, empty, or holds NaN/inf samples.  Thread-safe, and soundfile
    releases the GIL while it decodes, so a thread pool reads files in parallel.
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
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read ``path`` as float32 mono at ``sample_rate`` (see :func:`read_audio`)."""
    wave, sr = read_audio(path)
    if sr != sample_rate:
        wave = resample(wave, sr, sample_rate)
    return wave


def read_many(paths: Iterable[str | Path], threads: int = 4,
              lookahead: int = 64) -> Iterator[tuple[np.ndarray, int] | AudioError]:
    """:func:`read_audio` of each path, in order, decoded by ``threads`` threads.

    Yields ``(samples, sample_rate)`` or the :class:`AudioError` of a file that cannot be
    used.  At most ``lookahead`` files are decoded ahead of the consumer, so memory stays
    bounded and decoding overlaps whatever the consumer does with the previous files.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")

    def one(path) -> tuple[np.ndarray, int] | AudioError:
        try:
            return read_audio(path)
        except AudioError as exc:
            return exc

    paths = iter(paths)
    if threads == 1:
        for path in paths:
            yield one(path)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="read-audio") as pool:
        queue: list[Future] = []
        try:
            for path in paths:
                queue.append(pool.submit(one, path))
                if len(queue) >= lookahead:
                    yield queue.pop(0).result()
            while queue:
                yield queue.pop(0).result()
        finally:  # the consumer stopped early: drop what is not started yet
            for future in queue:
                future.cancel()


# --------------------------------------------------------------------------- resampling
@functools.lru_cache(maxsize=64)
def resampler(orig_sr: int, new_sr: int) -> AT.Resample:
    """torchaudio's resampler from ``orig_sr`` to ``new_sr`` (its kernel built once, float32).

    Its defaults are ``torchaudio.functional.resample``'s, and with the kernel in float32 it
    gives that function's numbers bit for bit on the CPU.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    return AT.Resample(int(orig_sr), int(new_sr), dtype=torch.float32)


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    """Samples torchaudio's resampling gives for ``num_samples`` at ``orig_sr`` -> ``new_sr``."""
    if orig_sr == new_sr:
        return num_samples
    g = math.gcd(int(orig_sr), int(new_sr))
    return int(math.ceil(new_sr // g * num_samples / (orig_sr // g)))  # torchaudio's float ceil


def resample_batch(waves: Sequence[np.ndarray | torch.Tensor], orig_sr: int, new_sr: int,
                   device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Resample clips of one rate together: float32 ``[N_i]`` each -> ``[M_i]`` on ``device``.

    Clips of different lengths are zero-padded to the longest: torchaudio pads each clip
    with zeros past its end anyway, so every clip's output is the one it gets alone.  On CUDA
    the products run in float64 (then rounded to float32), so TF32 settings cannot change
    the numbers.
    """
    device = torch.device(device)
    tensors = [torch.as_tensor(w, dtype=torch.float32) for w in waves]
    if not tensors:
        return []
    if orig_sr == new_sr:
        return [t.to(device) for t in tensors]
    lengths = [t.shape[-1] for t in tensors]
    longest = max(lengths)
    if all(n == longest for n in lengths):
        batch = torch.stack(tensors)
    else:
        batch = torch.zeros(len(tensors), longest)
        for row, t in zip(batch, tensors):
            row[: t.shape[-1]] = t
    module = resampler(int(orig_sr), int(new_sr))
    if device.type == "cpu":
        out = module(batch)
    else:
        out = _device_resampler(module, device)(batch.to(device, torch.float64)).float()
    return [out[i, : resampled_length(n, orig_sr, new_sr)] for i, n in enumerate(lengths)]


@functools.lru_cache(maxsize=16)
def _device_resampler(module: AT.Resample, device: torch.device) -> AT.Resample:
    import copy

    return copy.deepcopy(module).to(device, torch.float64)


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited (sinc) resampling of one clip with torchaudio (kernel cached)."""
    if orig_sr == new_sr:
        return wave
    return resample_batch([np.asarray(wave, dtype=np.float32)], orig_sr, new_sr)[0].numpy()


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
