"""The shared embedding cache: frozen clip embeddings of an encoder, extracted once.

Every frozen-encoder protocol (linear, kNN, MLP, per-layer) reads the same embeddings through
:meth:`ProtocolContext.embeddings() <ssl_bench.protocols.base.ProtocolContext.embeddings>`.
They are extracted once per split (``model.embed`` of the normalised spectrogram) and cached
on disk under a key that hashes the encoder's weights and settings, the frontend config, the
model's input length, the feature set and the audio list (:func:`embedding_key`), so
re-running a probe, probing the same encoder with other settings, or running another
frozen-encoder protocol does not run the encoder again.  A per-layer extraction (every block's
pooled tokens, one forward pass) serves the final-layer protocols too.

**Frame embeddings** (:func:`extract_frame_embeddings`, through
:meth:`ProtocolContext.frame_embeddings() <ssl_bench.protocols.base.ProtocolContext.frame_embeddings>`)
are the same idea one level down: every clip's frame-level embeddings and timestamps
(:mod:`ssl_bench.frames`), extracted once and served to every event head and post-processing
choice.  Their key adds how the frames were made: the hop and its method, per layer or not,
the clip length and the storage type (``float16`` allowed: half the disk and memory).

Entries are written atomically with a ``.sum`` beside them and checked when read; a damaged
entry is computed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed as D
from ..config import ConfigError
from ..files import CacheWarning, atomic_write_text, check_sum, discard, follow_umask, shown, write_sum
from ..frames import NATIVE, clip_frames
from ..progress import iterate
from ..train import autocast, predict
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


# --------------------------------------------------------------------------- frame embeddings
#: Storage types of cached frame embeddings (``frame_dtype``): float16 halves the disk and memory.
FRAME_DTYPES = ("float16", "float32")


@dataclass
class FrameEmbeddings:
    """Frame-level embeddings of a list of clips, ragged: clip ``i``'s frames are rows
    ``offsets[i]:offsets[i + 1]`` of ``values`` (``[frames, D]``, or ``[frames, K, D]`` per
    layer; float16 or float32, memory-mapped when read from the cache) at ``timestamps`` (float64
    seconds from the clip's start).  ``method`` and ``hop_s`` say how the frames were made
    (:class:`~ssl_bench.frames.Frames`); ``from_cache``: read, not computed."""

    values: np.ndarray
    timestamps: np.ndarray
    offsets: np.ndarray
    method: str
    hop_s: float
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def clip(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(values, timestamps)`` of clip ``i``."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.values[a:b], self.timestamps[a:b]

    def select(self, rows: Sequence[int]) -> FrameEmbeddings:
        """The clips ``rows`` (positions in this set), in that order, copied out."""
        rows = [int(r) for r in rows]
        spans = [np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]
        take = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        sizes = np.array([len(s) for s in spans], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return FrameEmbeddings(np.asarray(self.values[take]), np.asarray(self.timestamps[take]), offsets,
                               self.method, self.hop_s, self.from_cache)

    def layer(self, k: int) -> FrameEmbeddings:
        """Layer ``k`` of a per-layer set (``values[:, k]``)."""
        if self.values.ndim != 3:
            raise ValueError("these frame embeddings hold one layer")
        return FrameEmbeddings(np.ascontiguousarray(self.values[:, k]), self.timestamps, self.offsets, self.method,
                               self.hop_s, self.from_cache)


def frame_embedding_key(model: nn.Module, data: SplitData, indices: Sequence[int], *, hop_s: float | None,
                        method: str, layers: bool, dtype: str) -> str:
    """Cache key of frame embeddings: :func:`embedding_key` (encoder weights and settings, frontend,
    input length, features, audio list) + how the frames were made (hop, method, per layer,
    storage type, clip length)."""
    payload = {"clips": embedding_key(model, data, indices), "version": 1,
               "frames": {"hop_s": hop_s, "method": NATIVE if hop_s is None else method, "layers": bool(layers),
                          "dtype": dtype, "window": int(data.num_frames), "clip_seconds": data.clip_seconds}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _frame_paths(cache_dir: Path, key: str) -> dict[str, Path]:
    return {part: cache_dir / f"{key}.{part}.npy" for part in ("values", "timestamps", "offsets")} | {
        "meta": cache_dir / f"{key}.json"}


def _load_frames(cache_dir: Path, key: str, rows: int, dtype: str) -> FrameEmbeddings | None:
    """A cached frame entry, checked (sums, shapes, dtypes, the clips it must hold); None when it
    is absent or damaged (then its files are removed with one warning, and it is computed again)."""
    paths = _frame_paths(cache_dir, key)
    if not paths["meta"].is_file():  # written last: without it the entry is incomplete
        return None
    problem = None
    try:
        meta = json.loads(paths["meta"].read_text())
        arrays = {}
        for part in ("values", "timestamps", "offsets"):
            problem = check_sum(paths[part])
            if problem is not None:
                break
            arrays[part] = np.load(paths[part], mmap_mode="r" if part == "values" else None)
    except (OSError, ValueError, EOFError) as exc:
        problem = f"{shown(cache_dir / key)} is unreadable ({type(exc).__name__})"
    if problem is None:
        values, stamps, offsets = arrays["values"], arrays["timestamps"], arrays["offsets"]
        if (offsets.ndim != 1 or len(offsets) != rows + 1 or values.dtype != np.dtype(dtype)
                or stamps.dtype != np.float64 or values.shape[0] != stamps.shape[0] or offsets[-1] != values.shape[0]):
            problem = f"{shown(paths['values'])} does not hold {rows} clips of {dtype} frame embeddings"
    if problem is None:
        return FrameEmbeddings(values, stamps, offsets, meta["method"], float(meta["hop_s"]), from_cache=True)
    warnings.warn(f"frame embedding cache: {problem}; it is computed again", CacheWarning, stacklevel=3)
    discard(*paths.values())
    return None


@torch.no_grad()
def extract_frame_embeddings(
    model: nn.Module,
    data: SplitData,
    indices: Sequence[int],
    *,
    batch_size: int,
    device: torch.device | str,
    cache_dir: str | Path | None = None,
    amp: bool = True,
    hop_s: float | None = None,
    method: str = "interpolate",
    layers: bool = False,
    dtype: str = "float16",
    progress: bool = False,
) -> FrameEmbeddings:
    """Frame-level embeddings (:func:`ssl_bench.frames.clip_frames`) of the clips ``indices`` of
    ``data``, each clip whole (windows of the model's input length), at the encoder's columns or
    ``hop_s`` by ``method``; ``layers``: every layer (``[frames, K, D]``).  Stored as ``dtype``.

    Extracted once per (encoder weights and settings, clips, hop, method, layers, dtype) and
    cached under ``cache_dir``; a per-layer entry also serves ``layers=False`` (its last layer).
    Under torchrun rank 0 extracts and writes the entry and the other ranks read it.
    """
    if dtype not in FRAME_DTYPES:
        raise ConfigError(f"frame embeddings dtype {dtype!r}: choose one of {', '.join(FRAME_DTYPES)}")
    indices = [int(i) for i in indices]
    cache = Path(cache_dir) if cache_dir is not None else None
    kw = {"hop_s": hop_s, "method": method, "dtype": dtype}
    with D.main_first():
        if cache is not None:
            if not layers:
                whole = _load_frames(cache, frame_embedding_key(model, data, indices, layers=True, **kw), len(indices),
                                     dtype)
                if whole is not None:
                    return whole.layer(-1)
            key = frame_embedding_key(model, data, indices, layers=layers, **kw)
            found = _load_frames(cache, key, len(indices), dtype)
            if found is not None:
                return found
        device = torch.device(device)
        was_training = model.training
        model.to(device)
        model.eval()
        values, stamps, sizes = [], [], []
        method_made, hop_made = method, hop_s
        lengths = {i: int(data.features[i].shape[0]) for i in indices} if not hasattr(data.features, "lengths") \
            else data.features.lengths
        groups: list[list[int]] = []  # consecutive clips of one length, at most batch_size each
        for i in indices:
            if groups and len(groups[-1]) < batch_size and lengths[groups[-1][0]] == lengths[i]:
                groups[-1].append(i)
            else:
                groups.append([i])
        try:
            for group in iterate(groups, desc="frames", enabled=progress and D.current().is_main):
                feats = torch.stack([data.features[j] for j in group]).to(device)
                with autocast(device, amp):
                    frames = clip_frames(model, feats, window=data.num_frames, duration_s=data.clip_seconds,
                                         hop_s=hop_s, method=method, layers=layers, batch_size=batch_size)
                emb = frames.embeddings.float()
                if layers:  # [b, K, n, D] -> [b, n, K, D]: a clip's frames are rows
                    emb = emb.transpose(1, 2)
                emb = emb.to("cpu").numpy().astype(dtype)
                for row in emb:
                    values.append(row)
                    stamps.append(frames.timestamps.numpy())
                    sizes.append(row.shape[0])
                method_made, hop_made = frames.method, frames.hop_s
        finally:
            model.train(was_training)
        out = FrameEmbeddings(np.concatenate(values), np.concatenate(stamps).astype(np.float64),
                              np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), method_made, float(hop_made))
        if cache is not None and D.current().is_main:
            paths = _frame_paths(cache, key)
            for part in ("values", "timestamps", "offsets"):
                _save_npy(getattr(out, part), paths[part])
            atomic_write_text(paths["meta"], json.dumps({"method": out.method, "hop_s": out.hop_s}))
    return out
