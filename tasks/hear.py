"""``hear``: a HEAR 2021 scene task directory, as hear-preprocess writes it.

Layout (``--data-dir`` is the task directory, e.g. ``tasks/esc50-v2.0.0-full``)::

    task_metadata.json       task_name, embedding_type, prediction_type, split_mode,
                             sample_duration, evaluation, splits (k-fold modes)
    labelvocabulary.csv      idx,label
    {split}.json             {"<file>.wav": ["label", ...], ...}
    16000/{split}/*.wav      audio at 16 kHz (another rate folder is used if 16000 is absent)

Only scene tasks (one prediction per clip) are supported: ``multiclass`` or ``multilabel``.
Splits follow hear-eval-kit exactly: ``trainvaltest`` (and ``stratified_trainvaltest``)
gives one split with the official train/valid/test; the k-fold modes (``presplit_kfold``,
``new_split_kfold``, ``new_split_stratified_kfold``) give one split per fold: test = fold i,
validation = fold i+1 (wrapping), train = the others, folds in sorted order.  Metrics map
HEAR's names (``top1_acc`` -> accuracy, ``mAP``, ``d_prime``, ``aucroc`` -> AUC); the task's
first supported metric is the primary one.
"""

from __future__ import annotations

import json
from pathlib import Path

from ssl_bench import hookimpl
from ssl_bench.components import Clip, Split

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

METRIC_NAMES = {"top1_acc": "accuracy", "mAP": "mAP", "d_prime": "d_prime", "aucroc": "AUC"}
KFOLD_MODES = ("presplit_kfold", "new_split_kfold", "new_split_stratified_kfold")
TVT_MODES = ("trainvaltest", "stratified_trainvaltest")


class HearTask(DatasetTask):
    """One HEAR 2021 scene task (see the module docstring)."""

    name = "hear"
    sample_rate = 16000
    multilabel = loaded_attribute(False)
    clip_seconds = loaded_attribute(1.0)
    metrics = loaded_attribute(["accuracy"])
    split_protocol = loaded_attribute("")

    def _locate(self) -> Path:
        root = super()._locate()
        if not (root / "task_metadata.json").is_file():
            raise DataNotFoundError(f"{root}: no task_metadata.json; point --data-dir at one HEAR task directory")
        return root

    def _load(self, root: Path) -> None:
        meta_path = root / "task_metadata.json"
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise MetadataError(f"{meta_path}: not valid JSON ({exc})") from None
        for key in ("embedding_type", "prediction_type", "split_mode", "sample_duration", "evaluation"):
            if key not in meta:
                raise MetadataError(f"{meta_path}: missing key {key!r}")
        if meta["embedding_type"] != "scene":
            raise MetadataError(
                f"{meta_path}: embedding_type {meta['embedding_type']!r} is not supported (only scene tasks)"
            )
        if meta["prediction_type"] not in ("multiclass", "multilabel"):
            raise MetadataError(f"{meta_path}: prediction_type must be multiclass or multilabel, got {meta['prediction_type']!r}")
        self.task_name = meta.get("task_name", root.name)
        self.multilabel = meta["prediction_type"] == "multilabel"
        self.clip_seconds = float(meta["sample_duration"])
        metrics = [METRIC_NAMES[m] for m in meta["evaluation"] if m in METRIC_NAMES]
        if not metrics:
            raise MetadataError(f"{meta_path}: none of the evaluation metrics {meta['evaluation']} is supported "
                                f"(supported: {', '.join(METRIC_NAMES)})")
        self.metrics = metrics

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

        mode = meta["split_mode"]
        if mode in TVT_MODES:
            names = ["train", "valid", "test"]
        elif mode in KFOLD_MODES:
            names = meta.get("splits") or [f"fold{i:02d}" for i in range(int(meta.get("nfolds", 0)))]
            if len(names) < 3:
                raise MetadataError(f"{meta_path}: k-fold split mode {mode!r} needs at least 3 folds, got {names}")
            names = sorted(names)
        else:
            raise MetadataError(f"{meta_path}: unknown split_mode {mode!r} (known: {', '.join(TVT_MODES + KFOLD_MODES)})")

        rate_dir = root / "16000"
        if not rate_dir.is_dir():
            rates = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
            if not rates:
                raise DataNotFoundError(f"{root}: no audio folder (expected {rate_dir})")
            rate_dir = rates[0]  # load_audio resamples to 16 kHz
        parts: dict[str, list[Clip]] = {}
        self.missing = {}
        for split in names:
            path = root / f"{split}.json"
            if not path.is_file():
                raise MetadataError(f"{path}: split file missing (split_mode {mode} lists {split!r})")
            try:
                entries = json.loads(path.read_text())
            except ValueError as exc:
                raise MetadataError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(entries, dict):
                raise MetadataError(f'{path}: expected {{"<file>.wav": ["label", ...], ...}}')
            clips = []
            for filename, labels in entries.items():
                if isinstance(labels, str):
                    labels = [labels]
                if not isinstance(labels, list) or (not labels and not self.multilabel):
                    raise MetadataError(f"{path}: entry {filename!r}: labels must be a non-empty list")
                for lab in labels:
                    if str(lab) not in index:
                        raise MetadataError(f"{path}: entry {filename!r}: unknown label {lab!r} (not in {vocab_path.name})")
                file = resolve_inside(rate_dir / split, filename, path, None)
                if not file.exists():
                    self.missing.setdefault(split, []).append(filename)
                clips.append(Clip(file, tuple(sorted({index[str(x)] for x in labels})), f"{split}/{filename}"))
            parts[split] = clips
        report_missing(f"hear ({self.task_name})", self.missing, {k: len(v) for k, v in parts.items()})
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
        return out


@hookimpl
def register_tasks(register):
    """A HEAR 2021 scene task directory."""
    register("hear", HearTask)
