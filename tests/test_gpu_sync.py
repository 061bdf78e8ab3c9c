"""The GPU fast path: a training step never makes the host wait for the GPU.

``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising CUDA call (``.item()``,
a device-to-host copy, ``nonzero``, a blocking host-to-device copy...) into an error.  These
tests need ``SSL_BENCH_TEST_DEVICE=cuda`` (``scripts/gpu_check.sh`` runs them); on the CPU there
is nothing to synchronise with.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssl_bench.augment import mixup, spec_augment
from ssl_bench.model import create_model

FRAMES = 256


def _require_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip("checks CUDA host synchronisation: run with SSL_BENCH_TEST_DEVICE=cuda")


def _model(device, decoder):
    torch.manual_seed(0)
    return create_model("audiomae", preset="tiny", decoder=decoder,
                        **{"frontend.num_frames": FRAMES, "frontend.mean": -4.27, "frontend.std": 4.57}).to(device)


def _steps_without_sync(step) -> None:
    """One warm-up ``step()`` (lazy initialisation: cuBLAS handles, optimizer state may
    synchronise once), then two under the sync debug mode; the loss must be finite."""
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            loss = step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("decoder", ["global", "shifted-window"])
def test_pretraining_step_does_not_synchronise(device, decoder):
    _require_cuda(device)
    model = _model(device, decoder)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    spec = torch.randn(4, FRAMES, 128, device=device)
    gen = torch.Generator().manual_seed(0)
    grid = model.grid(spec)

    def step():
        mask = model.masker(spec.shape[0], grid, model.encoder.layout, "cpu", gen)  # as pretrain_loss draws it
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.forward_pretrain(spec, mask).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    _steps_without_sync(step)


def test_finetuning_step_does_not_synchronise(device):
    _require_cuda(device)
    model = _model(device, "global")
    model.set_head(10)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    spec = torch.randn(8, FRAMES, 128, device=device)
    targets = F.one_hot(torch.arange(8, device=device) % 10, 10).float()

    def step():
        x, y = mixup(spec_augment(spec, freq_mask=16, time_mask=32), targets, prob=0.5, alpha=10.0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model.classify(x, drop_tokens=True).float()
        loss = torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    _steps_without_sync(step)
