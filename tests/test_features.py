"""Feature cache: batched extraction, memory-mapped cache, hashing, bad clips, concurrency."""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from ssl_bench import features as F
from ssl_bench.audio import AudioError
from ssl_bench.components import Clip
from ssl_bench.files import CacheWarning


def real_frontend(num_bins: int = 32):
    """The registered kaldi-fbank frontend when helper H1's plugin is there, else None."""
    try:
        from ssl_bench.plugins.audio import KaldiFbank  # noqa: WPS433
    except ImportError:
        return None
    return KaldiFbank(KaldiFbank.Config(num_bins=num_bins, num_frames=None), None)


class StandInFbank:
    """Per-clip torchaudio kaldi.fbank with the contract's arguments (the reference)."""

    @dataclass
    class Config:
        sample_rate: int = 16000
        num_bins: int = 32
        frame_length_ms: float = 25.0
        frame_shift_ms: float = 10.0
        num_frames: int | None = None
        mean: float | None = None
        std: float | None = None

    def __init__(self, cfg=None, dtype: torch.dtype = torch.float32):
        self.cfg = cfg or self.Config()
        self.calls = 0
        self.dtype = dtype  # float64: Kaldi's formula without float32 rounding

    def compute(self, waveform: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = []
        for w in waveform.to(self.dtype):
            w = w - w.mean()
            out.append(torchaudio.compliance.kaldi.fbank(
                w[None], htk_compat=True, sample_frequency=self.cfg.sample_rate, use_energy=False,
                window_type="hanning", num_mel_bins=self.cfg.num_bins, dither=0.0,
                frame_shift=self.cfg.frame_shift_ms, frame_length=self.cfg.frame_length_ms))
        return torch.stack(out).float()


def _write(path: Path, seconds: float, sr: int = 16000, freq: float = 440.0, channels: int = 1) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([wave] * channels, axis=1) if channels > 1 else wave, sr)
    return path


def per_clip_reference_wave(path: Path, sample_rate: int, num_samples: int | None) -> np.ndarray:
    """The plain per-clip path: soundfile, mono mean, ``torchaudio.functional.resample``, pad/crop."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, sr, sample_rate)
    if num_samples is not None:
        wave = torch.nn.functional.pad(wave, (0, max(0, num_samples - wave.shape[0])))[:num_samples]
    return wave.numpy()


@pytest.fixture
def clips(tmp_path):
    d = tmp_path / "audio"
    d.mkdir()
    out = []
    for i, (secs, sr, ch) in enumerate([(1.0, 16000, 1), (0.6, 22050, 2), (1.4, 8000, 1), (1.0, 44100, 1)]):
        p = _write(d / f"c{i}.wav", secs, sr=sr, freq=300 + 200 * i, channels=ch)
        out.append(Clip(p, (i % 2,), f"c{i}.wav"))
    return out


def test_extract_matches_per_clip_reference_and_fits_length(clips):
    fe = StandInFbank()
    fs = F.extract(clips, fe, clip_seconds=1.0, batch_size=3, progress=False)
    assert len(fs) == 4 and fs.skipped == [] and fs.path is None
    assert fe.calls == 2  # batches of 3 + 1, not one call per clip
    ref = StandInFbank()
    from ssl_bench.audio import fit_length, load_audio

    for i, clip in enumerate(clips):
        # load_audio: the same resampling clip by clip (within 1e-7 of torchaudio's, tested
        # below; pure tones upsampled from 8 kHz leave bands so weak that the log turns even
        # that into ~2e-3, so the comparison with torchaudio's is on broadband clips)
        wave = fit_length(load_audio(clip.path, 16000), 16000)
        expect = ref.compute(torch.from_numpy(wave)[None])[0]
        assert fs[i].shape == (98, 32)  # 1 s at a 10 ms shift, 25 ms window
        assert torch.allclose(fs[i], expect, atol=1e-5)
    assert [c.key for c in fs.clips] == [c.key for c in clips]


def test_cache_second_call_reads_instead_of_decoding(clips, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    fe = StandInFbank()
    first = F.extract(clips, fe, clip_seconds=1.0, cache_dir=cache, progress=False)
    assert not first.from_cache and first.path.parent == cache
    assert sorted(p.name for p in first.path.iterdir()) == ["features.bin", "index.npy", "manifest.json",
                                                           "verified.json"]
    # no temp dirs left; the file digests that key the entry are kept beside it
    assert sorted(p.name for p in cache.iterdir() if p.name != ".locks") == sorted([first.path.name, "digests.sqlite"])

    def no_decode(*a, **k):
        raise AssertionError("audio decoded although the cache holds the features")

    monkeypatch.setattr(F, "read_audio", no_decode)
    # mean/std/num_frames act after the cache: the same entry is used.
    fe2 = StandInFbank(replace(fe.cfg, mean=-4.0, std=4.0, num_frames=512))
    second = F.extract(clips, fe2, clip_seconds=1.0, cache_dir=cache, progress=False)
    assert second.from_cache and second.path == first.path
    assert isinstance(second.data, np.memmap)
    for i in range(len(clips)):
        assert torch.equal(first[i], second[i])
    assert fe2.calls == 0


def test_cache_key_follows_audio_and_spectrogram_settings(clips):
    fe = StandInFbank()
    base = F.cache_key(clips, fe, 1.0)
    assert F.cache_key(clips, StandInFbank(replace(fe.cfg, mean=1.0, num_frames=7)), 1.0) == base
    assert F.cache_key(clips, StandInFbank(replace(fe.cfg, num_bins=64)), 1.0) != base
    assert F.cache_key(clips, fe, 2.0) != base
    assert F.cache_key(clips[:3], fe, 1.0) != base
    st = clips[0].path.stat()
    os.utime(clips[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert F.cache_key(clips, fe, 1.0) == base  # touched, not changed: keyed by content
    with open(clips[0].path, "r+b") as fh:  # other samples, size kept, modification time restored
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\x01\x02\x03\x04")
    os.utime(clips[0].path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert F.cache_key(clips, fe, 1.0) != base


def test_bad_clips_are_skipped_with_a_warning_or_raise_when_strict(clips, tmp_path):
    d = clips[0].path.parent
    (d / "garbage.wav").write_bytes(b"this is not audio")
    sf.write(d / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(d / "nan.wav", np.array([0.0, np.nan, 0.1] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    bad = [Clip(d / n, (0,), n) for n in ("garbage.wav", "empty.wav", "nan.wav", "missing.wav")]
    mixed = [clips[0], bad[0], clips[1], bad[1], bad[2], bad[3]]
    with pytest.warns(F.SkippedClipWarning) as rec:
        fs = F.extract(mixed, StandInFbank(), clip_seconds=1.0, cache_dir=tmp_path / "c", progress=False)
    assert [c.key for c in fs.clips] == ["c0.wav", "c1.wav"]
    assert [k for k, _ in fs.skipped] == ["garbage.wav", "empty.wav", "nan.wav", "missing.wav"]
    reasons = dict(fs.skipped)
    assert "cannot decode" in reasons["garbage.wav"] and "empty" in reasons["empty.wav"]
    assert "NaN" in reasons["nan.wav"] and "no such audio file" in reasons["missing.wav"]
    assert all(str(d / k) in r for k, r in fs.skipped)  # each reason names the file
    skips = [str(w.message) for w in rec if issubclass(w.category, F.SkippedClipWarning)]
    assert len(skips) == 4 and "garbage.wav" in skips[0]
    # A cached read reports the same skips; strict mode refuses the entry.
    with pytest.warns(F.SkippedClipWarning):
        again = F.extract(mixed, StandInFbank(), clip_seconds=1.0, cache_dir=tmp_path / "c", progress=False)
    assert again.from_cache and again.skipped == fs.skipped
    with pytest.raises(AudioError, match="garbage.wav"):
        F.extract(mixed, StandInFbank(), clip_seconds=1.0, cache_dir=tmp_path / "c", strict=True, progress=False)
    with pytest.raises(AudioError, match="garbage.wav"):
        F.extract(mixed, StandInFbank(), clip_seconds=1.0, strict=True, progress=False)


def test_ragged_lengths_without_clip_seconds(clips):
    fs = F.extract(clips, StandInFbank(), clip_seconds=None, progress=False)
    assert fs.lengths.tolist() == [98, 58, 138, 98]  # 1.0, 0.6, 1.4, 1.0 s


def test_concurrent_writers_share_one_entry(clips, tmp_path):
    cache = tmp_path / "cache"
    results, errors = [], []

    def work():
        try:
            results.append(F.extract(clips, StandInFbank(), clip_seconds=1.0, cache_dir=cache, progress=False))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in cache.iterdir() if p.name != ".locks") == sorted([results[0].path.name,
                                                                                     "digests.sqlite"])
    for fs in results[1:]:
        assert torch.equal(fs[2], results[0][2])


def test_corrupt_entry_is_rebuilt(clips, tmp_path):
    cache = tmp_path / "cache"
    fs = F.extract(clips, StandInFbank(), clip_seconds=1.0, cache_dir=cache, progress=False)
    expect = fs[1].clone()
    del fs
    with open(cache / F.cache_key(clips, StandInFbank(), 1.0) / "features.bin", "r+b") as f:
        f.truncate(100)
    with pytest.warns(CacheWarning, match="features.bin holds 100 bytes"):  # said, naming the file
        again = F.extract(clips, StandInFbank(), clip_seconds=1.0, cache_dir=cache, progress=False)
    assert not again.from_cache and torch.equal(again[1], expect)


def test_norm_stats_equal_numpy_over_all_frames(clips):
    fs = F.extract(clips, StandInFbank(), clip_seconds=1.0, progress=False)
    allx = np.concatenate([fs[i].numpy() for i in range(len(fs))]).astype(np.float64)
    mean, std = F.norm_stats(fs)
    assert mean == pytest.approx(allx.mean(), rel=1e-6) and std == pytest.approx(allx.std(), rel=1e-6)
    part_mean, _ = F.norm_stats(fs, indices=[1, 3])
    assert part_mean == pytest.approx(np.concatenate([fs[1].numpy(), fs[3].numpy()]).mean(), rel=1e-5)
    sub_mean, _ = F.norm_stats(fs, max_frames=200)  # every other clip
    assert sub_mean == pytest.approx(np.concatenate([fs[0].numpy(), fs[2].numpy()]).mean(), rel=1e-5)


def test_real_frontend_matches_stand_in_when_available(clips):
    fe = real_frontend()
    if fe is None:
        pytest.skip("plugins/audio KaldiFbank not available yet")
    with warnings.catch_warnings():
        warnings.simplefilter("error", F.SkippedClipWarning)
        fs = F.extract(clips, fe, clip_seconds=1.0, progress=False)
    ref = F.extract(clips, StandInFbank(), clip_seconds=1.0, progress=False)
    for i in range(len(fs)):
        assert (fs[i] - ref[i]).abs().max() <= 1e-3


def test_many_skipped_clips_give_a_bounded_number_of_warnings(clips, tmp_path):
    missing = [Clip(tmp_path / f"gone{i}.wav", (0,), f"gone{i}.wav") for i in range(F.MAX_SKIP_WARNINGS + 5)]
    with pytest.warns(F.SkippedClipWarning) as rec:
        fs = F.extract(clips[:1] + missing, StandInFbank(), clip_seconds=1.0, progress=False)
    skips = [str(w.message) for w in rec if issubclass(w.category, F.SkippedClipWarning)]
    assert len(fs.skipped) == len(missing) and len(fs) == 1
    assert len(skips) == F.MAX_SKIP_WARNINGS + 1 and f"skipped {len(missing)} of {len(missing) + 1}" in skips[-1]


def test_too_short_clip_without_clip_seconds_is_skipped_not_fatal(clips, tmp_path):
    short = _write(tmp_path / "short.wav", 0.01)  # 160 samples: less than one 25 ms frame
    mixed = clips[:2] + [Clip(short, (0,), "short.wav")]
    with pytest.warns(F.SkippedClipWarning, match="short.wav"):
        fs = F.extract(mixed, StandInFbank(), clip_seconds=None, progress=False)
    assert [c.key for c in fs.clips] == ["c0.wav", "c1.wav"] and fs.skipped[0][0] == "short.wav"


def test_extract_on_device_matches_cpu_reference(clips, device, tmp_path):
    fe = real_frontend(num_bins=64)
    if fe is None:
        pytest.skip("plugins/audio KaldiFbank not available yet")
    fs = F.extract(clips, fe.to(device), clip_seconds=1.0, device=device, cache_dir=tmp_path / "c", progress=False)
    ref = F.extract(clips, StandInFbank(StandInFbank.Config(num_bins=64)), clip_seconds=1.0, progress=False)
    assert fs[0].device.type == "cpu" and fs[0].shape == (98, 64)
    if device.type == "cpu":  # rounds every step as Kaldi does
        for i in range(len(fs)):
            assert (fs[i] - ref[i]).abs().max() <= 1e-3
        return
    # CUDA computes Kaldi's formula in float64 (cuFFT cannot round like the CPU FFT): it equals
    # Kaldi in float64 and is as far from Kaldi's float32 output as that output's own error.
    exact = F.extract(clips, StandInFbank(StandInFbank.Config(num_bins=64), dtype=torch.float64), clip_seconds=1.0,
                      progress=False)
    for i in range(len(fs)):
        assert (fs[i] - exact[i]).abs().max() <= 1e-4
        own_error = (ref[i] - exact[i]).abs().max().item()
        assert (fs[i] - ref[i]).abs().max() <= max(1e-3, own_error + 1e-4)


# --------------------------------------------------------------------------- decoding and resampling
@pytest.mark.parametrize("orig_sr", [44100, 48000, 22050, 8000])
def test_batched_resampling_equals_torchaudio_per_clip(orig_sr):
    """Banded products with a kernel built once give torchaudio.functional.resample's numbers."""
    from ssl_bench.audio import resample, resample_batch, resampled_length

    g = torch.Generator().manual_seed(orig_sr)
    # ragged lengths: the batch is zero-padded to the longest, which must not change any clip
    waves = [0.3 * torch.randn(n, generator=g) for n in (orig_sr // 2, orig_sr // 2 + 37, orig_sr // 3, 5)]
    out = resample_batch([w.numpy() for w in waves], orig_sr, 16000)
    for w, o in zip(waves, out):
        expect = torchaudio.functional.resample(w, orig_sr, 16000)
        assert o.shape == expect.shape and o.shape[0] == resampled_length(w.shape[0], orig_sr, 16000)
        assert (o - expect).abs().max() <= 1e-5
    one = resample(waves[1].numpy(), orig_sr, 16000)
    assert isinstance(one, np.ndarray)
    assert np.abs(one - torchaudio.functional.resample(waves[1], orig_sr, 16000).numpy()).max() <= 1e-5


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "PCM_U8"),
                                         ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("WAV", "ULAW")])
def test_read_audio_gives_soundfiles_float32_samples(tmp_path, fmt, subtype):
    from ssl_bench.audio import read_audio

    rng = np.random.default_rng(3)
    stereo = np.clip(0.5 * rng.standard_normal((4000, 2)), -1, 1)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, stereo, 22050, format=fmt, subtype=subtype)
    expect, sr = sf.read(str(path), dtype="float32")
    wave, rate = read_audio(path)
    assert rate == sr == 22050 and wave.dtype == np.float32
    assert np.array_equal(wave, expect.mean(axis=1))


def test_extract_workers_run_one_torch_thread_and_give_the_threads_back(clips, monkeypatch):
    seen = []

    class Recording(StandInFbank):
        def compute(self, waveform):
            seen.append(torch.get_num_threads())
            return super().compute(waveform)

    threads = torch.get_num_threads()
    monkeypatch.setattr(F, "extraction_threads", lambda: 2)
    fs = F.extract(clips * 3, Recording(), clip_seconds=1.0, batch_size=2, progress=False)
    assert len(fs) == 12 and [c.key for c in fs.clips] == [c.key for c in clips * 3]
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == threads
    single = F.extract(clips * 3, StandInFbank(), clip_seconds=1.0, batch_size=100, progress=False)
    for i in range(len(fs)):
        assert torch.equal(fs[i], single[i])


def test_extract_of_44k_and_48k_clips_matches_the_plain_per_clip_path(tmp_path):
    """Decoding in threads, resampling in batches and the batched frontend keep the numbers of
    soundfile + torchaudio.functional.resample + kaldi.fbank clip by clip."""
    d = tmp_path / "hi"
    d.mkdir()
    rng = np.random.default_rng(0)
    clips = []
    for i, (sr, secs) in enumerate([(44100, 1.0), (48000, 1.0), (44100, 1.0), (44100, 0.9), (48000, 1.2)]):
        t = np.arange(int(sr * secs)) / sr
        wave = 0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (200 + 70 * i) * t)
        sf.write(d / f"h{i}.wav", wave.astype(np.float32), sr, subtype="PCM_16")
        clips.append(Clip(d / f"h{i}.wav", (0,), f"h{i}.wav"))
    fe = real_frontend(num_bins=64)
    if fe is None:
        pytest.skip("plugins/audio KaldiFbank not available yet")
    ref = StandInFbank(StandInFbank.Config(num_bins=64))
    for seconds in (1.0, None):
        fs = F.extract(clips, fe, clip_seconds=seconds, batch_size=4, progress=False)
        assert [c.key for c in fs.clips] == [c.key for c in clips]
        for i, clip in enumerate(clips):
            n = None if seconds is None else 16000
            expect = ref.compute(torch.from_numpy(per_clip_reference_wave(clip.path, 16000, n))[None])[0]
            assert fs[i].shape == expect.shape
            assert (fs[i] - expect).abs().max() <= 1e-3


def test_extraction_keeps_freed_memory_for_reuse_on_glibc():
    """Freed blocks are reused instead of unmapped: no page faults when a 40 MiB array comes back
    (by default glibc maps every block above 32 MiB afresh: thousands of faults here)."""
    import platform
    import resource
    import sys

    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("mallopt is glibc's")
    assert F.keep_freed_memory() and F.keep_freed_memory()  # once, then remembered
    np.ones(10 << 20, dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block = np.ones(10 << 20, dtype=np.float32)
        del block
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 100, faults
