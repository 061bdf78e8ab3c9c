"""``linear``: logistic regression on the frozen encoder's pooled embeddings.

The embeddings come from the shared cache (:mod:`ssl_bench.protocols.embeddings`).  Features
are standardised with statistics of the training part; ``C`` is chosen on the validation part
by the task's first metric (:mod:`ssl_bench.protocols.selection`); the test part is scored
once, by the classifier trained on the training part with that ``C``.  scikit-learn fits
:func:`fit_linear`; many classes or clips go to the joint torch model of
:mod:`ssl_bench.protocols.torch_linear` (``linear.solver``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed as D
from ..config import data_settings
from ..metrics import evaluate
from .base import Predictions, Protocol, ProtocolContext, ProtocolResult
from .data import SplitData
from .embeddings import extract_embeddings
from .selection import VALID, choose_on_validation, require_single
from .torch_linear import ProbeResult, fit_linear_torch


@dataclass
class LinearConfig:
    """Linear probe on frozen, pooled encoder embeddings."""

    enabled: bool = True
    C: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    max_iter: int = 1000
    batch_size: int = 64  # for embedding extraction
    # "sklearn": one-vs-rest / multinomial LogisticRegression; "torch": one joint model for all
    # classes (L-BFGS, on the GPU when there is one); "auto": torch for many classes or clips
    solver: str = "auto"
    auto_torch_classes: int = 50  # "auto" uses torch from this many classes ...
    auto_torch_clips: int = 5000  # ... or this many training clips


def _classifier(C: float, multilabel: bool, max_iter: int, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    lr = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    return OneVsRestClassifier(lr) if multilabel else lr


def _scores(clf: Any, X: np.ndarray, num_classes: int, multilabel: bool) -> np.ndarray:
    """``[N, num_classes]`` probabilities; classes absent from training get 0."""
    proba = clf.predict_proba(X)
    if multilabel:
        return proba
    out = np.zeros((X.shape[0], num_classes), dtype=np.float64)
    out[:, clf.classes_.astype(int)] = proba
    return out


def fit_linear(
    X: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    *,
    num_classes: int,
    multilabel: bool,
    metrics: list[str],
    Cs: Sequence[float],
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """Standardise with training statistics, choose ``C`` on ``valid``, score ``test``.

    ``X``/``y`` map ``"train"``, ``"valid"``, ``"test"`` to embeddings and targets.  Without
    validation data only a single ``C`` is allowed (nothing to choose with).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    Cs = [float(c) for c in Cs]
    if not Cs:
        raise ValueError("linear.C is empty: give at least one regularisation value")
    has_valid = len(y["valid"]) > 0
    require_single(Cs, has_valid, owner="linear probe", what=f"C from {Cs}", instead="give one C", error=ValueError)
    if not multilabel and len(np.unique(y["train"])) < 2:
        raise ValueError("linear probe: the training part has fewer than two classes")
    scaler = StandardScaler().fit(X["train"])
    Z = {k: scaler.transform(v) for k, v in X.items()}
    metric = metrics[0]

    def trial(C: float) -> tuple[dict[str, float], Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = _classifier(C, multilabel, max_iter, seed).fit(Z["train"], y["train"])
        if not has_valid:
            return {}, clf
        return evaluate(metrics, _scores(clf, Z["valid"], num_classes, multilabel), y["valid"]), clf

    choice = choose_on_validation(Cs, trial, metric)  # in the order given: ties keep the earlier C
    test_scores = _scores(choice.kept, Z["test"], num_classes, multilabel)
    test = evaluate(metrics, test_scores, y["test"])
    return ProbeResult(C=choice.candidate, metric=metric, valid=choice.valid, test=test, valid_by_C=choice.scores,
                       embed_dim=int(X["train"].shape[1]), selection=VALID if has_valid else "single C",
                       test_scores=test_scores)


def linear_probe(
    model: nn.Module,
    data: SplitData,
    config: dict[str, Any],
    *,
    device: torch.device | str,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    log_metrics: Callable[[dict[str, Any]], None] | None = None,
) -> ProbeResult | None:
    """Probe the frozen encoder of ``model`` on one split (see the module docstring).

    Every rank extracts its shard of the embeddings; only rank 0 fits the classifier (returns
    ``None`` on the other ranks).
    """
    from .base import section_config

    section = section_config(LinearProtocol, config["linear"])
    parts = ("train", "valid", "test")
    indices = np.concatenate([getattr(data, p) for p in parts])
    emb, cached = extract_embeddings(
        model, data, indices, batch_size=int(section.batch_size), device=device, cache_dir=cache_dir,
        amp=bool(config.get("amp", True)), num_workers=data_settings(config).num_workers,
        progress=progress,
    )
    if not D.current().is_main:
        return None
    bounds = np.cumsum([0] + [len(getattr(data, p)) for p in parts])
    X = {p: emb[bounds[i]:bounds[i + 1]] for i, p in enumerate(parts)}
    y = {p: data.part_targets(p) for p in parts}
    result, _ = probe_embeddings(X, y, data, section, int(config.get("seed", 0)), device)
    result.from_cache = cached
    if log_metrics is not None:
        by_c = {str(k): v for k, v in result.valid_by_C.items()}
        log_metrics({"protocol": "linear", "C": result.C, "valid_by_C": by_c,
                     **{f"valid_{k}": v for k, v in result.valid.items()}, "embeddings_cached": cached})
    return result


def choose_solver(section: LinearConfig, num_classes: int, n_train: int) -> str:
    """``sklearn`` or ``torch`` for ``linear.solver`` (``auto``: torch for many classes or clips)."""
    solver = str(section.solver)
    if solver not in ("auto", "sklearn", "torch"):
        from ..config import ConfigError

        raise ConfigError(f"linear.solver must be auto, sklearn or torch, got {solver!r}")
    if solver == "auto":
        many = num_classes >= section.auto_torch_classes or n_train >= section.auto_torch_clips
        return "torch" if many else "sklearn"
    return solver


def probe_embeddings(X: dict[str, np.ndarray], y: dict[str, np.ndarray], data: SplitData, section: LinearConfig,
                     seed: int, device: torch.device | str = "cpu") -> tuple[ProbeResult, str]:
    """Fit the linear probe of ``linear`` settings on embeddings; ``(result, solver used)``."""
    solver = choose_solver(section, data.num_classes, len(y["train"]))
    kwargs = dict(num_classes=data.num_classes, multilabel=data.multilabel, metrics=data.metrics,
                  Cs=list(section.C) or [1.0], max_iter=int(section.max_iter), seed=seed)
    if solver == "torch":
        return fit_linear_torch(X, y, device=device, **kwargs), solver
    return fit_linear(X, y, **kwargs), solver


class LinearProtocol(Protocol):
    """``linear``: logistic regression on the frozen encoder's pooled embeddings, C chosen on
    validation (scikit-learn, or one joint torch model for many classes)."""

    Config = LinearConfig
    frozen = True
    help = "only linear-probe (from --checkpoint, or the random-init encoder)"

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        X = ctx.embeddings()
        if not D.current().is_main:
            return []
        result, solver = probe_embeddings(X, ctx.targets(), ctx.data, ctx.section, ctx.seed, ctx.device)
        result.from_cache = ctx.embeddings_cached()
        ctx.metrics({"split": ctx.split, "C": result.C, "solver": solver,
                     "valid_by_C": {str(k): v for k, v in result.valid_by_C.items()},
                     **{f"valid_{k}": v for k, v in result.valid.items()}})
        ctx.log(f"[{ctx.split}] linear ({ctx.init}, {solver}): C={result.C:g} by valid {result.metric} "
                f"{result.valid.get(result.metric, float('nan')):.4f}; test "
                + ", ".join(f"{k} {v:.4f}" for k, v in result.test.items()))
        return [ProtocolResult(result.test, {"C": result.C, "solver": solver, "selection": result.selection,
                                             "embeddings_cached": result.from_cache,
                                             **{f"valid_{k}": v for k, v in result.valid.items()}},
                               predictions=Predictions(scores=result.test_scores))]
