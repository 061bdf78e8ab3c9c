"""Self-supervised pretraining: ``model.forward_pretrain`` on unlabeled spectrograms.

The masks of each optimiser step are drawn for the whole global batch from a generator
seeded by (seed, step) and sliced per micro-batch, so pretraining is the same computation for
any number of processes or accumulation steps, and after any resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from ..train import FitResult, StepContext, TrainConfig, fit
from .data import normalize


def pretrain_loss(model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
    """Masked-reconstruction loss of one micro-batch (masks shared across any split of the batch)."""
    spec = normalize(model, batch["spec"])
    grid = model.grid(spec)
    full = model.masker(ctx.global_batch, grid, model.encoder.layout, "cpu", ctx.generator())
    mask = full[ctx.offset:ctx.offset + spec.shape[0]]  # on the CPU: the model moves it without a GPU sync
    return model.forward_pretrain(spec, mask).loss


def train_config(config: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a resolved config's ``pretrain`` section."""
    section = dict(config["pretrain"])
    return TrainConfig.from_sections(
        section, run=config, num_workers=config.get("data", {}).get("num_workers", 0), layer_decay=None,
    )


def pretrain(
    model: nn.Module,
    dataset: Dataset,
    config: dict[str, Any],
    *,
    device: torch.device | str,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    log_metrics: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Pretrain ``model`` (an :class:`~ssl_bench.model.SSLModel`) on ``dataset`` of raw log-mel.

    ``config``: the resolved run config (its ``pretrain`` section, ``seed``, ``amp``,
    ``compile``, ``deterministic`` and ``data.num_workers`` are used).  Per-epoch records go
    to ``log_metrics`` with ``protocol: pretrain``.
    """
    cfg = train_config(config)

    def log(record: dict[str, Any]) -> None:
        if log_metrics is not None:
            log_metrics({"protocol": "pretrain", **record})

    return fit(
        model, dataset, pretrain_loss, cfg, device=device, checkpoint_dir=checkpoint_dir, resume=resume,
        log_metrics=log, progress=progress, desc="pretrain",
    )
