"""``mlp``: the HEAR-style probe, a one-hidden-layer network on frozen embeddings.

``Linear -> ReLU -> Dropout -> Linear`` on embeddings standardised with the training part's
statistics, trained with Adam on minibatches (cross-entropy, or binary cross-entropy for a
multi-label task), evaluated on the validation part after every epoch and stopped when its
first metric has not improved for ``patience`` epochs; the best epoch's weights are kept.
Every (hidden size, lr) pair of the grid is trained that way and the pair with the best
validation score wins (ties keep the earlier pair: smaller hidden size, then the lr listed
first); the test part is scored once, by that pair's best epoch.  Initialisation, shuffling
and dropout draw from generators seeded with the run's seed, so a rerun gives the same numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as D
from ..config import ConfigError
from ..metrics import evaluate
from .base import Predictions, Protocol, ProtocolContext, ProtocolResult
from .selection import VALID, Best, choose_on_validation, require_single
from .torch_linear import standardise


@dataclass
class MLPConfig:
    """One-hidden-layer probe on frozen, pooled encoder embeddings (HEAR's recipe, smaller grid)."""

    enabled: bool = True
    hidden: list[int] = field(default_factory=lambda: [256, 1024])
    lr: list[float] = field(default_factory=lambda: [1e-3, 1e-4])
    dropout: float = 0.1
    weight_decay: float = 0.0
    max_epochs: int = 200
    patience: int = 20  # epochs without a better validation score before stopping
    train_batch_size: int = 256  # minibatch of the probe's Adam steps
    batch_size: int = 64  # for embedding extraction


class HiddenLayerProbe(nn.Module):
    def __init__(self, dim: int, hidden: int, classes: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _scores(model: nn.Module, x: torch.Tensor, multilabel: bool) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        logits = model(x).double()
    model.train()
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).cpu().numpy()


def train_mlp(
    Z: dict[str, torch.Tensor],
    y: dict[str, np.ndarray],
    *,
    num_classes: int,
    multilabel: bool,
    metrics: list[str],
    hidden: int,
    lr: float,
    cfg: MLPConfig,
    seed: int,
) -> tuple[nn.Module, dict[str, float], int]:
    """One (hidden, lr) pair: ``(model at its best epoch, its validation metrics, best epoch)``.
    Without validation data it trains ``max_epochs`` and keeps the last epoch."""
    device = Z["train"].device
    metric = metrics[0]
    gen = torch.Generator().manual_seed(seed)
    torch_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=torch_devices):  # dropout draws from the global RNG: seed it, leave it as found
        torch.manual_seed(seed)
        model = HiddenLayerProbe(Z["train"].shape[1], hidden, num_classes, cfg.dropout).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        target = torch.as_tensor(y["train"], device=device)
        target = target.float() if multilabel else target.long()
        n = Z["train"].shape[0]
        has_valid = len(y["valid"]) > 0
        best: Best[int] = Best(metric)
        best_state: dict[str, Any] | None = None
        stale = 0
        for epoch in range(1, int(cfg.max_epochs) + 1):
            for batch in torch.randperm(n, generator=gen).to(device).split(int(cfg.train_batch_size)):
                logits = model(Z["train"][batch])
                loss = (F.binary_cross_entropy_with_logits(logits, target[batch]) if multilabel
                        else F.cross_entropy(logits, target[batch]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if not has_valid:
                continue
            valid = evaluate(metrics, _scores(model, Z["valid"], multilabel), y["valid"])
            if best.offer(epoch, valid):
                best_state, stale = copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= int(cfg.patience):
                    break
    if best_state is None:
        return model, {}, int(cfg.max_epochs)
    model.load_state_dict(best_state)
    return model, best.valid, best.candidate


def fit_mlp(
    X: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    *,
    num_classes: int,
    multilabel: bool,
    metrics: list[str],
    cfg: MLPConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
    log_choice: Any = None,
) -> tuple[dict[str, float], dict[str, Any], np.ndarray]:
    """Standardise, train every grid pair, choose on ``valid``, score ``test``; returns
    ``(test metrics, extra columns, test scores [n_test, classes])``.  ``log_choice(record)`` receives each pair's result."""
    grid = [(int(h), float(lr)) for h in sorted(cfg.hidden) for lr in cfg.lr]
    if not grid:
        raise ConfigError("mlp.hidden and mlp.lr must each list at least one value")
    if int(cfg.max_epochs) < 1 or int(cfg.train_batch_size) < 1 or int(cfg.patience) < 1:
        raise ConfigError("mlp.max_epochs, mlp.patience and mlp.train_batch_size must be positive")
    has_valid = len(y["valid"]) > 0
    require_single(grid, has_valid, owner="mlp", what=f"(hidden, lr) from {grid}",
                   instead="give one hidden size and one lr")
    Z = standardise(X, torch.device(device))

    def trial(pair: tuple[int, float]) -> tuple[dict[str, float], tuple[nn.Module, int]]:
        hidden, lr = pair
        model, valid, epoch = train_mlp(Z, y, num_classes=num_classes, multilabel=multilabel, metrics=metrics,
                                        hidden=hidden, lr=lr, cfg=cfg, seed=seed)
        if log_choice is not None:
            log_choice({"hidden": hidden, "lr": lr, "best_epoch": epoch, **{f"valid_{k}": v for k, v in valid.items()}})
        return valid, (model, epoch)

    choice = choose_on_validation(grid, trial, metrics[0])  # ties keep the earlier pair
    (hidden, lr), (model, epoch) = choice.candidate, choice.kept
    test_scores = _scores(model, Z["test"], multilabel)
    test = evaluate(metrics, test_scores, y["test"])
    extra = {"hidden": hidden, "lr": lr, "best_epoch": epoch, "selection": VALID if has_valid else "max epochs",
             **{f"valid_{k}": v for k, v in choice.valid.items()}}
    return test, extra, test_scores


class MLPProtocol(Protocol):
    """``mlp``: HEAR's one-hidden-layer probe on the frozen encoder's pooled embeddings, early
    stopping, hidden size and lr chosen on validation."""

    Config = MLPConfig
    frozen = True
    help = "only the one-hidden-layer (HEAR-style) probe on frozen embeddings"

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        X = ctx.embeddings()
        if not D.current().is_main:
            return []

        def log_choice(record: dict[str, Any]) -> None:
            ctx.metrics({"split": ctx.split, **record})

        test, extra, scores = fit_mlp(X, ctx.targets(), num_classes=ctx.data.num_classes, multilabel=ctx.data.multilabel,
                              metrics=ctx.data.metrics, cfg=ctx.section, seed=ctx.seed, device=ctx.device,
                              log_choice=log_choice)
        ctx.log(f"[{ctx.split}] mlp ({ctx.init}): hidden {extra['hidden']}, lr {extra['lr']:g}, epoch "
                f"{extra['best_epoch']}; test " + ", ".join(f"{m} {v:.4f}" for m, v in test.items()))
        return [ProtocolResult(test, {**extra, "embeddings_cached": ctx.embeddings_cached()},
                               predictions=Predictions(scores=scores))]
