"""Linear probe: frozen encoder, pooled embeddings, logistic regression.

Embeddings (``model.embed`` of the normalised spectrogram) are extracted once per split and
cached on disk under a key that hashes the encoder's weights, the frontend config and the
audio list, so re-running a probe, probing the same encoder with other ``C`` values, or
running another frozen-encoder protocol (kNN, MLP, per-layer) does not run the encoder again.
A per-layer extraction (every block's pooled tokens, one forward pass) serves the final-layer
protocols too.  Features are standardised with statistics of the training part;
``C`` is chosen on the validation part by the task's first metric; the test part is scored
once, by the classifier trained on the training part with that ``C``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import distributed as D
from ..config import data_settings
from ..files import CacheWarning, check_sum, discard, follow_umask, shown, write_sum
from ..metrics import evaluate
from ..train import predict
from .base import Protocol, ProtocolContext, ProtocolResult
from .data import SpecDataset, SplitData, normalize


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


@dataclass
class ProbeResult:
    C: float
    metric: str
    valid: dict[str, float]
    test: dict[str, float]
    valid_by_C: dict[float, float] = field(default_factory=dict)
    embed_dim: int = 0
    from_cache: bool = False
    selection: str = "valid"


def weights_hash(module: nn.Module) -> str:
    """SHA-256 of every tensor of ``module.state_dict()`` (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _frontend_config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(getattr(model, "frontend", None), "cfg", None)
    if cfg is None:
        return dict(getattr(model, "config", {}).get("frontend") or {})
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))


def embedding_key(model: nn.Module, data: SplitData, indices: Sequence[int]) -> str:
    """Cache key: encoder weights and settings (pooling, ...) + frontend config + model length +
    the audio list."""
    clips = [str(data.features.clips[int(i)].path) for i in indices]
    encoder_cfg = getattr(model.encoder, "cfg", None)
    payload = {
        "encoder": weights_hash(model.encoder),
        "encoder_type": type(model.encoder).__qualname__,
        "encoder_cfg": dataclasses.asdict(encoder_cfg) if dataclasses.is_dataclass(encoder_cfg) else repr(encoder_cfg),
        "frontend": _frontend_config(model),
        "num_frames": data.num_frames,
        "features": str(getattr(data.features, "path", None)),
        "clips": hashlib.sha256("\n".join(clips).encode("utf-8", "surrogateescape")).hexdigest(),
        "n": len(clips),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


@torch.no_grad()
def extract_embeddings(
    model: nn.Module,
    data: SplitData,
    indices: Sequence[int],
    *,
    batch_size: int,
    device: torch.device | str,
    cache_dir: str | Path | None = None,
    amp: bool = True,
    num_workers: int = 0,
    progress: bool = False,
    layers: bool = False,
) -> tuple[np.ndarray, bool]:
    """``model.embed`` of the clips ``indices`` as float32 ``[N, D]``; ``(embeddings, from_cache)``.

    ``layers``: ``[N, K, D]`` instead, every layer's pooled tokens then the final embedding
    (:meth:`~ssl_bench.model.SSLModel.embed`), from one forward pass.  A cached per-layer
    entry also serves ``layers=False`` (its last layer), and computing one writes both.
    Sharded over torchrun ranks; rank 0 writes the cache entries (atomically).
    """
    path = layers_path = None
    if cache_dir is not None:
        key = embedding_key(model, data, indices)
        path, layers_path = Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}.layers.npy"
        if layers_path.is_file():
            emb = _load_npy(layers_path, len(indices), mmap_mode=None if layers else "r")
            if emb is not None:
                return (emb if layers else np.ascontiguousarray(emb[:, -1])), True
        if path.is_file() and not layers:
            emb = _load_npy(path, len(indices))
            if emb is not None:
                return emb, True
    was_training = model.training
    model.to(device)  # a model built on the CPU probes on the device asked for
    model.eval()
    try:
        ds = SpecDataset(data.features, indices, data.num_frames)
        emb = predict(lambda b: model.embed(normalize(model, b["spec"]), layers=layers), ds, batch_size=batch_size,
                      device=device, amp=amp, num_workers=num_workers, progress=progress, desc="embed").numpy()
    finally:
        model.train(was_training)
    if path is not None and D.current().is_main:
        _save_npy(emb[:, -1] if layers else emb, path)
        if layers:
            _save_npy(emb, layers_path)
    return emb, False


def _load_npy(path: Path, rows: int, mmap_mode: str | None = None) -> np.ndarray | None:
    """A cached embedding array, checked against its ``.sum`` (size and checksum) and the number
    of clips it must hold; None (and the files removed, with one warning naming them) when it
    fails, so the caller computes it again."""
    problem = check_sum(path)
    emb = None
    if problem is None:
        try:
            emb = np.load(path, mmap_mode=mmap_mode)
        except (OSError, ValueError, EOFError) as exc:
            problem = f"{shown(path)} is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        else:
            if emb.ndim < 2 or emb.shape[0] != rows or emb.dtype != np.float32:
                problem = f"{shown(path)} holds {emb.shape} {emb.dtype}, expected {rows} rows of float32"
    if problem is None:
        return emb
    warnings.warn(f"embedding cache: {problem}; it is computed again", CacheWarning, stacklevel=3)
    del emb
    discard(path)
    return None


def _save_npy(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array))
        follow_umask(tmp, directory=False)
        os.replace(tmp, path)
        write_sum(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    if not has_valid and len(Cs) > 1:
        raise ValueError(
            f"linear probe: no validation data to choose C from {Cs}; set data.valid_fraction > 0 or give one C"
        )
    if not multilabel and len(np.unique(y["train"])) < 2:
        raise ValueError("linear probe: the training part has fewer than two classes")
    scaler = StandardScaler().fit(X["train"])
    Z = {k: scaler.transform(v) for k, v in X.items()}
    metric = metrics[0]
    best: tuple[float, float, Any, dict[str, float]] | None = None
    valid_by_C: dict[float, float] = {}
    for C in Cs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = _classifier(C, multilabel, max_iter, seed).fit(Z["train"], y["train"])
        if not has_valid:
            best = (C, float("nan"), clf, {})
            break
        valid = evaluate(metrics, _scores(clf, Z["valid"], num_classes, multilabel), y["valid"])
        valid_by_C[C] = valid[metric]
        if best is None or valid[metric] > best[1]:  # ties keep the smaller (earlier) C
            best = (C, valid[metric], clf, valid)
    assert best is not None
    C, _, clf, valid = best
    test = evaluate(metrics, _scores(clf, Z["test"], num_classes, multilabel), y["test"])
    return ProbeResult(C=C, metric=metric, valid=valid, test=test, valid_by_C=valid_by_C,
                       embed_dim=int(X["train"].shape[1]), selection="valid" if has_valid else "single C")


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
        from .torch_linear import fit_linear_torch

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
                                             **{f"valid_{k}": v for k, v in result.valid.items()}})]
