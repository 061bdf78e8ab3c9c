"""The shared embedding cache: frozen clip embeddings of an encoder, extracted once.

Every frozen-encoder protocol (linear, kNN, MLP, per-layer) reads the same embeddings through
:meth:`ProtocolContext.embeddings() <ssl_bench.protocols.base.ProtocolContext.embeddings>`.
They are extracted once per split (``model.embed`` of the normalised spectrogram) and cached
on disk under a key that hashes the encoder's weights and settings, the frontend config, the
model's input length, the precision it runs in (bf16 autocast or float32), the feature set and
the audio list (:func:`embedding_key`), so
re-running a probe, probing the same encoder with other settings, or running another
frozen-encoder protocol does not run the encoder again.  A per-layer extraction (every block's pooled tokens, one forward
pass) serves the final-layer protocols too.  Entries are written atomically with a ``.sum``
beside them and checked when read; a damaged entry is computed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed as D
from ..files import CacheWarning, check_sum, discard, follow_umask, shown, write_sum
from ..train import precision, predict
from .data import SpecDataset, SplitData, normalize


def weights_hash(module: nn.Module) -> str:
    """SHA-256 of every tensor of ``module.state_dict()`` (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _frontend_config(model: nn.Module) -> dict[str, Any]:
    """The model's frontend settings as a dict, for the cache key (from its config when the
    frontend module has none)."""
    cfg = getattr(getattr(model, "frontend", None), "cfg", None)
    if cfg is None:
        return dict(getattr(model, "config", {}).get("frontend") or {})
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))


def embedding_key(model: nn.Module, data: SplitData, indices: Sequence[int], precision: str = "float32") -> str:
    """Cache key: encoder weights and settings (pooling, ...) + frontend config + model length +
    the precision the encoder runs in (``bf16`` embeddings are not float32 ones) + the audio list."""
    clips = [str(data.features.clips[int(i)].path) for i in indices]
    encoder_cfg = getattr(model.encoder, "cfg", None)
    payload = {
        "encoder": weights_hash(model.encoder),
        "encoder_type": type(model.encoder).__qualname__,
        "encoder_cfg": dataclasses.asdict(encoder_cfg) if dataclasses.is_dataclass(encoder_cfg) else repr(encoder_cfg),
        "frontend": _frontend_config(model),
        "num_frames": data.num_frames,
        "precision": precision,
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
        key = embedding_key(model, data, indices, precision=precision(device, amp))
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
