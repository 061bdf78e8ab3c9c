"""``ssl-bench bench``: the quick run produces every figure, finite and positive."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssl_bench.plugins.audiomae import bench

REQUIRED = [
    "frontend_speedup", "frontend_max_abs_diff", "frontend_loop_clips_per_s", "frontend_batched_clips_per_s",
    "pretrain_speedup_vs_reference", "pretrain_samples_per_s", "pretrain_reference_samples_per_s",
    "pretrain_shifted_window_samples_per_s", "model_flops_per_sample", "gemm_flops_per_s", "mfu",
    "data_audio_clips_per_s", "data_cache_clips_per_s", "data_wait_fraction", "peak_memory_mb", "peak_rss_mb",
    "files_to_features_speedup", "files_to_features_clips_per_s", "files_to_features_reference_clips_per_s",
    "files_to_features_max_abs_diff", "resample_max_abs_diff", "bf16_gemm_speedup",
    "events_extract_s", "events_grid_s", "events_grid_over_extraction", "events_cache_read_s", "events_cache_speedup",
]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    pytest.importorskip("timm")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # One thread: the figures are not checked here, and on a busy CI machine two-thread
    # OpenMP regions can make the run many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = bench.run_bench(preset="tiny", device="cpu", quick=True, out=out)
    finally:
        torch.set_num_threads(threads)
    return results, out


def test_quick_bench_figures(quick_results):
    results, out = quick_results
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    for key in REQUIRED:
        assert key in saved, key
        value = saved[key]
        assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
        if key in ("frontend_max_abs_diff", "files_to_features_max_abs_diff"):
            assert 0 <= value <= 1e-3
        elif key == "resample_max_abs_diff":  # torchaudio.functional.resample's numbers
            assert 0 <= value <= 1e-5
        elif key == "data_wait_fraction":
            assert 0 <= value < 1
        else:
            assert value > 0, (key, value)
    assert 0 < saved["mfu"] < 1
    assert saved["device"] == "cpu"
    # bf16: the JSON says whether this CPU has the instructions, and times bf16 only where it runs
    from ssl_bench.train.loop import cpu_bf16_supported

    assert saved["bf16_cpu_supported"] is cpu_bf16_supported()
    assert saved["bf16_autocast_engaged"] is saved["bf16_cpu_supported"]
    if saved["bf16_autocast_engaged"]:
        assert saved["bf16_pretrain_step_speedup"] > 0 and saved["bf16_embedding_cosine_min"] >= 0.999
        # tiny is narrower than ViT-S: the step is timed at ViT-S too, where matrix products dominate
        assert saved["bf16_pretrain_step_speedup_small"] > 0 and saved["bf16_embedding_cosine_min_small"] >= 0.999
    else:
        assert "bf16_pretrain_step_speedup" not in saved
    # the probe part, when the torch probe is there: both fits agree on the same classes
    if saved["probe_measured"]:
        assert saved["probe_speedup"] > 0 and saved["probe_sklearn_s"] > 0 and saved["probe_torch_s"] > 0
        assert saved["probe_sklearn_1thread_s"] > 0 and saved["probe_speedup_vs_sklearn_1thread"] > 0
        assert saved["probe_map_diff_points"] <= 1.0
    # events: the whole grid (both heads, every post-processing setting) ran on one extraction
    assert saved["events_heads"] == 2 and saved["events_post_processing_settings"] == 18
    assert saved["events_frames"] == saved["events_clips"] * 50  # 2 s clips, a frame every 40 ms
    for key in ("torch_version", "torchaudio_version", "timm_version", "device_name"):
        assert isinstance(saved[key], str) and saved[key]


def test_flops_formula_matches_a_hand_count():
    # one encoder block over 3 tokens (dim 4), one global decoder block over 5 tokens (dim 8)
    config = {"encoder": {"dim": 4, "depth": 1, "mlp_ratio": 4.0},
              "decoder": {"name": "global", "dim": 8, "depth": 1, "mlp_ratio": 4.0}}
    grid, kept, patch = (2, 2), 2, 16
    enc_block = 2 * 3 * (4 * 16 + 8 * 16) + 4 * 3 * 3 * 4
    dec_block = 2 * 5 * (4 * 64 + 8 * 64) + 4 * 5 * 5 * 8
    forward = 2 * 4 * 16 * 4 + enc_block + 2 * 3 * 4 * 8 + dec_block + 2 * 4 * 8 * 16
    assert bench.pretrain_flops_per_sample(config, grid, kept, patch) == 3 * forward


def test_missing_timm_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(bench.BenchError, match="pip install timm"):
        bench.run_bench(preset="tiny", device="cpu", quick=True)


def test_unavailable_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(bench.BenchError, match="CUDA is not available"):
        bench.resolve_device("cuda")
    assert bench.resolve_device("auto").type == "cpu"
