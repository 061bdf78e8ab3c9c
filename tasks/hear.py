"""``hear``: a HEAR 2021 task directory, as hear-preprocess writes it: every task type.

Layout (``--data-dir`` is the task directory, e.g. ``tasks/dcase2016_task2-hear2021-full``)::

    task_metadata.json       task_name, embedding_type, prediction_type, split_mode,
                             sample_duration, evaluation, splits / nfolds (k-fold modes),
                             evaluation_params (optional)
    labelvocabulary.csv      idx,label
    {split}.json             scene: {"<file>.wav": ["label", ...], ...}
                             event: {"<file>.wav": [{"label": "...", "start": ms, "end": ms}, ...]}
    16000/{split}/*.wav      audio (another rate folder is used when 16000 is absent: the
                             nearest rate above, else the highest; clips are resampled to 16 kHz)

Label shapes: ``embedding_type`` ``scene`` gives a clip task, ``multiclass`` or ``multilabel``
by ``prediction_type`` (pitch tasks such as NSynth pitch are multiclass scene tasks scored with
``pitch_acc`` and ``chroma_acc``); ``event`` gives an ``events`` task whose clips carry their
events (milliseconds in the JSON, seconds in ssl-bench) and, as labels, the labels present.
Clips are keyed by their file name, as HEAR's JSON files and prediction files key them.

Splits follow hear-eval-kit exactly: ``trainvaltest`` (and ``stratified_trainvaltest``) gives
one split with the official train/valid/test; the k-fold modes (``presplit_kfold``,
``new_split_kfold``, ``new_split_stratified_kfold``) give one split per fold: test = fold i,
validation = fold i+1 (wrapping), train = the others, folds in sorted order.

Metrics keep HEAR's names (``mAP``, ``d_prime``, ``pitch_acc``, ``chroma_acc``,
``event_onset_200ms_fms``, ``event_onset_50ms_fms``, ``event_onset_offset_50ms_20perc_fms``,
``segment_1s_er``), except ``top1_acc`` -> ``accuracy`` and ``aucroc`` -> ``AUC``; the task's
first supported metric is the primary one.  ``evaluation_params`` (e.g. an event task's
``event_postprocessing_grid``) is kept as ``task.evaluation_params`` for the protocols.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ssl_bench import hookimpl
from ssl_bench.components import Clip, Split
from ssl_bench.events import EVENTS, MULTICLASS, MULTILABEL, Event, labels_present
from ssl_bench.metrics import CLIP, metric_names
from ssl_bench.metrics import EVENTS as EVENT_METRICS

from .common import (
    DataNotFoundError,
    DatasetTask,
    MetadataError,
    loaded_attribute,
    parse_int,
    read_csv,
    report_missing,
    resolve_inside,
)

#: HEAR metric names that ssl-bench calls otherwise; the rest keep their HEAR names.
RENAMED = {"top1_acc": "accuracy", "aucroc": "AUC"}
KFOLD_MODES = ("presplit_kfold", "new_split_kfold", "new_split_stratified_kfold")
TVT_MODES = ("trainvaltest", "stratified_trainvaltest")
SAMPLE_RATE = 16000


def audio_folder(root: Path) -> Path:
    """``root/16000``, else the nearest rate folder above 16 kHz, else the highest below."""
    rates = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not rates:
        raise DataNotFoundError(f"{root}: no audio folder (expected {root / str(SAMPLE_RATE)})")
    above = [r for r in rates if r >= SAMPLE_RATE]
    return root / str(above[0] if above else rates[-1])


def _events(entries: Any, path: Path, filename: str, index: dict[str, int]) -> tuple[Event, ...]:
    """One file's events from an event task's JSON (times in ms)."""
    if not isinstance(entries, list):
        raise MetadataError(f'{path}: entry {filename!r}: expected a list of {{"label", "start", "end"}} events')
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}: entry {filename!r}, event {i}"
        if not isinstance(entry, dict) or not {"label", "start", "end"} <= set(entry):
            raise MetadataError(f"{where}: expected an object with label, start and end (ms), got {entry!r}")
        label = str(entry["label"])
        if label not in index:
            raise MetadataError(f"{where}: unknown label {entry['label']!r} (not in labelvocabulary.csv)")
        try:
            start, end = float(entry["start"]), float(entry["end"])
        except (TypeError, ValueError):
            raise MetadataError(f"{where}: start and end must be numbers of milliseconds, got {entry!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise MetadataError(f"{where}: needs 0 <= start <= end (ms), got start {start}, end {end}")
        out.append(Event(index[label], start / 1000.0, end / 1000.0))
    return tuple(out)


class HearTask(DatasetTask):
    """One HEAR 2021 task of any type (see the module docstring)."""

    name = "hear"
    sample_rate = SAMPLE_RATE
    multilabel = loaded_attribute(False)
    label_shape = loaded_attribute(MULTICLASS)
    clip_seconds = loaded_attribute(1.0)
    metrics = loaded_attribute(["accuracy"])
    split_protocol = loaded_attribute("")
    evaluation_params = loaded_attribute({})

    def _locate(self) -> Path:
        root = super()._locate()
        if not (root / "task_metadata.json").is_file():
            raise DataNotFoundError(f"{root}: no task_metadata.json; point --data-dir at one HEAR task directory")
        return root

    def _read_metadata(self, root: Path) -> dict[str, Any]:
        meta_path = root / "task_metadata.json"
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise MetadataError(f"{meta_path}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise MetadataError(f"{meta_path}: expected a JSON object")
        for key in ("embedding_type", "prediction_type", "split_mode", "sample_duration", "evaluation"):
            if key not in meta:
                raise MetadataError(f"{meta_path}: missing key {key!r}")
        if meta["embedding_type"] not in ("scene", "event"):
            raise MetadataError(f"{meta_path}: embedding_type must be scene or event, got {meta['embedding_type']!r}")
        if meta["prediction_type"] not in ("multiclass", "multilabel"):
            raise MetadataError(f"{meta_path}: prediction_type must be multiclass or multilabel, "
                                f"got {meta['prediction_type']!r}")
        return meta

    def _metrics(self, meta: dict[str, Any], meta_path: Path) -> list[str]:
        known = metric_names(EVENT_METRICS if self.label_shape == EVENTS else CLIP)
        names = [RENAMED.get(m, m) for m in meta["evaluation"]]
        metrics = [m for m in names if m in known]
        self.unsupported_metrics = [m for m in meta["evaluation"] if RENAMED.get(m, m) not in known]
        if not metrics:
            raise MetadataError(f"{meta_path}: none of the evaluation metrics {meta['evaluation']} is supported "
                                f"for a {meta['embedding_type']} task (supported: {', '.join(known)})")
        return metrics

    def _split_names(self, meta: dict[str, Any], meta_path: Path) -> list[str]:
        mode = meta["split_mode"]
        if mode in TVT_MODES:
            return ["train", "valid", "test"]
        if mode in KFOLD_MODES:
            names = meta.get("splits") or [f"fold{i:02d}" for i in range(int(meta.get("nfolds", 0)))]
            if len(names) < 3:
                raise MetadataError(f"{meta_path}: k-fold split mode {mode!r} needs at least 3 folds, got {names}")
            return sorted(names)
        raise MetadataError(f"{meta_path}: unknown split_mode {mode!r} (known: {', '.join(TVT_MODES + KFOLD_MODES)})")

    def _load(self, root: Path) -> None:
        meta_path = root / "task_metadata.json"
        meta = self._read_metadata(root)
        event = meta["embedding_type"] == "event"
        self.task_name = meta.get("task_name", root.name)
        self.label_shape = EVENTS if event else (MULTILABEL if meta["prediction_type"] == "multilabel" else MULTICLASS)
        self.multilabel = self.label_shape != MULTICLASS
        try:
            self.clip_seconds = float(meta["sample_duration"])
        except (TypeError, ValueError):
            raise MetadataError(f"{meta_path}: sample_duration must be a number of seconds, "
                                f"got {meta['sample_duration']!r}") from None
        self.metrics = self._metrics(meta, meta_path)
        self.evaluation_params = dict(meta.get("evaluation_params") or {})

        vocab_path = root / "labelvocabulary.csv"
        classes = []
        for line, row in read_csv(vocab_path, ("idx", "label")):
            idx = parse_int(row["idx"], vocab_path, line, "idx", minimum=0)
            if idx != len(classes):
                raise MetadataError(f"{vocab_path}:{line}: idx {idx} out of order (expected {len(classes)})")
            classes.append(row["label"])
        if not classes:
            raise MetadataError(f"{vocab_path}: no labels listed")
        index = {c: i for i, c in enumerate(classes)}

        names = self._split_names(meta, meta_path)
        rate_dir = audio_folder(root)
        parts: dict[str, list[Clip]] = {}
        first_split: dict[str, str] = {}
        self.missing = {}
        for split in names:
            path = root / f"{split}.json"
            if not path.is_file():
                raise MetadataError(f"{path}: split file missing (split_mode {meta['split_mode']} lists {split!r})")
            try:
                entries = json.loads(path.read_text())
            except ValueError as exc:
                raise MetadataError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(entries, dict):
                layout = ('{"<file>.wav": [{"label", "start", "end"}, ...]}' if event
                          else '{"<file>.wav": ["label", ...]}')
                raise MetadataError(f"{path}: expected {layout}")
            clips = []
            for filename, labels in entries.items():
                if filename in first_split:
                    raise MetadataError(f"{path}: entry {filename!r} is also in {first_split[filename]}.json "
                                        "(HEAR file names are unique across splits)")
                first_split[filename] = split
                if event:
                    events = _events(labels, path, filename, index)
                    label_ids = labels_present(events)
                else:
                    events = ()
                    if isinstance(labels, (str, int)):
                        labels = [labels]
                    if not isinstance(labels, list) or (not labels and not self.multilabel):
                        raise MetadataError(f"{path}: entry {filename!r}: labels must be a non-empty list")
                    for lab in labels:
                        if str(lab) not in index:
                            raise MetadataError(f"{path}: entry {filename!r}: unknown label {lab!r} "
                                                f"(not in {vocab_path.name})")
                    label_ids = tuple(sorted({index[str(x)] for x in labels}))
                file = resolve_inside(rate_dir / split, filename, path, None)
                if not file.exists():
                    self.missing.setdefault(split, []).append(filename)
                clips.append(Clip(file, label_ids, filename, events))
            parts[split] = clips
        report_missing(f"hear ({self.task_name})", self.missing, {k: len(v) for k, v in parts.items()})
        mode = meta["split_mode"]
        if mode in TVT_MODES:
            self.split_protocol = f"HEAR {self.task_name}: official train/valid/test ({mode})"
        else:
            self.split_protocol = (f"HEAR {self.task_name}: {len(names)} folds ({mode}), test = fold i, "
                                   "validation = fold i+1, train = the rest (hear-eval-kit)")
        self._split_mode = mode
        self._parts = parts
        self._names = names
        self._classes = classes

    def _splits(self) -> list[Split]:
        p = self._parts
        if self._split_mode in TVT_MODES:
            return [Split(name="test", train=list(p["train"]), test=list(p["test"]), valid=list(p["valid"]))]
        names = self._names
        out = []
        for i, test in enumerate(names):
            valid = names[(i + 1) % len(names)]
            train = [c for n in names if n not in (test, valid) for c in p[n]]
            out.append(Split(name=test, train=train, test=list(p[test]), valid=list(p[valid])))
        return out

    def describe(self) -> dict:
        out = super().describe()
        out["hear_task"] = getattr(self, "task_name", None)
        out["label_shape"] = self.label_shape
        out["unsupported_metrics"] = list(getattr(self, "unsupported_metrics", []))
        return out


@hookimpl
def register_tasks(register):
    """A HEAR 2021 task directory: scene, event and pitch tasks, every split mode."""
    register("hear", HearTask)
