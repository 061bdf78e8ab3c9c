"""One experiment: a model config on a task, split by split, protocol by protocol.

:func:`run_experiment` is what ``ssl-bench run`` calls.  For every split (fold) of the task:

1. validation data come from the split's own validation set, or are carved out of its
   training data (stratified, seeded); the test part is never used for any choice;
2. the features of all the task's clips are extracted once (feature cache); the model's
   ``frontend.num_frames`` follows the task's clip length unless set; a frontend that
   normalises with dataset statistics (``stats_key``) and was given none gets the task's
   published ones for the same features, else those of the split's training features;
3. the protocols of stage ``pretrain`` (the built-in ``pretrain``: the model's method on the
   split's training audio, or on ``pretrain.corpus``) train the encoder, unless a
   ``checkpoint`` replaces them (given, or the one the config starts from: the model spec's
   ``initial_checkpoint``, such as AST's ImageNet weights); their own rows say ``init``
   "pretraining from random" with the ``init_id`` of the encoder they made;
4. every other requested protocol (``finetune``, ``linear``, ``knn``, ... any registered one)
   evaluates those weights; a frozen-encoder protocol also runs on the same encoder at its
   random initialisation (``init=random``), the baseline every SSL number is read against.

The runner knows no protocol by name: the registry lists them, their stage and whether they
are frozen.

Every row names its encoder by content: ``init`` (``random``, ``pretrained`` or the
checkpoint's name) and ``init_id`` (the weights' SHA-256 prefix, or the pretraining recipe's
hash when each split pretrained its own encoder); a checkpoint's saved pretraining settings
(``pretrain.*``, masker, decoder, objective, method) replace the run's, so its rows say what
produced it.  ``result.json`` records the run's provenance (:mod:`ssl_bench.provenance`).

Rows go to a :class:`~ssl_bench.results.RunWriter` (one atomic run directory); per-epoch
records to its ``metrics.jsonl``.  An interrupted run (error, Ctrl-C, SIGTERM, SIGKILL) leaves
nothing in the results directory; its finished protocols and training checkpoints stay in
``<results>/.cache/runs/<hash>/``, so running the same command again (``resume=True``)
continues where it stopped.  Under ``torchrun`` every rank runs this function and only rank
0 writes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .files import atomic_write_text
from .components import BuildContext, Clip
from .config import ConfigError, config_hash, data_settings, instantiate_config
from .errors import UserError
from .protocols.base import Protocol, ProtocolContext, section_config
from .protocols.data import SplitData, label_targets, normalize
from .registry import get_registry
from .train import STOP, FitResult, configure_backends, peak_memory_mb

#: ``init`` of a pretraining protocol's own rows: the encoder they describe is being made
#: (from random initialisation), and their ``init_id`` is the one its evaluations carry.
PRETRAINING_INIT = "pretraining from random"
#: What ``--protocols`` runs by default (every one is registered; see ``ssl-bench plugins``).
DEFAULT_PROTOCOLS = ("pretrain", "finetune", "linear")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au"}


# --------------------------------------------------------------------------- helpers
def cache_root(results_root: str | Path) -> Path:
    """Where features, pretrained encoders and embeddings are cached: ``$SSL_BENCH_CACHE`` or
    ``<results_root>/.cache``."""
    env = os.environ.get("SSL_BENCH_CACHE")
    return Path(env) if env else Path(results_root) / ".cache"


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def flops_per_sample(fn, spec: torch.Tensor) -> float | None:
    """Analytic FLOPs of ``fn(spec)`` per example (``torch.utils.flop_counter``, matmuls and
    attention), counted on a batch of one."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(spec[:1])
    total = counter.get_total_flops()
    return float(total) if total else None


def compute_columns(*, parameters: int, flops: float | None, fit: FitResult | None, wall_s: float,
                    device: torch.device, world_size: int, samples_per_s: float | None = None,
                    peak_mb: float | None = None) -> dict[str, Any]:
    """The compute columns of a result row."""
    gpu = device.type == "cuda"
    return {
        "parameters": int(parameters),
        "flops_per_sample": flops,
        "samples_per_s": round(float(samples_per_s if samples_per_s is not None
                                     else (fit.samples_per_s if fit else 0.0)), 3),
        "wall_s": round(float(wall_s), 3),
        "gpu_hours": round(wall_s * world_size / 3600.0, 6) if gpu else 0.0,
        "peak_memory_mb": round(float(peak_mb if peak_mb is not None else peak_memory_mb(device)), 1),
        "world_size": int(world_size),
        "accum_steps": int(fit.accum_steps) if fit else None,  # as trained (raised when memory required it)
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
    }


def spec_probe(num_frames: int, num_bins: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(1, num_frames, num_bins, device=device)


class _NullWriter:
    """What ranks other than 0 write to: nothing."""

    dir = None
    final_dir = None

    def __enter__(self) -> "_NullWriter":
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False

    def log(self, message: str) -> None:
        pass

    def metrics(self, record: dict[str, Any]) -> None:
        pass

    def add_row(self, **row: Any) -> dict[str, Any]:
        return row


def _corpus_clips(folder: str | Path) -> list[Clip]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"pretrain.corpus: {root} is not a directory of audio files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"pretrain.corpus: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {root}")
    return [Clip(path=p, labels=(), key=str(p.relative_to(root))) for p in files]


def _mean_std(features: Any, indices: Iterable[int], max_frames: int = 2_000_000) -> tuple[float, float]:
    """Mean and std over every frame and bin of ``features[i]`` for ``i`` in ``indices``."""
    indices = list(indices)
    if not indices:
        raise ValueError("cannot compute normalisation statistics without training clips")
    total_frames = sum(int(features[i].shape[0]) for i in indices[:50]) * len(indices) / min(len(indices), 50)
    step = max(1, int(np.ceil(total_frames / max_frames)))
    n, s, ss = 0, 0.0, 0.0
    for i in indices[::step]:
        x = features[i].double()
        n += x.numel()
        s += float(x.sum())
        ss += float((x * x).sum())
    mean = s / n
    return mean, float(np.sqrt(max(ss / n - mean * mean, 1e-12)))


def _build_frontend(config: dict[str, Any], registry) -> Any:
    node = config["frontend"]
    entry = registry.get("frontend", node["name"])
    return entry.factory(instantiate_config(registry, "frontend", node), BuildContext())


# --------------------------------------------------------------------------- the experiment
class _Experiment:
    def __init__(self, config, *, data_dir, results_root, protocols, checkpoint, splits, resume, progress,
                 track=None, label=""):
        self.registry = get_registry()
        known = self.registry.names("protocol")
        unknown = [p for p in protocols if p not in known]
        if unknown or not protocols:
            raise ConfigError(f"unknown protocol {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
        if not config.get("task"):
            raise ConfigError("run_experiment needs a config resolved with a task (config['task'])")
        self.config = copy.deepcopy(config)
        self.protocols = tuple(protocols)
        self.checkpoint: Path | None = None
        self.identity: dict[str, Any] | None = None  # init, init_id, sha256, config of the checkpoint
        self.pretrained_by = "this run"
        self.info = D.init(self.config.get("device"))
        if not checkpoint:  # weights the config itself starts from (ImageNet for AST), recorded like a checkpoint
            from .model import initial_checkpoint

            with D.main_first():  # rank 0 fetches it first
                checkpoint = initial_checkpoint(self.config, self.registry)
        if checkpoint:
            from .provenance import encoder_identity
            from .sources import resolve_checkpoint, source_name

            # a file, a Hugging Face directory, torchaudio:BUNDLE, or the id of an encoder `ssl-bench pretrain` made
            self.checkpoint = resolve_checkpoint(checkpoint, cache_root(results_root))
            self.identity = encoder_identity(self.checkpoint, cache_root(results_root))
            self.identity["init"] = source_name(self.checkpoint) or self.identity["init"]
            self.config["checkpoint"] = str(self.checkpoint)
            self.pretrained_by = apply_pretraining_record(self.config, self.identity["config"])
        self.data_dir, self.results_root = data_dir, Path(results_root)
        self.split_names = list(splits) if splits else None
        self.resume, self.progress = resume, progress
        self.track = dict(track or {})
        self.label = label
        self.device = D.resolve_device(self.config.get("device"), self.info)
        self.progress_main = progress and self.info.is_main
        self.seed = int(self.config.get("seed", 0))
        self.cache = cache_root(self.results_root)
        self.notes: list[str] = []  # warnings found before the run directory exists
        configure_backends(self.device, bool(self.config.get("deterministic")))

    # ------------------------------------------------------------------ setup
    def load_task(self) -> None:
        self.task = self.registry.get("task", self.config["task"]).factory(data_dir=self.data_dir)
        self.task.prepare()
        all_splits = list(self.task.splits())
        if self.split_names:
            known = {s.name: s for s in all_splits}
            missing = [n for n in self.split_names if n not in known]
            if missing:
                raise ConfigError(f"task {self.config['task']!r} has no split {', '.join(missing)}; "
                                  f"splits: {', '.join(known)}")
            all_splits = [known[n] for n in self.split_names]
        if not all_splits:
            raise ConfigError(f"task {self.config['task']!r} has no splits")
        self.splits = all_splits
        self.classes = list(self.task.classes)
        self.multilabel = bool(self.task.multilabel)
        self.metric_names = list(self.task.metrics)

    def split_parts(self, split, readable: bool = False) -> tuple[list[Clip], list[Clip], bool]:
        """``(train, valid, carved)``: the split's training and validation clips, the validation
        carved out of its training clips (stratified, seeded) when the task gives none;
        ``readable``: carved from the clips whose features were extracted, so no unreadable
        clip takes a validation place."""
        if split.valid is not None:
            return list(split.train), list(split.valid), False
        from .splits import carve_validation

        clips = [c for c in split.train if c.key in self.feature_index] if readable else split.train
        fraction = float(data_settings(self.config).valid_fraction)
        train, valid = carve_validation(clips, fraction, self.seed, self.multilabel)
        return list(train), list(valid), True

    def fit_batch_sizes(self) -> None:
        """Before any feature is extracted: the batch of every protocol that trains (its
        ``trains_on``) must fit in the smallest split's training examples.  A batch larger than
        the data is capped to the largest multiple of ``accum_steps`` x processes that fits,
        with a warning naming the key; one that no batch can fit is an error naming the keys.
        Clips that turn out unreadable are counted later (the training loop checks again)."""
        world = self.info.world_size
        for name in self.protocols:
            proto = self.protocol(name)
            source = getattr(proto, "trains_on", None)
            section = self.config.get(name)
            if source not in ("unlabeled", "train") or not isinstance(section, dict):
                continue
            if not section.get("enabled", True) or "batch_size" not in section:
                continue
            if proto.stage == "pretrain" and (self.checkpoint is not None or section.get("corpus")):
                continue  # replaced by the checkpoint; a corpus is sized when it is read
            sizes = {}
            for split in self.splits:
                sizes[split.name] = (len(split.train) if source == "unlabeled"
                                     else len(self.split_parts(split)[0]))
            smallest = min(sizes, key=sizes.get)
            n = int(section.get("epoch_size") or sizes[smallest])
            batch, accum = int(section["batch_size"]), max(int(section.get("accum_steps") or 1), 1)
            if batch <= n:
                continue
            unit = accum * world
            where = f"split {smallest}" if len(sizes) > 1 else f"split {smallest!r}"
            if n < unit:
                raise ConfigError(
                    f"{name}.batch_size: the {n} training examples of {where} cannot fill one step of "
                    f"{name}.accum_steps={accum} x {world} process(es); lower {name}.accum_steps"
                    + (" or use fewer processes" if world > 1 else ""))
            fits = n // unit * unit
            section["batch_size"] = fits
            message = (f"warning: {name}.batch_size {batch} is larger than the {n} training examples of {where}; "
                       f"using {name}.batch_size={fits} (set it with --set {name}.batch_size=N)")
            self.notes.append(message)
            if self.info.is_main:
                print(f"ssl-bench: {message}", file=sys.stderr, flush=True)

    def prepare_frontend(self) -> None:
        """Build the frontend and settle the model's input length: the config's
        ``frontend.num_frames`` when set, else the frontend's length for the task's clips
        (written into the config when the frontend has that setting, so the model is built
        for it)."""
        frontend = _build_frontend(self.config, self.registry)
        node = self.config["frontend"]
        num_frames = node.get("num_frames")
        if num_frames is None:
            if not hasattr(frontend, "num_frames_for"):
                raise ConfigError(f"frontend {node['name']!r} cannot size itself to the task's clips "
                                  "(no num_frames_for); set frontend.num_frames")
            num_frames = int(frontend.num_frames_for(float(self.task.clip_seconds)))
            if "num_frames" in node:
                node["num_frames"] = num_frames
                frontend = _build_frontend(self.config, self.registry)
        self.frontend = frontend
        self.num_frames = int(num_frames)
        self.num_bins = int(frontend.num_bins)

    def extract(self, clips: Sequence[Clip]):
        from .features import extract

        data = data_settings(self.config)
        cache_dir = self.cache / "features" if data.cache else None
        with D.main_first():
            return extract(clips, self.frontend, clip_seconds=float(self.task.clip_seconds), cache_dir=cache_dir,
                           device=self.device, batch_size=32, strict=bool(data.strict),
                           progress=self.progress_main)

    def run_hash(self) -> str:
        return config_hash({"config": self.config, "protocols": list(self.protocols),
                            "splits": self.split_names, "data_dir": str(self.data_dir)})

    # ------------------------------------------------------------------ run
    def run(self) -> Path | None:
        from .results import RunWriter, new_run_id

        t0 = time.time()
        with STOP.installed():
            self.load_task()
            self.fit_batch_sizes()  # before any feature is extracted
            self.prepare_frontend()
            unique: dict[str, Clip] = {}
            for split in self.splits:
                for part in (split.train, split.valid or [], split.test):
                    for clip in part:
                        unique.setdefault(clip.key, clip)
            self.features = self.extract(list(unique.values()))
            self.feature_index = {clip.key: i for i, clip in enumerate(self.features.clips)}
            self.provenance = self.record()
            self.skipped = {key for key, _ in self.features.skipped}
            self.state_dir = self.results_root / ".cache" / "runs" / self.run_hash()
            if not self.resume and self.info.is_main and self.state_dir.exists():
                shutil.rmtree(self.state_dir, ignore_errors=True)
            D.barrier()
            writer = (RunWriter(self.results_root, new_run_id(self.config, self.label), self.config, echo=self.progress,
                                provenance=self.provenance, track=self.track)
                      if self.info.is_main else _NullWriter())
            with writer:
                self.writer = writer
                writer.log(f"task {self.task.name}: {len(self.splits)} split(s), {len(self.classes)} classes, "
                           f"{len(self.features)} clips ({len(self.skipped)} skipped); device {self.device}, "
                           f"world size {self.info.world_size}; protocols {', '.join(self.protocols)}")
                for note in self.notes if writer.dir is not None else ():
                    with open(writer.dir / "log.txt", "a") as fh:  # already printed when it was found
                        fh.write(note + "\n")
                self.t_splits, self.split_seconds = time.time(), []
                # each protocol's seconds in the latest split that ran it, and in this split
                self.protocol_seconds: dict[tuple[str, str], float] = {}
                for i, split in enumerate(self.splits):
                    self.split_index, self.t_split, self.ran_here = i, time.time(), {}
                    self.run_split(split)
                    self.split_seconds.append(time.time() - self.t_split)
                    self.outside_seconds = max(self.split_seconds[-1] - sum(self.ran_here.values()), 0.0)
                writer.log(f"done in {time.time() - t0:.1f} s")
            if self.info.is_main:
                shutil.rmtree(self.state_dir, ignore_errors=True)
            D.barrier()
        return writer.final_dir if self.info.is_main else None

    def record(self) -> dict[str, Any]:
        """The provenance of this run (``result.json``'s ``provenance``): versions, git commit,
        device, command line, a digest of the data read and the checkpoint's identity."""
        from .download import download_record
        from .provenance import dataset_digest, run_record

        with D.main_first():
            self.data_digest = dataset_digest(self.features.clips, self.cache)
        root = getattr(self.task, "root", None)
        record = run_record(self.device)
        record["data"] = {"task": self.task.name, "root": str(root) if root else None, **self.data_digest,
                          "download": download_record(root) if root else None}
        if self.identity is not None:
            record["checkpoint"] = {"path": str(self.checkpoint), "init": self.identity["init"],
                                    "init_id": self.identity["init_id"], "sha256": self.identity["sha256"],
                                    "pretrained_by": self.pretrained_by, "config": self.identity["config"]}
        return record

    def row(self, split_ctx: dict[str, Any], protocol: str, init: str, init_id: str, metrics: dict[str, float],
            extra: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per metric: the split, the encoder (``init`` name and content ``init_id``), the
        code and data that produced it, the split's sizes and the protocol's columns."""
        from .provenance import ID_LENGTH

        who = {"init": init, "init_id": init_id, "pretrained_by": "" if init_id == "random" else self.pretrained_by,
               "primary_metric": self.metric_names[0] if self.metric_names else "",
               "code_version": self.provenance["code_version"],
               "data_sha256": self.data_digest["sha256"][:ID_LENGTH]}
        rows = []
        for metric, value in metrics.items():
            rows.append(dict(task=self.task.name, protocol=protocol, split=split_ctx["split"], seed=self.seed,
                             metric=metric, value=float(value), **who, **split_ctx["columns"], **extra))
        return rows

    def emit(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.writer.add_row(**r)

    def cached_rows(self, split: str, key: str, compute) -> list[dict[str, Any]]:
        """Rows of one protocol of one split: from the run's state dir when it already ran
        (an interrupted run being resumed), else computed and recorded there."""
        path = self.state_dir / split / f"{key}.json"
        # rank 0 decides, so ranks without a shared filesystem still take the same branch
        saved = D.broadcast_object(json.loads(path.read_text())["rows"] if self.resume and path.is_file() else None)
        if saved is not None:
            rows = saved
            self.writer.log(f"[{split}] {key}: finished before the interruption; rows reused")
        else:
            rows = compute()
            if self.info.is_main:
                atomic_write_text(path, json.dumps({"rows": rows}, default=jsonable))
        self.emit(rows)
        return rows

    def run_split(self, split) -> None:
        t_split = time.time()
        train_clips, valid_clips, carved = self.split_parts(split, readable=True)
        n_skipped = sum(1 for part in (split.train, split.valid or [], split.test) for c in part
                        if c.key in self.skipped)

        def idx(clips: Sequence[Clip]) -> np.ndarray:
            return np.array([self.feature_index[c.key] for c in clips if c.key in self.feature_index], dtype=np.int64)

        train, valid, test = idx(train_clips), idx(valid_clips), idx(split.test)
        if 0 < len(valid) < len(self.classes):
            self.writer.log(f"[{split.name}] warning: the validation set has {len(valid)} clip(s) for "
                            f"{len(self.classes)} classes; choices made on it (C, k, epochs) are noisy: raise "
                            "data.valid_fraction or give the task a validation split")
        if len(train) == 0 or len(test) == 0:
            raise ConfigError(f"task {self.task.name!r} split {split.name!r}: no usable training or test clips "
                              f"({n_skipped} skipped)")

        mean_std, stats_from = self.norm_stats(train)
        targets = label_targets(self.features.clips, len(self.classes), self.multilabel)
        weights = None
        if callable(getattr(self.task, "train_weights", None)):  # class-balanced sampling (AudioSet-2M)
            weights = np.asarray(self.task.train_weights([self.features.clips[i] for i in train]), dtype=np.float64)
        data = SplitData(self.features, train, valid, test, targets, len(self.classes), self.multilabel,
                         self.metric_names, self.num_frames, name=split.name, train_weights=weights,
                         extra={"unlabeled": idx(split.train), "unlabeled_clips": list(split.train)})
        split_ctx = {
            "split": split.name,
            "columns": {"n_train": int(len(train)), "n_valid": int(len(valid)), "n_test": int(len(test)),
                        "n_skipped": int(n_skipped), "split_protocol": getattr(self.task, "split_protocol", ""),
                        "valid_source": "carved from train" if carved else "task"},
        }
        norm = f"norm mean {mean_std[0]:.4f} std {mean_std[1]:.4f} ({stats_from}); " if mean_std else ""
        self.writer.log(f"[{split.name}] train {len(train)}, valid {len(valid)}{' (carved)' if carved else ''}, "
                        f"test {len(test)}, skipped {n_skipped}; {norm}{self.num_frames} frames")

        from .model import build_model, load_checkpoint

        torch.manual_seed(self.seed)
        model = build_model(self.config, self.registry)
        if mean_std is not None:
            model.frontend.set_norm_stats(*mean_std)
        random_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.to(self.device)

        init, init_id = "random", "random"
        if self.checkpoint is not None:
            report = load_checkpoint(model, self.checkpoint, self.registry)
            self.writer.log(f"[{split.name}] loaded {report} (init_id {self.identity['init_id']})")
            init, init_id = self.identity["init"], self.identity["init_id"]
            for name in self.stage_protocols("pretrain"):
                why = ("has no pretraining method" if getattr(model, "method", None) is None
                       else "is evaluated from --checkpoint")
                self.writer.log(f"[{split.name}] {name}: skipped, model {model.name!r} {why}")
        else:
            for name in self.stage_protocols("pretrain"):
                if getattr(model, "method", None) is None:  # a frozen import, or a model evaluated as built
                    self.writer.log(f"[{split.name}] {name}: skipped, model {model.name!r} has no pretraining method; "
                                    "its encoder is evaluated with the weights it was built with")
                    continue
                rows = self.run_protocol(name, model, "random", "random", data, split_ctx)
                init = "pretrained"
                init_id = next((str(r["encoder_id"]) for r in rows if r.get("encoder_id")), None) or \
                    self.recipe_id()
                # the pretraining's own rows (its loss) describe the encoder it made, from random init
                for r in rows:
                    r.update(init=PRETRAINING_INIT, init_id=init_id, pretrained_by=self.pretrained_by)
                self.emit(rows)
        differs: bool | None = None  # whether the evaluated encoder differs from its random init (decided once)
        for name in self.stage_protocols("evaluate"):
            proto = self.protocol(name)
            self.cached_rows(split.name, f"{name}-{_slug(init)}",
                             lambda: self.run_protocol(name, model, init, init_id, data, split_ctx))
            if not proto.frozen or init_id == "random":
                continue
            if differs is None:
                differs = self.differs_from_random(model, random_state)
            if not differs:
                self.writer.log(f"[{split.name}] {name}: no init=random baseline, encoder "
                                f"{type(model.encoder).__name__} is evaluated with the weights it was built with "
                                "(a frozen import, or a checkpoint equal to this seed's initialisation): a baseline "
                                "row would repeat the same numbers")
                continue

            def baseline(name: str = name) -> list[dict[str, Any]]:
                base = copy.deepcopy(model)
                base.load_state_dict(random_state, strict=False)
                return self.run_protocol(name, base, "random", "random", data, split_ctx)

            self.cached_rows(split.name, f"{name}-random", baseline)
        self.writer.log(f"[{split.name}] done in {time.time() - t_split:.1f} s")

    @staticmethod
    def differs_from_random(model: nn.Module, random_state: dict[str, torch.Tensor]) -> bool:
        """Whether the random-init baseline of ``model`` would be a different encoder: its encoder
        has weights of its own and they differ from those it was built with.  An encoder that
        keeps none (a frozen import such as a HEAR module) gets no baseline row."""
        own = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
        return bool(own) and any(k not in random_state or not torch.equal(random_state[k], v.detach().cpu())
                                 for k, v in own.items())

    # ------------------------------------------------------------------ protocols
    def protocol(self, name: str) -> Protocol:
        factory = self.registry.get("protocol", name).factory
        return factory(name) if isinstance(factory, type) else factory

    def section(self, name: str) -> Any:
        return section_config(self.protocol(name), self.config.get(name))

    def stage_protocols(self, stage: str) -> list[str]:
        """The requested protocols of ``stage`` that are enabled, in the order asked."""
        return [n for n in self.protocols
                if self.protocol(n).stage == stage and getattr(self.section(n), "enabled", True)]

    def recipe_id(self) -> str:
        """``init_id`` of an encoder a pretraining protocol made without naming it."""
        from .config import MODEL_SLOTS
        from .protocols.pretrain import recipe_id

        return recipe_id(self.config, MODEL_SLOTS, self.data_digest["sha256"])

    def run_protocol(self, name: str, model: nn.Module, init: str, init_id: str, data: SplitData,
                     split_ctx: dict[str, Any]) -> list[dict[str, Any]]:
        """Run protocol ``name`` on one split and turn its results into rows."""
        proto = self.protocol(name)
        self.announce(data.name, name, init)
        t0 = time.time()
        ctx = ProtocolContext(
            name=name, model=model, init=init, data=data, config=self.config, section=self.section(name),
            device=self.device, cache_dir=self.cache, state_dir=self.state_dir / data.name / f"{name}-{_slug(init)}",
            resume=self.resume, progress=self.progress_main, log=self.writer.log,
            log_metrics=self.writer.metrics, run=self)
        try:
            results = proto.run(ctx)
        except UserError:
            raise
        except Exception as exc:  # a bug: keep the traceback, and say whose code raised it
            from .model import blame

            entry = self.registry.get("protocol", name)
            exc.add_note(blame(model, exc) or f"raised while running protocol {name!r} (plugin {entry.plugin!r})")
            raise
        wall = time.time() - t0
        if hasattr(self, "protocol_seconds"):
            self.protocol_seconds[(name, init)] = self.ran_here[(name, init)] = wall
        base: dict[str, Any] = {}
        if results:
            # the compute columns every row carries; a protocol that trains gives its own
            model.eval()
            flops = flops_per_sample(lambda s: model.embed(normalize(model, s)),
                                     spec_probe(self.num_frames, self.num_bins, self.device))
            n = len(data.train) + len(data.valid) + len(data.test)
            base = compute_columns(parameters=count_parameters(model.encoder), flops=flops, fit=None, wall_s=wall,
                                   device=self.device, world_size=self.info.world_size,
                                   samples_per_s=n / wall if wall > 0 else 0.0)
        rows = []
        for result in results:
            rows += self.row(split_ctx, name, init, init_id, result.metrics, {**base, **result.extra})
        return rows

    def announce(self, split: str, protocol: str, init: str) -> None:
        """The run-level progress line: which split of how many, which protocol, time spent and,
        once a split has finished, the time the rest should take: each protocol at the pace of
        its latest run (a pretraining the later splits reuse takes its full time once, then
        none), plus the last split's time outside the protocols."""
        from .progress import duration

        if not hasattr(self, "t_split"):  # outside run() (a protocol called on its own)
            return
        n, done, now = len(self.splits), self.split_index, time.time()
        left = ""
        # none in the second split before its pretraining has run: until then, whether it reuses
        # the first split's encoder (a corpus shared by all splits) or trains its own is unknown
        unknown = done == 1 and any(self.protocol(name).stage == "pretrain" and (name, encoder) not in self.ran_here
                                    for name, encoder in self.protocol_seconds)
        if done and not unknown:
            latest = self.protocol_seconds
            this_split = sum(s for key, s in latest.items() if key not in self.ran_here)
            seconds = this_split + (n - done - 1) * (sum(latest.values()) + self.outside_seconds)
            left = f", about {duration(seconds)} left"
        frozen = self.protocol(protocol).frozen
        what = f"{protocol} ({init} encoder)" if init == "random" and frozen else protocol
        self.writer.log(f"[{split} {done + 1}/{n}] {what}: {duration(now - self.t_splits)} elapsed{left}")

    def norm_stats(self, train: np.ndarray) -> tuple[tuple[float, float] | None, str]:
        """``((mean, std), source)`` to give the frontend, or ``(None, why)`` when it needs none or
        the config gave them.  The task's published statistics are used only for the same
        features (the frontend's ``stats_key``)."""
        key = getattr(self.frontend, "stats_key", None)
        if key is None:
            return None, "the frontend uses no dataset statistics"
        if getattr(self.frontend, "norm_stats", None) is not None:
            return None, "config"
        published = getattr(self.task, "norm_stats", None) or {}
        if isinstance(published, dict) and key in published:
            return tuple(float(v) for v in published[key]), "task"
        corpus = self.config.get("pretrain", {}).get("corpus")  # absent when no pretraining protocol exists
        if corpus and self.checkpoint is None and self.stage_protocols("pretrain"):
            # one encoder for every split: normalise with the corpus it is pretrained on
            _, feats = self.corpus()
            return _mean_std(feats, range(len(feats))), "pretraining corpus"
        return _mean_std(self.features, train), "train split"

    def corpus(self) -> tuple[list[Clip], Any]:
        """The clips and features of ``pretrain.corpus`` (extracted once per run)."""
        if getattr(self, "_corpus", None) is None:
            corpus = self.config["pretrain"]["corpus"]
            if corpus == "task":  # the task's own unlabeled corpus, disjoint from every split
                if not hasattr(self.task, "unlabeled"):
                    raise ConfigError(f"pretrain.corpus=task: task {self.task.name!r} ships no unlabeled corpus; "
                                      "set pretrain.corpus to a folder of audio")
                clips = list(self.task.unlabeled())
            else:
                clips = _corpus_clips(corpus)
            self._corpus = (clips, self.extract(clips))
        return self._corpus


def _slug(text: str) -> str:
    """``text`` as one file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


#: The slots that make a pretraining (the frontend and encoder are the checkpoint's own).
PRETRAINING_SLOTS = ("masker", "decoder", "objective", "method")


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


def jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def run_experiment(
    config: dict[str, Any],
    *,
    data_dir: str | Path | None = None,
    results_root: str | Path = "results",
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    checkpoint: str | Path | None = None,
    splits: Sequence[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    track: dict[str, Any] | None = None,
    label: str = "",
) -> Path | None:
    """Run ``protocols`` of a resolved ``config`` (with ``config["task"]`` set) on every split.

    Returns the run directory on rank 0 (``None`` on other torchrun ranks).  ``checkpoint``
    replaces pretraining with a checkpoint (an official or ssl-bench file, a Hugging Face
    directory, or the id of an encoder ``ssl-bench pretrain`` made); ``splits`` restricts the
    splits by name; ``resume`` continues an interrupted identical run (and an interrupted
    pretraining) instead of starting over; ``track`` also logs to experiment trackers
    (``{"mlflow": URI, "tensorboard": DIR}``, see :mod:`ssl_bench.tracking`); ``label`` goes into
    the run id (what a sweep varied).  See the module docstring.
    """
    return _Experiment(config, data_dir=data_dir, results_root=results_root, protocols=protocols,
                       checkpoint=checkpoint, splits=splits, resume=resume, progress=progress, track=track,
                       label=label).run()
