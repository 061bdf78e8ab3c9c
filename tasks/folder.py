"""``folder``: bring your own labelled audio.

Two layouts, any sample rate and channel count (wav, flac, ogg, mp3, aiff):

* class folders: ``root/<class>/**/*.wav``; the class is the top folder's name;
* a CSV, ``root/labels.csv`` or ``root/metadata.csv`` (or ``--data-dir`` naming the CSV file
  itself), with columns ``path,label`` and optionally ``fold`` or ``split``:
  ``path`` is relative to the CSV's folder and must stay inside it; ``label`` holds one
  class name, or several separated by ``;`` (then the task is multi-label).  An optional
  ``classes.txt`` next to it (one name per line) fixes the class list and order, and makes
  any other label an error.

Splits: a ``fold`` column gives leave-one-fold-out cross-validation; a ``split`` column with
``train`` / ``valid`` (or ``validation``, ``val``) / ``test`` gives that one split; otherwise
clips are assigned to 5 stratified folds by a hash of their path (stable when files are
added).  Clip length: the longest clip, capped at 10 s, unless ``task.yaml`` (keys
``clip_seconds``, ``metrics``) in the folder says otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import soundfile as sf
import yaml

from ssl_bench import hookimpl
from ssl_bench.components import Clip, Split
from ssl_bench.metrics import CLIP, metric_names

from .common import (
    DataNotFoundError,
    DatasetTask,
    MetadataError,
    check_present,
    clip_key,
    fold_splits,
    loaded_attribute,
    read_class_list,
    read_csv,
    resolve_inside,
    stratified_folds,
)

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
CSV_NAMES = ("labels.csv", "metadata.csv")
SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid", "test": "test"}
MAX_SECONDS = 10.0
DEFAULT_FOLDS = 5


class FolderTask(DatasetTask):
    """Your own labelled audio (see the module docstring)."""

    name = "folder"
    sample_rate = 16000
    # Known once the data are read; reading one of them reads the data.
    multilabel = loaded_attribute(False)
    clip_seconds = loaded_attribute(MAX_SECONDS)
    metrics = loaded_attribute(["accuracy", "mAP"])
    split_protocol = loaded_attribute("")

    def __init__(self, data_dir: str | Path | None = None, clip_seconds: float | None = None):
        super().__init__(data_dir)
        self._clip_seconds_option = clip_seconds
        self.csv_path: Path | None = None

    def _locate(self) -> Path:
        if self.data_dir is None:
            raise DataNotFoundError("task 'folder' needs --data-dir: a folder of <class>/ folders or a labels CSV")
        if self.data_dir.is_file():
            self.csv_path = self.data_dir
            return self.data_dir.parent
        if not self.data_dir.is_dir():
            raise DataNotFoundError(f"task 'folder': {self.data_dir} does not exist")
        self.csv_path = next((self.data_dir / n for n in CSV_NAMES if (self.data_dir / n).is_file()), None)
        return self.data_dir

    # ------------------------------------------------------------------ reading
    def _read_csv(self, root: Path) -> None:
        path = self.csv_path
        rows = []
        header_cols = None
        for line, row in read_csv(path, ("path", "label"), optional=("fold", "split")):
            if header_cols is None:
                header_cols = set(row)
            file = resolve_inside(root, row["path"], path, line)
            labels = [s.strip() for s in row["label"].split(";") if s.strip()]
            if not labels:
                raise MetadataError(f"{path}:{line}: empty label")
            part = None
            if "split" in row:
                part = SPLIT_NAMES.get(row["split"].strip().lower())
                if part is None:
                    raise MetadataError(f"{path}:{line}: split must be train, valid or test, got {row['split']!r}")
            fold = row.get("fold")
            if "fold" in row and not fold:
                raise MetadataError(f"{path}:{line}: empty fold")
            rows.append((line, file, labels, part, fold))
        if not rows:
            raise MetadataError(f"{path}: no clips listed")
        fixed = read_class_list(root)
        if fixed is not None:
            classes = fixed
            for line, _, labels, _, _ in rows:
                for lab in labels:
                    if lab not in classes:
                        raise MetadataError(f"{path}:{line}: unknown label {lab!r} (not in {root / 'classes.txt'})")
        else:
            classes = sorted({lab for _, _, labels, _, _ in rows for lab in labels})
        index = {c: i for i, c in enumerate(classes)}
        self.multilabel = any(len(labels) > 1 for _, _, labels, _, _ in rows)
        seen = {}
        clips = []
        for line, file, labels, part, fold in rows:
            key = clip_key(root, file)
            if key in seen:
                raise MetadataError(f"{path}:{line}: {key} is listed twice (first on line {seen[key]})")
            seen[key] = line
            clips.append((Clip(file, tuple(sorted(index[lab] for lab in set(labels))), key), part, fold))
        self._classes = classes
        if "split" in (header_cols or ()):
            parts = {"train": [], "valid": [], "test": []}
            for clip, part, _ in clips:
                parts[part].append(clip)
            if not parts["train"] or not parts["test"]:
                raise MetadataError(f"{path}: the split column needs at least one train and one test clip")
            self._mode = ("split", parts)
            self.split_protocol = f"fixed split from the split column of {path.name}" + (
                "" if parts["valid"] else "; validation carved from train")
        elif "fold" in (header_cols or ()):
            folds = [f for _, _, f in clips]
            numeric = all(f.lstrip("-").isdigit() for f in folds)
            pairs = [(c, int(f) if numeric else f) for c, _, f in clips]
            self._mode = ("folds", pairs)
            self.split_protocol = (f"{len(set(folds))} folds from the fold column of {path.name}, leave-one-fold-out; "
                                   "validation carved from the training folds")
        else:
            self._auto_folds([c for c, _, _ in clips])

    def _read_class_folders(self, root: Path) -> None:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        fixed = read_class_list(root)
        clips = []
        names = [d.name for d in dirs if any(f.suffix.lower() in AUDIO_EXTENSIONS for f in d.rglob("*"))]
        if fixed is not None:
            for name in names:
                if name not in fixed:
                    raise MetadataError(f"{root / name}: folder is not a class in {root / 'classes.txt'}")
            names = fixed
        if len(names) < 2:
            raise MetadataError(
                f"{root}: expected <class>/ folders with audio (at least 2 classes) or a {' / '.join(CSV_NAMES)} "
                f"file; found {len(names)} class folder(s)"
            )
        for label, name in enumerate(names):
            for f in sorted((root / name).rglob("*")):
                # a dangling link is listed too: it is then skipped with a warning and counted
                if (f.is_file() or f.is_symlink()) and f.suffix.lower() in AUDIO_EXTENSIONS:
                    clips.append(Clip(f, (label,), clip_key(root, f)))
        self._classes = names
        self.multilabel = False
        self._auto_folds(clips)

    def _auto_folds(self, clips: list[Clip]) -> None:
        per_class = min(sum(1 for c in clips if c.labels[:1] == (k,)) for k in {c.labels[0] for c in clips})
        folds = max(2, min(DEFAULT_FOLDS, len(clips)))
        self._mode = ("folds", stratified_folds(clips, folds))
        self.split_protocol = (f"{folds} stratified folds assigned by a hash of each path, leave-one-fold-out; "
                               "validation carved from the training folds")
        if per_class < folds:
            self.split_protocol += f" (smallest class has {per_class} clips: some test folds lack it)"

    def _load(self, root: Path) -> None:
        if self.csv_path is not None:
            self._read_csv(root)
            check_present(self, {"listed": self._all_clips()})
        else:
            self._read_class_folders(root)
        options = {}
        if (root / "task.yaml").is_file():
            options = yaml.safe_load((root / "task.yaml").read_text()) or {}
            unknown = set(options) - {"clip_seconds", "metrics"}
            if unknown:
                raise MetadataError(f"{root / 'task.yaml'}: unknown key(s) {', '.join(sorted(unknown))}; valid: clip_seconds, metrics")
        if "metrics" in options:
            known = metric_names(CLIP)
            bad = [m for m in options["metrics"] if m not in known]
            if bad:
                raise MetadataError(f"{root / 'task.yaml'}: unknown metric(s) {', '.join(bad)}; valid: {', '.join(known)}")
            self.metrics = list(options["metrics"])
        else:
            self.metrics = ["mAP", "AUC", "d_prime"] if self.multilabel else ["accuracy", "mAP"]
        seconds = self._clip_seconds_option or options.get("clip_seconds")
        self.clip_seconds = float(seconds) if seconds else self._longest_clip()

    def _all_clips(self) -> list[Clip]:
        kind, data = self._mode
        if kind == "split":
            return [c for part in data.values() for c in part]
        return [c for c, _ in data]

    def _longest_clip(self) -> float:
        longest = 0.0
        for clip in self._all_clips():
            try:
                info = sf.info(str(clip.path))
            except Exception:  # noqa: BLE001 - unreadable clips are reported when features are made
                continue
            longest = max(longest, info.frames / info.samplerate)
        if longest == 0.0:
            return MAX_SECONDS
        return min(MAX_SECONDS, math.ceil(longest * 10 - 1e-6) / 10)

    def _splits(self) -> list[Split]:
        kind, data = self._mode
        if kind == "split":
            return [Split(name="split", train=list(data["train"]), test=list(data["test"]), valid=list(data["valid"]) or None)]
        return fold_splits(data)


@hookimpl
def register_tasks(register):
    """Your own data: class folders or a labels CSV."""
    register("folder", FolderTask)
