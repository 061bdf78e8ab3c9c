"""Pretraining objectives."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.components import BuildContext, Component


class MaskedMSE(Component):
    """MAE / AudioMAE reconstruction loss on the masked patches only.

    With ``norm_pix`` each target patch is normalised by its own mean and unbiased variance,
    ``(t - mean) / sqrt(var + eps)``; the squared error is averaged over a patch's values,
    then over all masked patches of the batch: ``(loss * mask).sum() / mask.sum()``.
    """

    @dataclass
    class Config:
        norm_pix: bool = True
        eps: float = 1e-6

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        if self.cfg.eps <= 0:
            raise ValueError(f"objective.eps must be positive, got {self.cfg.eps}")

    def normalize_target(self, target: torch.Tensor) -> torch.Tensor:
        """The per-patch normalised target (identity when ``norm_pix`` is off)."""
        if not self.cfg.norm_pix:
            return target
        # Two-pass unbiased variance, as MAE's ``var()`` computes it, in vectorised ops: torch's
        # CPU ``var`` kernel takes twice the time of the whole normalisation written this way.
        centred = target - target.mean(dim=-1, keepdim=True)
        var = centred.square().sum(dim=-1, keepdim=True) / max(target.shape[-1] - 1, 1)
        return centred * (var + self.cfg.eps).rsqrt()

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"objective: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if mask.shape != pred.shape[:-1]:
            raise ValueError(f"objective: mask {tuple(mask.shape)} does not match patches {tuple(pred.shape[:-1])}")
        per_patch = (pred - self.normalize_target(target)).square().mean(dim=-1)
        mask = mask.to(per_patch.dtype)
        # clamp: a batch with nothing masked gives 0 instead of NaN, without a host sync.
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
