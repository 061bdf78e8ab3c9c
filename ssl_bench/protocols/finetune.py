"""Supervised fine-tuning: encoder + pooling + a new linear head, best epoch chosen on validation.

Recipe (AudioMAE's, see the facts file): the preset's fine-tuning masker drops tokens while
training (``model.classify(spec, drop_tokens=True)``), power-domain mixup and SpecAugment on
the raw log-mel, cross-entropy with optional label smoothing (multi-class) or BCE
(multi-label), layer-wise lr decay and stochastic depth.  After every epoch the model is
scored on the VALIDATION part; the best epoch's weights are kept (in memory, and on disk
beside the training checkpoint so a resumed run still has them) and only those are scored on
the test part, once.  The test split never influences any choice.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as D
from ..augment import mixup, spec_augment
from ..checkpoint import atomic_save, safe_load
from ..metrics import evaluate
from ..nn import set_drop_path
from ..train import FitResult, OptimConfig, StepContext, TrainConfig, fit, predict, seed_everything
from .base import Protocol, ProtocolContext, ProtocolResult
from .data import SplitData, normalize

#: Modules of an :class:`~ssl_bench.model.SSLModel` that fine-tuning trains.
TRAINED = ("encoder.", "head.")


@dataclass
class FinetuneConfig(OptimConfig):
    """Supervised fine-tuning of encoder + pooling + linear head."""

    enabled: bool = True
    epochs: int = 60
    blr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 4.0
    weight_decay: float = 5e-4
    layer_decay: float | None = 0.75
    drop_path: float = 0.1
    mixup: float = 0.0  # probability a training clip is mixed with another
    mixup_alpha: float = 10.0  # lambda ~ Beta(alpha, alpha)
    specaug_freq: int = 0  # max width of one frequency mask (bins), 0 = off
    specaug_time: int = 0  # max width of one time mask (frames), 0 = off
    label_smoothing: float = 0.0
    masker: Any = None  # slot: structured token dropping while training (None = off)


@dataclass
class FinetuneResult:
    """``test``: metrics of the best epoch (by ``metric`` on validation) on the test part."""

    best_epoch: int
    metric: str
    valid: dict[str, float]
    test: dict[str, float]
    selection: str  # "valid" (best validation epoch) or "last" (no validation data)
    fit: FitResult
    history: list[dict[str, Any]] = field(default_factory=list)


class BestEpoch:
    """Tracks the best validation epoch and keeps its weights.

    Weights live in memory and, with a ``directory``, in ``best-e<epoch>.pt`` files written by
    rank 0.  A file is deleted only once no complete training checkpoint can refer to it: the
    tracker keeps the current best and the best as of the last :meth:`state_dict` call (the
    last checkpoint written).
    """

    def __init__(self, metric: str, directory: str | Path | None = None):
        self.metric = metric
        self.directory = Path(directory) if directory is not None else None
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.valid: dict[str, float] = {}
        self.weights: dict[str, torch.Tensor] | None = None
        self._committed: int | None = None

    def _file(self, epoch: int) -> Path:
        assert self.directory is not None
        return self.directory / f"best-e{epoch}.pt"

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record epoch ``epoch`` (1-based); keep its weights if it beats the best so far.

        Ties keep the earlier epoch.
        """
        value = float(metrics[self.metric])
        if self.best_value is not None and not value > self.best_value:
            return False
        self.best_epoch, self.best_value, self.valid = epoch, value, dict(metrics)
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if self.directory is not None and D.current().is_main:
            atomic_save(self.weights, self._file(epoch))
            keep = {self._file(e).name for e in (epoch, self._committed) if e is not None}
            for old in self.directory.glob("best-e*.pt"):
                if old.name not in keep:
                    old.unlink(missing_ok=True)
        return True

    def prune(self) -> None:
        """Delete every best-weights file but the best one (call once training has finished)."""
        if self.directory is None or not D.current().is_main or self.best_epoch is None:
            return
        for old in self.directory.glob("best-e*.pt"):
            if old.name != self._file(self.best_epoch).name:
                old.unlink(missing_ok=True)

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        if self.weights is None and self.best_epoch is not None and self.directory is not None:
            self.weights = safe_load(self._file(self.best_epoch))
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        self._committed = self.best_epoch
        return {"metric": self.metric, "best_epoch": self.best_epoch, "best_value": self.best_value,
                "valid": dict(self.valid)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch, self.best_value = state["best_epoch"], state["best_value"]
        self.valid = dict(state["valid"])
        self.weights = None  # read from its file when needed
        self._committed = self.best_epoch


def train_config(config: dict[str, Any]) -> TrainConfig:
    section = dict(config["finetune"])
    return TrainConfig.from_sections(section, run=config, num_workers=config.get("data", {}).get("num_workers", 0))


def finetune_loss(section: dict[str, Any], data: SplitData) -> Callable[[nn.Module, dict, StepContext], torch.Tensor]:
    """The training loss of fine-tuning with the augmentation of ``section`` (finetune config)."""
    p_mix, alpha = float(section.get("mixup") or 0.0), float(section.get("mixup_alpha") or 1.0)
    f_mask, t_mask = int(section.get("specaug_freq") or 0), int(section.get("specaug_time") or 0)
    smoothing = float(section.get("label_smoothing") or 0.0)
    n_classes, multilabel = data.num_classes, data.multilabel

    def loss_fn(model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
        x, y = batch["spec"], batch["target"]
        soft = y.float() if multilabel else F.one_hot(y.long(), n_classes).float()
        if p_mix > 0:
            x, soft = mixup(x, soft, p_mix, alpha)
        if f_mask or t_mask:
            x = spec_augment(x, f_mask, t_mask)
        logits = model.classify(normalize(model, x), drop_tokens=True).float()
        if multilabel:
            return F.binary_cross_entropy_with_logits(logits, soft)
        return F.cross_entropy(logits, soft, label_smoothing=smoothing)

    return loss_fn


def score(model: nn.Module, data: SplitData, part: str, *, batch_size: int, device: torch.device | str,
          amp: bool = True, num_workers: int = 0, progress: bool = False) -> dict[str, float]:
    """The task metrics of ``model`` (logits) on one part of the split."""
    was_training = model.training
    model.eval()
    try:
        logits = predict(lambda b: model.classify(normalize(model, b["spec"])), data.dataset(part, with_targets=False),
                         batch_size=batch_size, device=device, amp=amp, num_workers=num_workers,
                         progress=progress, desc=f"score {part}")
    finally:
        model.train(was_training)
    return evaluate(data.metrics, logits.numpy(), data.part_targets(part))


def prepare_model(model: nn.Module, num_classes: int, drop_path: float) -> nn.Module:
    """New head, stochastic depth, and everything but encoder and head frozen."""
    model.set_head(num_classes)
    set_drop_path(model.encoder, float(drop_path or 0.0))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(TRAINED))
    return model


def finetune(
    model: nn.Module,
    data: SplitData,
    config: dict[str, Any],
    *,
    device: torch.device | str,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    log_metrics: Callable[[dict[str, Any]], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` (modified in place: new head) on ``data`` and score the best epoch on test.

    Training clips longer than the model's input are randomly cropped; with
    ``data.train_weights`` each epoch draws ``finetune.epoch_size`` clips (default: as many as
    there are) with replacement, class-balanced (AudioMAE's AudioSet-2M recipe).
    """
    section = dict(config["finetune"])
    cfg = train_config(config)
    seed_everything(cfg.seed)  # the new head's initialisation must not depend on what ran before
    prepare_model(model, data.num_classes, section.get("drop_path", 0.0))
    metric = data.metrics[0]
    tracker = BestEpoch(metric, checkpoint_dir)
    eval_bs = max(1, cfg.batch_size // max(cfg.accum_steps, 1))
    has_valid = len(data.valid) > 0

    def on_epoch_end(epoch: int, m: nn.Module) -> dict[str, Any]:
        if not has_valid:
            return {}
        metrics = score(m, data, "valid", batch_size=eval_bs, device=device, amp=cfg.amp,
                        num_workers=cfg.num_workers)
        improved = tracker.update(epoch + 1, metrics, m)
        return {**{f"valid_{k}": v for k, v in metrics.items()}, "best_epoch": tracker.best_epoch,
                "improved": improved}

    def log(record: dict[str, Any]) -> None:
        if log_metrics is not None:
            log_metrics({"protocol": "finetune", **record})

    epoch_size = section.get("epoch_size")
    result = fit(
        model, data.dataset("train", random_crop=True), finetune_loss(section, data), cfg, device=device,
        checkpoint_dir=checkpoint_dir, resume=resume, on_epoch_end=on_epoch_end, state=tracker,
        log_metrics=log, progress=progress, desc="finetune",
        sample_weights=data.train_weights, epoch_size=int(epoch_size) if epoch_size else None,
    )
    if has_valid:
        weights = tracker.best_weights()
        tracker.prune()
        if weights is None:
            raise RuntimeError("fine-tuning finished without a scored validation epoch")
        model.load_state_dict(weights)
        best_epoch, selection = int(tracker.best_epoch), "valid"
    else:
        best_epoch, selection = cfg.epochs, "last"
    test = score(model, data, "test", batch_size=eval_bs, device=device, amp=cfg.amp, num_workers=cfg.num_workers,
                 progress=progress)
    return FinetuneResult(best_epoch=best_epoch, metric=metric, valid=dict(tracker.valid), test=test,
                          selection=selection, fit=result, history=copy.deepcopy(result.history))


class FinetuneProtocol(Protocol):
    """``finetune``: encoder + new head trained on the split, best epoch chosen on validation."""

    Config = FinetuneConfig
    slots = {"masker": "masker"}
    help = "only fine-tune (from --checkpoint, or from random initialisation)"

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        from ..runner import compute_columns, count_parameters, flops_per_sample, spec_probe

        m = copy.deepcopy(ctx.model)
        res = finetune(m, ctx.data, ctx.config, device=ctx.device, checkpoint_dir=ctx.state_dir, resume=ctx.resume,
                       progress=ctx.progress, log_metrics=lambda r: ctx.metrics({"split": ctx.split, **r}))
        m.eval()
        flops = flops_per_sample(lambda s: m.classify(normalize(m, s)),
                                 spec_probe(ctx.data.num_frames, m.ctx.num_bins, ctx.device))
        extra = {
            **compute_columns(parameters=count_parameters(m, trainable_only=True), flops=flops, fit=res.fit,
                              wall_s=res.fit.wall_s, device=ctx.device, world_size=D.current().world_size),
            **(res.columns() if hasattr(res, "columns") else {
                "best_epoch": res.best_epoch, "selection": res.selection,
                **{f"valid_{k}": v for k, v in res.valid.items()}}),
        }
        ctx.log(f"[{ctx.split}] finetune ({ctx.init}): best epoch {res.best_epoch} by valid "
                f"{res.metric} {res.valid.get(res.metric, float('nan')):.4f}; test "
                + ", ".join(f"{k} {v:.4f}" for k, v in res.test.items()))
        return [ProtocolResult(res.test, extra)]
