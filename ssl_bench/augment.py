"""Spectrogram-domain augmentation, applied to batches after the feature cache.

The official AudioMAE/AST pipelines mix waveforms, compute the log-mel, apply SpecAugment and
only then normalise.  Features here come from a cache of raw log-mel spectrograms, so the same
steps happen on those, on the training device, before normalisation:

* :func:`mixup` mixes in the power domain, ``log(l * exp(a) + (1 - l) * exp(b))``: mel energies
  add like the waveforms' power spectra do (up to the cross term), which a plain mix of log
  values would not; ``l ~ Beta(alpha, alpha)``, applied to each clip with probability ``p``,
  labels mixed with the same ``l``;
* :func:`spec_augment` sets one frequency band of up to ``F`` bins and one time span of up to
  ``T`` frames to 0 in the raw log-mel (torchaudio's ``FrequencyMasking``/``TimeMasking`` as
  the originals call them, with a width drawn per clip).

Randomness comes from torch's global generator on the batch's device, so a resumed run that
restores the RNG states draws the same masks and mixing weights.
"""

from __future__ import annotations

import torch


def spec_augment(x: torch.Tensor, freq_mask: int = 0, time_mask: int = 0) -> torch.Tensor:
    """One frequency and one time mask per clip of a raw log-mel batch ``[B, T, F]``.

    As torchaudio's masking: width ``w = floor(u * max_width)``, start
    ``floor(u' * (size - w))``, masked values 0.  ``0`` turns a mask off.  Returns a new tensor.
    """
    if x.ndim != 3:
        raise ValueError(f"spec_augment expects [batch, frames, bins], got shape {tuple(x.shape)}")
    if freq_mask < 0 or time_mask < 0:
        raise ValueError(f"mask widths must be >= 0, got freq_mask={freq_mask}, time_mask={time_mask}")
    out = x
    for axis, width in ((2, freq_mask), (1, time_mask)):
        if width <= 0:
            continue
        size = x.shape[axis]
        b = x.shape[0]
        w = (torch.rand(b, device=x.device) * min(width, size)).floor()
        start = (torch.rand(b, device=x.device) * (size - w)).floor()
        pos = torch.arange(size, device=x.device, dtype=w.dtype)
        band = (pos[None] >= start[:, None]) & (pos[None] < (start + w)[:, None])  # [B, size]
        band = band[:, None, :] if axis == 2 else band[:, :, None]
        out = out.masked_fill(band, 0.0)
    return out


def mixup(
    x: torch.Tensor, targets: torch.Tensor, prob: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each clip of a raw log-mel batch with another clip of the batch, with probability ``prob``.

    ``x``: ``[B, T, F]`` raw log-mel; ``targets``: ``[B, C]`` (one-hot or multi-hot, float).
    A mixed clip becomes ``log(l * exp(x_i) + (1 - l) * exp(x_j))`` with ``l ~ Beta(alpha,
    alpha)`` and partner ``j`` drawn uniformly from the other clips; its target becomes
    ``l * y_i + (1 - l) * y_j``.  Unmixed clips are returned unchanged.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mixup probability must be in [0, 1], got {prob}")
    b = x.shape[0]
    if prob == 0.0 or b < 2:
        return x, targets
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    dev = x.device
    apply = torch.rand(b, device=dev) < prob
    concentration = torch.tensor(float(alpha), device=dev)
    # validate_args=False: the default argument check reads the GPU tensor back (a sync per step).
    beta = torch.distributions.Beta(concentration, concentration, validate_args=False)
    lam = torch.where(apply, beta.sample((b,)), torch.ones(b, device=dev))
    # a partner other than the clip itself: shift by 1..b-1
    partner = (torch.arange(b, device=dev) + torch.randint(1, b, (b,), device=dev)) % b
    lam_x = lam.to(x.dtype).view(b, 1, 1)
    mixed = torch.logaddexp(x + lam_x.clamp_min(1e-12).log(), x[partner] + (1 - lam_x).clamp_min(1e-12).log())
    # exact identity for unmixed clips (log(1) + x == x, but the partner term adds ~1e-12)
    mixed = torch.where(apply.view(b, 1, 1), mixed, x)
    lam_y = lam.to(targets.dtype).view(b, 1)
    return mixed, lam_y * targets + (1 - lam_y) * targets[partner]
