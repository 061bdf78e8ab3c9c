#!/usr/bin/env python
"""Write an ESC-50-layout dataset of physically different synthesised sounds (no download).

    python scripts/make_esc50_fixture.py OUT [--per-class 40] [--unlabeled 500] [--seconds 5]

writes ``OUT/ESC-50-master/`` exactly as the public archive lays it out::

    audio/{fold}-{source}-{take}-{target}.wav      44.1 kHz mono 16-bit, 5 s
    meta/esc50.csv                                 filename,fold,target,category,esc10,src_file,take

(``--per-class`` clips per class, spread evenly over 5 folds, as ESC-50's 40 = 5 x 8), and, with
``--unlabeled N``, ``OUT/unlabeled/*.wav``: N clips of random classes with their own seeds,
disjoint from every fold, to pretrain on (``--set pretrain.corpus=OUT/unlabeled``) the way
AudioSet serves ESC-50.  Run it with ``--data-dir OUT/ESC-50-master -t esc50``.

It is not the ``synthetic`` task's generator: each class is a small physical model, not a
tone with an envelope, and every clip goes through a room (a synthetic impulse response with a
random RT60) and over a coloured background at a random SNR:

* ``bell``: a struck bell, inharmonic partials (Risset's ratios) decaying faster the higher;
* ``plucked_string``: Karplus-Strong strings (a delay line with a lossy averaging loop);
* ``rain``: a Poisson shower of drop resonances (Minnaert-like bubbles) over a noise floor;
* ``engine``: cylinder firings (a jittered pulse train with a drifting rate) through body resonances;
* ``bird_chirp``: short fast frequency sweeps with a weak second harmonic;
* ``knock``: a few knocks, each exciting damped low wooden modes;
* ``siren``: a harmonic tone whose pitch sweeps up and down periodically;
* ``crackling_fire``: heavy-tailed crackles over a low brown-noise rumble;
* ``dog_bark``: barks, glottal pulse trains with a falling pitch through formant resonators;
* ``wind``: noise through a band-pass whose centre and level drift in gusts.

Pitch, duration, number of events, onset, gain, SNR and reverberation are drawn per clip, so
classes overlap in level, pitch and timing and differ in their physics.  The output is
deterministic (``--seed``), written to a temporary sibling and renamed when complete.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

SR = 44100
FOLDS = 5
SEED = 1717
CLASSES = ["bell", "plucked_string", "rain", "engine", "bird_chirp",
           "knock", "siren", "crackling_fire", "dog_bark", "wind"]
#: Offset of the unlabeled clips' seeds: never equal to a labelled clip's (target, index).
UNLABELED_OFFSET = 1_000_000


# --------------------------------------------------------------------------- building blocks
def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _coloured_noise(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    """Unit-RMS noise with power ~ 1 / f^slope (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    spec = spec / np.maximum(freqs, 20.0) ** (slope / 2)
    out = np.fft.irfft(spec, n)
    return out / (np.sqrt(np.mean(out ** 2)) + 1e-12)


def _resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """A two-pole resonance at ``freq`` Hz with ``bandwidth`` Hz (unit peak gain, roughly)."""
    r = np.exp(-np.pi * bandwidth / SR)
    theta = 2 * np.pi * min(freq, SR / 2 - 100) / SR
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return signal.lfilter([1 - r], a, x)


def _decaying_sine(n: int, freq: float, tau: float, phase: float = 0.0) -> np.ndarray:
    t = np.arange(n) / SR
    return np.exp(-t / tau) * np.sin(2 * np.pi * freq * t + phase)


def _place(out: np.ndarray, event: np.ndarray, start: int, gain: float = 1.0) -> None:
    end = min(len(out), start + len(event))
    if start < end:
        out[start:end] += gain * event[: end - start]


# --------------------------------------------------------------------------- the classes
def bell(rng, n):
    out = np.zeros(n)
    f0 = _log_uniform(rng, 250, 1200)
    ratios = np.array([0.56, 0.92, 1.19, 1.71, 2.0, 2.74, 3.0, 3.76, 4.07])  # Risset's bell
    t60 = rng.uniform(0.8, 2.5)
    for _ in range(int(rng.integers(1, 4))):
        start = int(rng.uniform(0, 0.6) * n)
        strike = np.zeros(n - start)
        for k, ratio in enumerate(ratios):
            f = f0 * ratio * rng.uniform(0.99, 1.01)
            if f > SR / 2 - 500:
                continue
            tau = t60 / 6.9 / (ratio ** 0.7)
            strike += rng.uniform(0.3, 1.0) / (1 + 0.3 * k) * _decaying_sine(len(strike), f, tau, rng.uniform(0, 6.3))
        _place(out, strike, start, rng.uniform(0.5, 1.0))
    return out


def plucked_string(rng, n):
    out = np.zeros(n)
    base = _log_uniform(rng, 80, 500)
    for _ in range(int(rng.integers(1, 5))):
        f0 = base * 2 ** (rng.integers(-5, 8) / 12)
        delay = max(2, round(SR / f0))
        loss = rng.uniform(0.990, 0.999)
        length = int(rng.uniform(0.5, 2.0) * SR)
        excitation = np.zeros(length)
        excitation[:delay] = rng.uniform(-1, 1, delay)
        # y[t] = x[t] + loss * (y[t - L] + y[t - L - 1]) / 2
        a = np.zeros(delay + 2)
        a[0], a[delay], a[delay + 1] = 1.0, -loss / 2, -loss / 2
        note = signal.lfilter([1.0], a, excitation)
        _place(out, note, int(rng.uniform(0, 0.7) * n), rng.uniform(0.5, 1.0))
    return out


def rain(rng, n):
    out = 0.3 * _resonator(_coloured_noise(rng, n, 0.5), rng.uniform(2000, 6000), 4000)
    rate = _log_uniform(rng, 150, 1500)  # drops per second
    count = rng.poisson(rate * n / SR)
    drop_len = int(0.02 * SR)
    for start in rng.integers(0, n, size=count):
        f = _log_uniform(rng, 1500, 9000)
        drop = _decaying_sine(drop_len, f, rng.uniform(0.002, 0.008))
        _place(out, drop, int(start), rng.pareto(3.0) * 0.5)
    return out


def engine(rng, n):
    t = np.arange(n) / SR
    rate0 = rng.uniform(15, 60)  # firings per second
    drift = 1 + rng.uniform(-0.3, 0.3) * t / t[-1] + 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t)
    phase = np.cumsum(rate0 * drift) / SR
    fires = np.flatnonzero(np.diff(np.floor(phase)) > 0)
    pulses = np.zeros(n)
    pulses[fires] = rng.uniform(0.6, 1.0, size=len(fires))
    burst = np.exp(-np.arange(int(0.015 * SR)) / (rng.uniform(0.002, 0.006) * SR)) * rng.standard_normal(int(0.015 * SR))
    x = np.convolve(pulses, burst)[:n]
    body = sum(_resonator(x, f, f * 0.3) for f in rng.uniform(80, 700, size=3))
    return body + 0.05 * _coloured_noise(rng, n, 2.0)


def bird_chirp(rng, n):
    out = np.zeros(n)
    f_base = _log_uniform(rng, 2000, 6000)
    start = int(rng.uniform(0, 0.5) * n)
    gap = rng.uniform(0.05, 0.3)
    for _ in range(int(rng.integers(2, 9))):
        dur = rng.uniform(0.04, 0.2)
        m = int(dur * SR)
        t = np.arange(m) / SR
        f0 = f_base * rng.uniform(0.8, 1.25)
        f1 = f0 * rng.choice([rng.uniform(0.4, 0.8), rng.uniform(1.3, 2.0)])
        inst = f0 + (f1 - f0) * (t / dur) ** rng.uniform(0.5, 2)
        ph = 2 * np.pi * np.cumsum(inst) / SR
        env = np.sin(np.pi * t / dur) ** 2
        chirp = env * (np.sin(ph) + 0.2 * np.sin(2 * ph))
        _place(out, chirp, start, rng.uniform(0.5, 1.0))
        start += m + int(gap * rng.uniform(0.7, 1.3) * SR)
    return out


def knock(rng, n):
    out = np.zeros(n)
    modes = rng.uniform(90, 900, size=int(rng.integers(2, 4)))
    period = rng.uniform(0.12, 0.4)
    start = int(rng.uniform(0, 0.5) * n)
    for _ in range(int(rng.integers(2, 7))):
        m = int(0.15 * SR)
        hit = sum(_decaying_sine(m, f * rng.uniform(0.98, 1.02), rng.uniform(0.008, 0.04), rng.uniform(0, 6.3))
                  for f in modes)
        hit[: int(0.002 * SR)] += 0.5 * rng.standard_normal(int(0.002 * SR))
        _place(out, hit, start, rng.uniform(0.6, 1.0))
        start += int(period * rng.uniform(0.85, 1.15) * SR)
    return out


def siren(rng, n):
    t = np.arange(n) / SR
    lo = rng.uniform(450, 900)
    hi = lo * rng.uniform(1.3, 2.0)
    rate = rng.uniform(0.2, 2.0)
    shape = np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3))
    if rng.random() < 0.5:  # wail (sine) or yelp (triangle)
        shape = 2 / np.pi * np.arcsin(shape)
    f = lo + (hi - lo) * (shape + 1) / 2
    ph = 2 * np.pi * np.cumsum(f) / SR
    return sum(np.sin(k * ph) / k ** rng.uniform(0.8, 1.6) for k in range(1, int(rng.integers(3, 6)) + 1))


def crackling_fire(rng, n):
    rumble = signal.lfilter([1.0], [1.0, -0.995], rng.standard_normal(n))
    rumble = 0.4 * rumble / (np.sqrt(np.mean(rumble ** 2)) + 1e-12)
    out = rumble
    count = rng.poisson(rng.uniform(5, 40) * n / SR)
    for start in rng.integers(0, n, size=count):
        m = int(rng.uniform(0.001, 0.01) * SR)
        crackle = rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 4))
        crackle = _resonator(crackle, _log_uniform(rng, 800, 8000), rng.uniform(1000, 5000))
        _place(out, crackle, int(start), rng.pareto(1.5) * 2.0)
    return out


def dog_bark(rng, n):
    out = np.zeros(n)
    f0_base = rng.uniform(250, 700)
    formants = [rng.uniform(400, 900), rng.uniform(1000, 1800), rng.uniform(2000, 3200)]
    start = int(rng.uniform(0, 0.5) * n)
    for _ in range(int(rng.integers(1, 5))):
        dur = rng.uniform(0.1, 0.3)
        m = int(dur * SR)
        t = np.arange(m) / SR
        f0 = f0_base * rng.uniform(0.9, 1.1) * (1 - rng.uniform(0.2, 0.5) * t / dur)  # falling pitch
        ph = np.cumsum(f0) / SR
        pulses = (np.diff(np.floor(ph), prepend=0) > 0).astype(float)
        source = pulses + rng.uniform(0.05, 0.3) * rng.standard_normal(m)  # voice + breath
        voiced = sum(_resonator(source, f, f * rng.uniform(0.08, 0.2)) * g
                     for f, g in zip(formants, (1.0, 0.6, 0.3)))
        env = np.minimum(1.0, t / 0.01) * np.exp(-t / (dur * 0.5))
        _place(out, env * voiced, start, rng.uniform(0.6, 1.0))
        start += m + int(rng.uniform(0.1, 0.5) * SR)
    return out


def wind(rng, n):
    t = np.arange(n) / SR
    noise = _coloured_noise(rng, n, rng.uniform(0.5, 1.5))
    centre = _log_uniform(rng, 200, 1500) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 6.3)))
    # a slowly moving band-pass: filter blocks of 50 ms at their own centre frequency
    out = np.zeros(n)
    block = int(0.05 * SR)
    zi = np.zeros(2)
    for s in range(0, n, block):
        r = np.exp(-np.pi * centre[s] * 0.5 / SR)
        a = [1.0, -2 * r * np.cos(2 * np.pi * centre[s] / SR), r * r]
        out[s:s + block], zi = signal.lfilter([1 - r], a, noise[s:s + block], zi=zi)
    gust = 0.4 + 0.6 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 6.3))) ** 2
    return out * gust


GENERATORS = [bell, plucked_string, rain, engine, bird_chirp, knock, siren, crackling_fire, dog_bark, wind]
assert [g.__name__ for g in GENERATORS] == CLASSES


# --------------------------------------------------------------------------- the clip
def room(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Convolve with a synthetic room response: the direct sound plus exponentially decaying
    noise with a random RT60 (0.05 to 1.2 s) and a random wet level."""
    rt60 = _log_uniform(rng, 0.05, 1.2)
    m = int(min(rt60, 1.2) * SR)
    tail = rng.standard_normal(m) * np.exp(-6.9 * np.arange(m) / (rt60 * SR))
    tail = signal.lfilter([1.0], [1.0, -rng.uniform(0.0, 0.7)], tail)  # darker walls absorb highs
    ir = np.zeros(m)
    ir[0] = 1.0
    ir += rng.uniform(0.05, 0.6) * tail / (np.sqrt(np.sum(tail ** 2)) + 1e-12)
    return signal.fftconvolve(x, ir)[: len(x)]


def make_clip(target: int, index: int, seconds: float = 5.0, seed: int = SEED) -> np.ndarray:
    """Clip ``index`` of class ``target``: float32 at 44.1 kHz, ``seconds`` long, peak <= 0.9."""
    rng = np.random.default_rng([seed, target, index])
    n = round(seconds * SR)
    x = np.nan_to_num(GENERATORS[target](rng, n))
    x = room(rng, x)
    x /= np.sqrt(np.mean(x ** 2)) + 1e-12
    snr_db = rng.uniform(0.0, 25.0)
    x = x + _coloured_noise(rng, n, rng.uniform(0.0, 2.0)) * 10 ** (-snr_db / 20)
    x *= rng.uniform(0.2, 0.9) / (np.abs(x).max() + 1e-12)
    return x.astype(np.float32)


# --------------------------------------------------------------------------- the layout
def write_fixture(out: Path, per_class: int = 40, unlabeled: int = 0, seconds: float = 5.0,
                  seed: int = SEED, classes: int = len(CLASSES)) -> Path:
    """Write ``out/ESC-50-master`` (and ``out/unlabeled`` when asked); returns the ESC-50 root.

    An existing complete ``out`` is left as it is.
    """
    out = Path(out)
    root = out / "ESC-50-master"
    if (root / "meta" / "esc50.csv").is_file():
        return root
    if per_class < FOLDS or per_class % FOLDS:
        raise SystemExit(f"--per-class must be a positive multiple of {FOLDS} (one share per fold), got {per_class}")
    if not 2 <= classes <= len(CLASSES):
        raise SystemExit(f"--classes must be between 2 and {len(CLASSES)}, got {classes}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rows = []
        for target in range(classes):
            for index in range(per_class):
                fold = index % FOLDS + 1
                source = 100000 + 1000 * target + index
                name = f"{fold}-{source}-A-{target}.wav"
                path = tmp / "ESC-50-master" / "audio" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, make_clip(target, index, seconds, seed), SR, subtype="PCM_16")
                rows.append([name, fold, target, CLASSES[target], "True", source, "A"])
        rows.sort(key=lambda r: (r[1], r[0]))
        meta = tmp / "ESC-50-master" / "meta" / "esc50.csv"
        meta.parent.mkdir(parents=True)
        with open(meta, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
            w.writerows(rows)
        pick = np.random.default_rng([seed, UNLABELED_OFFSET])
        for i in range(unlabeled):
            target = int(pick.integers(0, classes))
            path = tmp / "unlabeled" / f"u{i:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, make_clip(target, UNLABELED_OFFSET + i, seconds, seed), SR, subtype="PCM_16")
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (ESC-50-master/ and unlabeled/ go inside)")
    p.add_argument("--per-class", type=int, default=40, help="labelled clips per class (multiple of 5; ESC-50: 40)")
    p.add_argument("--classes", type=int, default=len(CLASSES), help=f"number of classes (2..{len(CLASSES)})")
    p.add_argument("--unlabeled", type=int, default=0, help="unlabeled clips for pretraining (default 0)")
    p.add_argument("--seconds", type=float, default=5.0, help="clip length (ESC-50: 5)")
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    root = write_fixture(args.out, args.per_class, args.unlabeled, args.seconds, args.seed, args.classes)
    print(root)


if __name__ == "__main__":
    main()
