"""A step's memory is measured before training and the micro-batch cut to fit (seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ssl_bench.train import FitHooks, TrainConfig, TrainConfigError, fit
from ssl_bench.train import loop as train_loop
from ssl_bench.train.memory import StepMemory, fit_accum_steps, saved_bytes, step_memory
from trainfixtures import Regression, mse

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_saved_bytes_are_what_backward_keeps():
    layer = nn.Linear(64, 128)

    def run(n, input_grad=False):
        x = torch.randn(n, 64, requires_grad=input_grad)
        return saved_bytes(lambda: torch.tanh(layer(x)).sum())[1]

    # addmm keeps its input (for the weight's gradient), tanh its output (float32) ...
    assert run(3) == 3 * 64 * 4 + 3 * 128 * 4
    # ... and the weight too when the input needs a gradient: once, whatever the batch
    assert run(3, input_grad=True) == 3 * 64 * 4 + 128 * 64 * 4 + 3 * 128 * 4
    memory = step_memory(2, 6, run(2, True), run(6, True), trainable=10)
    assert memory.per_example == (64 + 128) * 4
    assert memory.fixed == 128 * 64 * 4 + 12 * 10  # plus gradients and AdamW moments of 10 parameters
    with torch.no_grad():
        assert saved_bytes(lambda: layer(torch.randn(5, 64)))[1] == 0


def test_accum_steps_rise_to_the_first_micro_batch_that_fits():
    assert fit_accum_steps(320, 1, 1, largest_micro=44) == 8  # 320 / 8 = 40
    assert fit_accum_steps(512, 1, 1, largest_micro=10_000) == 1
    assert fit_accum_steps(12, 1, 1, largest_micro=5) == 3  # 6 does not fit, 4 does
    assert fit_accum_steps(12, 2, 1, largest_micro=100) == 2  # a chosen accum_steps is never lowered
    assert fit_accum_steps(16, 1, 2, largest_micro=3) == 4  # 16 / (4 x 2 ranks) = 2
    assert fit_accum_steps(16, 1, 2, largest_micro=0) == 0
    memory = StepMemory(per_example=100.0, fixed=1000.0)
    assert memory.largest_micro(1000.0) == 0 and memory.largest_micro(1000 + 1.6 * 100 * 7.5) == 7


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 1))


def _memory(cfg):
    _, memory = train_loop._probe_step(_model(), Regression(), mse, cfg.batch_size, None, torch.device("cpu"), cfg)
    return memory


def test_a_batch_that_does_not_fit_is_accumulated_with_the_same_result():
    cfg = TrainConfig(epochs=2, batch_size=8, blr=0.05, seed=1, amp=False, memory_gb=0)
    memory = _memory(cfg)
    # the input, tanh's output (the second product's input too: counted once), the squared residual
    assert memory.per_example == (5 + 64 + 1) * 4
    lines = []
    limit = TrainConfig(**{**cfg.__dict__, "memory_gb": memory.need(2) / 2**30})  # room for 2 examples a step
    tight_model, explicit_model = _model(), _model()
    tight = fit(tight_model, Regression(), mse, limit, progress=False, section="pretrain",
                hooks=FitHooks(log=lines.append))
    explicit = fit(explicit_model, Regression(), mse, TrainConfig(**{**cfg.__dict__, "accum_steps": 4}), progress=False)
    assert tight.accum_steps == 4 and explicit.accum_steps == 4
    assert tight.step_losses == explicit.step_losses  # bit for bit: the raised accum_steps is the explicit one
    for a, b in zip(tight_model.parameters(), explicit_model.parameters()):
        assert torch.equal(a, b)
    assert any("pretrain.accum_steps=4" in line and "micro-batches of 2" in line for line in lines), lines
    roomy = fit(_model(), Regression(), mse, cfg, progress=False)  # memory_gb=0: no limit
    assert roomy.accum_steps == 1
    np.testing.assert_allclose(roomy.step_losses, tight.step_losses, rtol=1e-5)


def test_the_limit_defaults_to_the_memory_free(monkeypatch):
    cfg = TrainConfig(epochs=1, batch_size=8, blr=0.05, amp=False)
    memory = _memory(cfg)
    monkeypatch.setattr(train_loop, "available_bytes", lambda device: memory.need(4) / train_loop.FREE_SHARE)
    assert fit(_model(), Regression(), mse, cfg, progress=False).accum_steps == 2
    monkeypatch.setattr(train_loop, "available_bytes", lambda device: None)  # unknown: as configured
    assert fit(_model(), Regression(), mse, cfg, progress=False).accum_steps == 1


def test_a_step_that_cannot_fit_one_example_is_a_clear_error():
    cfg = TrainConfig(epochs=1, batch_size=8, blr=0.05, amp=False, memory_gb=1e-9)
    with pytest.raises(TrainConfigError, match=r"one training example needs about 5.\d KiB .*\(memory_gb=1e-09\)"):
        fit(_model(), Regression(), mse, cfg, progress=False)
