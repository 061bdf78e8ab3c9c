"""``ssl-bench bench``: how fast the harness is, measured as ratios within one run.

Each part is timed against its baseline in the same process, in rounds that alternate between
the two sides: rates (clips/s, samples/s) are the best round's, ratios the median of the
per-round ratios, so drift and bursts of other work on a shared machine mostly cancel:

0. **files to features** (what a user waits for before the first epoch): ``extract`` of 5 s
   WAV files at 44.1 kHz into a fresh feature cache against the plain per-clip loop of
   ``soundfile.read`` + ``torchaudio.functional.resample`` + ``kaldi.fbank``, the loop run at
   torch's thread count and on one thread; the largest difference of the log-mel values and
   of the resampled waveforms;
1. **frontend**: the batched ``kaldi-fbank`` frontend (CPU, and CUDA when present) against a
   per-clip loop of ``torchaudio.compliance.kaldi.fbank`` on the CPU, on clips of 10 s;
   clips/s, the ratio and the largest difference of the log-mel values;
2. **pretraining step** (forward, backward, AdamW): our AudioMAE with the global decoder
   against a reference assembled from timm's ``PatchEmbed`` and ``Block`` at the same sizes
   and token counts (the official code is built on timm), and our shifted-window decoder;
   samples/s, the ratio, analytic model FLOPs per sample and the model FLOPs utilisation
   (MFU) against a matrix multiply measured in the same run;
3. **data**: clips/s from the feature cache against decoding and transforming audio files,
   and the fraction of a cached training epoch spent waiting for data;
4. **peak memory**: CUDA allocator peak per model, and the process's peak RSS;
5. **probe**: the joint torch linear probe against scikit-learn's one-vs-rest fits on a
   20,000 x 768, 527-class multi-label problem (scikit-learn fits only a few of the classes,
   each a separate problem, and its time is scaled to all 527); the mAP of both on those
   classes.  scikit-learn runs as it comes (its BLAS and OpenMP with their default threads)
   and again limited to one thread, which on a busy machine is several times faster (its
   threads wait for each other at every product); the torch probe picks its thread count
   itself;
6. **bf16**: whether the CPU has bf16 matrix instructions, a GEMM in bf16 against float32, and
   where bf16 autocast engages (such CPUs, CUDA) an encoder forward and a pretraining step in
   bf16 against float32, with the embeddings' cosine similarity;
7. **events**: frame embeddings extracted once serve every event head and post-processing
   choice.  One extraction of clips' frame embeddings (AudioMAE at the preset, frames every
   40 ms by interpolation, float16, no cache) is timed against the ``events`` protocol's whole
   grid on those frames (linear and MLP heads, each checked on validation with every
   post-processing setting, the test part scored); the ratio is the grid's cost relative to one
   extraction, and reading the extraction back from the cache is timed against computing it.

:func:`run_bench` prints a table and returns (and writes) a flat dict of the figures.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl_bench.components import Clip
from ssl_bench.errors import UserError

# Sizes: full run / --quick (CI).
FRONTEND_CLIPS = (64, 8)
FRONTEND_SECONDS = 10.0
ROUNDS = (5, 5)
PRETRAIN = {  # preset -> (batch, frames, steps per round) for full / quick
    "tiny": ((16, 1024, 2), (4, 256, 4)),
    "small": ((8, 512, 1), (2, 256, 1)),  # ViT-S with its 16-block decoder: seconds a step on a CPU
    "base": ((64, 1024, 2), (4, 1024, 1)),
}
PRETRAIN_DEFAULT = ((16, 1024, 2), (4, 256, 4))
PRETRAIN_ROUNDS = (9, 9)  # speed ratios are the median of per-round ratios
F2F_CLIPS = (32, 8)
F2F_SECONDS = (5.0, 2.0)  # ESC-50's clips are 5 s at 44.1 kHz
F2F_RATE = 44100
F2F_ROUNDS = (5, 3)
#: (train clips, dimensions, classes, classes scikit-learn fits, rounds) for full / quick
PROBE = ((20000, 768, 527, 4, 1), (1200, 64, 24, 24, 2))
PROBE_C = 1.0
BF16_ROUNDS = (5, 3)
#: (clips, seconds, rounds, head epochs) of the events part, full / quick
EVENTS_SIZES = ((64, 10.0, 3, 30), (12, 2.0, 2, 4))
DATA_CLIPS = (64, 16)
DATA_SECONDS = (10.0, 2.0)
DATA_BATCH = (16, 4)


class BenchError(UserError, RuntimeError):
    """The benchmark cannot run as asked (missing package, bad device); says what to do."""


# --------------------------------------------------------------------------- helpers
def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: CUDA is not available on this machine")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict[str, Callable[[], Any]], rounds: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Wall times (s) of each function in ``rounds`` rounds that alternate between them."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_best(fns: dict[str, Callable[[], Any]], rounds: int, device: torch.device) -> dict[str, float]:
    """Best wall time (s) of each function over ``rounds`` rounds that alternate between them."""
    return {name: min(t) for name, t in interleaved_times(fns, rounds, device).items()}


def paired_ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of ``times[slow] / times[fast]``, each pair timed back to back.

    On a shared machine the speed drifts between rounds; a ratio of two runs made seconds
    apart cancels most of it, and the median drops the rounds a burst of other work hit.
    """
    return float(np.median([a / b for a, b in zip(times[slow], times[fast])]))


def _require_timm():
    try:
        import timm
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block
    except ImportError as exc:
        raise BenchError(
            "the pretraining comparison needs timm (its reference model is built from timm's "
            f"VisionTransformer blocks), which could not be imported ({exc}); install it with "
            "`pip install timm==1.0.31 torchvision==0.26.0`"
        ) from None
    return timm, PatchEmbed, Block


def gemm_flops_per_s(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """Achieved FLOP/s of a square matrix multiply: the peak that MFU is measured against."""
    n = (8192 if not quick else 4096) if device.type == "cuda" else (1024 if not quick else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 10 if device.type == "cuda" else 3
    (a @ b).sum()  # warm-up
    _sync(device)
    best = math.inf
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2.0 * n**3 / best


def _block_flops(tokens: int, dim: int, mlp_ratio: float, attended: int) -> float:
    """Forward FLOPs of one transformer block: qkv + proj + MLP matmuls, and attention."""
    linear = 2.0 * tokens * (4 * dim * dim + 2 * mlp_ratio * dim * dim)
    attention = 4.0 * tokens * attended * dim  # q @ k^T and attn @ v
    return linear + attention


def pretrain_flops_per_sample(config: dict[str, Any], grid: tuple[int, int], kept: int, patch_dim: int,
                              prefix: int = 1) -> float:
    """Analytic training FLOPs (3 x forward) of one sample through an MAE encoder + decoder.

    Counts the matrix multiplies (patch embedding over all patches, encoder blocks over the
    visible tokens, decoder embedding, decoder blocks over every token, prediction head);
    norms, softmax and elementwise work are left out, as usual for MFU.
    """
    enc, dec = config["encoder"], config["decoder"]
    L = grid[0] * grid[1]
    D, Dd = enc["dim"], dec["dim"]
    n_enc = kept + prefix
    fwd = 2.0 * L * patch_dim * D
    fwd += enc["depth"] * _block_flops(n_enc, D, enc.get("mlp_ratio", 4.0), n_enc)
    fwd += 2.0 * n_enc * D * Dd
    name = dec["name"]
    if name == "global":
        n_dec = L + prefix
        fwd += dec["depth"] * _block_flops(n_dec, Dd, dec.get("mlp_ratio", 4.0), n_dec)
    else:
        # windowed blocks attend within a window (the hybrid's last blocks globally)
        window = dec.get("window", (4, 4))
        cells = min(window[0], grid[0]) * min(window[1], grid[1])
        global_depth = dec.get("global_depth", 0) if name == "hybrid" else 0
        fwd += (dec["depth"] - global_depth) * _block_flops(L, Dd, dec.get("mlp_ratio", 4.0), cells)
        fwd += global_depth * _block_flops(L, Dd, dec.get("mlp_ratio", 4.0), L)
    fwd += 2.0 * L * Dd * patch_dim
    return 3.0 * fwd


# --------------------------------------------------------------------------- reference model
def build_reference(config: dict[str, Any], num_frames: int, num_bins: int, mask_ratio: float) -> nn.Module:
    """An MAE pretraining model assembled from timm parts at our model's sizes.

    timm ``PatchEmbed`` (16 x 16, one channel), fixed position tables, MAE random masking
    (noise, argsort, gather), timm ``Block``s over cls + visible tokens, a linear decoder
    embedding, mask tokens restored by gather, timm ``Block``s with global attention over every
    token, a linear head, and the normalised-pixel MSE on masked patches.
    """
    _, PatchEmbed, TimmBlock = _require_timm()
    from functools import partial

    enc, dec = config["encoder"], config["decoder"]
    p = enc.get("patch_size", 16)
    norm = partial(nn.LayerNorm, eps=1e-6)

    class ReferenceMAE(nn.Module):
        def __init__(self):
            super().__init__()
            D, Dd = enc["dim"], dec["dim"]
            self.patch_embed = PatchEmbed(img_size=(num_frames, num_bins), patch_size=p, in_chans=1, embed_dim=D)
            L = self.patch_embed.num_patches
            self.L, self.p = L, p
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
            self.pos_embed = nn.Parameter(torch.randn(1, L + 1, D) * 0.02, requires_grad=False)
            self.blocks = nn.ModuleList(
                TimmBlock(D, enc["heads"], enc.get("mlp_ratio", 4.0), qkv_bias=True, norm_layer=norm)
                for _ in range(enc["depth"])
            )
            self.norm = norm(D)
            self.decoder_embed = nn.Linear(D, Dd)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
            self.decoder_pos_embed = nn.Parameter(torch.randn(1, L + 1, Dd) * 0.02, requires_grad=False)
            self.decoder_blocks = nn.ModuleList(
                TimmBlock(Dd, dec["heads"], dec.get("mlp_ratio", 4.0), qkv_bias=True, norm_layer=norm)
                for _ in range(dec["depth"])
            )
            self.decoder_norm = norm(Dd)
            self.decoder_pred = nn.Linear(Dd, p * p)

        def forward(self, spec: torch.Tensor) -> torch.Tensor:
            B = spec.shape[0]
            x = self.patch_embed(spec.unsqueeze(1)) + self.pos_embed[:, 1:]
            keep = max(1, int(self.L * (1 - mask_ratio)))
            ids_shuffle = torch.rand(B, self.L, device=spec.device).argsort(dim=1)
            ids_restore = ids_shuffle.argsort(dim=1)
            ids_keep = ids_shuffle[:, :keep]
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
            mask = torch.ones(B, self.L, device=spec.device)
            mask[:, :keep] = 0
            mask = torch.gather(mask, 1, ids_restore)
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
            x = torch.cat([cls, x], dim=1)
            for blk in self.blocks:
                x = blk(x)
            x = self.decoder_embed(self.norm(x))
            tokens = torch.cat([x[:, 1:], self.mask_token.expand(B, self.L - keep, -1)], dim=1)
            tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
            x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
            for blk in self.decoder_blocks:
                x = blk(x)
            pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
            # targets: 16 x 16 patches in the same (time-major) order as the patch embedding
            n_t, n_f = num_frames // self.p, num_bins // self.p
            target = spec[:, : n_t * self.p, : n_f * self.p].reshape(B, n_t, self.p, n_f, self.p)
            target = target.permute(0, 1, 3, 2, 4).reshape(B, self.L, self.p * self.p).float()
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
            loss = (pred.float() - target).square().mean(-1)
            return (loss * mask).sum() / mask.sum()

    return ReferenceMAE()


# --------------------------------------------------------------------------- parts
def _frontend_factory():
    from ssl_bench.registry import get_registry

    return get_registry().get("frontend", "kaldi-fbank").factory


def bench_frontend(device: torch.device, quick: bool) -> dict[str, Any]:
    """Batched frontend vs a per-clip loop of ``kaldi.fbank`` on the CPU."""
    from torchaudio.compliance import kaldi

    n_clips = FRONTEND_CLIPS[quick]
    rounds = ROUNDS[quick]
    factory = _frontend_factory()
    frontend = factory(factory.Config(num_frames=None), None)
    sr = frontend.sample_rate
    g = torch.Generator().manual_seed(0)
    n = int(FRONTEND_SECONDS * sr)
    # Noise-like clips at different levels, with a DC offset (real recordings have one).
    clips = torch.randn(n_clips, n, generator=g) * torch.logspace(-2.5, -0.5, n_clips)[:, None] + 0.01

    def loop() -> list[torch.Tensor]:
        return [
            kaldi.fbank((c - c.mean())[None], htk_compat=True, sample_frequency=sr, use_energy=False,
                        window_type="hanning", num_mel_bins=frontend.num_bins, dither=0.0, frame_shift=10)
            for c in clips
        ]

    reference = torch.stack(loop())
    batched = frontend.compute(clips)
    cpu = torch.device("cpu")
    runs = interleaved_times({"loop": loop, "batched": lambda: frontend.compute(clips)}, rounds, cpu)
    times = {name: min(t) for name, t in runs.items()}
    # The same comparison with both sides on one thread: the gain of the batched algorithm
    # alone, without the thread pool (and without OpenMP contention on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single_runs = interleaved_times({"loop": loop, "batched": lambda: frontend.compute(clips)}, rounds, cpu)
    finally:
        torch.set_num_threads(threads)
    single = {name: min(t) for name, t in single_runs.items()}
    out = {
        "frontend_cpu_implementation": getattr(frontend, "cpu_implementation", "torch ops"),
        "frontend_clips": n_clips,
        "frontend_loop_clips_per_s_1thread": n_clips / single["loop"],
        "frontend_batched_clips_per_s_1thread": n_clips / single["batched"],
        "frontend_speedup_1thread": paired_ratio(single_runs, "loop", "batched"),
        "frontend_clip_seconds": FRONTEND_SECONDS,
        "frontend_loop_clips_per_s": n_clips / times["loop"],
        "frontend_batched_clips_per_s": n_clips / times["batched"],
        "frontend_speedup": paired_ratio(runs, "loop", "batched"),
        "frontend_max_abs_diff": float((batched - reference).abs().max()),
    }
    if device.type == "cuda":
        # The CUDA path computes Kaldi's formula in float64; its distance to Kaldi's float32
        # output is bounded by that output's own rounding error, measured here.
        exact = torch.stack([
            kaldi.fbank((c - c.mean())[None], htk_compat=True, sample_frequency=sr, use_energy=False,
                        window_type="hanning", num_mel_bins=frontend.num_bins, dither=0.0, frame_shift=10)
            for c in clips.double()
        ]).float()
        out["frontend_kaldi_float32_error"] = float((reference - exact).abs().max())
        fe = frontend.to(device)
        clips_dev = clips.to(device)
        fe.compute(clips_dev)  # cuFFT plans, kernels
        cuda_out = fe.compute(clips_dev).cpu()
        t = interleaved_best({"cuda": lambda: fe.compute(clips_dev)}, rounds + 2, device)["cuda"]
        out.update({
            "frontend_cuda_max_abs_diff_float64": float((cuda_out - exact).abs().max()),
            "frontend_cuda_clips_per_s": n_clips / t,
            "frontend_cuda_speedup": times["loop"] / t,
            "frontend_cuda_max_abs_diff": float((cuda_out - reference).abs().max()),
        })
    return out


def _pretrain_sizes(preset: str, quick: bool) -> tuple[int, int, int]:
    return PRETRAIN.get(preset, PRETRAIN_DEFAULT)[quick]


def _make_step(model: nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], spec: torch.Tensor,
               device: torch.device, amp: bool = True) -> Callable[[], None]:
    """One optimiser step, under the training loop's autocast (bf16 where ``amp`` engages it)."""
    from ssl_bench.train import adamw, autocast

    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, device, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)  # as the training loop

    def step() -> None:
        with autocast(device, amp):
            loss = loss_of(spec)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_pretrain(preset: str, device: torch.device, quick: bool) -> dict[str, Any]:
    """Our AudioMAE pretraining step (global and shifted-window decoders) vs the timm reference."""
    from ssl_bench.model import create_model

    _require_timm()
    batch, frames, steps = _pretrain_sizes(preset, quick)
    rounds = PRETRAIN_ROUNDS[quick]
    torch.manual_seed(0)
    ours = create_model("audiomae", preset=preset, decoder="global", **{"frontend.num_frames": frames}).to(device)
    window = create_model("audiomae", preset=preset, decoder="shifted-window",
                          **{"frontend.num_frames": frames}).to(device)
    num_bins = ours.build.num_bins
    grid = ours.build.grid
    ratio = float(ours.config["masker"]["ratio"])
    reference = build_reference(ours.config, frames, num_bins, ratio).to(device)
    spec = torch.randn(batch, frames, num_bins, device=device)
    L = grid[0] * grid[1]
    kept = max(1, int(L * (1 - ratio)))

    models = {
        "ours": (ours, lambda s: ours.forward_pretrain(s).loss),
        "reference": (reference, reference),
        "shifted_window": (window, lambda s: window.forward_pretrain(s).loss),
    }
    steps_fns, peaks = {}, {}
    for name, (model, loss_of) in models.items():
        model.train()
        step = _make_step(model, loss_of, spec, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):  # warm-up: allocator, kernels, optimizer state
            step()
        _sync(device)
        if device.type == "cuda":
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
        steps_fns[name] = (lambda step=step: [step() for _ in range(steps)])
    runs = interleaved_times(steps_fns, rounds, device)
    per_s = {name: batch * steps / min(t) for name, t in runs.items()}

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = gemm_flops_per_s(device, dtype, quick)
    patch_dim = ours.build.patch_dim
    flops = pretrain_flops_per_sample(ours.config, grid, kept, patch_dim)
    flops_window = pretrain_flops_per_sample(window.config, grid, kept, patch_dim)
    out = {
        "pretrain_batch": batch,
        "pretrain_frames": frames,
        "pretrain_tokens": L,
        "pretrain_visible_tokens": kept,
        "pretrain_samples_per_s": per_s["ours"],
        "pretrain_reference_samples_per_s": per_s["reference"],
        "pretrain_rounds": rounds,
        "pretrain_speedup_vs_reference": paired_ratio(runs, "reference", "ours"),
        "pretrain_shifted_window_samples_per_s": per_s["shifted_window"],
        "pretrain_shifted_window_vs_reference": paired_ratio(runs, "reference", "shifted_window"),
        "model_flops_per_sample": flops,
        "model_flops_per_sample_shifted_window": flops_window,
        "gemm_flops_per_s": peak,
        "gemm_dtype": str(dtype).replace("torch.", ""),
        "mfu": flops * per_s["ours"] / peak,
        "mfu_reference": flops * per_s["reference"] / peak,
        "mfu_shifted_window": flops_window * per_s["shifted_window"] / peak,
    }
    for name, mb in peaks.items():
        out[f"peak_memory_mb_{name}"] = mb
    return out


def _write_clips(root: Path, n: int, seconds: float, sr: int) -> list[Clip]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    clips = []
    for i in range(n):
        path = root / f"clip{i:03d}.wav"
        t = np.arange(int(seconds * sr)) / sr
        wave = 0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)
        sf.write(path, wave.astype(np.float32), sr, subtype="PCM_16")
        clips.append(Clip(path=path, labels=(0,), key=path.name))
    return clips


def bench_data(preset: str, device: torch.device, quick: bool) -> dict[str, Any]:
    """Clips/s from the feature cache vs from audio files, and a cached epoch's data wait."""
    from torch.utils.data import DataLoader

    from ssl_bench.audio import fit_length, load_audio
    from ssl_bench.features import extract, norm_stats
    from ssl_bench.model import create_model
    from ssl_bench.protocols.data import SpecDataset
    from ssl_bench.train import adamw

    n_clips, seconds, batch = DATA_CLIPS[quick], DATA_SECONDS[quick], DATA_BATCH[quick]
    rounds = ROUNDS[quick]
    with tempfile.TemporaryDirectory(prefix="ssl-bench-bench-") as tmp:
        root = Path(tmp)
        factory = _frontend_factory()
        frontend = factory(factory.Config(num_frames=None), None)
        sr = frontend.sample_rate
        clips = _write_clips(root, n_clips, seconds, sr)
        num_frames = frontend.num_frames_for(seconds)
        n_samples = int(seconds * sr)

        t0 = time.perf_counter()
        extract(clips, frontend, clip_seconds=seconds, cache_dir=root / "cache", batch_size=batch, progress=False)
        build_s = time.perf_counter() - t0
        features = extract(clips, frontend, clip_seconds=seconds, cache_dir=root / "cache", progress=False)
        if not features.from_cache:
            raise BenchError(f"the feature cache in {root / 'cache'} was not reused on the second read")

        def from_audio() -> None:
            for i in range(0, n_clips, batch):
                waves = [fit_length(load_audio(c.path, sr), n_samples) for c in clips[i:i + batch]]
                frontend.fit_frames(frontend.compute(torch.from_numpy(np.stack(waves))), num_frames)

        dataset = SpecDataset(features, np.arange(len(features)), num_frames)

        def from_cache() -> None:
            for _ in DataLoader(dataset, batch_size=batch):
                pass

        data_runs = interleaved_times({"audio": from_audio, "cache": from_cache}, rounds, torch.device("cpu"))
        times = {name: min(t) for name, t in data_runs.items()}

        # A cached training epoch: how much of its time is spent waiting for the next batch.
        torch.manual_seed(0)
        model = create_model("audiomae", preset=preset, **{"frontend.num_frames": num_frames}).to(device)
        if getattr(model.frontend.cfg, "mean", None) is None:  # presets that take them from the data
            model.frontend.set_norm_stats(*norm_stats(features))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = adamw(params, device, lr=1e-4)  # as the training loop
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                            pin_memory=device.type == "cuda")

        def epoch() -> tuple[float, float, int]:
            wait, steps = 0.0, 0
            _sync(device)
            start = time.perf_counter()
            it = iter(loader)
            while True:
                t = time.perf_counter()
                item = next(it, None)
                wait += time.perf_counter() - t
                if item is None:
                    break
                spec = model.frontend.normalize(item["spec"].to(device, non_blocking=True))
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = model.forward_pretrain(spec).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                steps += 1
            _sync(device)
            return wait, time.perf_counter() - start, steps

        epoch()  # warm-up
        wait, total, steps = epoch()
    return {
        "data_clips": n_clips,
        "data_clip_seconds": seconds,
        "data_audio_clips_per_s": n_clips / times["audio"],
        "data_cache_clips_per_s": n_clips / times["cache"],
        "data_cache_speedup": paired_ratio(data_runs, "audio", "cache"),
        "data_cache_build_s": build_s,
        "data_epoch_steps": steps,
        "data_epoch_s": total,
        "data_wait_s": wait,
        "data_wait_fraction": wait / total,
    }


@contextlib.contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def bench_files_to_features(device: torch.device, quick: bool) -> dict[str, Any]:
    """``extract`` of 44.1 kHz WAV files into a fresh cache vs the plain per-clip loop on the CPU.

    ``extract`` runs its frontend on ``device`` (on CUDA the CPU workers decode and resample).
    """
    import soundfile as sf
    import torchaudio.functional as AF
    from torchaudio.compliance import kaldi

    from ssl_bench.audio import resample_batch
    from ssl_bench.features import extract, extraction_threads

    n_clips, seconds, rounds = F2F_CLIPS[quick], F2F_SECONDS[quick], F2F_ROUNDS[quick]
    factory = _frontend_factory()
    frontend = factory(factory.Config(num_frames=None), None)
    sr, bins = frontend.sample_rate, frontend.num_bins
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="ssl-bench-f2f-") as tmp:
        root = Path(tmp)
        (root / "audio").mkdir()
        clips = _write_clips(root / "audio", n_clips, seconds, F2F_RATE)

        def plain_clip(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
            wave = AF.resample(torch.from_numpy(data.mean(axis=1)), rate, sr)
            fbank = kaldi.fbank((wave - wave.mean())[None], htk_compat=True, sample_frequency=sr, use_energy=False,
                                window_type="hanning", num_mel_bins=bins, dither=0.0, frame_shift=10)
            return wave, fbank

        def reference() -> list[tuple[torch.Tensor, torch.Tensor]]:
            return [plain_clip(c.path) for c in clips]

        def reference_one_thread() -> None:
            with _torch_threads(1):
                reference()

        entries = itertools.count()

        def ours():
            cache = root / f"cache{next(entries)}"  # a fresh cache each time: nothing is read back
            features = extract(clips, frontend, clip_seconds=seconds, cache_dir=cache, device=device, progress=False)
            shutil.rmtree(cache, ignore_errors=True)
            return features

        expected = reference()
        features = ours()
        diff = max(float((features[i] - fbank).abs().max()) for i, (_, fbank) in enumerate(expected))
        sources = [sf.read(str(c.path), dtype="float32")[0] for c in clips]
        resampled = resample_batch(sources, F2F_RATE, sr)
        resample_diff = max(float((r - wave).abs().max()) for r, (wave, _) in zip(resampled, expected))
        fns: dict[str, Callable[[], Any]] = {"reference": reference, "ours": ours}
        if threads > 1:
            fns["reference_one_thread"] = reference_one_thread
        runs = interleaved_times(fns, rounds, device)
    best = {name: min(t) for name, t in runs.items()}
    out = {
        "files_to_features_clips": n_clips,
        "files_to_features_clip_seconds": seconds,
        "files_to_features_source_rate": F2F_RATE,
        "files_to_features_threads": threads,
        "files_to_features_workers": extraction_threads(),
        "files_to_features_reference_clips_per_s": n_clips / best["reference"],
        "files_to_features_clips_per_s": n_clips / best["ours"],
        "files_to_features_speedup": paired_ratio(runs, "reference", "ours"),
        "files_to_features_max_abs_diff": diff,
        "resample_max_abs_diff": resample_diff,
    }
    if "reference_one_thread" in runs:
        out["files_to_features_reference_1thread_clips_per_s"] = n_clips / best["reference_one_thread"]
        out["files_to_features_speedup_vs_1thread_reference"] = paired_ratio(runs, "reference_one_thread", "ours")
    return out


def probe_problem(n_train: int, dim: int, num_classes: int, seed: int = 0) -> tuple[dict, dict]:
    """A multi-label problem shaped like AudioSet embeddings: Gaussian features, each class a
    noisy linear rule with a prevalence between 1 % and 10 %; valid and test a tenth of train."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((dim, num_classes)) * (3.0 / math.sqrt(dim))
    prevalence = np.exp(rng.uniform(math.log(0.01), math.log(0.1), num_classes))
    threshold = norm.ppf(1 - prevalence) * np.linalg.norm(weights, axis=0)
    X, y = {}, {}
    for part, n in (("train", n_train), ("valid", n_train // 10), ("test", n_train // 10)):
        x = rng.standard_normal((n, dim)).astype(np.float32)
        p = 1.0 / (1.0 + np.exp(-2.0 * (x @ weights - threshold)))
        X[part], y[part] = x, (rng.random((n, num_classes)) < p).astype(np.int64)
    return X, y


def bench_probe(device: torch.device, quick: bool) -> dict[str, Any]:
    """The joint torch linear probe vs scikit-learn on a 527-class multi-label problem."""
    try:
        from ssl_bench.protocols.torch_linear import fit_linear_torch
    except ImportError:
        return {"probe_measured": False}
    from ssl_bench.protocols.linear import fit_linear

    n_train, dim, classes, fitted, rounds = PROBE[quick]
    X, y = probe_problem(n_train, dim, classes)
    some = {part: v[:, :fitted] for part, v in y.items()}
    common = {"multilabel": True, "metrics": ["mAP"], "Cs": [PROBE_C]}
    results: dict[str, Any] = {}

    def sklearn() -> None:
        results["sklearn"] = fit_linear(X, some, num_classes=fitted, **common)

    def sklearn_one_thread() -> None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            fit_linear(X, some, num_classes=fitted, **common)

    def torch_all() -> None:
        results["torch"] = fit_linear_torch(X, y, num_classes=classes, device=device, **common)

    # scikit-learn fits each class on its own: its time for `fitted` classes, scaled to all.
    runs = interleaved_times({"sklearn": sklearn, "sklearn_1thread": sklearn_one_thread, "torch": torch_all},
                             rounds, device)
    runs["sklearn_all"] = [t * classes / fitted for t in runs["sklearn"]]
    runs["sklearn_1thread_all"] = [t * classes / fitted for t in runs["sklearn_1thread"]]
    same = fit_linear_torch(X, some, num_classes=fitted, device=device, **common)
    sk_map, torch_map = results["sklearn"].test["mAP"], same.test["mAP"]
    return {
        "probe_measured": True,
        "probe_train_clips": n_train,
        "probe_dim": dim,
        "probe_classes": classes,
        "probe_sklearn_classes_fitted": fitted,
        "probe_rounds": rounds,
        "probe_sklearn_s": min(runs["sklearn_all"]),
        "probe_torch_s": min(runs["torch"]),
        "probe_speedup": paired_ratio(runs, "sklearn_all", "torch"),
        "probe_sklearn_1thread_s": min(runs["sklearn_1thread_all"]),
        "probe_speedup_vs_sklearn_1thread": paired_ratio(runs, "sklearn_1thread_all", "torch"),
        "probe_map_sklearn": sk_map,
        "probe_map_torch": torch_map,
        "probe_map_diff_points": 100 * abs(sk_map - torch_map),
        "probe_map_torch_all_classes": results["torch"].test["mAP"],
    }


def bench_events(preset: str, device: torch.device, quick: bool) -> dict[str, Any]:
    """One extraction of frame embeddings against the ``events`` protocol's whole grid on them."""
    from ssl_bench.events import Event
    from ssl_bench.features import extract
    from ssl_bench.model import create_model
    from ssl_bench.protocols.data import SplitData
    from ssl_bench.protocols.embeddings import extract_frame_embeddings
    from ssl_bench.protocols.events import EventsConfig, fit_event_heads, head_grid, post_processing_grid

    n_clips, seconds, rounds, epochs = EVENTS_SIZES[quick]
    classes = ["a", "b", "c"]
    metrics = ["event_onset_200ms_fms", "segment_1s_er"]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="ssl-bench-bench-") as tmp:
        plain = _write_clips(Path(tmp), n_clips, seconds, 16000)
        clips = []
        for clip in plain:  # two or three events a clip, the labels they hold
            events = []
            for _ in range(int(rng.integers(2, 4))):
                onset = float(rng.uniform(0, seconds * 0.8))
                events.append(Event(int(rng.integers(len(classes))), round(onset, 3),
                                    round(min(seconds, onset + float(rng.uniform(0.2, 1.0))), 3)))
            clips.append(Clip(path=clip.path, labels=tuple(sorted({e.label for e in events})), key=clip.key,
                              events=tuple(events)))
        torch.manual_seed(0)
        model = create_model("audiomae", preset=preset, **{"frontend.mean": -6.0, "frontend.std": 4.0})
        frames_per_clip = int(model.frontend.num_frames_for(seconds))
        model = create_model("audiomae", preset=preset, **{"frontend.num_frames": frames_per_clip,
                                                           "frontend.mean": -6.0, "frontend.std": 4.0}).eval()
        feats = extract(clips, model.frontend, clip_seconds=seconds, cache_dir=None, device=device, progress=False)
        n = len(feats)
        idx = np.arange(n)
        train, valid, test = idx[: n * 3 // 5], idx[n * 3 // 5: n * 4 // 5], idx[n * 4 // 5:]
        data = SplitData(feats, train, valid, test, np.zeros((n, len(classes)), np.float32), len(classes), True,
                         metrics, frames_per_clip, name="bench", label_shape="events", classes=classes,
                         clip_seconds=seconds)
        cfg = EventsConfig(max_epochs=epochs, check_every=max(1, epochs // 5), patience=epochs, hop_ms=40.0)
        made: dict[str, Any] = {}

        def extraction(cache_dir: Path | None = None) -> None:
            made["frames"] = extract_frame_embeddings(model, data, idx, batch_size=16, device=device,
                                                      cache_dir=cache_dir, hop_s=0.04, dtype="float16")

        def grid() -> None:
            frames = made["frames"]
            parts = {"train": train, "valid": valid, "test": test}
            made["result"] = fit_event_heads(
                {p: frames.select(rows) for p, rows in parts.items()}, {p: data.events(p) for p in parts},
                {p: data.keys(p) for p in parts}, classes=classes, metrics=metrics, cfg=cfg, device=device,
                clip_seconds=seconds)

        extraction()
        cache = Path(tmp) / "frames"
        extraction(cache)  # fills the cache that the third side reads
        times = interleaved_times({"extract": extraction, "grid": grid, "cached": lambda: extraction(cache)},
                                  rounds, device)
    heads, posts = len(head_grid(cfg)), len(post_processing_grid(cfg))
    frames = made["frames"]
    return {
        "events_clips": n, "events_clip_seconds": seconds, "events_frames": len(frames.timestamps),
        "events_frame_hop_ms": 40.0, "events_heads": heads, "events_post_processing_settings": posts,
        "events_head_epochs": epochs, "events_extract_s": min(times["extract"]), "events_grid_s": min(times["grid"]),
        "events_grid_over_extraction": paired_ratio(times, "grid", "extract"),
        "events_cache_read_s": min(times["cached"]),
        "events_cache_speedup": paired_ratio(times, "extract", "cached"),
    }


#: bf16 pays where matrix products dominate a step: the bench also times this preset (ViT-S)
#: when it runs a narrower one, so the JSON answers "does bf16 pay here" at a size that trains.
BF16_ALSO = "small"


def bench_bf16(preset: str, device: torch.device, quick: bool) -> dict[str, Any]:
    """bf16 against float32: a GEMM always; an encoder forward and a pretraining step where the
    training loop's autocast engages (CUDA, CPUs with bf16 matrix instructions), at ``preset``
    and, when ``preset`` is narrower, at :data:`BF16_ALSO` (keys suffixed ``_small``)."""
    from ssl_bench.train.loop import cpu_bf16_supported

    supported = cpu_bf16_supported()
    out: dict[str, Any] = {"bf16_cpu_supported": supported}
    n = (4096 if not quick else 2048) if device.type == "cuda" else 256
    mats = {dt: (torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt))
            for dt in (torch.float32, torch.bfloat16)}
    for a, b in mats.values():
        a @ b
    gemm = interleaved_times({str(dt): (lambda a=a, b=b: [a @ b for _ in range(3)]) for dt, (a, b) in mats.items()},
                             BF16_ROUNDS[quick], device)
    out["bf16_gemm_speedup"] = paired_ratio(gemm, "torch.float32", "torch.bfloat16")
    engaged = device.type == "cuda" or (device.type == "cpu" and supported)
    out["bf16_autocast_engaged"] = engaged
    if not engaged:  # emulated bf16 (tens of times slower than float32): nothing to measure
        return out
    out.update(_bf16_model(preset, device, quick))
    if preset != BF16_ALSO and _width(preset) < _width(BF16_ALSO):
        out.update({f"{k}_{BF16_ALSO}": v for k, v in _bf16_model(BF16_ALSO, device, quick).items()})
    return out


def _width(preset: str) -> int:
    from ssl_bench.config import resolve

    return int(resolve("audiomae", preset=preset)["encoder"]["dim"])


def _bf16_model(preset: str, device: torch.device, quick: bool) -> dict[str, Any]:
    """bf16 vs float32 for ``preset``'s encoder forward and pretraining step, in alternating rounds."""
    from ssl_bench.model import create_model
    from ssl_bench.train import autocast

    batch, frames, steps = _pretrain_sizes(preset, quick)
    rounds = BF16_ROUNDS[quick]
    torch.manual_seed(0)
    model = create_model("audiomae", preset=preset, **{"frontend.num_frames": frames}).to(device)
    spec = torch.randn(batch, frames, model.build.num_bins, device=device)
    model.eval()

    def forward(amp: bool) -> torch.Tensor:
        with torch.no_grad(), autocast(device, amp):
            return model.embed(spec).float()

    cosine = torch.nn.functional.cosine_similarity(forward(False), forward(True), dim=1)
    fwd = interleaved_times({"float32": lambda: forward(False), "bf16": lambda: forward(True)}, rounds, device)
    model.train()
    step_fns = {}
    for name, amp in (("float32", False), ("bf16", True)):
        step = _make_step(model, lambda s: model.forward_pretrain(s).loss, spec, device, amp=amp)
        step()  # warm-up
        step_fns[name] = (lambda step=step: [step() for _ in range(steps)])
    train = interleaved_times(step_fns, rounds, device)
    return {
        "bf16_forward_speedup": paired_ratio(fwd, "float32", "bf16"),
        "bf16_pretrain_step_speedup": paired_ratio(train, "float32", "bf16"),
        "bf16_pretrain_samples_per_s": batch * steps / min(train["bf16"]),
        "bf16_embedding_cosine_min": float(cosine.min()),
    }


# --------------------------------------------------------------------------- entry point
def _versions() -> dict[str, Any]:
    import torchaudio

    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    return {
        "torch_version": torch.__version__,
        "torchaudio_version": torchaudio.__version__,
        "timm_version": timm_version,
        "python_version": platform.python_version(),
    }


def _device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = info["cpu"]
    return info


TABLE = [
    ("files", "files_to_features_reference_clips_per_s", "per-clip read+resample+fbank loop, clips/s"),
    ("files", "files_to_features_reference_1thread_clips_per_s", "the same loop on one thread, clips/s"),
    ("files", "files_to_features_clips_per_s", "extract 44.1 kHz files into a cache, clips/s"),
    ("files", "files_to_features_speedup", "speedup, extract vs the loop"),
    ("files", "files_to_features_speedup_vs_1thread_reference", "speedup, extract vs the loop on 1 thread"),
    ("files", "files_to_features_max_abs_diff", "max |extract - loop| (log-mel)"),
    ("files", "resample_max_abs_diff", "max |resampled - functional.resample|"),
    ("frontend", "frontend_loop_clips_per_s", "per-clip kaldi.fbank loop (CPU), clips/s"),
    ("frontend", "frontend_batched_clips_per_s", "batched kaldi-fbank (CPU), clips/s"),
    ("frontend", "frontend_speedup", "speedup, batched CPU vs loop"),
    ("frontend", "frontend_speedup_1thread", "speedup, both on one thread"),
    ("frontend", "frontend_max_abs_diff", "max |batched - kaldi| (log-mel)"),
    ("frontend", "frontend_cuda_clips_per_s", "batched kaldi-fbank (CUDA), clips/s"),
    ("frontend", "frontend_cuda_speedup", "speedup, CUDA vs CPU loop"),
    ("frontend", "frontend_cuda_max_abs_diff", "max |CUDA - kaldi| (log-mel)"),
    ("frontend", "frontend_kaldi_float32_error", "max |kaldi float32 - kaldi float64|"),
    ("pretrain", "pretrain_samples_per_s", "ours, global decoder, samples/s"),
    ("pretrain", "pretrain_reference_samples_per_s", "timm reference, samples/s"),
    ("pretrain", "pretrain_speedup_vs_reference", "speedup, ours vs reference"),
    ("pretrain", "pretrain_shifted_window_samples_per_s", "ours, shifted-window decoder, samples/s"),
    ("pretrain", "pretrain_shifted_window_vs_reference", "shifted-window vs reference"),
    ("pretrain", "model_flops_per_sample", "model FLOPs per sample (train, global)"),
    ("pretrain", "gemm_flops_per_s", "measured GEMM FLOP/s"),
    ("pretrain", "mfu", "MFU, ours (global decoder)"),
    ("pretrain", "mfu_reference", "MFU, reference"),
    ("pretrain", "mfu_shifted_window", "MFU, shifted-window"),
    ("data", "data_audio_clips_per_s", "decode + fbank from audio files, clips/s"),
    ("data", "data_cache_clips_per_s", "feature cache, clips/s"),
    ("data", "data_cache_speedup", "speedup, cache vs audio"),
    ("data", "data_wait_fraction", "cached epoch: fraction waiting for data"),
    ("probe", "probe_sklearn_s", "scikit-learn one-vs-rest, s (scaled)"),
    ("probe", "probe_torch_s", "joint torch probe, s"),
    ("probe", "probe_speedup", "speedup, torch vs scikit-learn"),
    ("probe", "probe_sklearn_1thread_s", "scikit-learn on one thread, s (scaled)"),
    ("probe", "probe_speedup_vs_sklearn_1thread", "speedup, torch vs scikit-learn on one thread"),
    ("probe", "probe_map_diff_points", "|mAP torch - mAP sklearn|, points"),
    ("bf16", "bf16_cpu_supported", "CPU has bf16 matrix instructions"),
    ("bf16", "bf16_gemm_speedup", "GEMM, bf16 vs float32"),
    ("bf16", "bf16_forward_speedup", "encoder forward, bf16 vs float32"),
    ("bf16", "bf16_pretrain_step_speedup", "pretraining step, bf16 vs float32"),
    ("bf16", "bf16_embedding_cosine_min", "min cosine, bf16 vs float32 embeddings"),
    ("bf16", f"bf16_forward_speedup_{BF16_ALSO}", f"encoder forward, bf16 vs float32 ({BF16_ALSO})"),
    ("bf16", f"bf16_pretrain_step_speedup_{BF16_ALSO}", f"pretraining step, bf16 vs float32 ({BF16_ALSO})"),
    ("bf16", f"bf16_embedding_cosine_min_{BF16_ALSO}", f"min cosine, bf16 vs float32 ({BF16_ALSO})"),
    ("events", "events_extract_s", "frame embeddings, one extraction, s"),
    ("events", "events_grid_s", "every head x post-processing on them, s"),
    ("events", "events_grid_over_extraction", "grid cost / one extraction"),
    ("events", "events_heads", "heads trained on the one extraction"),
    ("events", "events_post_processing_settings", "post-processing settings per check"),
    ("events", "events_cache_speedup", "speedup, cached frames vs extracting"),
    ("memory", "peak_memory_mb_ours", "CUDA peak, ours (global), MiB"),
    ("memory", "peak_memory_mb_reference", "CUDA peak, reference, MiB"),
    ("memory", "peak_memory_mb_shifted_window", "CUDA peak, shifted-window, MiB"),
    ("memory", "peak_rss_mb", "process peak RSS, MiB"),
]


def format_table(results: dict[str, Any]) -> str:
    """The figures as an aligned text table (only those present)."""
    header = (f"ssl-bench bench: preset {results.get('preset')}, device {results.get('device')} "
              f"({results.get('device_name')}), torch {results.get('torch_version')}, "
              f"{'quick' if results.get('quick') else 'full'}")
    lines = [header]
    for part, key, label in TABLE:
        if key not in results:
            continue
        value = results[key]
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif key.endswith(("flops_per_sample", "flops_per_s")):
            text = f"{value / 1e9:,.2f} G"
        elif "fraction" in key or key.startswith("mfu"):
            text = f"{100 * value:.2f} %"
        elif "diff" in key and "points" not in key:
            text = f"{value:.2e}"
        elif "cosine" in key:
            text = f"{value:.5f}"
        else:
            text = f"{value:,.2f}"
        lines.append(f"  {part:<9} {label:<44} {text:>14}")
    return "\n".join(lines)


def run_bench(preset: str = "tiny", device: str | torch.device = "auto", quick: bool = False,
              out: str | Path | None = None) -> dict[str, Any]:
    """Run the benchmark parts; print a table; write the figures as JSON to ``out``.

    ``preset``: the AudioMAE size preset (``tiny``, ``base``, ...); ``device``: ``auto``,
    ``cpu``, ``cuda``...; ``quick``: CI sizes (seconds on a CPU).  Raises :class:`BenchError`
    when timm (needed for the reference model) is missing or the device is unavailable.
    """
    _require_timm()
    dev = resolve_device(device)
    started = time.perf_counter()
    results: dict[str, Any] = {"preset": preset, "quick": bool(quick)}
    results.update(_device_info(dev))
    results.update(_versions())
    results.update(bench_files_to_features(dev, quick))
    results.update(bench_frontend(dev, quick))
    results.update(bench_pretrain(preset, dev, quick))
    results.update(bench_data(preset, dev, quick))
    results.update(bench_probe(dev, quick))
    results.update(bench_bf16(preset, dev, quick))
    results.update(bench_events(preset, dev, quick))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        results["peak_memory_mb"] = max(v for k, v in results.items() if k.startswith("peak_memory_mb_"))
    else:
        results["peak_memory_mb"] = results["peak_rss_mb"]
    results["bench_seconds"] = time.perf_counter() - started
    print(format_table(results), flush=True)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        print(f"wrote {path}", file=sys.stderr)
    return results
