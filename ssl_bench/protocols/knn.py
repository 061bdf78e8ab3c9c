"""``knn``: cosine k-nearest-neighbour classification on frozen embeddings.

Embeddings are standardised with the training part's statistics, then L2-normalised, so that
cosine similarity compares what varies between clips rather than the offset every pooled
transformer embedding shares (``standardize=False`` keeps the raw embeddings).  Each
validation or test clip takes its ``k`` most similar training clips; its score for a class is
the (weighted) fraction of those neighbours in the class (multi-label: the mean of their
multi-hot targets).  Ties are broken by similarity: a term below the smallest vote step adds
the neighbours' mean similarity, so equal vote fractions rank the closer class (or clip) first.
``k`` is chosen on the validation part by the task's first metric (ties keep the smaller
``k``); the test part is scored once, with the training part as the neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import distributed as D
from ..config import ConfigError
from ..metrics import evaluate, to_multi_hot
from .base import Predictions, Protocol, ProtocolContext, ProtocolResult
from .selection import VALID, choose_on_validation, require_single
from .torch_linear import standardise

WEIGHTINGS = ("uniform", "similarity")


@dataclass
class KNNConfig:
    """Cosine k-nearest-neighbour probe on frozen, pooled encoder embeddings."""

    enabled: bool = True
    k: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 20, 50])
    # "uniform": one vote per neighbour; "similarity": votes weighted by (clamped) cosine similarity
    weighting: str = "uniform"
    standardize: bool = True  # standardise with training statistics before L2-normalising
    batch_size: int = 64  # for embedding extraction
    chunk: int = 4096  # query clips per similarity block (memory: chunk x n_train floats)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def neighbours(train: torch.Tensor, query: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(similarities, indices)`` ``[Q, k]`` of the ``k`` most cosine-similar training rows,
    most similar first (inputs already L2-normalised)."""
    sims, idx = [], []
    for start in range(0, query.shape[0], chunk):
        s = query[start:start + chunk] @ train.T
        top = s.topk(k, dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims), torch.cat(idx)


def vote_scores(sims: torch.Tensor, idx: torch.Tensor, onehot: torch.Tensor, k: int, weighting: str) -> np.ndarray:
    """``[Q, C]`` class scores from the first ``k`` neighbours: weighted vote fractions, plus a
    tie-break below the smallest vote step (see the module docstring)."""
    s, i = sims[:, :k], idx[:, :k]
    w = s.clamp_min(0) if weighting == "similarity" else torch.ones_like(s)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    closeness = (s + 1) / 2 / k  # in [0, 1/k]: the tie-break weights
    votes = torch.zeros(s.shape[0], onehot.shape[1], dtype=torch.float64, device=s.device)
    for j in range(k):  # one neighbour rank at a time: [Q, C] memory, not [Q, k, C]
        hot = onehot[i[:, j]].double()
        votes += (w[:, j:j + 1].double() + 1e-6 / k * closeness[:, j:j + 1].double()) * hot
    return votes.cpu().numpy()


def fit_knn(
    X: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    *,
    num_classes: int,
    metrics: list[str],
    ks: list[int],
    weighting: str = "uniform",
    standardize: bool = True,
    chunk: int = 4096,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], dict[str, object], np.ndarray]:
    """Choose ``k`` on ``valid``, score ``test``; returns ``(test metrics, extra columns, test
    scores [n_test, classes])``."""
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"knn.weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"knn.k must be a non-empty list of positive integers, got {ks}")
    has_valid = len(y["valid"]) > 0
    require_single(ks, has_valid, owner="knn", what=f"k from {ks}", instead="give one k")
    n_train = len(y["train"])
    device = torch.device(device)
    if standardize:
        Z = standardise(X, device)
    else:
        Z = {p: torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device) for p, x in X.items()}
    Z = {p: _unit(z) for p, z in Z.items()}
    onehot = torch.as_tensor(to_multi_hot(y["train"], num_classes), dtype=torch.float32, device=device)
    usable = [k for k in ks if k <= n_train] or [n_train]  # k beyond the training part: all of it
    if has_valid:  # the largest k's neighbours serve every k
        near = neighbours(Z["train"], Z["valid"], usable[-1], chunk)

    def trial(k: int) -> tuple[dict[str, float], None]:
        if not has_valid:
            return {}, None
        return evaluate(metrics, vote_scores(*near, onehot, k, weighting), y["valid"]), None

    choice = choose_on_validation(usable, trial, metrics[0])  # ascending k: ties keep the smaller k
    best_k = choice.candidate
    sims, idx = neighbours(Z["train"], Z["test"], best_k, chunk)
    test_scores = vote_scores(sims, idx, onehot, best_k, weighting)
    test = evaluate(metrics, test_scores, y["test"])
    extra = {"k": best_k, "weighting": weighting, "selection": VALID if has_valid else "single k",
             **{f"valid_{m}": v for m, v in choice.valid.items()}}
    return test, {**extra, "valid_by_k": {str(k): v for k, v in choice.scores.items()}}, test_scores


class KNNProtocol(Protocol):
    """``knn``: cosine k-nearest neighbours on the frozen encoder's pooled embeddings, ``k``
    chosen on validation."""

    Config = KNNConfig
    frozen = True
    help = "only the cosine k-nearest-neighbour probe on frozen embeddings"

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        X = ctx.embeddings()
        if not D.current().is_main:
            return []
        cfg = ctx.section
        test, extra, scores = fit_knn(X, ctx.targets(), num_classes=ctx.data.num_classes, metrics=ctx.data.metrics,
                              ks=list(cfg.k), weighting=str(cfg.weighting), standardize=bool(cfg.standardize),
                              chunk=int(cfg.chunk), device=ctx.device)
        by_k = extra.pop("valid_by_k")
        ctx.metrics({"split": ctx.split, "k": extra["k"], "valid_by_k": by_k})
        ctx.log(f"[{ctx.split}] knn ({ctx.init}): k={extra['k']} ({extra['weighting']}); test "
                + ", ".join(f"{m} {v:.4f}" for m, v in test.items()))
        return [ProtocolResult(test, {**extra, "embeddings_cached": ctx.embeddings_cached()},
                               predictions=Predictions(scores=scores))]
