"""``synthetic``: a procedurally generated sound-event dataset, built in seconds, no download.

Ten classes of synthetic events (tones, up/down chirps, band-limited noise bursts, click
trains, harmonic stacks, AM and FM tones, beeps, plucked inharmonic strikes), each clip with
random parameters from overlapping ranges, a random onset and duration, and coloured
background noise at a random SNR, so that the task is learnable but not trivial.  The data
are deterministic (a fixed seed per clip) and written once, in ESC-50's on-disk layout
(``audio/{fold}-{source}-A-{target}.wav`` + ``meta/esc50.csv``), under ``data_dir`` or
``$SSL_BENCH_DATA/synthetic`` (``~/.cache/ssl-bench/data/synthetic``), and read back with
the ESC-50 reader.  Protocol: 5 folds, leave-one-fold-out, like ESC-50.

Like a real SSL benchmark (AudioSet pretraining, ESC-50 evaluation), the task also ships a
separate **unlabeled corpus** (``unlabeled/*.wav``): clips from the same generator with their
own seeds, disjoint from every fold.  ``pretrain.corpus: task`` pretrains on it (the AudioMAE
recipe for ``synthetic`` does); the labelled folds are then only used for fine-tuning and
probing, and one pretrained encoder serves all five folds.  The log-mel normalisation stats
are measured on that corpus when the data are built (``norm_stats``), never on test clips.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

from ssl_bench import hookimpl
from ssl_bench.components import Clip
from ssl_bench.download import DataNotHere, fetching_allowed

from .common import KALDI_FBANK_128, DataNotFoundError, atomic_directory, data_home, generated_current
from .esc50 import ESC50_COLUMNS, ESC50_META, ESC50Task, read_esc50_layout

#: Bump when the generator changes: an old copy on disk is then rebuilt.
VERSION = 2
SEED = 20240601
SAMPLE_RATE = 16000
SECONDS = 2.0
CLIPS_PER_CLASS = 20
UNLABELED_CLIPS = 500
#: Index offset of unlabeled clips: never equal to a labelled clip's (target, index) seed.
UNLABELED_OFFSET = 1_000_000
FOLDS = 5
CLASSES = [
    "pure_tone", "chirp_up", "chirp_down", "noise_burst", "click_train",
    "harmonic_stack", "am_tone", "fm_tone", "beeps", "pluck",
]
MARKER = "meta/synthetic.json"


# --------------------------------------------------------------------------- generators
def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _band_noise(rng: np.random.Generator, n: int, lo_hz: float, hi_hz: float, sr: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(freqs < lo_hz) | (freqs > hi_hz)] = 0.0
    out = np.fft.irfft(spec, n)
    return out / (np.abs(out).max() + 1e-9)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise with a random spectral slope between white and brown."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    slope = rng.uniform(0.0, 2.0)  # power ~ 1 / f^slope
    spec = spec / np.maximum(freqs, 20.0) ** (slope / 2)
    out = np.fft.irfft(spec, n)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _event(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """One event of ``n`` samples (before the envelope)."""
    sr = SAMPLE_RATE
    t = np.arange(n) / sr
    dur = n / sr
    if kind == "pure_tone":
        return np.sin(2 * np.pi * _log_uniform(rng, 150, 4000) * t + rng.uniform(0, 2 * np.pi))
    if kind in ("chirp_up", "chirp_down"):
        f0 = _log_uniform(rng, 150, 1500)
        f1 = f0 * rng.uniform(1.4, 4.0)
        if kind == "chirp_down":
            f0, f1 = f1, f0
        k = np.log(f1 / f0) / dur  # exponential sweep: phase = 2 pi f0 (e^{kt} - 1) / k
        return np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    if kind == "noise_burst":
        fc = _log_uniform(rng, 300, 5000)
        half = rng.uniform(0.15, 0.8)  # half-bandwidth in octaves
        return _band_noise(rng, n, fc * 2**-half, min(fc * 2**half, sr / 2 - 100), sr)
    if kind == "click_train":
        rate = rng.uniform(4, 30)
        out = np.zeros(n)
        period = sr / rate
        starts = np.arange(rng.uniform(0, period), n, period)
        starts = (starts + rng.normal(0, 0.05 * period, size=starts.shape)).astype(int)
        click = np.exp(-np.arange(64) / rng.uniform(4, 16)) * rng.choice([-1, 1], size=64)
        for s in starts[(starts >= 0) & (starts < n - 64)]:
            out[s : s + 64] += click
        return out
    if kind == "harmonic_stack":
        f0 = _log_uniform(rng, 100, 400)
        k_max = int(rng.integers(4, 11))
        p = rng.uniform(0.5, 1.5)
        return sum((1.0 / k**p) * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
                   for k in range(1, k_max + 1) if k * f0 < sr / 2 - 200)
    if kind == "am_tone":
        fc, rate, depth = _log_uniform(rng, 200, 3000), rng.uniform(4, 16), rng.uniform(0.5, 1.0)
        return (1 - depth / 2 + depth / 2 * np.sin(2 * np.pi * rate * t)) * np.sin(2 * np.pi * fc * t)
    if kind == "fm_tone":
        fc, rate = _log_uniform(rng, 300, 3000), rng.uniform(3, 10)
        dev = rng.uniform(0.03, 0.15) * fc
        return np.sin(2 * np.pi * fc * t + (dev / rate) * np.sin(2 * np.pi * rate * t))
    if kind == "beeps":
        f, rate, duty = _log_uniform(rng, 300, 3000), rng.uniform(2, 8), rng.uniform(0.3, 0.6)
        gate = ((t * rate) % 1.0) < duty
        # 5 ms ramps on each beep so the gating itself does not sound like clicks
        ramp = np.convolve(gate.astype(float), np.ones(80) / 80, mode="same")
        return ramp * np.sin(2 * np.pi * f * t)
    if kind == "pluck":
        f0 = _log_uniform(rng, 150, 1000)
        tau = rng.uniform(0.05, 0.4)
        ratios = np.array([1.0, 2.76, 5.40, 8.93]) * rng.uniform(0.97, 1.03, size=4)
        return sum(np.exp(-t * (1 + i) / tau) * np.sin(2 * np.pi * f0 * r * t) / (1 + i)
                   for i, r in enumerate(ratios) if f0 * r < sr / 2 - 200)
    raise ValueError(f"unknown synthetic class {kind!r}")


def synth_clip(target: int, index: int, seed: int = SEED) -> np.ndarray:
    """The ``index``-th clip of class ``target``: float32, ``SECONDS`` long, peak <= 0.9."""
    rng = np.random.default_rng([seed, target, index])
    n = int(SECONDS * SAMPLE_RATE)
    dur = int(rng.uniform(0.4, 1.6) * SAMPLE_RATE)
    start = int(rng.integers(0, n - dur + 1))
    event = np.asarray(_event(CLASSES[target], rng, dur), dtype=np.float64)
    ramp = min(160, dur // 4)  # 10 ms fade in/out
    env = np.ones(dur)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[dur - ramp :] = np.linspace(1, 0, ramp)
    event = event * env
    event /= np.sqrt(np.mean(event**2)) + 1e-12
    snr_db = rng.uniform(0.0, 20.0)
    clip = _background(rng, n) * 10 ** (-snr_db / 20)
    clip[start : start + dur] += event
    clip *= rng.uniform(0.3, 0.9) / (np.abs(clip).max() + 1e-12)
    return clip.astype(np.float32)


def build(directory: Path, clips_per_class: int = CLIPS_PER_CLASS, seed: int = SEED,
          unlabeled: int = UNLABELED_CLIPS) -> None:
    """Write the dataset into the (empty) ``directory`` in ESC-50's layout."""
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    (directory / "meta").mkdir(exist_ok=True)
    rows = []
    for target in range(len(CLASSES)):
        for i in range(clips_per_class):
            fold = i % FOLDS + 1
            source = 100000 + 1000 * target + i
            filename = f"{fold}-{source}-A-{target}.wav"
            sf.write(directory / "audio" / filename, synth_clip(target, i, seed), SAMPLE_RATE, subtype="PCM_16")
            rows.append((filename, fold, target, CLASSES[target], "False", str(source), "A"))
    rows.sort(key=lambda r: r[0])
    with open(directory / ESC50_META, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ESC50_COLUMNS)
        writer.writerows(rows)
    (directory / "unlabeled").mkdir(exist_ok=True)
    pick = np.random.default_rng([seed, UNLABELED_OFFSET])
    corpus = []
    for i in range(unlabeled):
        wave = synth_clip(int(pick.integers(len(CLASSES))), UNLABELED_OFFSET + i, seed)
        sf.write(directory / "unlabeled" / f"u{i:05d}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
        corpus.append(wave)
    info = {"generator": "ssl-bench synthetic", "version": VERSION, "seed": seed, "classes": CLASSES,
            "clips_per_class": clips_per_class, "unlabeled_clips": unlabeled, "folds": FOLDS,
            "seconds": SECONDS, "sample_rate": SAMPLE_RATE, "norm_stats": corpus_norm_stats(corpus)}
    (directory / MARKER).write_text(json.dumps(info, indent=1))


def corpus_norm_stats(waves: list[np.ndarray]) -> list[float] | None:
    """Mean and std of the 128-bin Kaldi log-mel (AudioMAE/AST frontend) over ``waves``."""
    if not waves:
        return None
    import torch
    import torchaudio.compliance.kaldi as kaldi

    total = total_sq = count = 0.0
    for wave in waves:
        w = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None]
        fb = kaldi.fbank(w - w.mean(), htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False,
                         window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10).double()
        total += float(fb.sum())
        total_sq += float((fb * fb).sum())
        count += fb.numel()
    mean = total / count
    return [mean, float(np.sqrt(max(total_sq / count - mean * mean, 1e-12)))]


def _current(directory: Path) -> bool:
    return generated_current(directory / MARKER, VERSION, SEED)


class SyntheticTask(ESC50Task):
    """The embedded procedurally generated task (see the module docstring)."""

    name = "synthetic"
    sample_rate = SAMPLE_RATE
    clip_seconds = SECONDS
    metrics = ["accuracy"]
    nominal_splits = {f"fold{k}": (CLIPS_PER_CLASS * len(CLASSES) * 4 // 5, CLIPS_PER_CLASS * len(CLASSES) // 5)
                      for k in range(1, 6)}
    nominal_unlabeled = UNLABELED_CLIPS

    @property
    def norm_stats(self) -> dict[str, tuple[float, float]]:
        """Log-mel stats of the unlabeled corpus (128-bin Kaldi frontend), measured at build time."""
        self.prepare()
        stats = json.loads((self.root / MARKER).read_text()).get("norm_stats")
        return {KALDI_FBANK_128: tuple(stats)} if stats else {}

    def unlabeled(self) -> list[Clip]:
        """The separate unlabeled pretraining corpus (``pretrain.corpus: task``)."""
        self.prepare()
        files = sorted((self.root / "unlabeled").glob("*.wav"))
        return [Clip(path=p, labels=(), key=f"unlabeled/{p.name}") for p in files]
    split_protocol = "synthetic 5 folds, leave-one-fold-out (train 4, test 1); validation carved from the training folds"

    def _locate(self) -> Path:
        root = self.data_dir if self.data_dir is not None else data_home() / "synthetic"
        if _current(root):
            return root
        if root.exists() and any(root.iterdir()):
            if not (root / MARKER).exists():
                raise DataNotFoundError(
                    f"{root} is not empty and holds no synthetic dataset ({MARKER} missing); "
                    "pass an empty or new --data-dir for the synthetic task"
                )
            # An older generator version: move it aside, then rebuild.
            stale = root.with_name(f".{root.name}.stale-{uuid.uuid4().hex[:8]}")
            root.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        if not fetching_allowed():
            raise DataNotHere(f"{root}: the synthetic dataset is not generated yet; it is when the run starts")
        with atomic_directory(root) as tmp:
            if tmp is not None:
                t0 = time.time()
                print(f"synthetic: generating the dataset in {root} (a few seconds, once)", file=sys.stderr, flush=True)
                build(tmp)
                print(f"synthetic: generated in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
        if not _current(root):
            raise DataNotFoundError(f"building the synthetic dataset in {root} failed")
        return root

    def _load(self, root: Path) -> None:
        classes, clips = read_esc50_layout(root)
        self._clip_folds = clips
        self._classes = classes


@hookimpl
def register_tasks(register):
    """The embedded ``synthetic`` task (no download)."""
    register("synthetic", SyntheticTask)
