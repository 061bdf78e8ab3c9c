"""Task -> features -> a split's train/valid/test: the data side of ``run`` and ``pretrain``.

:class:`TaskData` holds one task's clips as features: the task (prepared), the splits asked
for, the frontend sized for the task's clips (``frontend.num_frames`` follows the clip length
unless set), the features of every clip (extracted once, through the feature cache) and a
digest of the audio's content.  :meth:`TaskData.split_data` gives a split's
:class:`~ssl_bench.protocols.data.SplitData`: validation from the task's own validation set or
carved out of the split's training clips (stratified, seeded; the test part is never used for
a choice), targets, sampling weights and normalisation statistics.  With ``data.shots`` or
``data.fraction`` (label efficiency) the labelled training part is a stratified draw
(``data.draw`` its seed) from what remains after validation is carved; validation, test, the
pretraining audio and the normalisation statistics stay those of the whole split.
:meth:`TaskData.fingerprint` is the task's identity as listed (clips, labels, splits, file
sizes and times), which a run's identity is built on; :func:`prepare_features` is a launcher's
features unit (every clip of a run's splits through the feature cache, once).

The functions below it are the same steps for audio that is not a task's (``ssl-bench
pretrain --corpus DIR``): folder listing, frontend sizing, extraction, statistics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as D
from .components import BuildContext, Clip
from .config import ConfigError, data_settings, instantiate_config
from .events import EVENTS, MULTICLASS, label_shape_of
from .files import file_stamp
from .protocols.data import SplitData, label_targets

#: Suffixes of the audio files a folder corpus is made of.
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au"}
#: Clips whose length is read to choose a corpus's clip length (a sample of large corpora).
LENGTH_SAMPLE = 256


# --------------------------------------------------------------------------- audio that is not a task's
def folder_clips(folder: str | Path, key: str = "pretrain.corpus") -> list[Clip]:
    """Every audio file under ``folder`` as an unlabeled clip, keyed by its relative path
    (``key`` names the setting in errors)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{key}: {root} is not a directory of audio files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"{key}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {root}")
    return [Clip(path=p, labels=(), key=str(p.relative_to(root))) for p in files]


def median_seconds(clips: Sequence[Clip]) -> float:
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


def build_frontend(config: dict[str, Any], registry: Any) -> Any:
    """The config's frontend, built on its own (to size inputs and extract features)."""
    node = config["frontend"]
    entry = registry.get("frontend", node["name"])
    return entry.factory(instantiate_config(registry, "frontend", node), BuildContext())


def size_frontend(config: dict[str, Any], registry: Any, seconds: float, what: str = "the task's clips") -> \
        tuple[Any, int]:
    """``(frontend, num_frames)`` for clips of ``seconds``: the config's ``frontend.num_frames``
    when set, else the frontend's length for such clips, written into ``config`` when the
    frontend has that setting (so the model is built for it)."""
    frontend = build_frontend(config, registry)
    node = config["frontend"]
    num_frames = node.get("num_frames")
    if num_frames is None:
        if not hasattr(frontend, "num_frames_for"):
            raise ConfigError(f"frontend {node['name']!r} cannot size itself to {what} (no num_frames_for); "
                              "set frontend.num_frames")
        num_frames = int(frontend.num_frames_for(float(seconds)))
        if "num_frames" in node:
            node["num_frames"] = num_frames
            frontend = build_frontend(config, registry)
    return frontend, int(num_frames)


def extract_features(clips: Sequence[Clip], frontend: Any, *, seconds: float, config: dict[str, Any],
                     cache_dir: Path, device: torch.device, progress: bool) -> Any:
    """The :class:`~ssl_bench.features.FeatureSet` of ``clips`` (through the feature cache under
    ``cache_dir/features`` unless ``data.cache`` is off, keyed by the file digests the run's
    provenance shares, ``cache_dir/digests.sqlite``); rank 0 extracts first."""
    from .features import extract

    data = data_settings(config)
    with D.main_first():
        return extract(clips, frontend, clip_seconds=float(seconds),
                       cache_dir=cache_dir / "features" if data.cache else None, device=device, batch_size=32,
                       strict=bool(data.strict), progress=progress, digests_dir=cache_dir)


def mean_std(features: Any, indices: Iterable[int], max_frames: int = 2_000_000) -> tuple[float, float]:
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


def published_stats(task: Any, frontend: Any) -> tuple[float, float] | None:
    """The task's published statistics for the frontend's features (its ``stats_key``), or None."""
    key = getattr(frontend, "stats_key", None)
    published = (getattr(task, "norm_stats", None) or {}) if task is not None else {}
    if key is not None and isinstance(published, dict) and key in published:
        return tuple(float(v) for v in published[key])
    return None


def label_settings(config: dict[str, Any]) -> tuple[int | None, float | None, int]:
    """``(shots, fraction, draw)`` of the ``data`` section, checked: ``shots`` a positive number of
    clips per class (``all`` or null: every clip), ``fraction`` in (0, 1], not both."""
    data = data_settings(config)
    shots, fraction = data.shots, data.fraction
    if isinstance(shots, str) and shots.strip().lower() in ("all", "none", "null", ""):
        shots = None
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, (int, float)) or shots < 1
                              or int(shots) != shots):
        raise ConfigError(f"data.shots={data.shots!r}: expected a number of labelled clips per class (1, 4, ...) "
                          "or all")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0.0 < float(fraction) <= 1.0):
        raise ConfigError(f"data.fraction={fraction!r}: expected a fraction of each class's training clips in (0, 1]")
    if shots is not None and fraction is not None:
        raise ConfigError("data.shots and data.fraction both set: choose one way to draw the labelled clips")
    if isinstance(data.draw, bool) or not isinstance(data.draw, int) or data.draw < 0:
        raise ConfigError(f"data.draw={data.draw!r}: expected the seed of the labelled draw (0, 1, ...)")
    return (int(shots) if shots is not None else None,
            float(fraction) if fraction is not None else None, int(data.draw))


# --------------------------------------------------------------------------- a task's clips
@dataclass
class SplitParts:
    """A split's clips for training and validation, and where the validation came from."""

    train: list[Clip]
    valid: list[Clip]
    carved: bool  # carved out of the training clips (the task gives no validation set)
    whole_train: list[Clip] | None = None  # the training part before a label-efficiency draw (None: no draw)


@dataclass
class PreparedSplit:
    """A split ready for the protocols (see :meth:`TaskData.split_data`)."""

    data: SplitData
    columns: dict[str, Any]  # the columns every row of the split carries
    norm: tuple[float, float] | None  # (mean, std) for the model's frontend; None: it has its own


class TaskData:
    """One task's clips as features, split by split (see the module docstring).

    Built in the order a run needs, so that the checks that cost nothing come before the
    extraction that costs hours: the task and its splits (:meth:`__init__`), the frontend's
    length (:meth:`size_frontend`), then the features (:meth:`extract`) and their digest.
    """

    def __init__(self, config: dict[str, Any], registry: Any, data_dir: str | Path | None,
                 split_names: Sequence[str] | None = None):
        self.config, self.registry = config, registry
        self.task = registry.get("task", config["task"]).factory(data_dir=data_dir)
        self.task.prepare()
        splits = list(self.task.splits())
        if split_names:
            known = {s.name: s for s in splits}
            missing = [n for n in split_names if n not in known]
            if missing:
                raise ConfigError(f"task {config['task']!r} has no split {', '.join(missing)}; "
                                  f"splits: {', '.join(known)}")
            splits = [known[n] for n in split_names]
        if not splits:
            raise ConfigError(f"task {config['task']!r} has no splits")
        self.splits = splits
        self.classes = list(self.task.classes)
        try:
            self.label_shape = label_shape_of(self.task)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.multilabel = self.label_shape != MULTICLASS  # an events task's clip targets are multi-hot
        self.metric_names = list(self.task.metrics)
        self.check_metrics()
        self.seed = int(config.get("seed", 0))
        self.shots, self.fraction, self.draw = label_settings(config)
        self.frontend: Any = None
        self.num_frames = self.num_bins = 0
        self.features: Any = None
        self.feature_index: dict[str, int] = {}
        self.skipped: set[str] = set()
        self.digest: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.task.name

    def check_metrics(self) -> None:
        """The task's metrics are registered and score what its shape predicts (events, or clip
        scores), and the first, which choices on validation maximise, grows when results improve."""
        from .metrics import CLIP, UnknownMetricError, get_metric
        from .metrics import EVENTS as EVENT_INPUT

        names, task = self.metric_names, self.task.name
        if not names:
            raise ConfigError(f"task {task!r} names no metrics")
        want = EVENT_INPUT if self.label_shape == EVENTS else CLIP
        for name in names:
            try:
                metric = get_metric(name, self.registry)
            except UnknownMetricError as exc:
                raise ConfigError(f"task {task!r}: {exc}") from None
            if metric.input != want:
                raise ConfigError(f"task {task!r}: metric {name!r} scores {metric.input}, but the task's label "
                                  f"shape is {self.label_shape}: it is scored with {want} metrics")
        if not get_metric(names[0], self.registry).greater_is_better:
            raise ConfigError(f"task {task!r}: its first metric {names[0]!r} is better lower, but choices on "
                              "validation keep the higher score of the first metric: list another one first")

    @property
    def clip_seconds(self) -> float:
        return float(self.task.clip_seconds)

    def parts(self, split: Any, readable: bool = False) -> SplitParts:
        """The split's training and validation clips, the validation carved out of its training
        clips (stratified, seeded) when the task gives none; ``readable``: carved from the clips
        whose features were extracted, so no unreadable clip takes a validation place."""
        if split.valid is not None:
            parts = SplitParts(list(split.train), list(split.valid), False)
        else:
            from .splits import carve_validation

            clips = [c for c in split.train if c.key in self.feature_index] if readable else split.train
            fraction = float(data_settings(self.config).valid_fraction)
            train, valid = carve_validation(clips, fraction, self.seed, self.label_shape)
            parts = SplitParts(list(train), list(valid), True)
        if self.shots is not None or self.fraction is not None:
            from .splits import label_subset

            whole = [c for c in parts.train if c.key in self.feature_index] if readable else parts.train
            parts.whole_train = whole
            parts.train = label_subset(whole, shots=self.shots, fraction=self.fraction, seed=self.draw,
                                       shape=self.label_shape)
        return parts

    def training_sizes(self, unlabeled: bool) -> dict[str, int]:
        """Per split, the examples a training protocol's batch is drawn from: the split's whole
        training audio (``unlabeled``), else its labelled training part."""
        return {s.name: len(s.train) if unlabeled else len(self.parts(s).train) for s in self.splits}

    def fingerprint(self) -> str:
        """The task's identity as listed: per split, each part's clips (key, labels, resolved
        path and :func:`~ssl_bench.files.file_stamp`: size, modification time, inode and ctime),
        the class names and the clip length.  Stat-based like the digest cache's key: changed
        audio or labels give another fingerprint, whatever the modification time says."""
        h = hashlib.sha256()
        h.update(repr((self.task.name, self.classes, self.label_shape, self.clip_seconds)).encode())
        stamps: dict[Any, str] = {}
        for split in self.splits:
            h.update(f"\nsplit {split.name}".encode("utf-8", "surrogateescape"))
            for part, clips in (("train", split.train), ("valid", split.valid), ("test", split.test)):
                h.update(f"\n{part} {'-' if clips is None else len(clips)}".encode())
                for clip in clips or ():
                    stamp = stamps.get(clip.path)
                    if stamp is None:
                        try:
                            stamp = f"{os.path.realpath(clip.path)}:{file_stamp(os.stat(clip.path))}"
                        except OSError:
                            stamp = "missing"
                        stamps[clip.path] = stamp
                    events = [(e.label, e.onset, e.offset) for e in getattr(clip, "events", ())]
                    h.update(f"\n{clip.key}\t{list(clip.labels)}\t{events}\t{stamp}".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def size_frontend(self) -> None:
        """Build the frontend and settle the model's input length for the task's clips."""
        self.frontend, self.num_frames = size_frontend(self.config, self.registry, self.clip_seconds)
        self.num_bins = int(self.frontend.num_bins)

    def all_clips(self) -> list[Clip]:
        """Every clip of the chosen splits, once, in split order."""
        unique: dict[str, Clip] = {}
        for split in self.splits:
            for part in (split.train, split.valid or [], split.test):
                for clip in part:
                    unique.setdefault(clip.key, clip)
        return list(unique.values())

    def extract(self, clips: Sequence[Clip], cache_dir: Path, device: torch.device, progress: bool) -> Any:
        """Features of ``clips`` at the task's clip length, with this task's frontend."""
        return extract_features(clips, self.frontend, seconds=self.clip_seconds, config=self.config,
                                cache_dir=cache_dir, device=device, progress=progress)

    def load_features(self, cache_dir: Path, device: torch.device, progress: bool) -> None:
        """Extract (or read from the cache) every clip's features once, then digest the audio."""
        from .provenance import dataset_digest

        self.features = self.extract(self.all_clips(), cache_dir, device, progress)
        self.feature_index = {clip.key: i for i, clip in enumerate(self.features.clips)}
        self.skipped = {key for key, _ in self.features.skipped}
        with D.main_first():
            self.digest = dataset_digest(self.features.clips, cache_dir)

    def record(self) -> dict[str, Any]:
        """The ``data`` part of a run's provenance: the task, where its data is, the digest of
        what was read and how it was downloaded."""
        from .download import download_record

        root = getattr(self.task, "root", None)
        return {"task": self.task.name, "root": str(root) if root else None, **self.digest,
                "download": download_record(root) if root else None, "features": self.features_record()}

    def features_record(self) -> dict[str, Any] | None:
        """The feature cache entry the run read and what extracting it cost (its manifest's
        ``compute``), for the compute ledger; None when the features were not cached."""
        import json

        entry = getattr(self.features, "path", None)
        if entry is None:
            return None
        try:
            manifest = json.loads((Path(entry) / "manifest.json").read_text())
        except (OSError, ValueError):
            return {"entry": Path(entry).name}
        return {"entry": Path(entry).name, "clips": manifest.get("num_kept"), **(manifest.get("compute") or {})}

    def norm_stats(self, train: np.ndarray, corpus: Any = None) -> tuple[tuple[float, float] | None, str]:
        """``((mean, std), source)`` to give the model's frontend, or ``(None, why)`` when it needs
        none or the config gave them.  The task's published statistics are used only for the
        same features (the frontend's ``stats_key``); ``corpus``: a callable giving the features
        of the corpus one encoder is pretrained on for every split, whose statistics then win
        over the split's."""
        key = getattr(self.frontend, "stats_key", None)
        if key is None:
            return None, "the frontend uses no dataset statistics"
        if getattr(self.frontend, "norm_stats", None) is not None:
            return None, "config"
        published = published_stats(self.task, self.frontend)
        if published is not None:
            return published, "task"
        if corpus is not None:
            feats = corpus()
            return mean_std(feats, range(len(feats))), "pretraining corpus"
        return mean_std(self.features, train), "train split"

    def split_data(self, split: Any, corpus: Any = None, log: Any = print) -> PreparedSplit:
        """One split ready for the protocols: its :class:`SplitData` (feature indices, targets,
        sampling weights), the columns its rows carry (sizes, where validation came from) and
        the statistics the model's frontend normalises with (``corpus``: see
        :meth:`norm_stats`).  ``log`` gets one line about it."""
        parts = self.parts(split, readable=True)
        n_skipped = sum(1 for part in (split.train, split.valid or [], split.test) for c in part
                        if c.key in self.skipped)
        train, valid, test = self.indices(parts.train), self.indices(parts.valid), self.indices(split.test)
        if 0 < len(valid) < len(self.classes):
            log(f"[{split.name}] warning: the validation set has {len(valid)} clip(s) for "
                f"{len(self.classes)} classes; choices made on it (C, k, epochs) are noisy: raise "
                "data.valid_fraction or give the task a validation split")
        if len(train) == 0 or len(test) == 0:
            raise ConfigError(f"task {self.task.name!r} split {split.name!r}: no usable training or test clips "
                              f"({n_skipped} skipped)")
        # statistics describe the audio, not the labels: those of the whole training part
        whole = self.indices(parts.whole_train) if parts.whole_train is not None else train
        mean_std_, stats_from = self.norm_stats(whole, corpus)
        targets = label_targets(self.features.clips, len(self.classes), self.label_shape)
        weights = None
        if callable(getattr(self.task, "train_weights", None)):  # class-balanced sampling (AudioSet-2M)
            weights = np.asarray(self.task.train_weights([self.features.clips[i] for i in train]), dtype=np.float64)
        data = SplitData(self.features, train, valid, test, targets, len(self.classes), self.multilabel,
                         self.metric_names, self.num_frames, name=split.name, train_weights=weights,
                         label_shape=self.label_shape, classes=list(self.classes), clip_seconds=self.clip_seconds)
        columns = {"n_train": int(len(train)), "n_valid": int(len(valid)), "n_test": int(len(test)),
                   "n_skipped": int(n_skipped), "split_protocol": getattr(self.task, "split_protocol", ""),
                   "valid_source": "carved from train" if parts.carved else "task"}
        norm = f"norm mean {mean_std_[0]:.4f} std {mean_std_[1]:.4f} ({stats_from}); " if mean_std_ else ""
        drawn = ""
        if parts.whole_train is not None:
            how = f"data.shots={self.shots}" if self.shots is not None else f"data.fraction={self.fraction:g}"
            drawn = f" ({how} of {len(whole)}, draw {self.draw})"
        log(f"[{split.name}] train {len(train)}{drawn}, valid {len(valid)}{' (carved)' if parts.carved else ''}, "
            f"test {len(test)}, skipped {n_skipped}; {norm}{self.num_frames} frames")
        return PreparedSplit(data, columns, mean_std_)

    def indices(self, clips: Sequence[Clip]) -> np.ndarray:
        """Feature indices of the readable clips among ``clips``."""
        return np.array([self.feature_index[c.key] for c in clips if c.key in self.feature_index], dtype=np.int64)


def prepare_features(config: dict[str, Any], registry: Any, *, data_dir: str | Path | None,
                     splits: Sequence[str] | None, cache_dir: Path, device: torch.device, progress: bool) -> TaskData:
    """A launcher's features unit: every clip of ``splits`` of the config's task, with the config's
    frontend sized for the task, through the feature cache (the entry a run of the same splits
    reads), and the digest of the audio."""
    task_data = TaskData(config, registry, data_dir, splits)
    task_data.size_frontend()
    task_data.load_features(cache_dir, device, progress)
    return task_data


def cap_batch_sizes(config: dict[str, Any], trainers: Sequence[tuple[str, str]], task_data: TaskData,
                    world_size: int, is_main: bool) -> list[str]:
    """Before any feature is extracted: the batch of every protocol that trains must fit in the
    smallest split's training examples.  ``trainers``: ``(section, trains_on)`` of each such
    protocol (``trains_on``: ``"unlabeled"`` or ``"train"``).  A batch larger than the data is
    capped in ``config`` to the largest multiple of ``accum_steps`` x processes that fits, with a
    warning naming the key (returned, and printed on rank 0); one that no batch can fit is an
    error naming the keys.  Clips that turn out unreadable are counted later (the training
    loop checks again)."""
    notes = []
    for name, source in trainers:
        section = config[name]
        sizes = task_data.training_sizes(unlabeled=source == "unlabeled")
        smallest = min(sizes, key=sizes.get)
        n = int(section.get("epoch_size") or sizes[smallest])
        batch, accum = int(section["batch_size"]), max(int(section.get("accum_steps") or 1), 1)
        if batch <= n:
            continue
        unit = accum * world_size
        where = f"split {smallest}" if len(sizes) > 1 else f"split {smallest!r}"
        if n < unit:
            raise ConfigError(
                f"{name}.batch_size: the {n} training examples of {where} cannot fill one step of "
                f"{name}.accum_steps={accum} x {world_size} process(es); lower {name}.accum_steps"
                + (" or use fewer processes" if world_size > 1 else ""))
        fits = n // unit * unit
        section["batch_size"] = fits
        message = (f"warning: {name}.batch_size {batch} is larger than the {n} training examples of {where}; "
                   f"using {name}.batch_size={fits} (set it with --set {name}.batch_size=N)")
        notes.append(message)
        if is_main:
            print(f"ssl-bench: {message}", file=sys.stderr, flush=True)
    return notes


def require_validation(config: dict[str, Any], choosers: Sequence[tuple[str, Sequence[str]]],
                       task_data: TaskData) -> None:
    """Before any feature is extracted: a protocol that chooses among several candidates on
    validation (``choosers``: ``(section, fields)`` of each, such as ``("linear", ("C",))``)
    needs validation data in every split.  A split without any (the task gives none and
    ``data.valid_fraction`` is 0) allows one candidate in all; more is an error naming the keys."""
    empty = [s.name for s in task_data.splits if not task_data.parts(s).valid]
    if not empty:
        return
    for name, fields in choosers:
        section = config.get(name) or {}
        counts = [len({json.dumps(v, default=str) for v in section[f]}) if isinstance(section.get(f), list) else 1
                  for f in fields]
        if math.prod(counts) > 1:
            keys = ", ".join(f"{name}.{f}" for f in fields)
            raise ConfigError(
                f"{keys}: {math.prod(counts)} candidates to choose on validation, but split {empty[0]} has no "
                f"validation data (task {task_data.name!r} gives none and data.valid_fraction is "
                f"{data_settings(config).valid_fraction:g}); set data.valid_fraction > 0 or give one value")
