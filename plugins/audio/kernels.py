"""Compiled CPU kernels of the Kaldi fbank frontend (numba, run without the GIL).

The CPU frontend spends most of its time outside the FFT in passes over memory: DC removal,
pre-emphasis and the window are five elementwise torch ops over every frame, and the mel
projection is a dense (or banded) GEMM although each FFT bin feeds at most two mel filters.
These kernels do each side of the FFT in one pass, on blocks of frames that stay in cache.

Rounding: every float32 operation before the FFT is Kaldi's, in Kaldi's order and without
fused multiply-adds (numba does not contract them unless ``fastmath`` is on), so the FFT input
is bit-identical to ``torch.compliance.kaldi.fbank``'s.  After the FFT only sums of positive
numbers remain, exact to ~1e-7 relative whatever their order; the log is torch's.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Frames per block of :func:`log_mel` (one AVX-512 vector of float32, two of AVX2).
BLOCK = 16


@njit(nogil=True, cache=True)
def windowed_frames(samples, frame_means, shift, window, preemphasis, out):  # pragma: no cover - compiled
    """Kaldi's framing steps into ``out[:, :W]`` (the caller keeps ``out[:, W:]`` zero).

    ``samples``: float32 mean-removed clip samples; ``frame_means``: ``mean`` of each frame
    (computed by torch, whose reduction order Kaldi's numbers depend on); ``window``: float32
    ``[W]``; ``preemphasis``: float32 scalar.  For frame ``t`` starting at ``t * shift``:
    ``b = x - mean`` (DC removal), ``c[j] = b[j] - preemphasis * b[j - 1]`` with ``b[-1] = b[0]``,
    ``out[t, j] = c[j] * window[j]``.
    """
    size = window.shape[0]
    for t in range(out.shape[0]):
        base = t * shift
        mean = frame_means[t]
        row = out[t]
        first = samples[base] - mean
        row[0] = (first - preemphasis * first) * window[0]
        current = samples[base + 1: base + size]
        previous = samples[base: base + size - 1]
        rest = row[1:size]
        w = window[1:]
        for j in range(size - 1):
            rest[j] = ((current[j] - mean) - preemphasis * (previous[j] - mean)) * w[j]


@njit(nogil=True, cache=True)
def mel_energies(spectrum, lo, hi, offsets, weights, floor, out):  # pragma: no cover - compiled
    """``out[t, f] = max(sum_k weights_f[k] * |spectrum[t, k]|^2, floor)``.

    ``spectrum``: float32 ``[T, 2 * bins]`` (the FFT output's real and imaginary parts
    interleaved); filter ``f`` covers bins ``lo[f]:hi[f]`` with weights
    ``weights[offsets[f]:offsets[f] + hi[f] - lo[f]]`` (an empty filter gives ``floor``).
    Frames go in blocks of :data:`BLOCK` so the power and the sums vectorise over frames.
    NaN stays NaN, as with ``torch.clamp_min``.
    """
    num_frames = spectrum.shape[0]
    num_filters = lo.shape[0]
    k_end = 0
    for f in range(num_filters):
        k_end = max(k_end, hi[f])
    power = np.zeros((k_end, BLOCK), np.float32)
    acc = np.zeros(BLOCK, np.float32)
    for t0 in range(0, num_frames, BLOCK):
        n = min(BLOCK, num_frames - t0)
        for tt in range(n):
            row = spectrum[t0 + tt]
            for k in range(k_end):
                re = row[2 * k]
                im = row[2 * k + 1]
                power[k, tt] = re * re + im * im
        for f in range(num_filters):
            for tt in range(BLOCK):
                acc[tt] = 0.0
            start = offsets[f] - lo[f]
            for k in range(lo[f], hi[f]):
                w = weights[start + k]
                pk = power[k]
                for tt in range(BLOCK):
                    acc[tt] += w * pk[tt]
            column = out[t0:t0 + n, f]
            for tt in range(n):
                v = acc[tt]
                column[tt] = floor if v < floor else v  # noqa: FURB136 - NaN must stay NaN
