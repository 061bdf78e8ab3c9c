"""bf16 autocast on CPUs with bf16 matrix instructions: when it engages, and that its numbers hold.

On a CPU without them (AVX2 only, like the development machine) autocast stays off; the number
tests force it on, where bf16 is emulated: slow, but the same rounding as native AMX/AVX512-BF16.
"""

from __future__ import annotations

import pytest
import torch

from ssl_bench.train import loop
from trainfixtures import toy_config, toy_model, toy_split


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cpuinfo_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def test_cpu_bf16_support_follows_the_cpu_flags():
    flags = _cpuinfo_flags()
    if flags is not None and "avx2" in flags:  # x86 Linux: the kernel's view of the same instructions
        assert loop.cpu_bf16_supported() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_autocast_engages_on_cpu_only_with_bf16_instructions_and_amp(monkeypatch):
    cpu = torch.device("cpu")
    for supported in (True, False):
        monkeypatch.setattr(loop, "cpu_bf16_supported", lambda supported=supported: supported)
        with loop.autocast(cpu, True):
            assert torch.is_autocast_enabled("cpu") == supported
            if supported:
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16
                assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
        with loop.autocast(cpu, False):
            assert not torch.is_autocast_enabled("cpu")


def test_bf16_embeddings_stay_within_cosine_0999_of_float32(monkeypatch, device):
    """On the CPU bf16 is forced on (emulated where the instructions are missing); on CUDA it is native."""
    from ssl_bench.model import create_model
    from ssl_bench.train import predict

    torch.manual_seed(0)
    model = create_model("audiomae", preset="tiny", **{"frontend.num_frames": 128}).eval().to(device)
    g = torch.Generator().manual_seed(1)
    specs = torch.randn(4, 128, model.build.num_bins, generator=g)  # normalised log-mel scale
    dataset = [{"spec": s} for s in specs]
    monkeypatch.setattr(loop, "cpu_bf16_supported", lambda: True)

    def embed(batch):
        return model.embed(batch["spec"])

    fp32 = predict(embed, dataset, batch_size=2, device=device, amp=False)
    bf16 = predict(embed, dataset, batch_size=2, device=device, amp=True)
    assert fp32.dtype == bf16.dtype == torch.float32 and fp32.shape == bf16.shape
    assert not torch.equal(fp32, bf16)  # bf16 did run
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=1)
    assert cosine.min() >= 0.999, cosine


def test_tiny_pretraining_in_bf16_reaches_the_float32_loss(tmp_path, monkeypatch):
    """Six epochs of the toy MAE: bf16 lands where float32 does, far closer than two seeds do."""
    from ssl_bench.encoders import pretrain

    split = toy_split()

    def losses(seed: int, amp: bool) -> list[float]:
        cfg = toy_config(pretrain={"epochs": 6})
        cfg["seed"], cfg["amp"] = seed, amp
        res = pretrain(toy_model(seed), split.dataset("train", with_targets=False), cfg, device="cpu",
                       checkpoint_dir=tmp_path / f"{seed}-{amp}", progress=False)
        return [float(h["loss"]) for h in res.history]

    monkeypatch.setattr(loop, "cpu_bf16_supported", lambda: True)
    float32 = [losses(seed, amp=False) for seed in (0, 1)]
    bf16 = losses(0, amp=True)
    assert bf16 != float32[0]  # bf16 did run
    noise = abs(float32[0][-1] - float32[1][-1])  # how far two float32 seeds land apart
    for b, f in zip(bf16, float32[0]):  # every epoch, not only the last
        assert abs(b - f) <= max(0.25 * noise, 0.005 * f), (bf16, float32)


def test_cpu_attention_runs_in_float32_under_autocast():
    import torch.nn.functional as F

    from ssl_bench.nn import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g).bfloat16().requires_grad_() for _ in range(3))
    bias = torch.randn(1, 3, 7, 7, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, attn_mask=bias, scale=0.5)
    assert out.dtype == torch.bfloat16
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.float(), scale=0.5)
    assert torch.equal(out, exact.bfloat16())  # float32 arithmetic, rounded once at the end
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
    x = torch.randn(2, 3, 7, 8, generator=g)
    torch.testing.assert_close(attention(x, x, x), F.scaled_dot_product_attention(x, x, x))
