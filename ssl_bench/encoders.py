"""Where an encoder comes from, and what it is called.

An encoder under evaluation has one of four sources, and every row names it by content:

* **random**: the model as built (seeded by ``seed``); ``init`` and ``init_id`` are
  ``random``.  Every frozen-encoder protocol also scores it: the baseline an SSL number is read
  against.
* **checkpoint**: a file, a Hugging Face directory, ``torchaudio:BUNDLE`` or the id of an
  encoder ``ssl-bench pretrain`` made (``--checkpoint``), or the weights the config itself
  starts from (the model spec's ``initial_checkpoint``, such as AST's ImageNet weights).
  ``init_id`` is the SHA-256 prefix of its weights; the pretraining settings saved in it
  (``pretrain.*``, masker, decoder, objective, method) replace the run's, so its rows say what
  produced it (:func:`apply_pretraining_record`).
* **pretrained per split**: a pretraining-stage protocol (the built-in ``pretrain``: the
  model's method) on the split's training audio, so pretraining never sees a test clip.
  Each split has its own encoder; the rows share the recipe's id on this task's data
  (:func:`recipe_id`, ``per-split:...``) and each pretraining row its ``pretrain_hash``.
* **pretrained on a corpus**: ``pretrain.corpus`` (a folder, or ``task``: the task's own
  unlabeled clips) for a run, or ``ssl-bench pretrain --corpus`` (:func:`pretrain_on_corpus`)
  for a task-independent encoder; one encoder, named by its weights' SHA-256.

Pretraining is cached by content: :func:`pretrain_encoder` keys a finished pretraining by
:func:`pretrain_hash` (model slots, pretraining settings, seed, normalisation and the audio's
*content*) under ``<cache>/pretrain/<hash>/`` and reuses it; an interrupted one continues from
its per-epoch checkpoint there.  The entry's lock is held while it is made, so two processes
that need one encoder (parallel jobs of a sweep) never both train it: the second waits and
reuses it.  The training loop knows no method by name: each step calls
``model.method.loss(model, spec, step)`` on a micro-batch of normalised features
(:func:`pretrain_loss`); randomness a method shares across a global batch (MAE's masks) comes
from ``step.generator()``, so pretraining is the same computation for any number of
processes or accumulation steps, and after any resume.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from . import distributed as D
from .compute import compute_columns, count_parameters, cpu_seconds, flops_per_sample, spec_probe
from .config import (
    BOOKKEEPING_FIELDS,
    EXECUTION_FIELDS,
    MODEL_SLOTS,
    ConfigError,
    RunSettings,
    config_hash,
    data_settings,
)
from .files import atomic_write_text, file_lock, json_default
from .protocols.base import Pretrained
from .protocols.data import SpecDataset, Unlabeled, normalize
from .provenance import ID_LENGTH
from .splitdata import (
    extract_features,
    folder_clips,
    mean_std,
    median_seconds,
    published_stats,
    size_frontend,
)
from .train import FitHooks, FitResult, StepContext, TrainConfig, fit, precision

#: ``init`` of a pretraining protocol's own rows: the encoder they describe is being made
#: (from random initialisation), and their ``init_id`` is the one its evaluations carry.
PRETRAINING_INIT = "pretraining from random"
#: The slots that make a pretraining (the frontend and encoder are the checkpoint's own).
PRETRAINING_SLOTS = ("masker", "decoder", "objective", "method")


@dataclass(frozen=True)
class EncoderIdentity:
    """What rows evaluated from an encoder say about it: ``init`` (a readable name: ``random``,
    ``pretrained``, a checkpoint's name), ``init_id`` (its content id) and ``pretrained_by``
    (where its pretraining settings come from: ``this run``, ``checkpoint config``,
    ``unknown``; empty for the random encoder)."""

    init: str
    init_id: str
    pretrained_by: str = ""

    @property
    def is_random(self) -> bool:
        return self.init_id == "random"


RANDOM = EncoderIdentity("random", "random", "")


# --------------------------------------------------------------------------- identity
def apply_pretraining_record(config: dict[str, Any], saved: dict[str, Any] | None) -> str:
    """Put into ``config`` how a checkpoint's encoder was pretrained: the ``pretrain`` section and
    the pretraining slots (masker, decoder, objective, method) of the config saved in it, so the
    rows evaluated from it say what produced it (``results --compare masker.ratio`` then works
    across pretraining ablations).  Returns the ``pretrained_by`` column: ``checkpoint config``,
    or ``unknown`` for a checkpoint that carries no ssl-bench config (official releases)."""
    if not isinstance(saved, dict):
        return "unknown"
    # the slots are parts of the model that is built: only a checkpoint of the same model may set
    # them (a frozen import of another model's checkpoint, such as a HEAR module, keeps its own)
    same_model = saved.get("model") in (None, config.get("model"))
    for slot in PRETRAINING_SLOTS:
        if same_model and slot in saved and slot in config:
            config[slot] = copy.deepcopy(saved[slot])
    if isinstance(saved.get("pretrain"), dict) and isinstance(config.get("pretrain"), dict):
        config["pretrain"] = {**config["pretrain"], **copy.deepcopy(saved["pretrain"])}
    return "checkpoint config"


def _is_pretraining_key(key: str) -> bool:
    """Whether dotted ``key`` says how an encoder is pretrained (a pretraining slot or its
    settings, a ``pretrain.*`` setting other than ``enabled`` and bookkeeping)."""
    head, _, rest = key.partition(".")
    if head in PRETRAINING_SLOTS:
        return True
    return head == "pretrain" and bool(rest) and rest not in ("enabled", *BOOKKEEPING_FIELDS)


_ABSENT = object()


def _setting(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node.get("name") if isinstance(node, dict) and key.split(".")[0] in PRETRAINING_SLOTS else node


def refuse_pretraining_settings(given: dict[str, Any], config: dict[str, Any], checkpoint: str | Path) -> None:
    """A setting of how the encoder is pretrained (``masker.ratio``, ``pretrain.epochs``...) that
    the user gave (``given``: dotted keys of ``--set`` and ``--config``) for a run evaluating
    ``checkpoint`` cannot change that encoder, and rows would record the user's value for weights
    made with another (a sweep over it, identical runs): one :class:`ConfigError` naming the key
    and the checkpoint's own value, unless the two agree.  A checkpoint that records no
    pretraining settings (an official release) takes a component choice (``decoder=none`` to load
    only its encoder), but no setting its rows could not vouch for."""
    keys = [k for k in given if _is_pretraining_key(k)]
    if not keys:
        return
    from .provenance import checkpoint_payload

    saved = (checkpoint_payload(checkpoint) or {}).get("config")
    for key in keys:
        mine, theirs = _setting(config, key), _setting(saved, key)
        if theirs is not _ABSENT and json.dumps(theirs, default=str) == json.dumps(mine, default=str):
            continue
        if not isinstance(saved, dict) and key in PRETRAINING_SLOTS:
            continue  # which component to build, for a file that says nothing of its pretraining
        value = mine if isinstance(mine, str) else json.dumps(mine, default=str)
        if theirs is _ABSENT:
            was = ("records no pretraining settings" if not isinstance(saved, dict) else
                   "records no such pretraining setting") + ", so its rows cannot say it"
        else:
            was = f"was pretrained with {key}={theirs if isinstance(theirs, str) else json.dumps(theirs, default=str)}"
        raise ConfigError(f"{key}={value}: the encoder of --checkpoint {checkpoint} {was}; a pretraining setting "
                          "cannot change a checkpoint (drop it, or pretrain a new encoder without --checkpoint)")


def _recipe(config: dict[str, Any], model_slots: Any, norm_stats: tuple[float, float] | None,
            device: Any = None) -> dict[str, Any]:
    """What makes a pretrained encoder, as settings: the model and its slots, the pretraining
    settings, every run setting that can change the weights (the seed, and ``amp`` as the
    precision it gives on ``device``), the normalisation.  Left out: what
    :data:`~ssl_bench.config.BOOKKEEPING_FIELDS` and :data:`~ssl_bench.config.EXECUTION_FIELDS`
    list, and the corpus's place (the audio is keyed by its content)."""
    skip = set(BOOKKEEPING_FIELDS) | set(EXECUTION_FIELDS)
    pre = {k: v for k, v in config["pretrain"].items() if k not in ("enabled", "corpus", *skip)}
    run = {f.name: config.get(f.name) for f in dataclasses.fields(RunSettings) if f.name not in skip}
    if "amp" in run:  # the arithmetic, not the switch: amp on a CPU without bf16 is float32
        run["amp"] = precision(device if device is not None else config.get("device"), bool(run["amp"]))
    return {
        "norm": [float(v) for v in norm_stats] if norm_stats is not None else None,
        "model": config.get("model"),
        "slots": {s: config.get(s) for s in model_slots},
        "pretrain": pre,
        "run": run,
    }


def audio_digest(clips: Any, cache_dir: str | Path | None = None) -> str:
    """Digest of the audio a pretraining reads: its content (sorted file SHA-256s), not its
    paths, so replacing a file's sound forces a new pretraining and moving the corpus does not."""
    from .provenance import audio_digest as content_digest

    return content_digest(clips, cache_dir)


def pretrain_hash(config: dict[str, Any], clips: Any, model_slots: Any = MODEL_SLOTS,
                  norm_stats: tuple[float, float] | None = None, cache_dir: str | Path | None = None,
                  device: Any = None) -> str:
    """Hash of what determines a pretrained encoder: the model's component slots, pretraining
    settings (minus bookkeeping), the seed and the precision on ``device`` (default: the
    config's), the feature normalisation and the audio content it sees (``cache_dir`` keeps the
    file digests between runs)."""
    return config_hash({**_recipe(config, model_slots, norm_stats, device), "audio": audio_digest(clips, cache_dir),
                        "n": len(clips)})


def recipe_id(config: dict[str, Any], data_sha256: str, model_slots: Any = MODEL_SLOTS, device: Any = None) -> str:
    """The ``init_id`` of rows whose encoder was pretrained split by split on a task's own
    training audio: one id for the recipe (precision on ``device`` included) and the task's
    data, since each split has its own encoder (its ``pretrain_hash`` tells them apart)."""
    return "per-split:" + config_hash({**_recipe(config, model_slots, None, device), "data": data_sha256})


# --------------------------------------------------------------------------- pretraining
def _method(model: nn.Module) -> Any:
    method = getattr(model, "method", None)
    if method is None:
        raise ConfigError(f"model {getattr(model, 'name', type(model).__name__)!r} has no pretraining method; "
                          "choose one with method=NAME (see `ssl-bench plugins`)")
    return method


def pretrain_loss(model: nn.Module, batch: dict[str, Any], step: StepContext) -> torch.Tensor:
    """The method's loss of one micro-batch of raw log-mel (normalised here, on the device)."""
    return _method(model).loss(model, normalize(model, batch["spec"]), step)


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
    to ``log_metrics`` with ``protocol: pretrain``.  The method's ``after_step`` runs after
    every optimiser step (an EMA teacher) and ``on_epoch_end`` after every epoch.
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


def pretraining_flops(model: nn.Module, num_frames: int, device: torch.device) -> float | None:
    """FLOPs per example of one pretraining step's forward (the method's loss), counted without
    consuming any random number: the step is fixed and every RNG forked."""
    def loss(spec: torch.Tensor) -> torch.Tensor:
        step = StepContext(0, 0, 0, 0, 0, spec.shape[0], 0)
        return _method(model).loss(model, normalize(model, spec), step)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return flops_per_sample(loss, spec_probe(num_frames, model.build.num_bins, device))


def pretrain_encoder(model: nn.Module, unlabeled: Unlabeled, *, num_frames: int, config: dict[str, Any],
                     device: torch.device, cache_dir: Path, resume: bool = True, progress: bool = False,
                     log: Callable[[str], None] = print, log_metrics: Callable[[dict[str, Any]], None] | None = None,
                     name: str | None = None) -> dict[str, Any]:
    """Pretrain ``model`` in place on ``unlabeled`` (the features of its clips), or load the
    finished pretraining with the same :func:`pretrain_hash` from ``<cache_dir>/pretrain/<hash>/``.

    Returns its record (``meta.json``): ``hash``, ``loss``, ``epochs``, ``steps``, ``n_clips``,
    ``compute``, ``path`` (the weights), ``weights_sha256`` and ``init_id`` (the weights'
    content id, the ``init_id`` of rows evaluated from it), ``name`` (``{hash}`` in it becomes
    the hash's first characters), and ``reused``.
    """
    prefix = f"[{unlabeled.label}] " if unlabeled.label else ""
    h = pretrain_hash(config, unlabeled.clips, MODEL_SLOTS, getattr(model.frontend, "norm_stats", None), cache_dir,
                      device=device)
    name = name.format(hash=h[:6]) if name else None
    out_dir = cache_dir / "pretrain" / h
    # one writer per encoder: a process that needs the same pretraining (a parallel job of a
    # sweep) waits here, then reuses what the first one made
    lock = (file_lock(cache_dir / "pretrain" / ".locks" / h,
                      waiting=lambda: log(f"{prefix}pretrain: another process is pretraining {h}; waiting for it"))
            if D.current().is_main else contextlib.nullcontext())
    with lock:
        return _pretrain_encoder(model, unlabeled, h, name, out_dir, num_frames=num_frames, config=config,
                                 device=device, cache_dir=cache_dir, resume=resume, progress=progress, log=log,
                                 log_metrics=log_metrics, prefix=prefix)


def _pretrain_encoder(model: nn.Module, unlabeled: Unlabeled, h: str, name: str | None, out_dir: Path, *,
                      num_frames: int, config: dict[str, Any], device: torch.device, cache_dir: Path, resume: bool,
                      progress: bool, log: Callable[[str], None], log_metrics: Callable[[dict[str, Any]], None] | None,
                      prefix: str) -> dict[str, Any]:
    """:func:`pretrain_encoder` with the encoder's lock held."""
    from .checkpoint import load_into, save_model
    from .provenance import file_sha256

    final = out_dir / "pretrained.pt"
    meta_path = out_dir / "meta.json"
    t0, cpu0 = time.time(), cpu_seconds()
    meta = D.broadcast_object(_verified_meta(final, meta_path, cache_dir) if D.current().is_main else None)
    if meta is not None:
        load_into(model, final, strict=True)
        log(f"{prefix}pretrain: reusing {final} (hash {h}, final loss {meta['loss']:.4f})")
        reused = True
    else:
        ds = SpecDataset(unlabeled.features, unlabeled.indices, num_frames, random_crop=True)
        result = pretrain(model, ds, config, device=device, checkpoint_dir=out_dir, resume=resume,
                          progress=progress, log_metrics=log_metrics,
                          log=(lambda m: log(prefix + m)) if progress else None)
        meta = {
            "hash": h, "loss": result.final_loss, "epochs": result.epochs, "steps": result.steps,
            "n_clips": len(unlabeled.indices), "corpus": config["pretrain"].get("corpus"),
            "num_frames": int(num_frames), "norm": getattr(model.frontend, "norm_stats", None),
            "compute": compute_columns(parameters=count_parameters(model),
                                       flops=pretraining_flops(model, num_frames, device), fit=result,
                                       wall_s=result.wall_s, device=device, world_size=D.current().world_size,
                                       cpu_s=cpu_seconds() - cpu0),
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
    if "weights_sha256" not in meta or "init_id" not in meta or (name and meta.get("name") != name):
        meta["weights_sha256"] = file_sha256(final, cache_dir)
        meta["init_id"] = meta["weights_sha256"][:ID_LENGTH]
        meta.pop("encoder_id", None)  # the name records made before init_id was the one name
        meta["name"] = name or meta.get("name")
        if D.current().is_main:
            atomic_write_text(meta_path, json.dumps(meta, indent=1, default=json_default))
        D.barrier()
    return {**meta, "path": str(final), "reused": reused}


def _verified_meta(final: Path, meta_path: Path, cache_dir: Path) -> dict[str, Any] | None:
    """The record of a finished pretraining whose weights are intact, or None.

    ``pretrained.pt`` must have the SHA-256 its ``meta.json`` recorded (truncated or overwritten
    weights are caught before they are loaded); a damaged pair is removed with one warning
    naming it, and the pretraining is made again (from its finished ``last.pt`` when that is
    intact, which costs no training)."""
    import warnings

    from .files import CacheWarning, shown
    from .provenance import file_sha256

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


def made_by(meta: dict[str, Any]) -> Pretrained:
    """What a pretraining protocol reports it made, from :func:`pretrain_encoder`'s record."""
    return Pretrained(path=meta["path"], weights_sha256=meta["weights_sha256"], pretrain_hash=meta["hash"],
                      name=meta.get("name"), reused=bool(meta["reused"]))


# --------------------------------------------------------------------------- a run's encoders
class EncoderSource:
    """Where the encoders of one run come from (see the module docstring).

    Built before any data work: it resolves ``--checkpoint`` (or the weights the config starts
    from), names them by content and puts their pretraining record into ``config``.  Then, per
    split, :meth:`build` makes the model (random init, statistics set, the checkpoint loaded)
    and :meth:`pretraining_input` / :meth:`pretrained` say what a pretraining protocol trains
    on and what the encoder it made is called.
    """

    def __init__(self, config: dict[str, Any], registry: Any, checkpoint: str | Path | None, cache_dir: Path):
        from .model import initial_checkpoint

        self.config, self.registry, self.cache_dir = config, registry, cache_dir
        self.checkpoint: Path | None = None
        self.identity: dict[str, Any] | None = None  # init, init_id, sha256, config of the checkpoint
        self.pretrained_by = "this run"
        if not checkpoint:  # weights the config itself starts from (ImageNet for AST), recorded like a checkpoint
            with D.main_first():  # rank 0 fetches it first
                checkpoint = initial_checkpoint(config, registry)
        if checkpoint:
            from .provenance import encoder_identity
            from .sources import resolve_checkpoint, source_name

            # a file, a Hugging Face directory, torchaudio:BUNDLE, or the id of an encoder `ssl-bench pretrain` made
            self.checkpoint = resolve_checkpoint(checkpoint, cache_dir)
            self.identity = encoder_identity(self.checkpoint, cache_dir)
            self.identity["init"] = source_name(self.checkpoint) or self.identity["init"]
            config["checkpoint"] = str(self.checkpoint)
            self.pretrained_by = apply_pretraining_record(config, self.identity["config"])
        self._corpus: tuple[list[Any], Any] | None = None

    @property
    def loaded(self) -> EncoderIdentity | None:
        """The identity of the checkpoint every split evaluates, or None (no checkpoint)."""
        if self.identity is None:
            return None
        return EncoderIdentity(self.identity["init"], self.identity["init_id"], self.pretrained_by)

    @property
    def corpus_setting(self) -> str | None:
        """``pretrain.corpus`` when one encoder is pretrained for every split, else None."""
        return (self.config.get("pretrain") or {}).get("corpus") or None

    def record(self) -> dict[str, Any] | None:
        """The ``checkpoint`` part of a run's provenance, or None."""
        if self.identity is None:
            return None
        return {"path": str(self.checkpoint), "init": self.identity["init"], "init_id": self.identity["init_id"],
                "sha256": self.identity["sha256"], "pretrained_by": self.pretrained_by,
                "config": self.identity["config"]}

    def corpus(self, task: Any, extract: Callable[[list[Any]], Any]) -> tuple[list[Any], Any]:
        """The clips and features of ``pretrain.corpus`` (extracted once per run with
        ``extract``): a folder, or ``task``, the task's own unlabeled corpus."""
        if self._corpus is None:
            corpus = self.corpus_setting
            if corpus == "task":  # the task's own unlabeled corpus, disjoint from every split
                if not hasattr(task, "unlabeled"):
                    raise ConfigError(f"pretrain.corpus=task: task {task.name!r} ships no unlabeled corpus; "
                                      "set pretrain.corpus to a folder of audio")
                clips = list(task.unlabeled())
            else:
                clips = folder_clips(corpus)
            self._corpus = (clips, extract(clips))
        return self._corpus

    def build(self, norm: tuple[float, float] | None, seed: int, device: torch.device,
              log: Callable[[str], None], split: str) -> tuple[nn.Module, dict[str, torch.Tensor], EncoderIdentity]:
        """``(model, random_state, identity)`` for one split: the model built with ``seed``, the
        frontend's statistics set, moved to ``device``, with the checkpoint loaded if there is
        one; ``random_state`` is its state before loading (the random-init baseline)."""
        from .model import build_model, load_checkpoint

        torch.manual_seed(seed)
        model = build_model(self.config, self.registry)
        if norm is not None:
            model.frontend.set_norm_stats(*norm)
        random_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.to(device)
        if self.checkpoint is None:
            own = getattr(model.encoder, "weights_identity", None)  # weights the encoder loaded itself
            if own is not None:
                log(f"[{split}] encoder {own[0]} with the weights it loads itself (init_id {own[1]})")
                return model, random_state, EncoderIdentity(str(own[0]), str(own[1]), "unknown")
            return model, random_state, RANDOM
        report = load_checkpoint(model, self.checkpoint, self.registry)
        log(f"[{split}] loaded {report} (init_id {self.identity['init_id']})")
        return model, random_state, self.loaded

    def pretraining_input(self, split: Any, task_data: Any, progress: bool, device: torch.device) -> Unlabeled:
        """The audio a pretraining protocol trains on for ``split``: the corpus, or the split's
        training clips (never its test clips)."""
        if self.corpus_setting:
            clips, feats = self.corpus(task_data.task, lambda c: task_data.extract(c, self.cache_dir, device, progress))
            return Unlabeled(clips, feats, np.arange(len(feats)), split.name)
        return Unlabeled(list(split.train), task_data.features, task_data.indices(split.train), split.name)

    def pretrained(self, made: Pretrained | None, data_sha256: str, device: Any = None) -> EncoderIdentity:
        """The identity of the encoder a pretraining protocol made: one encoder for every split
        (a corpus) is named by its weights; per-split encoders share the id of their recipe
        (trained on ``device``: its precision) on this task's data."""
        if self.corpus_setting and made is not None:
            init_id = made.weights_sha256[:ID_LENGTH]
        else:
            init_id = recipe_id(self.config, data_sha256, device=device)
        return EncoderIdentity("pretrained", init_id, self.pretrained_by)


def differs_from_random(model: nn.Module, random_state: dict[str, torch.Tensor]) -> bool:
    """Whether the random-init baseline of ``model`` would be a different encoder: its encoder
    has weights of its own and they differ from those it was built with.  An encoder that
    keeps none (a frozen import such as a HEAR module) gets no baseline row."""
    own = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    return bool(own) and any(k not in random_state or not torch.equal(random_state[k], v.detach().cpu())
                             for k, v in own.items())


# --------------------------------------------------------------------------- `ssl-bench pretrain`
def corpus_clips(spec: str, data_dir: str | Path | None = None) -> tuple[list[Any], str, float | None, Any]:
    """``(clips, label, clip_seconds or None, task or None)`` of ``--corpus``: a folder of
    audio, or ``task:NAME``, the task's unlabeled corpus when it ships one, else the clips of
    its splits that no split tests on (a task whose every clip is some fold's test clip has
    none: pretrain on a folder instead)."""
    from .components import Clip
    from .registry import get_registry

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
    return folder_clips(folder), folder.resolve().name, None, None


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
    """``ssl-bench pretrain``: a task-independent encoder from an unlabeled corpus.

    The corpus gets its own clip length (``clip_seconds``, else the median length of its clips,
    or the task's) and its own feature statistics (measured on the corpus, or the task's
    published ones), not a downstream task's; the model's method pretrains on every clip; the
    encoder is cached under ``<results>/.cache/pretrain/<hash>/`` with a stable id, the SHA-256
    prefix of its weights, which ``ssl-bench run --checkpoint ID`` names.  The pretraining is a
    run too (``results/<run-id>/`` with its loss curve and a ``pretrain`` row whose ``init_id``
    is the encoder's).  Returns the encoder's record: ``init_id``, ``path``, ``name``, ``hash``,
    ``loss``, ``reused``, ``run_dir`` (``None`` on torchrun ranks other than 0).
    """
    from .files import cache_root
    from .model import build_model, initial_checkpoint
    from .provenance import dataset_digest, run_record
    from .registry import get_registry
    from .results import NullWriter, RunWriter, new_run_id
    from .train import STOP, configure_backends

    registry = get_registry()
    config = copy.deepcopy(config)
    if config.get("method") is None:
        raise ConfigError(f"model {config.get('model')!r} has no pretraining method; choose one with --set method=NAME")
    start = initial_checkpoint(config, registry)
    if start is not None:  # a run evaluates such a model as it would a --checkpoint; never pretrain it silently
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
    frontend, num_frames = size_frontend(config, registry, seconds, what="the corpus's clips")
    feats = extract_features(clips, frontend, seconds=seconds, config=config, cache_dir=cache, device=device,
                             progress=progress and info.is_main)
    if len(feats) == 0:
        raise ConfigError(f"--corpus {corpus}: no clip could be read ({len(feats.skipped)} skipped)")
    key = getattr(frontend, "stats_key", None)
    stats_from = "the frontend uses none"
    if key is not None and getattr(frontend, "norm_stats", None) is None:
        mean_std_ = published_stats(task, frontend)
        if mean_std_ is not None:
            stats_from = f"task {label} (published)"
        else:
            mean_std_, stats_from = mean_std(feats, range(len(feats))), "the corpus"
        for k, v in zip(("mean", "std"), mean_std_):
            if k in node:
                node[k] = float(v)
    elif key is not None:
        stats_from = "config"

    with D.main_first():
        digest = dataset_digest(feats.clips, cache)
    provenance = {**run_record(device, registry=registry), "data": {"corpus": corpus, **digest}}
    run_id = new_run_id({**config, "task": "pretrain"})
    writer = (RunWriter(results_root, run_id, config, echo=progress, provenance=provenance, track=track)
              if info.is_main else NullWriter())
    t0 = time.time()
    with STOP.installed(), writer:
        writer.log(f"corpus {corpus}: {len(feats)} clips ({len(feats.skipped)} skipped), {seconds:g} s -> "
                   f"{num_frames} frames; statistics from {stats_from}; device {device}")
        torch.manual_seed(seed)
        model = build_model(config, registry)
        if key is not None and getattr(model.frontend, "norm_stats", None) is None and node.get("mean") is None:
            model.frontend.set_norm_stats(*mean_std_)
        model.to(device)
        meta = pretrain_encoder(
            model, Unlabeled(feats.clips, feats, np.arange(len(feats)), "corpus"), num_frames=num_frames,
            config=config, device=device, cache_dir=cache, resume=resume, progress=progress and info.is_main,
            log=writer.log, log_metrics=lambda r: writer.metrics({"split": "corpus", **r}),
            name=name or f"{config['model']}{'-' + str(config['preset']) if config.get('preset') else ''}-{label}"
                         "-{hash}")
        writer.add_row(task=f"corpus:{label}", protocol="pretrain", split="corpus", seed=seed, init=PRETRAINING_INIT,
                       init_id=meta["init_id"], metric="loss", value=meta["loss"], primary_metric="loss",
                       code_version=provenance["code_version"], data_sha256=digest["sha256"][:ID_LENGTH],
                       encoder_name=meta["name"], encoder_sha256=meta["weights_sha256"],
                       pretrain_hash=meta["hash"], encoder_path=meta["path"], n_pretrain=meta["n_clips"],
                       reused=meta["reused"], num_frames=num_frames, **meta["compute"])
        writer.log(f"encoder {meta['init_id']} ({meta['name']}) in {meta['path']}, {time.time() - t0:.1f} s")
    D.barrier()
    return {**meta, "run_dir": writer.final_dir if info.is_main else None}


__all__ = ["EncoderIdentity", "EncoderSource", "PRETRAINING_INIT", "RANDOM", "apply_pretraining_record",
           "corpus_clips", "differs_from_random", "pretrain", "pretrain_encoder", "pretrain_hash",
           "pretrain_loss", "pretrain_on_corpus", "recipe_id", "refuse_pretraining_settings"]
