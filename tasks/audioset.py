"""AudioSet: 527 sound-event labels, multi-label, 10-second clips.

Two tasks:

* ``audioset`` (AS-20K): train on the balanced training set, test on the evaluation set;
* ``audioset-2m`` (AS-2M): train on balanced + unbalanced training sets, test on the
  evaluation set, with class-balanced sampling weights (:meth:`AudioSet2MTask.train_weights`).

Metrics: mAP (primary), macro AUC and d'.  AudioSet audio is not distributed; ``--data-dir``
points at a local copy holding either

* the official metadata (``class_labels_indices.csv``, ``balanced_train_segments.csv``,
  ``unbalanced_train_segments.csv``, ``eval_segments.csv``) and the audio anywhere below the
  directory, one file per segment named by its YouTube id (``<YTID>.wav``, ``Y<YTID>.wav``,
  ``<YTID>_<start>.wav``, ``Y<YTID>_<start>_<end>.wav``, ...; wav/flac/ogg/mp3); or
* AST/AudioMAE-style JSON lists (``{"data": [{"wav": path, "labels": "mid,mid"}]}``:
  ``train.json`` / ``train_all.json`` and ``eval_19k.json`` / ``eval.json``) next to
  ``class_labels_indices.csv``.  Relative ``wav`` paths are taken from the data directory;
  absolute ones are used as they are, or, when they do not exist (lists written on another
  machine), found by file name below the data directory.

Clips listed in the metadata whose audio is not present are counted per split, reported in
one warning, and kept in the clip lists so that feature extraction counts them as skipped in
every result row: they explain many "cannot reproduce" reports and are never dropped silently.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from ssl_bench import hookimpl
from ssl_bench.components import Clip, Split

from .common import (
    KALDI_FBANK_128,
    DataNotFoundError,
    DatasetTask,
    MetadataError,
    class_balanced_weights,
    clip_key,
    data_home,
    parse_int,
    read_csv,
    report_missing,
    resolve_inside,
)

CSV_BASE = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv"
LABELS_CSV = "class_labels_indices.csv"
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3"}
YTID = re.compile(r"^[A-Za-z0-9_-]{11}$")


def read_class_labels(path: Path) -> tuple[list[str], list[str]]:
    """``class_labels_indices.csv`` -> ``(mids, display_names)`` in index order."""
    mids, names = [], []
    for line, row in read_csv(path, ("index", "mid", "display_name")):
        idx = parse_int(row["index"], path, line, "index", minimum=0)
        if idx != len(mids):
            raise MetadataError(f"{path}:{line}: index {idx} out of order (expected {len(mids)})")
        if row["mid"] in mids:
            raise MetadataError(f"{path}:{line}: label {row['mid']} listed twice")
        mids.append(row["mid"])
        names.append(row["display_name"])
    if not mids:
        raise MetadataError(f"{path}: no labels listed")
    return mids, names


def index_audio(root: Path) -> dict[str, Path]:
    """Every audio file below ``root`` by file stem (one directory walk)."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            stem, ext = os.path.splitext(name)
            if ext.lower() in AUDIO_EXTENSIONS:
                out.setdefault(stem, Path(dirpath) / name)
    return out


def _by_ytid(index: dict[str, Path]) -> dict[str, Path]:
    """YouTube id -> file, from the naming schemes mirrors use."""
    out: dict[str, Path] = {}
    for stem, path in index.items():
        if YTID.match(stem):
            out.setdefault(stem, path)
        elif stem.startswith("Y") and YTID.match(stem[1:12]) and (len(stem) == 12 or stem[12] == "_"):
            out.setdefault(stem[1:12], path)
        elif len(stem) > 11 and stem[11] == "_" and YTID.match(stem[:11]):
            out.setdefault(stem[:11], path)
    # Exact stems win over prefixes (a YTID may itself start with "Y").
    out.update({s: p for s, p in index.items() if YTID.match(s)})
    return out


def read_segments(path: Path, mid_index: dict[str, int], audio: dict[str, Path], root: Path) -> tuple[list[Clip], list[str]]:
    """An official ``*_segments.csv`` -> ``(clips, missing YTIDs)``."""
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file not found (download it from {CSV_BASE}/{path.name})")
    clips, missing, seen = [], [], {}
    with open(path, newline="", encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip() or text.startswith("#"):
                continue
            row = next(csv.reader([text], skipinitialspace=True))
            if len(row) != 4:
                raise MetadataError(
                    f"{path}:{line}: expected 4 fields (YTID, start_seconds, end_seconds, positive_labels), got {len(row)}"
                )
            ytid, labels = row[0].strip(), row[3]
            if ytid in seen:
                raise MetadataError(f"{path}:{line}: segment {ytid} listed twice (first on line {seen[ytid]})")
            seen[ytid] = line
            ids = []
            for mid in (m.strip() for m in labels.split(",") if m.strip()):
                if mid not in mid_index:
                    raise MetadataError(f"{path}:{line}: unknown label {mid!r} (not in {LABELS_CSV})")
                ids.append(mid_index[mid])
            if not ids:
                raise MetadataError(f"{path}:{line}: segment {ytid} has no labels")
            file = audio.get(ytid)
            if file is None:
                missing.append(ytid)
                file = root / "missing" / f"{ytid}.wav"  # never created; extraction reports it
            clips.append(Clip(file, tuple(sorted(set(ids))), ytid))
    return clips, missing


def read_json_list(path: Path, mid_index: dict[str, int], audio: dict[str, Path], root: Path) -> tuple[list[Clip], list[str]]:
    """An AST-style JSON list -> ``(clips, missing keys)``."""
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise MetadataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise MetadataError(f'{path}: expected {{"data": [{{"wav": ..., "labels": ...}}, ...]}}')
    clips, missing, seen = [], [], set()
    for i, entry in enumerate(data["data"]):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or "wav" not in entry or "labels" not in entry:
            raise MetadataError(f"{where}: needs 'wav' and 'labels' keys")
        wav = str(entry["wav"])
        ids = []
        for mid in (m.strip() for m in str(entry["labels"]).split(",") if m.strip()):
            if mid not in mid_index:
                raise MetadataError(f"{where} ({wav}): unknown label {mid!r} (not in {LABELS_CSV})")
            ids.append(mid_index[mid])
        if Path(wav).is_absolute():
            file = Path(wav)
            if not file.exists():
                file = audio.get(Path(wav).stem, file)
        else:
            file = resolve_inside(root, wav, path, None)
        key = clip_key(root, file) if file.exists() else wav
        if key in seen:
            raise MetadataError(f"{where}: {wav} listed twice")
        seen.add(key)
        if not file.exists():
            missing.append(wav)
        clips.append(Clip(file, tuple(sorted(set(ids))), key))
    return clips, missing


class AudioSetTask(DatasetTask):
    """AudioSet-20K: balanced training set, evaluation set as test."""

    name = "audioset"
    multilabel = True
    sample_rate = 16000
    clip_seconds = 10.0
    #: d' as the AudioSet papers report it (PANNs, AST: d' of the mean AUC; HEAR's ``d_prime`` is the
    #: mean of the classes' d', another number)
    metrics = ["mAP", "AUC", "d_prime_mean_auc"]
    #: AudioMAE's published log-mel statistics of AudioSet (128-bin Kaldi fbank)
    norm_stats = {KALDI_FBANK_128: (-4.2677393, 4.5689974)}
    split_protocol = "AudioSet-20K: official balanced_train for training, official eval set for testing; validation carved from training"
    train_csvs = ("balanced_train_segments.csv",)
    train_jsons = ("train.json", "balanced_train.json", "balanced_train_data.json")
    eval_csv = "eval_segments.csv"
    eval_jsons = ("eval_19k.json", "eval.json", "eval_data.json")

    def _locate(self) -> Path:
        base = self.data_dir if self.data_dir is not None else data_home() / "audioset"
        if (base / LABELS_CSV).is_file():
            return base
        raise DataNotFoundError(
            f"AudioSet is not distributed as audio: put {LABELS_CSV} and "
            f"{', '.join(self.train_csvs + (self.eval_csv,))} (from {CSV_BASE}/) or JSON lists "
            f"({' / '.join(self.train_jsons[:1] + self.eval_jsons[:1])}) in {base}, with the audio below it, "
            "and pass --data-dir pointing there"
        )

    def _load(self, root: Path) -> None:
        mids, names = read_class_labels(root / LABELS_CSV)
        mid_index = {m: i for i, m in enumerate(mids)}
        audio = index_audio(root)
        parts: dict[str, list[Clip]] = {"train": [], "test": []}
        self.missing = {"train": [], "test": []}
        if all((root / c).is_file() for c in self.train_csvs + (self.eval_csv,)):
            self.source = "official CSVs"
            by_ytid = _by_ytid(audio)
            for part, files in (("train", self.train_csvs), ("test", (self.eval_csv,))):
                for name in files:
                    clips, missing = read_segments(root / name, mid_index, by_ytid, root)
                    parts[part] += clips
                    self.missing[part] += missing
        else:
            train_json = next((root / n for n in self.train_jsons if (root / n).is_file()), None)
            eval_json = next((root / n for n in self.eval_jsons if (root / n).is_file()), None)
            if train_json is None or eval_json is None:
                have = sorted(p.name for p in root.iterdir() if p.suffix in (".csv", ".json"))
                raise MetadataError(
                    f"{root}: need either {', '.join(self.train_csvs + (self.eval_csv,))} or JSON lists "
                    f"(training: one of {', '.join(self.train_jsons)}; evaluation: one of {', '.join(self.eval_jsons)}); "
                    f"found {', '.join(have) or 'none'}"
                )
            self.source = f"JSON lists {train_json.name}, {eval_json.name}"
            for part, path in (("train", train_json), ("test", eval_json)):
                clips, missing = read_json_list(path, mid_index, audio, root)
                parts[part] += clips
                self.missing[part] += missing
        for part, clips in parts.items():
            if not clips:
                raise MetadataError(f"{root}: the {part} list of {self.name} is empty")
        report_missing(self.name, self.missing, {k: len(v) for k, v in parts.items()})
        self._parts = parts
        self._classes = names

    def _splits(self) -> list[Split]:
        return [Split(name="eval", train=list(self._parts["train"]), test=list(self._parts["test"]))]

    def describe(self) -> dict:
        out = super().describe()
        out.update(source=getattr(self, "source", None),
                   missing_train=len(self.missing.get("train", [])), missing_test=len(self.missing.get("test", [])))
        return out


class AudioSet2MTask(AudioSetTask):
    """AudioSet-2M: balanced + unbalanced training sets, class-balanced sampling."""

    name = "audioset-2m"
    split_protocol = ("AudioSet-2M: official balanced_train + unbalanced_train for training (class-balanced sampling), "
                      "official eval set for testing; validation carved from training")
    train_csvs = ("balanced_train_segments.csv", "unbalanced_train_segments.csv")
    train_jsons = ("train_all.json", "unbalanced_train.json", "unbalanced_train_data.json")

    def train_weights(self, clips: list[Clip]) -> list[float]:
        """Per-clip sampling weights: sum over labels of 1000 / (label count + 0.01)."""
        return class_balanced_weights(clips, len(self.classes))


@hookimpl
def register_tasks(register):
    """AudioSet-20K and AudioSet-2M."""
    register("audioset", AudioSetTask)
    register("audioset-2m", AudioSet2MTask)
