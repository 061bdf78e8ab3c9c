"""Tiny datasets in each real on-disk layout, generated for tests (nothing is downloaded).

Every builder writes a few short clips per class whose content depends on the class (a tone
whose pitch encodes the class), so end-to-end runs have something learnable, and returns the
directory to pass as ``--data-dir``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

#: The real ESC-50 category names of the first targets, in target order.
ESC50_CATEGORIES = ["dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow"]
ESC10_TARGETS = {0, 1}  # dog and rooster are ESC-10 classes in the real metadata


def tone(label: int, seconds: float = 1.0, sr: int = 16000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A noisy tone whose frequency encodes ``label``: float32 ``[N]`` or ``[N, channels]``."""
    rng = np.random.default_rng([label, seed])
    t = np.arange(int(round(seconds * sr))) / sr
    f = 300.0 * (1.5 ** label) * rng.uniform(0.97, 1.03)
    wave = 0.4 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(t.shape)
    wave = wave.astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def write_wav(path: Path, wave: np.ndarray, sr: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype="PCM_16")
    return path


# --------------------------------------------------------------------------- ESC-50
def make_esc50(root: Path, num_classes: int = 3, per_fold: int = 1, seconds: float = 1.0,
               sr: int = 44100, folds: int = 5) -> Path:
    """``root/ESC-50-master`` exactly like the public archive (names, columns, esc10 flags)."""
    root.mkdir(parents=True, exist_ok=True)
    base = root / "ESC-50-master"
    rows = []
    for target in range(num_classes):
        for fold in range(1, folds + 1):
            for k in range(per_fold):
                src = 100032 + 1000 * target + 10 * fold + k
                take = "ABC"[k % 3]
                name = f"{fold}-{src}-{take}-{target}.wav"
                write_wav(base / "audio" / name, tone(target, seconds, sr, seed=fold * 10 + k), sr)
                rows.append([name, fold, target, ESC50_CATEGORIES[target],
                             str(target in ESC10_TARGETS), src, take])
    rows.sort()
    (base / "meta").mkdir(parents=True, exist_ok=True)
    with open(base / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return base


# --------------------------------------------------------------------------- Speech Commands
def make_speechcommands(root: Path, words=("yes", "no", "up"), speakers: int = 5, seconds: float = 1.0,
                        sr: int = 16000) -> Path:
    """Speech Commands v0.02 layout: ``<word>/<speaker>_nohash_<n>.wav``, the two list files,
    ``_background_noise_/`` (not a class), and the README the archive ships."""
    root.mkdir(parents=True, exist_ok=True)
    rows = {"validation": [], "testing": []}
    for label, word in enumerate(words):
        for s in range(speakers):
            speaker = f"{0xA0 + s:08x}"
            rel = f"{word}/{speaker}_nohash_0.wav"
            # Short clips happen in the real data (< 1 s): make one per word.
            length = seconds * (0.7 if s == 0 else 1.0)
            write_wav(root / rel, tone(label, length, sr, seed=s), sr)
            if s == speakers - 1:
                rows["testing"].append(rel)
            elif s == speakers - 2:
                rows["validation"].append(rel)
    write_wav(root / "_background_noise_" / "white_noise.wav",
              (0.1 * np.random.default_rng(0).standard_normal(sr * 2)).astype(np.float32), sr)
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "validation_list.txt").write_text("\n".join(rows["validation"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(rows["testing"]) + "\n")
    (root / "README.md").write_text("Speech Commands fixture\n")
    (root / "LICENSE").write_text("CC BY 4.0\n")
    return root


# --------------------------------------------------------------------------- AudioSet
AUDIOSET_LABELS = [("/m/09x0r", "Speech"), ("/m/04rlf", "Music"), ("/m/0jbk", "Animal"), ("/m/07yv9", "Vehicle")]


def make_audioset(root: Path, per_split: int = 6, seconds: float = 1.0, sr: int = 16000,
                  missing: int = 1) -> Path:
    """AudioSet with the official CSVs and per-split audio folders.

    ``class_labels_indices.csv``, ``balanced_train_segments.csv``,
    ``unbalanced_train_segments.csv``, ``eval_segments.csv`` (3 comment lines, then
    ``YTID, start_seconds, end_seconds, positive_labels``); audio at
    ``audio/<split>/`` named ``<YTID>.wav``, ``Y<YTID>_<start>_<end>.wav`` or ``<YTID>_<ms>.flac``.
    ``missing`` clips per split are listed but have no audio.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "class_labels_indices.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        for i, (mid, name) in enumerate(AUDIOSET_LABELS):
            w.writerow([i, mid, name])
    for split, csv_name in (("balanced_train", "balanced_train_segments.csv"),
                            ("unbalanced_train", "unbalanced_train_segments.csv"),
                            ("eval", "eval_segments.csv")):
        lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
                 f"# num_ytids={per_split}, num_segs={per_split}, num_unique_labels=4, num_positive_labels=9",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        for i in range(per_split):
            ytid = f"{split[:2]}{i:03d}-abc_E"  # 11 characters, like a YouTube id
            first = i % len(AUDIOSET_LABELS)
            labels = [AUDIOSET_LABELS[first][0]]
            if i % 2:
                labels.append(AUDIOSET_LABELS[(first + 1) % len(AUDIOSET_LABELS)][0])
            lines.append(f'{ytid}, 30.000, 40.000, "{",".join(labels)}"')
            if i >= per_split - missing:
                continue
            wave = sum(tone(AUDIOSET_LABELS.index(next(x for x in AUDIOSET_LABELS if x[0] == m)), seconds, sr, seed=i)
                       for m in labels) / len(labels)
            # The naming schemes of common mirrors: <YTID>, Y<YTID>_<start>_<end>, <YTID>_<start>.
            name = [f"{ytid}.wav", f"Y{ytid}_30.000_40.000.wav", f"{ytid}_30000.flac"][i % 3]
            write_wav(root / "audio" / split / name, wave, sr)
        (root / csv_name).write_text("\n".join(lines) + "\n")
    return root


def make_audioset_json(root: Path, per_split: int = 6, seconds: float = 1.0, sr: int = 16000) -> Path:
    """AST/AudioMAE-style JSON lists: ``{"data": [{"wav": path, "labels": "mid,mid"}]}``."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "class_labels_indices.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        for i, (mid, name) in enumerate(AUDIOSET_LABELS):
            w.writerow([i, mid, name])
    for split in ("train", "eval"):
        data = []
        for i in range(per_split):
            label = i % len(AUDIOSET_LABELS)
            path = write_wav(root / "wavs" / split / f"{split}{i}.wav", tone(label, seconds, sr, seed=i), sr)
            data.append({"wav": str(path.relative_to(root)) if i % 2 else str(path), "labels": AUDIOSET_LABELS[label][0]})
        (root / f"{split}.json").write_text(json.dumps({"data": data}))
    return root


# --------------------------------------------------------------------------- folder
def make_folder(root: Path, classes=("alpha", "beta", "gamma"), per_class: int = 6, seconds: float = 1.0) -> Path:
    """``root/<class>/*.wav`` with mixed sample rates and channel counts."""
    root.mkdir(parents=True, exist_ok=True)
    rates = (16000, 22050, 44100)
    for label, name in enumerate(classes):
        for i in range(per_class):
            sr = rates[i % len(rates)]
            write_wav(root / name / f"{name}_{i}.wav", tone(label, seconds, sr, seed=i, channels=1 + i % 2), sr)
    return root


def make_folder_csv(root: Path, multilabel: bool = False, column: str | None = "fold", per_class: int = 4,
                    seconds: float = 1.0) -> Path:
    """Flat ``clips/*.wav`` plus ``labels.csv`` (``path,label[,fold|split]``)."""
    root.mkdir(parents=True, exist_ok=True)
    names = ["alpha", "beta", "gamma"]
    rows = []
    for label, name in enumerate(names):
        for i in range(per_class):
            rel = f"clips/{name}{i}.flac"
            write_wav(root / rel, tone(label, seconds, 16000, seed=i), 16000)
            lab = name if not multilabel or i % 2 == 0 else f"{name};{names[(label + 1) % 3]}"
            row = [rel, lab]
            if column == "fold":
                row.append(i % 2 + 1)
            elif column == "split":
                row.append(["train", "train", "valid", "test"][i % 4])
            rows.append(row)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"] + ([column] if column else []))
        w.writerows(rows)
    return root


# --------------------------------------------------------------------------- HEAR
HEAR_EVENT_VOCAB = ["Bark", "Door knock", "Speech"]


def event_clip(events: list[tuple[int, float, float]], seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Quiet noise with a label-coded tone during each ``(label, onset, offset)``."""
    rng = np.random.default_rng(seed)
    wave = 0.01 * rng.standard_normal(int(round(seconds * sr)))
    for label, onset, offset in events:
        a, b = int(round(onset * sr)), int(round(offset * sr))
        t = np.arange(b - a) / sr
        wave[a:b] += 0.4 * np.sin(2 * np.pi * 300.0 * (1.5 ** label) * t)
    return wave.astype(np.float32)


def make_hear(root: Path, multilabel: bool = False, kfold: bool = True, per_split: int = 6,
              seconds: float = 1.0, embedding: str = "scene", split_mode: str | None = None,
              rate: int = 16000, pitch: bool = False) -> Path:
    """A HEAR 2021 task directory as hear-preprocess writes it: ``task_metadata.json``,
    ``labelvocabulary.csv``, ``{split}.json`` and ``{rate}/{split}/*.wav``.

    ``embedding="scene"``: ``{file: [labels]}`` (``pitch``: NSynth-pitch-like, integer MIDI
    labels, pitch_acc/chroma_acc); ``embedding="event"``: ``{file: [{"label", "start", "end"}]}``
    in ms (DCASE 2016 task 2-like, onset F and segment ER).  ``split_mode``: ``trainvaltest``,
    ``presplit_kfold``, ``new_split_kfold`` (default from ``kfold``) or
    ``new_split_stratified_kfold``; k-fold modes write 3 folds.
    """
    root.mkdir(parents=True, exist_ok=True)
    split_mode = split_mode or ("new_split_kfold" if kfold else "trainvaltest")
    kfold = split_mode != "trainvaltest"
    splits = [f"fold{i:02d}" for i in range(3)] if kfold else ["train", "valid", "test"]
    if embedding == "event":
        vocab, evaluation, name = HEAR_EVENT_VOCAB, ["event_onset_200ms_fms", "segment_1s_er"], "fixture_event"
        prediction = "multilabel"
    elif pitch:
        vocab, evaluation, name = [str(p) for p in range(57, 72)], ["pitch_acc", "chroma_acc"], "fixture_pitch"
        prediction = "multiclass"
    else:
        vocab = ["bark", "meow", "moo"]
        evaluation = ["mAP", "d_prime", "aucroc"] if multilabel else ["top1_acc", "mAP"]
        name, prediction = "fixture_scene", "multilabel" if multilabel else "multiclass"
    meta = {
        "task_name": name, "version": "fixture-v1", "embedding_type": embedding, "prediction_type": prediction,
        "split_mode": split_mode, "sample_duration": seconds, "evaluation": evaluation,
        "default_mode": "full", "mode": "full",
    }
    if embedding == "event":
        grid = {"median_filter_ms": [250], "min_duration": [125, 250]}
        meta["evaluation_params"] = {"event_postprocessing_grid": grid}
    if kfold:
        meta["nfolds"] = len(splits)
        meta["splits"] = splits
    (root / "task_metadata.json").write_text(json.dumps(meta, indent=1))
    with open(root / "labelvocabulary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["idx", "label"])
        for i, label in enumerate(vocab):
            w.writerow([i, label])
    for split in splits:
        labels = {}
        for i in range(per_split):
            label = i % len(vocab)
            file = f"{split}_{i}.wav"  # hear-preprocess names files by a hash; unique across splits
            if embedding == "event":
                events = [(label, round(0.1 * (i % 3), 3), round(0.1 * (i % 3) + 0.4, 3))]
                if i % 2:
                    events.append(((label + 1) % len(vocab), 0.5, seconds))
                if i == per_split - 1:
                    events = []  # a clip without events
                write_wav(root / str(rate) / split / file, event_clip(events, seconds, rate, seed=i), rate)
                labels[file] = [{"label": vocab[k], "start": 1000.0 * a, "end": 1000.0 * b} for k, a, b in events]
            elif pitch:
                midi = 57 + (i * 5) % len(vocab)
                f0 = 440.0 * 2 ** ((midi - 69) / 12)
                t = np.arange(int(seconds * rate)) / rate
                write_wav(root / str(rate) / split / file, (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), rate)
                labels[file] = [midi]  # hear-preprocess writes NSynth's pitch as an integer
            else:
                write_wav(root / str(rate) / split / file, tone(label, seconds, rate, seed=i), rate)
                labels[file] = [vocab[label]] + ([vocab[(label + 1) % 3]] if multilabel and i % 2 else [])
        (root / f"{split}.json").write_text(json.dumps(labels, indent=True))
    return root


# --------------------------------------------------------------------------- folder-events (DESED TSVs)
EVENT_CLASSES = ["Alarm_bell_ringing", "Dog", "Speech"]


def make_folder_events(root: Path, layout: str = "split", per_part: int = 4, seconds: float = 1.0,
                       header: bool = True, nested: bool = False, sr: int = 22050) -> Path:
    """Audio plus DESED-style TSVs (``filename, onset, offset, event_label``, seconds).

    ``layout``: ``split`` (train/validation/test.tsv), ``folds`` (fold1..3.tsv) or ``single``
    (one ``events.tsv``); ``nested``: audio under ``audio/<TSV name>/`` as DESED keeps it, else
    flat in ``audio/``.  Each part's last clip has no event (listed by its file name alone).
    """
    root.mkdir(parents=True, exist_ok=True)
    parts = {"split": ["train", "validation", "test"], "folds": ["fold1", "fold2", "fold3"],
             "single": ["events"]}[layout]
    count = per_part * (3 if layout == "single" else 1)
    for part in parts:
        lines = ["filename\tonset\toffset\tevent_label"] if header else []
        for i in range(count):
            name = f"{part}_{i}.wav"
            label = i % len(EVENT_CLASSES)
            events = [(label, 0.1, 0.6)] + ([((label + 1) % 3, 0.4, seconds)] if i % 2 else [])
            events = [] if i == count - 1 else events
            folder = root / "audio" / (part if nested else "")
            write_wav(folder / name, event_clip(events, seconds, sr, seed=i), sr)
            lines += [f"{name}\t{a}\t{b}\t{EVENT_CLASSES[k]}" for k, a, b in events] or [name]
        (root / f"{part}.tsv").write_text("\n".join(lines) + "\n")
    return root


class Frames:
    """A frontend stand-in: 8 kHz audio in frames of 4 samples (cheap, deterministic)."""

    @dataclass
    class Config:
        sample_rate: int = 8000
        num_bins: int = 4

    def __init__(self):
        self.cfg = self.Config()

    def compute(self, wave: torch.Tensor) -> torch.Tensor:
        n = wave.shape[-1] // 4 * 4
        return wave[..., :n].reshape(wave.shape[0], -1, 4)
