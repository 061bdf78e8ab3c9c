"""Pretrain once, evaluate many: a task-independent encoder from an unlabeled corpus.

``ssl-bench pretrain -m MODEL --corpus DIR|task:NAME`` calls :func:`pretrain_on_corpus`: the
corpus gets its own clip length (``--clip-seconds``, else the median length of its clips, or
the task's) and its own feature statistics (measured on the corpus, or the task's published
ones), not a downstream task's; the model's method pretrains on every clip; the encoder is
cached under ``<results>/.cache/pretrain/<hash>/`` (keyed by model, settings, seed and the
audio *content*) with a stable id, the SHA-256 prefix of its weights.  Later runs name it::

    ssl-bench run -m audiomae -t esc50 --checkpoint 3fa2c1d9e0b4          # the id
    ssl-bench run -m audiomae -t esc50,speechcommands --checkpoint ID_A,ID_B  # a sweep

and their rows carry how it was pretrained (``pretrain.*``, masker, decoder, objective,
method) from the config saved in it.  The pretraining itself is a run too
(``results/<run-id>/`` with its loss curve in ``metrics.jsonl`` and a ``pretrain`` row).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as D
from .components import Clip
from .config import ConfigError, data_settings

#: Clips whose length is read to choose the corpus clip length (a sample of large corpora).
LENGTH_SAMPLE = 256


def corpus_clips(spec: str, data_dir: str | Path | None = None) -> tuple[list[Clip], str, float | None, Any]:
    """``(clips, label, clip_seconds or None, task or None)`` of ``--corpus``: a folder of
    audio, or ``task:NAME``, the task's unlabeled corpus when it ships one, else the clips of
    its splits that no split tests on (a task whose every clip is some fold's test clip has
    none: pretrain on a folder instead)."""
    from .registry import get_registry
    from .runner import _corpus_clips

    if spec.startswith("task:"):
        name = spec[len("task:"):]
        task = get_registry().get("task", name).factory(data_dir=data_dir)
        task.prepare()
        if callable(getattr(task, "unlabeled", None)):
            clips = list(task.unlabeled())
        else:
            tested = {c.key for s in task.splits() for c in s.test}
            seen: dict[str, Clip] = {}
            for s in task.splits():
                for c in [*s.train, *(s.valid or [])]:
                    if c.key not in tested:
                        seen.setdefault(c.key, Clip(path=c.path, labels=(), key=c.key))
            clips = list(seen.values())
        if not clips:
            raise ConfigError(f"--corpus {spec}: task {name!r} has no audio outside its test splits (every clip is "
                              "some fold's test clip); pretrain on a folder of audio instead")
        return clips, name, float(task.clip_seconds), task
    folder = Path(spec).expanduser()
    return _corpus_clips(folder), folder.resolve().name, None, None


def median_seconds(clips: list[Clip]) -> float:
    """The median duration of (a sample of) ``clips``, from their headers."""
    import soundfile as sf

    step = max(1, len(clips) // LENGTH_SAMPLE)
    lengths = []
    for clip in clips[::step]:
        try:
            info = sf.info(str(clip.path))
        except (RuntimeError, OSError):
            continue
        if info.samplerate > 0 and info.frames > 0:
            lengths.append(info.frames / info.samplerate)
    if not lengths:
        raise ConfigError(f"--corpus: none of the {len(clips)} clips could be read to measure their length; "
                          "set --clip-seconds")
    return round(float(np.median(lengths)), 2)


def pretrain_on_corpus(
    config: dict[str, Any],
    corpus: str,
    *,
    data_dir: str | Path | None = None,
    results_root: str | Path = "results",
    clip_seconds: float | None = None,
    name: str | None = None,
    resume: bool = True,
    progress: bool = True,
    track: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain ``config``'s model (resolved without a task) on ``corpus`` (see the module
    docstring).  Returns the encoder's record: ``encoder_id``, ``path``, ``name``, ``hash``,
    ``loss``, ``reused``, ``run_dir`` (``None`` on torchrun ranks other than 0)."""
    from .features import extract
    from .model import build_model
    from .protocols.pretrain import pretrain_encoder
    from .provenance import dataset_digest, run_record
    from .registry import get_registry
    from .results import RunWriter, new_run_id
    from .runner import _build_frontend, _mean_std, _NullWriter, cache_root
    from .train import STOP, configure_backends

    registry = get_registry()
    config = copy.deepcopy(config)
    if config.get("method") is None:
        raise ConfigError(f"model {config.get('model')!r} has no pretraining method; choose one with --set method=NAME")
    from .model import initial_checkpoint

    start = initial_checkpoint(config, registry)
    if start is not None:  # the runner evaluates such a model as it would a --checkpoint; never pretrain it silently
        raise ConfigError(f"model {config.get('model')!r} with these settings starts from {start} (e.g. encoder.init), "
                          "which replaces pretraining; set it back to random init to pretrain")
    clips, label, task_seconds, task = corpus_clips(corpus, data_dir)
    seconds = float(clip_seconds) if clip_seconds else (task_seconds or median_seconds(clips))
    config["pretrain"]["corpus"] = corpus if corpus.startswith("task:") else str(Path(corpus).expanduser().resolve())
    info = D.init(config.get("device"))
    device = D.resolve_device(config.get("device"), info)
    configure_backends(device, bool(config.get("deterministic")))
    cache = cache_root(results_root)
    seed = int(config.get("seed", 0))

    # the corpus's own input length and statistics, written into the config the encoder keeps
    node = config["frontend"]
    frontend = _build_frontend(config, registry)
    if node.get("num_frames") is None and "num_frames" in node:
        if not hasattr(frontend, "num_frames_for"):
            raise ConfigError(f"frontend {node['name']!r} cannot size itself (no num_frames_for); set frontend.num_frames")
        node["num_frames"] = int(frontend.num_frames_for(seconds))
        frontend = _build_frontend(config, registry)
    num_frames = int(node.get("num_frames") or frontend.num_frames_for(seconds))
    data = data_settings(config)
    with D.main_first():
        feats = extract(clips, frontend, clip_seconds=seconds, cache_dir=cache / "features" if data.cache else None,
                        device=device, batch_size=32, strict=bool(data.strict), progress=progress and info.is_main)
    if len(feats) == 0:
        raise ConfigError(f"--corpus {corpus}: no clip could be read ({len(feats.skipped)} skipped)")
    key = getattr(frontend, "stats_key", None)
    stats_from = "the frontend uses none"
    if key is not None and getattr(frontend, "norm_stats", None) is None:
        published = (getattr(task, "norm_stats", None) or {}) if task is not None else {}
        if isinstance(published, dict) and key in published:
            mean_std, stats_from = tuple(float(v) for v in published[key]), f"task {label} (published)"
        else:
            mean_std, stats_from = _mean_std(feats, range(len(feats))), "the corpus"
        for k, v in zip(("mean", "std"), mean_std):
            if k in node:
                node[k] = float(v)
    elif key is not None:
        stats_from = "config"

    with D.main_first():
        digest = dataset_digest(feats.clips, cache)
    provenance = {**run_record(device), "data": {"corpus": corpus, **digest}}
    run_id = new_run_id({**config, "task": "pretrain"})
    writer = (RunWriter(results_root, run_id, config, echo=progress, provenance=provenance, track=track)
              if info.is_main else _NullWriter())
    t0 = time.time()
    with STOP.installed(), writer:
        writer.log(f"corpus {corpus}: {len(feats)} clips ({len(feats.skipped)} skipped), {seconds:g} s -> "
                   f"{num_frames} frames; statistics from {stats_from}; device {device}")
        torch.manual_seed(seed)
        model = build_model(config, registry)
        if key is not None and getattr(model.frontend, "norm_stats", None) is None and node.get("mean") is None:
            model.frontend.set_norm_stats(*mean_std)
        model.to(device)
        meta = pretrain_encoder(
            model, clips=feats.clips, features=feats, indices=np.arange(len(feats)), num_frames=num_frames,
            config=config, device=device, cache_dir=cache, resume=resume, progress=progress and info.is_main,
            log=writer.log, log_metrics=lambda r: writer.metrics({"split": "corpus", **r}), label="corpus",
            name=name or f"{config['model']}{'-' + str(config['preset']) if config.get('preset') else ''}-{label}"
                         "-{hash}")
        writer.add_row(task=f"corpus:{label}", protocol="pretrain", split="corpus", seed=seed, init="random",
                       init_id="random", metric="loss", value=meta["loss"], primary_metric="loss",
                       code_version=provenance["code_version"], data_sha256=digest["sha256"][:12],
                       encoder_id=meta["encoder_id"], encoder_name=meta["name"], encoder_sha256=meta["weights_sha256"],
                       pretrain_hash=meta["hash"], encoder_path=meta["path"], n_pretrain=meta["n_clips"],
                       reused=meta["reused"], num_frames=num_frames, **meta["compute"])
        writer.log(f"encoder {meta['encoder_id']} ({meta['name']}) in {meta['path']}, {time.time() - t0:.1f} s")
    D.barrier()
    return {**meta, "run_dir": writer.final_dir if info.is_main else None}
