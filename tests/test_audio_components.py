"""The built-in audio components: Kaldi fbank frontend, maskers, masked-MSE objective."""

from __future__ import annotations

import math

import pytest
import torch
from ssl_bench.plugins.audio import (
    FrequencyMasker,
    KaldiFbank,
    MaskedMSE,
    RandomMasker,
    TimeFrequencyMasker,
    TimeMasker,
)
from ssl_bench.plugins.audio.frontend import FrontendError
from torchaudio.compliance import kaldi

from ssl_bench.components import FREQ_MAJOR, TIME_MAJOR, BuildContext
from ssl_bench.registry import Registry

SR = 16000


def reference_fbank(clip: torch.Tensor) -> torch.Tensor:
    """AudioMAE's per-clip call on ``clip - clip.mean()`` (on the CPU, in the clip's dtype)."""
    clip = clip.cpu()
    return kaldi.fbank(
        (clip - clip.mean())[None], htk_compat=True, sample_frequency=SR, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
    ).float()


def assert_matches_kaldi(out: torch.Tensor, clip: torch.Tensor) -> None:
    """``out`` (the frontend's log-mel of ``clip``) against ``kaldi.fbank``.

    Kaldi's float32 values are themselves off by up to a few 1e-3 (1e-2 on a chirp) in the
    weakest bands of tonal clips: moving the input by 1e-10 moves them that much.  On the CPU
    the frontend rounds every step as Kaldi does and must be within 1e-3 of it everywhere.
    On CUDA (cuFFT cannot round like the CPU FFT) it computes Kaldi's formula in float64: it
    must equal Kaldi run in float64, and differ from Kaldi's float32 output by no more than
    1e-3 or Kaldi's own float32 error.
    """
    out = out.cpu()
    ref = reference_fbank(clip)
    assert ref.shape == out.shape
    diff = (out - ref).abs().max().item()
    if clip.device.type == "cpu":
        assert diff <= 1e-3
        return
    exact = reference_fbank(clip.double())
    assert (out - exact).abs().max().item() <= 1e-4
    kaldi_error = (ref - exact).abs().max().item()
    assert diff <= max(1e-3, kaldi_error + 1e-4)


def make_clips(n: int, batch: int, seed: int = 0) -> torch.Tensor:
    """Noise, a loud sine with DC offset, a near-silent clip with a burst, a chirp."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    kinds = [
        0.1 * torch.randn(n, generator=g),
        0.5 * torch.sin(2 * math.pi * 440.0 * t) + 0.2,
        torch.zeros(n).index_fill_(0, torch.arange(min(n, 300), min(n, 900)), 1e-3),
        0.3 * torch.sin(2 * math.pi * (100.0 + 3000.0 * t) * t),
    ]
    return torch.stack([kinds[i % len(kinds)] for i in range(batch)])


# --------------------------------------------------------------------------- frontend
@pytest.mark.parametrize("num_samples", [400, 561, 4000, 16000, 24321])
def test_fbank_matches_kaldi(num_samples, device):
    fb = KaldiFbank(KaldiFbank.Config(num_frames=None)).to(device)
    clips = make_clips(num_samples, batch=5, seed=num_samples).to(device)
    out = fb.compute(clips)
    assert out.shape == (5, fb.frames_for_samples(num_samples), 128)
    for i in range(5):
        assert_matches_kaldi(out[i], clips[i])


def test_fbank_noise_clips_match_kaldi(device):
    fb = KaldiFbank(KaldiFbank.Config(num_frames=None)).to(device)
    g = torch.Generator().manual_seed(11)
    clips = torch.randn(6, SR * 2, generator=g) * torch.logspace(-3, -0.3, 6)[:, None] + 0.05
    clips[3] = torch.rand(SR * 2, generator=g) * 2 - 1  # full-scale uniform noise
    clips = clips.to(device)
    out = fb.compute(clips)
    for i in range(6):
        assert_matches_kaldi(out[i], clips[i])
        assert (out[i].cpu() - reference_fbank(clips[i])).abs().max().item() <= 1e-3  # on any device


def test_fbank_large_batch_and_single_clip(device):
    fb = KaldiFbank(KaldiFbank.Config(num_frames=None)).to(device)
    clips = (make_clips(SR * 3, batch=12, seed=3) * torch.linspace(0.1, 1.0, 12)[:, None]).to(device)
    out = fb.compute(clips)
    for i in range(12):
        assert_matches_kaldi(out[i], clips[i])
    single = fb.compute(clips[4])
    assert single.shape == out[4].shape
    assert (single - out[4]).abs().max().item() <= 1e-3


@pytest.mark.parametrize("threads", [1, 2])  # 1: short runs; 2: long runs, each op on both threads
def test_fbank_cpu_paths_match_kaldi(threads):
    """Tonal, silent-with-burst, chirp and quiet-noise clips, long (runs of frames within a clip)
    and short (several clips per run), on one thread and on two."""
    fb = KaldiFbank(KaldiFbank.Config(num_frames=None))
    g = torch.Generator().manual_seed(21)
    noise = torch.randn(3, SR * 11, generator=g) * torch.tensor([[1e-3], [0.02], [0.5]]) + 0.01
    clips = [torch.cat([make_clips(SR * 11, batch=4, seed=21), noise]), make_clips(SR // 2, batch=9, seed=22)]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in clips:
            out = fb.compute(batch)
            for i in range(len(batch)):
                assert (out[i] - reference_fbank(batch[i])).abs().max().item() <= 1e-3
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("sample_rate, num_bins, frame_length_ms, frame_shift_ms",
                         [(8000, 40, 25.0, 10.0), (22050, 80, 32.0, 8.0), (16000, 23, 20.0, 12.5)])
def test_fbank_cpu_paths_other_settings_match_kaldi(sample_rate, num_bins, frame_length_ms, frame_shift_ms):
    """Other rates, filter counts and frame sizes (non-power-of-two windows, empty filters)."""
    cfg = KaldiFbank.Config(sample_rate=sample_rate, num_bins=num_bins, frame_length_ms=frame_length_ms,
                            frame_shift_ms=frame_shift_ms, num_frames=None)
    fb = KaldiFbank(cfg)
    g = torch.Generator().manual_seed(num_bins)
    n = int(sample_rate * 1.3)
    t = torch.arange(n) / sample_rate
    clips = torch.stack([0.05 * torch.randn(n, generator=g) + 0.01, 0.4 * torch.sin(2 * math.pi * 300.0 * t),
                         0.2 * torch.randn(n, generator=g)])
    out = fb.compute(clips)
    for i in range(len(clips)):
        c = clips[i]
        ref = kaldi.fbank((c - c.mean())[None], htk_compat=True, sample_frequency=sample_rate, use_energy=False,
                          window_type="hanning", num_mel_bins=num_bins, dither=0.0, frame_shift=frame_shift_ms,
                          frame_length=frame_length_ms)
        assert out[i].shape == ref.shape
        assert (out[i] - ref).abs().max().item() <= 1e-3


def test_fbank_cpu_schedules_agree_and_keep_nan():
    fb = KaldiFbank(KaldiFbank.Config(num_frames=None))
    clips = make_clips(SR * 2, batch=4, seed=23)
    clips[2, 5000:5100] = float("nan")
    out = fb.compute(clips)
    old = torch.get_num_threads()
    torch.set_num_threads(1 if old > 1 else 2)  # the other schedule (short or long runs)
    try:
        other = fb.compute(clips)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out.isnan(), other.isnan())
    assert torch.equal(out.isnan(), reference_fbank(clips[2]).isnan()[None].expand(4, -1, -1) & (torch.arange(4) == 2)[:, None, None])
    finite = ~out.isnan()
    assert (out[finite] - other[finite]).abs().max().item() <= 1e-5


def test_fbank_from_several_threads_at_once_gives_each_callers_numbers():
    """Feature extraction calls compute from one worker thread per core: work buffers are per thread."""
    from concurrent.futures import ThreadPoolExecutor

    fb = KaldiFbank(KaldiFbank.Config(num_frames=None))
    batches = [make_clips(SR * n, batch=3, seed=40 + n) for n in (1, 2, 3, 1, 2, 3)]
    alone = [fb.compute(b) for b in batches]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(fb.compute, batches))
    for a, b in zip(alone, together):
        assert torch.equal(a, b)


def test_fbank_float64_path_is_kaldi_in_float64():
    """The CUDA path's arithmetic, run on the CPU: Kaldi's formula in float64."""
    fb = KaldiFbank(KaldiFbank.Config(num_frames=None))
    clips = make_clips(SR, batch=4, seed=5)
    out = torch.empty(4, fb.frames_for_samples(SR), 128)
    fb._compute_float64(clips, out)
    for i in range(4):
        assert (out[i] - reference_fbank(clips[i].double())).abs().max().item() <= 1e-5


def test_fbank_forward_pads_crops_and_normalises(device):
    build = BuildContext(num_frames=7, num_bins=3)
    fb = KaldiFbank(KaldiFbank.Config(num_frames=128, mean=-4.0, std=2.0), build).to(device)
    assert (build.num_frames, build.num_bins) == (128, 128)
    clips = make_clips(SR // 2, batch=2).to(device)  # 48 frames -> padded to 128
    out = fb(clips, SR)
    assert out.shape == (2, 128, 128)
    raw = fb.compute(clips)
    assert torch.allclose(out[:, :48], (raw + 4.0) / 4.0, atol=1e-5)
    # Zero padding happens before normalisation, as in AudioMAE.
    assert torch.allclose(out[:, 48:], torch.full_like(out[:, 48:], 4.0 / 4.0))
    long = make_clips(SR * 2, batch=2).to(device)  # 198 frames -> cropped
    assert torch.allclose(fb(long, SR), fb.normalize(fb.compute(long)[:, :128]))


def test_fbank_fit_frames_random_crop_per_clip():
    fb = KaldiFbank(KaldiFbank.Config(num_frames=4))
    x = torch.arange(3 * 10, dtype=torch.float32).reshape(3, 10, 1).expand(3, 10, 2)
    a = fb.fit_frames(x, random=True, generator=torch.Generator().manual_seed(1))
    b = fb.fit_frames(x, random=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 4, 2)
    for i in range(3):  # each clip is a contiguous window of its own frames
        start = int(a[i, 0, 0]) - 10 * i
        assert 0 <= start <= 6
        assert torch.equal(a[i, :, 0], x[i, start:start + 4, 0])
    assert fb.fit_frames(x, num_frames=12).shape == (3, 12, 2)
    assert torch.equal(fb.fit_frames(x[0], num_frames=5), x[0, :5])


def test_fbank_sizes_and_config():
    fb = KaldiFbank()
    assert (fb.sample_rate, fb.num_bins, fb.num_frames) == (16000, 128, 1024)
    assert fb.num_frames_for(10.0) == 1024
    assert fb.num_frames_for(5.0) == 512
    assert fb.num_frames_for(1.0) == 128
    assert fb.frames_for_samples(160000) == 998
    assert fb.frames_for_samples(399) == 0
    assert fb.with_length(None).num_frames is None
    assert fb.with_length(256).num_frames == 256 and fb.num_frames == 1024
    # The window and mel banks are derived, not checkpoint state.
    assert list(fb.state_dict()) == []


def test_fbank_errors():
    fb = KaldiFbank(KaldiFbank.Config(mean=0.0, std=1.0))
    with pytest.raises(FrontendError, match="44100 Hz"):
        fb(torch.zeros(1, SR), 44100)
    with pytest.raises(FrontendError, match="shorter than one 25 ms frame"):
        fb.compute(torch.zeros(2, 399))
    with pytest.raises(TypeError, match="float"):
        fb.compute(torch.zeros(1, SR, dtype=torch.int16))
    with pytest.raises(FrontendError, match="shape"):
        fb.compute(torch.zeros(1, 2, SR))
    with pytest.raises(ValueError, match="mean/std"):
        KaldiFbank().normalize(torch.zeros(1, 4, 128))
    with pytest.raises(ValueError, match="std"):
        KaldiFbank(KaldiFbank.Config(std=0.0))


def test_registered_by_name():
    reg = Registry()
    assert reg.get("frontend", "kaldi-fbank").factory is KaldiFbank
    for name in ("random", "time", "frequency", "time-frequency"):
        assert name in reg.names("masker")
    assert reg.get("objective", "masked-mse").factory is MaskedMSE


# --------------------------------------------------------------------------- maskers
GRIDS = [(64, 8), (8, 8), (7, 3), (5, 1), (1, 6), (13, 11)]


def as_grid(mask: torch.Tensor, grid: tuple[int, int], layout: str) -> torch.Tensor:
    """``[B, L]`` -> ``[B, n_time, n_freq]`` by the definition of each layout."""
    n_time, n_freq = grid
    if layout == TIME_MAJOR:
        return mask.reshape(-1, n_time, n_freq)
    return mask.reshape(-1, n_freq, n_time).transpose(1, 2)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("layout", [TIME_MAJOR, FREQ_MAJOR])
def test_random_masker(grid, layout, device):
    L = grid[0] * grid[1]
    masker = RandomMasker(RandomMasker.Config(ratio=0.5))
    mask = masker(6, grid, layout, device, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (6, L) and mask.device.type == device.type
    keep = max(1, int(L * 0.5))
    assert (mask.sum(1) == L - keep).all()
    # Different rows get different masks (when there is a choice to make).
    if 0 < keep < L and L > 4:
        assert not (mask == mask[:1]).all()


def test_random_masker_paper_count_and_determinism():
    masker = RandomMasker()
    a = masker(4, (64, 8), TIME_MAJOR, "cpu", torch.Generator().manual_seed(7))
    b = masker(4, (64, 8), TIME_MAJOR, "cpu", torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert ((~a).sum(1) == 102).all()  # 102 of 512 tokens kept at ratio 0.8


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("layout", [TIME_MAJOR, FREQ_MAJOR])
def test_time_and_frequency_maskers(grid, layout, device):
    n_time, n_freq = grid
    gen = torch.Generator().manual_seed(1)
    tm = as_grid(TimeMasker(TimeMasker.Config(ratio=0.4))(5, grid, layout, device, gen), grid, layout).cpu()
    # whole time rows: every frequency of a time step shares its state
    assert (tm == tm[:, :, :1]).all()
    assert (tm[:, :, 0].sum(1) == n_time - max(1, int(n_time * 0.6))).all()
    fm = as_grid(FrequencyMasker(FrequencyMasker.Config(ratio=0.4))(5, grid, layout, device, gen), grid, layout).cpu()
    assert (fm == fm[:, :1, :]).all()
    assert (fm[:, 0, :].sum(1) == n_freq - max(1, int(n_freq * 0.6))).all()


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("layout", [TIME_MAJOR, FREQ_MAJOR])
def test_time_frequency_masker(grid, layout, device):
    n_time, n_freq = grid
    cfg = TimeFrequencyMasker.Config(time_ratio=0.3, freq_ratio=0.4)
    mask = TimeFrequencyMasker(cfg)(4, grid, layout, device, torch.Generator().manual_seed(2))
    keep_t, keep_f = max(1, int(n_time * 0.7)), max(1, int(n_freq * 0.6))
    assert ((~mask).sum(1) == keep_t * keep_f).all()
    g = as_grid(mask, grid, layout).cpu()
    kept_rows = (~g).any(2)  # time rows with something kept
    kept_cols = (~g).any(1)
    assert (kept_rows.sum(1) == keep_t).all() and (kept_cols.sum(1) == keep_f).all()
    # the mask is exactly the union of the masked rows and the masked columns
    union = ~(kept_rows[:, :, None] & kept_cols[:, None, :])
    assert torch.equal(g, union)


def test_time_frequency_paper_finetune_count():
    mask = TimeFrequencyMasker()(2, (64, 8), TIME_MAJOR)
    assert ((~mask).sum(1) == 51 * 6).all()


def test_layouts_are_transposes_of_each_other():
    """The same random draw gives the same grid mask in both layouts."""
    masker = TimeMasker(TimeMasker.Config(ratio=0.5))
    a = masker(3, (6, 4), TIME_MAJOR, "cpu", torch.Generator().manual_seed(5))
    b = masker(3, (6, 4), FREQ_MAJOR, "cpu", torch.Generator().manual_seed(5))
    assert torch.equal(as_grid(a, (6, 4), TIME_MAJOR), as_grid(b, (6, 4), FREQ_MAJOR))
    assert not torch.equal(a, b)


def test_masker_errors():
    with pytest.raises(ValueError, match="ratio"):
        RandomMasker(RandomMasker.Config(ratio=1.0))
    # a ratio that would keep nothing keeps one item
    assert ((~TimeMasker(TimeMasker.Config(ratio=0.9))(2, (3, 4), TIME_MAJOR)).sum(1) == 4).all()
    with pytest.raises(ValueError, match="layout"):
        RandomMasker()(1, (4, 4), "diagonal")
    with pytest.raises(ValueError, match="grid"):
        RandomMasker()(1, (0, 4), TIME_MAJOR)


# --------------------------------------------------------------------------- objective
def test_masked_mse_ignores_visible_patches(device):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 10, 16, generator=g).to(device)
    target = torch.randn(3, 10, 16, generator=g).to(device)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, ::3] = True
    mask = mask.to(device)
    obj = MaskedMSE()
    loss = obj(pred, target, mask)
    perturbed = target.clone()
    perturbed[~mask] += 100.0 * torch.randn_like(perturbed[~mask])
    assert torch.allclose(obj(pred, perturbed, mask), loss)
    changed = target.clone()
    changed[mask] += 1.0
    changed[mask, 0] += 1.0  # not a constant shift, so norm_pix cannot remove it
    assert not torch.allclose(obj(pred, changed, mask), loss)


def test_masked_mse_math(device):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 5, 8, generator=g, dtype=torch.float64).to(device)
    target = torch.randn(2, 5, 8, generator=g, dtype=torch.float64).to(device)
    mask = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 1, 0, 1]], device=device)
    # norm_pix: normalised by the patch's own mean and unbiased variance
    m = target.mean(-1, keepdim=True)
    v = ((target - m) ** 2).sum(-1, keepdim=True) / (target.shape[-1] - 1)
    norm = (target - m) / torch.sqrt(v + 1e-6)
    expected = sum(((pred[b, i] - norm[b, i]) ** 2).mean() for b in range(2) for i in range(5) if mask[b, i]) / 6
    assert torch.allclose(MaskedMSE()(pred, target, mask), expected)
    raw = MaskedMSE(MaskedMSE.Config(norm_pix=False))(pred, target, mask)
    expected_raw = sum(((pred[b, i] - target[b, i]) ** 2).mean() for b in range(2) for i in range(5) if mask[b, i]) / 6
    assert torch.allclose(raw, expected_raw)
    # a target shifted and scaled per patch gives the same normalised loss
    assert torch.allclose(MaskedMSE()(pred, 3.0 * target + 2.0, mask), expected, atol=1e-5)


def test_masked_mse_shape_errors():
    with pytest.raises(ValueError, match="differ"):
        MaskedMSE()(torch.zeros(1, 4, 8), torch.zeros(1, 4, 7), torch.ones(1, 4))
    with pytest.raises(ValueError, match="mask"):
        MaskedMSE()(torch.zeros(1, 4, 8), torch.zeros(1, 4, 8), torch.ones(1, 5))
