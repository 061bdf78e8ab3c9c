"""Self-supervised pretraining: the model's *method* on unlabeled spectrograms.

The training loop knows no method by name: each step calls ``model.method.loss(model, spec,
step)`` on a micro-batch of normalised features, ``method.after_step`` after every optimiser
step (an EMA teacher) and ``method.on_epoch_end`` after every epoch.  Randomness a method
shares across a global batch (MAE's masks) comes from ``step.generator()``, seeded by (seed,
step), so pretraining is the same computation for any number of processes or accumulation
steps, and after any resume.

As a protocol (``pretrain``, stage ``pretrain``) it trains the split's model in place, on the
split's training audio or on ``pretrain.corpus``, and reuses a finished pretraining with the
same hash of (model slots, pretraining settings, seed, audio *content*) from
``<cache>/pretrain/<hash>/``; an interrupted one continues from its per-epoch checkpoint there.
:func:`pretrain_encoder` is that step on its own, which ``ssl-bench pretrain`` also uses to
make a task-independent encoder from a corpus.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import distributed as D
from ..config import BOOKKEEPING_FIELDS, ConfigError, config_hash, data_settings
from ..train import FitHooks, FitResult, OptimConfig, StepContext, TrainConfig, fit
from .base import Protocol, ProtocolContext, ProtocolResult
from .data import SpecDataset, normalize


@dataclass
class PretrainConfig(OptimConfig):
    """Self-supervised pretraining (MAE recipe defaults; model presets refine them)."""

    enabled: bool = True  # False: no pretraining, the encoder stays randomly initialised
    epochs: int = 32
    batch_size: int = 512  # global batch (per step, after accumulation)
    blr: float = 1.5e-4  # lr = blr * batch_size / 256
    warmup_epochs: float = 3.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    corpus: str | None = None  # unlabeled audio to pretrain on instead of the split's training audio:
    # a folder, or "task" for the task's own unlabeled corpus (synthetic ships one)


def _method(model: nn.Module) -> Any:
    method = getattr(model, "method", None)
    if method is None:
        raise ConfigError(f"model {getattr(model, 'name', type(model).__name__)!r} has no pretraining method; "
                          "choose one with method=NAME (see `ssl-bench plugins`)")
    return method


def pretrain_loss(model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
    """The method's loss of one micro-batch of raw log-mel (normalised here, on the device)."""
    return _method(model).loss(model, normalize(model, batch["spec"]), ctx)


def train_config(config: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a resolved config's ``pretrain`` section."""
    return TrainConfig.from_sections(dict(config["pretrain"]), run=config,
                                     num_workers=data_settings(config).num_workers)


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
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Pretrain ``model`` (an :class:`~ssl_bench.model.SSLModel` with a method) on ``dataset``.

    ``config``: the resolved run config (its ``pretrain`` section, ``seed``, ``amp``,
    ``compile``, ``deterministic`` and ``data.num_workers`` are used).  Per-epoch records go
    to ``log_metrics`` with ``protocol: pretrain``.
    """
    cfg = train_config(config)
    method = _method(model)
    after = getattr(method, "after_step", None)
    epoch_end = getattr(method, "on_epoch_end", None)

    def record(record: dict[str, Any]) -> None:
        if log_metrics is not None:
            log_metrics({"protocol": "pretrain", **record})

    return fit(
        model, dataset, pretrain_loss, cfg, device=device, checkpoint_dir=checkpoint_dir, resume=resume,
        progress=progress, desc="pretrain", section="pretrain",
        hooks=FitHooks(
            on_step_end=(lambda step, m: after(m, step)) if after is not None else None,
            on_epoch_end=(lambda epoch, m: epoch_end(m, epoch)) if epoch_end is not None else None,
            log_metrics=record, log=log,
        ),
    )


def audio_digest(clips: Any, cache_dir: str | Path | None = None) -> str:
    """Digest of the audio a pretraining reads: its content (sorted file SHA-256s, cached per
    path, size and mtime), not its paths, so replacing a file's sound forces a new pretraining
    and moving the corpus does not."""
    from ..provenance import audio_digest as content_digest

    return content_digest(clips, cache_dir)


def _recipe(config: dict[str, Any], model_slots: Any, norm_stats: tuple[float, float] | None) -> dict[str, Any]:
    # the corpus is keyed by its audio content (below), not by where it is stored
    pre = {k: v for k, v in config["pretrain"].items() if k not in ("enabled", "corpus", *BOOKKEEPING_FIELDS)}
    return {
        "norm": [float(v) for v in norm_stats] if norm_stats is not None else None,
        "model": config.get("model"),
        "slots": {s: config.get(s) for s in model_slots},
        "pretrain": pre,
        "seed": config.get("seed"),
    }


def pretrain_hash(config: dict[str, Any], clips: Any, model_slots: Any,
                  norm_stats: tuple[float, float] | None = None, cache_dir: str | Path | None = None) -> str:
    """Hash of what determines a pretrained encoder: the model's component slots, pretraining
    settings (minus bookkeeping), seed, the feature normalisation and the audio content it sees
    (``cache_dir`` keeps the file digests between runs)."""
    return config_hash({**_recipe(config, model_slots, norm_stats), "audio": audio_digest(clips, cache_dir),
                        "n": len(clips)})


def recipe_id(config: dict[str, Any], model_slots: Any, data_sha256: str) -> str:
    """The ``init_id`` of rows whose encoder was pretrained split by split on a task's own
    training audio: one id for the recipe and the task's data, since each split has its own
    encoder (its ``pretrain_hash`` tells them apart)."""
    return "per-split:" + config_hash({**_recipe(config, model_slots, None), "data": data_sha256})


def pretrain_encoder(model: nn.Module, *, clips: Any, features: Any, indices: np.ndarray, num_frames: int,
                     config: dict[str, Any], device: torch.device, cache_dir: Path, resume: bool = True,
                     progress: bool = False, log: Callable[[str], None] = print,
                     log_metrics: Callable[[dict[str, Any]], None] | None = None, label: str = "",
                     name: str | None = None) -> dict[str, Any]:
    """Pretrain ``model`` in place on ``features[indices]`` (the audio of ``clips``), or load the
    finished pretraining with the same :func:`pretrain_hash` from ``<cache_dir>/pretrain/<hash>/``.

    Returns its record (``meta.json``): ``hash``, ``loss``, ``epochs``, ``steps``, ``n_clips``,
    ``compute``, ``path`` (the weights), ``weights_sha256`` and ``encoder_id`` (the weights'
    content id, the ``init_id`` of rows evaluated from it), ``name`` (``{hash}`` in it becomes
    the hash's first characters), and ``reused``.
    """
    from ..checkpoint import atomic_write_text, load_into, save_model
    from ..config import MODEL_SLOTS
    from ..provenance import ID_LENGTH, file_sha256
    from ..runner import compute_columns, count_parameters, flops_per_sample, jsonable, spec_probe

    prefix = f"[{label}] " if label else ""
    h = pretrain_hash(config, clips, MODEL_SLOTS, getattr(model.frontend, "norm_stats", None), cache_dir)
    name = name.format(hash=h[:6]) if name else None
    out_dir = cache_dir / "pretrain" / h
    final = out_dir / "pretrained.pt"
    meta_path = out_dir / "meta.json"
    t0 = time.time()
    meta = D.broadcast_object(_verified_meta(final, meta_path, cache_dir) if D.current().is_main else None)
    if meta is not None:
        load_into(model, final, strict=True)
        log(f"{prefix}pretrain: reusing {final} (hash {h}, final loss {meta['loss']:.4f})")
        reused = True
    else:
        ds = SpecDataset(features, indices, num_frames, random_crop=True)
        result = pretrain(model, ds, config, device=device, checkpoint_dir=out_dir, resume=resume,
                          progress=progress, log_metrics=log_metrics,
                          log=(lambda m: log(prefix + m)) if progress else None)
        probe = spec_probe(num_frames, model.ctx.num_bins, device)
        step = StepContext(0, 0, 0, 0, 0, 1, 0)  # a fixed step: counting FLOPs must not consume any RNG
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            flops = flops_per_sample(lambda s: _method(model).loss(model, normalize(model, s), step), probe)
        meta = {
            "hash": h, "loss": result.final_loss, "epochs": result.epochs, "steps": result.steps,
            "n_clips": len(indices), "corpus": config["pretrain"].get("corpus"), "num_frames": int(num_frames),
            "norm": getattr(model.frontend, "norm_stats", None),
            "compute": compute_columns(parameters=count_parameters(model), flops=flops, fit=result,
                                       wall_s=result.wall_s, device=device, world_size=D.current().world_size),
        }
        if D.current().is_main:
            save_model(model, final, pretrain_hash=h, **({"name": name} if name else {}))
        D.barrier()
        reused = False
        epochs = train_config(config).epochs
        if result.resumed_from and result.resumed_from[0] >= epochs:  # killed before its weights were saved
            resumed = f"finished before the interruption ({out_dir / 'last.pt'}), weights saved now; "
        elif result.resumed_from:
            resumed = (f"resumed at epoch {result.resumed_from[0] + 1} of {epochs}, step {result.resumed_from[1]}; ")
        else:
            resumed = ""
        log(f"{prefix}pretrain: {resumed}{result.epochs} epochs, final loss "
            f"{result.final_loss:.4f}, {result.samples_per_s:.1f} samples/s, {time.time() - t0:.1f} s")
    if "weights_sha256" not in meta or (name and meta.get("name") != name):
        meta["weights_sha256"] = file_sha256(final, cache_dir)
        meta["encoder_id"] = meta["weights_sha256"][:ID_LENGTH]
        meta["name"] = name or meta.get("name")
        if D.current().is_main:
            atomic_write_text(meta_path, json.dumps(meta, indent=1, default=jsonable))
        D.barrier()
    return {**meta, "path": str(final), "reused": reused}


def _verified_meta(final: Path, meta_path: Path, cache_dir: Path) -> dict[str, Any] | None:
    """The record of a finished pretraining whose weights are intact, or None.

    ``pretrained.pt`` must have the SHA-256 its ``meta.json`` recorded (truncated or overwritten
    weights are caught before they are loaded); a damaged pair is removed with one warning
    naming it, and the pretraining is made again (from its finished ``last.pt`` when that is
    intact, which costs no training)."""
    import warnings

    from ..files import CacheWarning, shown
    from ..provenance import file_sha256

    if not (final.is_file() and meta_path.is_file()):
        return None
    problem = None
    try:
        meta = json.loads(meta_path.read_text())
        float(meta["loss"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"{shown(meta_path)} is unreadable ({type(exc).__name__})"
    else:
        want = meta.get("weights_sha256")
        if want and file_sha256(final, cache_dir) != want:
            problem = (f"{shown(final)} ({final.stat().st_size} bytes) does not have the SHA-256 recorded in "
                       f"{meta_path.name} (truncated or overwritten)")
    if problem is None:
        return meta
    warnings.warn(f"pretrained encoder cache: {problem}; it is made again", CacheWarning, stacklevel=3)
    for p in (final, meta_path):
        p.unlink(missing_ok=True)
    return None


class PretrainProtocol(Protocol):
    """``pretrain``: the model's method on the split's training audio (or a corpus)."""

    Config = PretrainConfig
    stage = "pretrain"
    trains_on = "unlabeled"
    help = "only pretrain (checkpoints are cached and reused by config hash)"

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        from ..config import MODEL_SLOTS

        run, model = ctx.run, ctx.model
        corpus = ctx.section.corpus
        if corpus:  # a folder of audio, or "task": the task's own unlabeled clips
            clips, feats = run.corpus()
            indices = np.arange(len(feats))
        else:
            clips, feats = ctx.data.extra["unlabeled_clips"], ctx.data.features
            indices = np.asarray(ctx.data.extra["unlabeled"], dtype=np.int64)
        meta = pretrain_encoder(
            model, clips=clips, features=feats, indices=indices, num_frames=ctx.data.num_frames, config=ctx.config,
            device=ctx.device, cache_dir=ctx.cache_dir, resume=ctx.resume, progress=ctx.progress, log=ctx.log,
            log_metrics=(lambda r: ctx.log_metrics({"split": ctx.split, **r}))
            if ctx.log_metrics else None, label=ctx.split)
        # rows evaluated from this encoder: one encoder for every split (a corpus) is named by
        # its weights; per-split encoders share the id of their recipe on this task's data
        data_sha = getattr(run, "data_digest", {}).get("sha256", "") if run is not None else ""
        encoder_id = meta["encoder_id"] if corpus else recipe_id(ctx.config, MODEL_SLOTS, data_sha)
        return [ProtocolResult({"loss": meta["loss"]}, {**meta["compute"], "reused": meta["reused"],
                                                        "pretrain_hash": meta["hash"], "n_pretrain": meta["n_clips"],
                                                        "encoder_id": encoder_id,
                                                        "encoder_sha256": meta["weights_sha256"]})]
