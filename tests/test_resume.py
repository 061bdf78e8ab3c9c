"""Faults: SIGKILL and SIGTERM during pretraining, resuming, and concurrent runs into one root.

Child processes are forked from the test process (they inherit its imports, and like DataLoader
workers run on one thread), so each costs milliseconds to start rather than seconds; on a CUDA
run (where a forked child cannot use CUDA) they are spawned.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_bench import results
from ssl_bench.encoders import pretrain, pretrain_loss
from ssl_bench.registry import set_registry
from ssl_bench.runner import run_experiment
from ssl_bench.train import CHECKPOINT_NAME, STOP, TrainingInterrupted, load_train_checkpoint
from trainfixtures import TinyTones, mp_context, tiny_config, tiny_registry, toy_config, toy_model, toy_split

EPOCHS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Slow(torch.utils.data.Dataset):
    """Slows every example down so that a signal lands inside an epoch."""

    def __init__(self, base, seconds: float):
        self.base, self.seconds = base, seconds

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        time.sleep(self.seconds)
        return self.base[i]


def _config():
    cfg = toy_config(pretrain={"epochs": EPOCHS, "batch_size": 8, "warmup_epochs": 1})
    cfg["deterministic"] = True
    return cfg


def _pretrain(ckpt_dir=None, slow: float = 0.0, loss_fn=None):
    """The pretraining every test here runs: returns (result, final weights)."""
    import ssl_bench.encoders as pre

    split = toy_split(n=96)  # 64 training examples: 8 steps per epoch
    data = split.dataset("train", with_targets=False)
    model = toy_model()
    if loss_fn is not None:
        original, pre.pretrain_loss = pre.pretrain_loss, loss_fn
    try:
        res = pretrain(model, _Slow(data, slow) if slow else data, _config(), device="cpu", checkpoint_dir=ckpt_dir,
                       progress=False)
    finally:
        if loss_fn is not None:
            pre.pretrain_loss = original
    return res, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
    return _pretrain()


def _assert_same(run, ref):
    (res, weights), (ref_res, ref_weights) = run, ref
    assert res.step_losses == ref_res.step_losses  # bit for bit
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref_res.history]
    for k, v in ref_weights.items():
        assert torch.equal(weights[k], v), k


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(tmp_path, reference):
    # the signal "arrives" while step 5 of epoch 2 runs (global step 12 of 8-step epochs)
    def loss_with_signal(model, batch, step):
        if step.global_step == 12:
            STOP.signum = signal.SIGTERM
        return pretrain_loss(model, batch, step)

    with pytest.raises(TrainingInterrupted) as info:
        _pretrain(tmp_path, loss_fn=loss_with_signal)
    assert info.value.exit_code == 143 and info.value.checkpoint == tmp_path / CHECKPOINT_NAME
    saved = load_train_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert (saved["epoch"], saved["step"], saved["finished"]) == (1, 5, False)  # after the step that was running
    resumed = _pretrain(tmp_path)
    assert resumed[0].resumed_from == (1, 5)
    _assert_same(resumed, reference)


def _child(ckpt_dir: str, slow: float) -> None:
    torch.set_num_threads(1)
    try:
        _pretrain(ckpt_dir, slow=slow)
    except TrainingInterrupted as exc:
        os._exit(exc.exit_code)
    os._exit(0)


def _start_and_signal(ckpt_dir: Path, sig: int) -> tuple[int, dict]:
    """Run pretraining in a child; once its first epoch checkpoint exists, wait into the next
    epoch and send ``sig``.  Returns the exit code and the checkpoint left behind."""
    proc = mp_context().Process(target=_child, args=(str(ckpt_dir), 0.004))
    proc.start()
    ckpt = ckpt_dir / CHECKPOINT_NAME
    deadline = time.time() + 120
    while not ckpt.exists() and proc.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    assert ckpt.exists(), "the child wrote no checkpoint"
    time.sleep(0.1)  # into the second epoch (an epoch takes >= 64 x 4 ms)
    os.kill(proc.pid, sig)
    proc.join(60)
    return proc.exitcode, load_train_checkpoint(ckpt)


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    code, saved = _start_and_signal(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not saved["finished"] and saved["step"] == 0 and 1 <= saved["epoch"] < EPOCHS  # last complete one
    resumed = _pretrain(tmp_path)
    assert resumed[0].resumed_from == (saved["epoch"], 0)
    _assert_same(resumed, reference)


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path, reference):
    code, saved = _start_and_signal(tmp_path, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert not saved["finished"] and saved["epoch"] >= 1
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written checkpoint
    _assert_same(_pretrain(tmp_path), reference)


# --------------------------------------------------------------------------- whole runs
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    reg = tiny_registry()
    old = set_registry(reg)
    data = tmp_path_factory.mktemp("tinytones")
    TinyTones(data).prepare()
    yield {"registry": reg, "data": data}
    set_registry(old)


def _rows(run_dir):
    return json.loads((Path(run_dir) / "result.json").read_text())["rows"]


def test_an_interrupted_run_continues_where_it_stopped(tiny, tmp_path, monkeypatch):
    """SIGTERM during fold 2's pretraining; the same command again reuses fold 1's rows, resumes
    fold 2's pretraining from its mid-epoch checkpoint, and ends with an uninterrupted run's rows."""
    cfg = tiny_config(tiny["registry"], **{"pretrain.epochs": 3, "pretrain.batch_size": 4, "deterministic": True})
    kw = dict(data_dir=tiny["data"], protocols=("pretrain", "linear"), progress=False)
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache-ref"))
    reference = _rows(run_experiment(cfg, results_root=tmp_path / "ref", **kw))

    import ssl_bench.encoders as pre

    original = pre.pretrain_loss
    calls = {"n": 0}

    def interrupt_fold2(model, batch, step):
        calls["n"] += 1
        # fold 1: two dry runs (memory and unused-parameter probe) + 3 epochs x 4 steps (14 clips,
        # batch 4); fold 2: its dry runs, then the signal during its 6th step (epoch 2, step 2)
        if calls["n"] == 14 + 2 + 6:
            STOP.signum = signal.SIGTERM
        return original(model, batch, step)

    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pre, "pretrain_loss", interrupt_fold2)
    root = tmp_path / "results"
    with pytest.raises(TrainingInterrupted):
        run_experiment(cfg, results_root=root, **kw)
    assert [p.name for p in root.iterdir()] == [".cache"]  # no run directory: nothing half-written
    partial = results.load(root)  # fold 1's rows so far, shown as interrupted
    assert set(partial["split"]) == {"fold1"} and set(partial["status"]) == {"interrupted"}
    rerun = {"n": 0}

    def count(model, batch, step):
        rerun["n"] += 1
        return original(model, batch, step)

    monkeypatch.setattr(pre, "pretrain_loss", count)
    run = run_experiment(cfg, results_root=root, **kw)
    log = (run / "log.txt").read_text()
    # fold 1 finished before the signal: its part (rows, log lines) is reused, its pretraining
    # (14 loss calls) does not run again; fold 2 continues from its checkpoint
    assert 0 < rerun["n"] < 14 and log.count("[fold1] done in") == 1
    assert "[fold2] pretrain: resumed at epoch 2 of 3, step 2" in log

    def key(r):
        return (r["split"], r["protocol"], r["init"], r["metric"])

    got = {key(r): r["value"] for r in _rows(run)}
    assert got == {key(r): r["value"] for r in reference}  # incl. fold 2's final pretraining loss, bit for bit
    assert not (root / ".cache" / "runs").exists() or not any((root / ".cache" / "runs").iterdir())


def _concurrent_run(root: str, data: str, seed: int) -> None:
    torch.set_num_threads(1)
    set_registry(tiny_registry())  # a spawned child does not inherit the test's registry
    try:
        cfg = tiny_config(None, seed=seed)
        run_experiment(cfg, data_dir=data, results_root=root, protocols=("linear",), splits=["fold1"],
                       progress=False)
    except BaseException:  # noqa: BLE001 - the exit code tells the parent
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def test_eight_concurrent_runs_lose_no_row(tiny, tmp_path):
    root = tmp_path / "results"
    procs = [mp_context().Process(target=_concurrent_run, args=(str(root), str(tiny["data"]), seed)) for seed in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * 8
    df = results.load(root)
    assert df["run_id"].nunique() == 8
    assert sorted(df["seed"].tolist()) == list(range(8))  # one linear accuracy row per run
    assert np.isfinite(df["value"]).all()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
