"""``synthetic-events``: an embedded sound event detection task, generated on first use, no download.

Four classes of sound (steady tones, rising chirps, band-limited noise bursts, click trains)
placed at known onsets and offsets in 2 s clips of quiet coloured noise: up to three events a
clip, different classes may overlap (polyphony), one class never overlaps itself, some clips
hold no event.  Every clip is drawn from a fixed seed, so the data and their events are the
same on every machine; the events are planned from the seed alone (no audio needs to be read
to know them).  100 clips: train 60, valid 20, test 20, an official split like a HEAR
``trainvaltest`` task; metrics are HEAR's DCASE 2016 task 2 pair, onset F-measure within 200 ms
(primary) and the 1 s segment error rate.

On disk, under ``--data-dir`` or ``$SSL_BENCH_DATA/synthetic-events``, in the DESED layout
``folder-events`` reads: ``audio/{split}/{name}.wav``, ``{split}.tsv`` (filename, onset, offset,
event_label) and ``classes.txt``, so the same data also serve as an example of that layout.

This task is a plugin file like any third party's: it registers through the ``register_tasks``
hook, declares ``label_shape = "events"`` and gives its clips their events; nothing in the core
names it.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

from ssl_bench import hookimpl
from ssl_bench.components import Clip, Split
from ssl_bench.events import Event, labels_present

from .common import DataNotFoundError, DatasetTask, atomic_directory, data_home, generated_current

#: Bump when the generator changes: an old copy on disk is then rebuilt.
VERSION = 1
SEED = 20240824
SAMPLE_RATE = 16000
SECONDS = 2.0
CLASSES = ["tone", "chirp", "noise_burst", "click_train"]
SPLITS = {"train": 60, "valid": 20, "test": 20}
MAX_EVENTS = 3
MARKER = "synthetic-events.json"


def plan(split: str, index: int, seed: int = SEED) -> list[Event]:
    """The events of clip ``index`` of ``split``: (class, onset, offset), times on a 10 ms grid."""
    rng = np.random.default_rng([seed, list(SPLITS).index(split), index, 0])
    events: list[Event] = []
    for _ in range(int(rng.integers(0, MAX_EVENTS + 1))):
        label = int(rng.integers(len(CLASSES)))
        duration = round(float(rng.uniform(0.25, 0.8)), 2)
        onset = round(float(rng.uniform(0.0, SECONDS - duration)), 2)
        candidate = Event(label, onset, round(onset + duration, 2))
        if any(e.label == label and e.onset < candidate.offset and candidate.onset < e.offset for e in events):
            continue  # one class never overlaps itself: its events stay countable
        events.append(candidate)
    return sorted(events, key=lambda e: (e.onset, e.label))


def _sound(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    kind = CLASSES[label]
    if kind == "tone":
        return np.sin(2 * np.pi * rng.uniform(400, 1200) * t)
    if kind == "chirp":
        f0 = rng.uniform(300, 800)
        f1 = f0 * rng.uniform(2.0, 4.0)
        k = np.log(f1 / f0) / (n / SAMPLE_RATE)
        return np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    if kind == "noise_burst":
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        centre = rng.uniform(2500, 5000)
        spec[(freqs < centre / 1.5) | (freqs > centre * 1.5)] = 0.0
        out = np.fft.irfft(spec, n)
        return out / (np.abs(out).max() + 1e-9)
    out = np.zeros(n)  # click_train
    period = int(SAMPLE_RATE / rng.uniform(8, 20))
    click = np.exp(-np.arange(48) / 6.0)
    for start in range(int(rng.integers(0, period)), n - 48, period):
        out[start:start + 48] += click
    return out


def synth(split: str, index: int, seed: int = SEED) -> np.ndarray:
    """The audio of clip ``index`` of ``split``: float32, ``SECONDS`` long, its planned events
    at their onsets and offsets (10 ms fades) over quiet noise."""
    rng = np.random.default_rng([seed, list(SPLITS).index(split), index, 1])
    n = int(SECONDS * SAMPLE_RATE)
    clip = np.cumsum(rng.standard_normal(n)) * 1e-4  # brownish background
    clip = clip - clip.mean() + 0.02 * rng.standard_normal(n)
    for event in plan(split, index, seed):
        a, b = int(round(event.onset * SAMPLE_RATE)), int(round(event.offset * SAMPLE_RATE))
        sound = _sound(event.label, b - a, rng)
        ramp = min(160, (b - a) // 4)
        env = np.ones(b - a)
        env[:ramp], env[b - a - ramp:] = np.linspace(0, 1, ramp), np.linspace(1, 0, ramp)
        clip[a:b] += rng.uniform(0.2, 0.5) * env * sound / (np.abs(sound).max() + 1e-9)
    return (clip / max(1.0, np.abs(clip).max() / 0.9)).astype(np.float32)


def clip_name(split: str, index: int) -> str:
    return f"{split}_{index:03d}.wav"


def build(directory: Path, seed: int = SEED) -> None:
    """Write the dataset into the (empty) ``directory``."""
    for split, count in SPLITS.items():
        (directory / "audio" / split).mkdir(parents=True, exist_ok=True)
        lines = ["filename\tonset\toffset\tevent_label"]
        for i in range(count):
            name = clip_name(split, i)
            sf.write(directory / "audio" / split / name, synth(split, i, seed), SAMPLE_RATE, subtype="PCM_16")
            events = plan(split, i, seed)
            lines += [f"{name}\t{e.onset:.2f}\t{e.offset:.2f}\t{CLASSES[e.label]}" for e in events] or [name]
        (directory / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (directory / "classes.txt").write_text("\n".join(CLASSES) + "\n")  # folder-events reads them in this order
    info = {"generator": "ssl-bench synthetic-events", "version": VERSION, "seed": seed, "classes": CLASSES,
            "splits": SPLITS, "seconds": SECONDS, "sample_rate": SAMPLE_RATE}
    (directory / MARKER).write_text(json.dumps(info, indent=1))


def _current(directory: Path) -> bool:
    return generated_current(directory / MARKER, VERSION, SEED)


class SyntheticEventsTask(DatasetTask):
    """The embedded sound event detection task (see the module docstring)."""

    name = "synthetic-events"
    label_shape = "events"
    multilabel = True  # clip-level targets: the labels present
    sample_rate = SAMPLE_RATE
    clip_seconds = SECONDS
    metrics = ["event_onset_200ms_fms", "segment_1s_er"]
    split_protocol = "synthetic-events official split: train 60, valid 20, test 20 clips of 2 s"

    def _locate(self) -> Path:
        root = self.data_dir if self.data_dir is not None else data_home() / "synthetic-events"
        if _current(root):
            return root
        if root.exists() and any(root.iterdir()):
            if not (root / MARKER).exists():
                raise DataNotFoundError(f"{root} is not empty and holds no synthetic-events dataset ({MARKER} "
                                        "missing); pass an empty or new --data-dir for the synthetic-events task")
            stale = root.with_name(f".{root.name}.stale-{uuid.uuid4().hex[:8]}")  # an older generator's copy
            root.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_directory(root) as tmp:
            if tmp is not None:
                print(f"synthetic-events: generating the dataset in {root} (a second, once)", file=sys.stderr,
                      flush=True)
                build(tmp)
        if not _current(root):
            raise DataNotFoundError(f"building the synthetic-events dataset in {root} failed")
        return root

    def _load(self, root: Path) -> None:
        self._classes = list(CLASSES)
        self._parts = {}
        for split, count in SPLITS.items():
            clips = []
            for i in range(count):
                events = tuple(plan(split, i))
                name = clip_name(split, i)
                clips.append(Clip(root / "audio" / split / name, labels_present(events), name, events))
            self._parts[split] = clips

    def _splits(self) -> list[Split]:
        p = self._parts
        return [Split(name="test", train=list(p["train"]), test=list(p["test"]), valid=list(p["valid"]))]


@hookimpl
def register_tasks(register):
    """The embedded ``synthetic-events`` task (sound event detection, no download)."""
    register("synthetic-events", SyntheticEventsTask)
