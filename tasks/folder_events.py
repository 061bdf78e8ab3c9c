"""``folder-events``: bring your own sound event data: audio plus TSV files of events, as DESED
and the DCASE sound event detection tasks ship them.

Layout (``--data-dir`` is the folder)::

    audio/...                   the clips, any rate and channel count (wav, flac, ogg, mp3, aiff);
                                without an audio/ folder, the clips sit beside the TSV files
    train.tsv  test.tsv         one split; valid.tsv (or validation.tsv, val.tsv) optional,
                                else validation is carved from train
    or fold1.tsv fold2.tsv ...  leave-one-fold-out, one TSV per fold
    or one TSV of another name  5 folds assigned by a hash of each file name, stratified by
                                the clip's rarest label
    classes.txt                 optional: the class names, one a line (fixes their order; any
                                other label is then an error)
    task.yaml                   optional: clip_seconds, metrics

A TSV row is ``filename<TAB>onset<TAB>offset<TAB>label``, times in seconds; a header row
(``filename onset offset event_label``, DESED's, or ``label``) is optional.  A row holding only
a file name (or empty onset, offset and label) lists a clip without events.  ``filename`` is
relative to ``audio/`` or to ``audio/<TSV name>/`` (DESED keeps each set's audio in a folder named
like its TSV); it names the clip in results and predictions, so it must be unique across TSVs.

Clip length: the longest clip, capped at 10 s, unless ``task.yaml`` says ``clip_seconds``.
Events that start after the clip length are dropped and ends beyond it are cut (as
hear-preprocess does for HEAR's event tasks), with a warning that counts them.  Metrics:
``event_onset_200ms_fms`` and ``segment_1s_er`` (DCASE 2016 task 2's in HEAR) unless
``task.yaml`` names other event metrics.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import warnings
from collections import Counter
from pathlib import Path

import soundfile as sf
import yaml

from ssl_bench import hookimpl
from ssl_bench.components import Clip, Split
from ssl_bench.events import EVENTS, Event, labels_present, trim_events
from ssl_bench.metrics import EVENTS as EVENT_METRICS
from ssl_bench.metrics import metric_names

from .common import (
    DataNotFoundError,
    DatasetTask,
    MetadataError,
    check_present,
    fold_splits,
    loaded_attribute,
    read_class_list,
    resolve_inside,
    stratified_folds,
)

AUDIO_DIR = "audio"
SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}
FOLD_TSV = re.compile(r"^fold[_-]?(\d+)$")
HEADER_LABELS = ("event_label", "label")
DEFAULT_METRICS = ["event_onset_200ms_fms", "segment_1s_er"]
MAX_SECONDS = 10.0
DEFAULT_FOLDS = 5


class TrimmedEventsWarning(UserWarning):
    """Events beyond the task's clip length, dropped or cut."""


def _seconds(value: str, path: Path, line: int, column: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise MetadataError(f"{path}:{line}: {column} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(out) or out < 0:
        raise MetadataError(f"{path}:{line}: {column} must be a number of seconds >= 0, got {value!r}")
    return out


def read_event_tsv(path: Path) -> list[tuple[int, str, tuple[float, float, str] | None]]:
    """``(line, filename, (onset, offset, label) or None)`` per row of an events TSV (None: a
    clip listed without events), with errors naming the file and line."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, fields in enumerate(csv.reader(f, delimiter="\t"), start=1):
            fields = [x.strip() for x in fields]
            if not any(fields):
                continue
            if line == 1 and fields[0].lower() == "filename":
                names = [x.lower() for x in fields]
                if names[1:3] != ["onset", "offset"] or len(names) != 4 or names[3] not in HEADER_LABELS:
                    raise MetadataError(f"{path}:1: header must be filename, onset, offset, event_label "
                                        f"(tab-separated), got {', '.join(fields)}")
                continue
            if len(fields) == 1 and len(fields[0].split()) == 4:
                raise MetadataError(f"{path}:{line}: fields must be separated by tabs, got {fields[0]!r}")
            if len(fields) not in (1, 4):
                raise MetadataError(f"{path}:{line}: expected 4 tab-separated fields (filename, onset, offset, "
                                    f"label) or a file name alone, got {len(fields)}")
            filename = fields[0]
            if not filename:
                raise MetadataError(f"{path}:{line}: empty file name")
            if len(fields) == 1 or not any(fields[1:]):
                rows.append((line, filename, None))
                continue
            onset, offset = _seconds(fields[1], path, line, "onset"), _seconds(fields[2], path, line, "offset")
            if offset < onset:
                raise MetadataError(f"{path}:{line}: offset {offset} is before onset {onset}")
            if not fields[3]:
                raise MetadataError(f"{path}:{line}: empty label")
            rows.append((line, filename, (onset, offset, fields[3])))
    return rows


class FolderEventsTask(DatasetTask):
    """Your own sound event data (see the module docstring)."""

    name = "folder-events"
    sample_rate = 16000
    multilabel = True  # clip-level targets: the labels present
    label_shape = EVENTS
    clip_seconds = loaded_attribute(MAX_SECONDS)
    metrics = loaded_attribute(list(DEFAULT_METRICS))
    split_protocol = loaded_attribute("")

    def _locate(self) -> Path:
        if self.data_dir is None:
            raise DataNotFoundError("task 'folder-events' needs --data-dir: a folder of audio and events TSV files")
        if not self.data_dir.is_dir():
            raise DataNotFoundError(f"task 'folder-events': {self.data_dir} does not exist")
        return self.data_dir

    # ------------------------------------------------------------------ reading
    def _tables(self, root: Path) -> tuple[str, dict[str, Path]]:
        """``(mode, {part or fold: TSV})``: ``split``, ``folds`` or ``auto``."""
        tsvs = sorted(root.glob("*.tsv"))
        if not tsvs:
            raise DataNotFoundError(f"{root}: no events TSV (train.tsv and test.tsv, fold1.tsv..., or one TSV of "
                                    "filename, onset, offset, label)")
        split = {SPLIT_NAMES[p.stem.lower()]: p for p in tsvs if p.stem.lower() in SPLIT_NAMES}
        folds = {m.group(1): p for p in tsvs if (m := FOLD_TSV.match(p.stem.lower()))}
        others = [p.name for p in tsvs if p.stem.lower() not in SPLIT_NAMES and not FOLD_TSV.match(p.stem.lower())]
        if split and (folds or others) or folds and others:
            raise MetadataError(f"{root}: mixed TSV names ({', '.join(p.name for p in tsvs)}); use "
                                "train/valid/test.tsv, fold1.tsv..., or a single TSV")
        if split:
            if "train" not in split or "test" not in split:
                raise MetadataError(f"{root}: a split needs train.tsv and test.tsv (found {', '.join(sorted(split))})")
            return "split", split
        if folds:
            if len(folds) < 2:
                raise MetadataError(f"{root}: cross-validation needs at least 2 fold TSVs, found {len(folds)}")
            return "folds", folds
        if len(others) > 1:
            raise MetadataError(f"{root}: several TSV files ({', '.join(others)}); name them train/valid/test.tsv or "
                                "fold1.tsv..., or keep one")
        return "auto", {"all": tsvs[0]}

    def _audio(self, audio_root: Path, table: Path, filename: str, line: int) -> Path:
        candidates = [resolve_inside(audio_root, f"{table.stem}/{filename}", table, line),
                      resolve_inside(audio_root, filename, table, line)]
        return next((p for p in candidates if p.exists()), candidates[-1])

    def _load(self, root: Path) -> None:
        mode, tables = self._tables(root)
        audio_root = root / AUDIO_DIR if (root / AUDIO_DIR).is_dir() else root
        rows: dict[str, list] = {}
        seen: dict[str, str] = {}
        for part, table in tables.items():
            rows[part] = []
            for line, filename, event in read_event_tsv(table):
                first = seen.setdefault(filename, table.name)
                if first != table.name:
                    raise MetadataError(f"{table}:{line}: {filename} is also listed in {first} (a clip belongs to "
                                        "one split)")
                rows[part].append((line, filename, event))
            if not rows[part]:
                raise MetadataError(f"{table}: no clips listed")
        fixed = read_class_list(root)
        if fixed is not None:
            classes = fixed
            for part, table in tables.items():
                for line, _, event in rows[part]:
                    if event is not None and event[2] not in classes:
                        raise MetadataError(f"{table}:{line}: unknown label {event[2]!r} "
                                            f"(not in {root / 'classes.txt'})")
        else:
            classes = sorted({e[2] for part in rows.values() for _, _, e in part if e is not None})
        if not classes:
            raise MetadataError(f"{root}: the TSV files list no events")
        index = {c: i for i, c in enumerate(classes)}
        self._classes = classes

        parts: dict[str, list[Clip]] = {}
        for part, table in tables.items():
            events: dict[str, list[Event]] = {}
            paths: dict[str, Path] = {}
            for line, filename, event in rows[part]:
                if filename not in paths:
                    paths[filename] = self._audio(audio_root, table, filename, line)
                    events[filename] = []
                if event is not None:
                    events[filename].append(Event(index[event[2]], event[0], event[1]))
            parts[part] = [Clip(paths[f], labels_present(evs), f, tuple(evs)) for f, evs in events.items()]
        check_present(self, parts)

        options = {}
        if (root / "task.yaml").is_file():
            options = yaml.safe_load((root / "task.yaml").read_text()) or {}
            unknown = set(options) - {"clip_seconds", "metrics"}
            if unknown:
                raise MetadataError(f"{root / 'task.yaml'}: unknown key(s) {', '.join(sorted(unknown))}; valid: "
                                    "clip_seconds, metrics")
        if "metrics" in options:
            known = metric_names(EVENT_METRICS)
            bad = [m for m in options["metrics"] if m not in known]
            if bad:
                raise MetadataError(f"{root / 'task.yaml'}: unknown event metric(s) {', '.join(bad)}; valid: "
                                    f"{', '.join(known)}")
            self.metrics = list(options["metrics"])
        else:
            self.metrics = list(DEFAULT_METRICS)
        seconds = options.get("clip_seconds")
        self.clip_seconds = float(seconds) if seconds else self._longest_clip(parts)
        parts = self._trimmed(parts, self.clip_seconds)

        if mode == "split":
            self._made_splits = [Split(name="split", train=parts["train"], test=parts["test"],
                                             valid=parts.get("valid") or None)]
            self.split_protocol = ("fixed split from train.tsv and test.tsv"
                                   + ("" if parts.get("valid") else "; validation carved from train"))
        elif mode == "folds":
            numbered = sorted(parts, key=int)
            self._made_splits = fold_splits([(c, int(f)) for f in numbered for c in parts[f]])
            self.split_protocol = (f"{len(numbered)} folds from fold TSVs, leave-one-fold-out; validation carved "
                                   "from the training folds")
        else:
            clips = parts["all"]
            counts = Counter(c for clip in clips for c in clip.labels)
            folds = max(2, min(DEFAULT_FOLDS, len(clips)))

            def rarest(clip: Clip) -> tuple[int, ...]:
                return (min(clip.labels, key=lambda c: (counts[c], c)),) if clip.labels else ()

            self._made_splits = fold_splits(stratified_folds(clips, folds, stratum=rarest))
            self.split_protocol = (f"{folds} folds assigned by a hash of each file name, stratified by its rarest "
                                   f"label ({tables['all'].name}), leave-one-fold-out; validation carved from the "
                                   "training folds")

    def _longest_clip(self, parts: dict[str, list[Clip]]) -> float:
        longest = 0.0
        for clips in parts.values():
            for clip in clips:
                try:
                    info = sf.info(str(clip.path))
                except Exception:  # noqa: BLE001 - unreadable clips are reported when features are made
                    continue
                longest = max(longest, info.frames / info.samplerate)
        if longest == 0.0:
            return MAX_SECONDS
        return min(MAX_SECONDS, math.ceil(longest * 10 - 1e-6) / 10)

    def _trimmed(self, parts: dict[str, list[Clip]], seconds: float) -> dict[str, list[Clip]]:
        dropped = cut = 0
        out = {}
        for part, clips in parts.items():
            out[part] = []
            for clip in clips:
                events, d, c = trim_events(clip.events, seconds)
                dropped, cut = dropped + d, cut + c
                out[part].append(dataclasses.replace(clip, events=events, labels=labels_present(events)))
        if dropped or cut:
            warnings.warn(f"task folder-events: {dropped} event(s) start after the clip length {seconds:g} s and were "
                          f"dropped, {cut} were cut at it; set clip_seconds in task.yaml to keep them",
                          TrimmedEventsWarning, stacklevel=3)
        return out

    def _splits(self) -> list[Split]:
        return list(self._made_splits)


@hookimpl
def register_tasks(register):
    """Your own sound event data: audio plus DESED-style TSVs of events."""
    register("folder-events", FolderEventsTask)
