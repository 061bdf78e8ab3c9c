"""torchrun/DDP semantics with 2 gloo processes on the CPU (tiny model, a few steps)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ssl_bench import distributed as D
from ssl_bench.protocols import finetune as ft
from ssl_bench.encoders import pretrain
from ssl_bench.protocols.linear import linear_probe
from ssl_bench.train import predict
from trainfixtures import mp_context, toy_config, toy_model, toy_split

PRETRAIN = {"epochs": 2, "batch_size": 8, "warmup_epochs": 1}
FINETUNE = {"epochs": 2, "batch_size": 8, "layer_decay": 0.75}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Index(torch.utils.data.Dataset):
    def __len__(self):
        return 13

    def __getitem__(self, i):
        return {"i": torch.tensor(float(i))}


def _experiment(accum_steps: int = 1) -> dict:
    """Pretrain, fine-tune and probe the toy model; what rank 0 (or the single process) saw."""
    split = toy_split()
    cfg = toy_config(pretrain={**PRETRAIN, "accum_steps": accum_steps}, finetune=FINETUNE)
    # float32 throughout: world sizes are compared to 1e-6, and bf16 autocast (the default on CPUs
    # with AVX512-BF16/AMX) rounds the two reductions differently
    cfg["amp"] = False
    model = toy_model()
    pre = pretrain(model, split.dataset("train", with_targets=False), cfg, device="cpu", progress=False)
    tuned = ft.finetune(toy_model(), split, cfg, device="cpu", progress=False)
    probe = linear_probe(model, split, cfg, device="cpu", progress=False)
    order = predict(lambda b: b["i"][:, None], _Index(), batch_size=4, device="cpu")
    return {"pretrain": pre.step_losses, "finetune": tuned.fit.step_losses, "valid": tuned.valid, "test": tuned.test,
            "probe": None if probe is None else probe.test, "order": order[:, 0].tolist(),
            "params": {k: v.clone() for k, v in model.state_dict().items()}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = D.init("cpu")
    assert info.world_size == world and info.backend == "gloo"
    try:
        result = _experiment()
        result["rank"] = rank
        torch.save(result, f"{out}.{rank}")
    finally:
        D.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _experiment()
        accumulated = _experiment(accum_steps=2)
    finally:
        torch.set_num_threads(n)
    out = str(tmp_path_factory.mktemp("ddp") / "result")
    # fork: the workers inherit the imported modules (as DataLoader workers do, they run on one
    # thread), which saves each of them the seconds of importing torch and the harness again;
    # spawn where CUDA is initialised (a forked child cannot use it)
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True,
                       start_method=mp_context().get_start_method())
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    return {"single": single, "accum": accumulated, "ranks": ranks}


def test_two_processes_give_the_single_process_loss_curve(runs):
    single, ranks = runs["single"], runs["ranks"]
    assert len(single["pretrain"]) == len(ranks[0]["pretrain"]) == 2 * (32 // 8)
    np.testing.assert_allclose(ranks[0]["pretrain"], single["pretrain"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ranks[1]["pretrain"], ranks[0]["pretrain"], atol=0, rtol=0)  # all-reduced
    for k, v in single["params"].items():
        torch.testing.assert_close(ranks[0]["params"][k], v, atol=1e-4, rtol=1e-4)
    # and so does gradient accumulation over the same global batch
    np.testing.assert_allclose(runs["accum"]["pretrain"], single["pretrain"], atol=1e-4, rtol=0)


def test_fine_tuning_and_probing_agree_across_world_sizes(runs):
    single, ranks = runs["single"], runs["ranks"]
    np.testing.assert_allclose(ranks[0]["finetune"], single["finetune"], atol=1e-4, rtol=0)
    assert ranks[0]["valid"] == pytest.approx(single["valid"])
    assert ranks[0]["test"] == pytest.approx(single["test"]) and ranks[1]["test"] == ranks[0]["test"]
    assert ranks[0]["probe"] == pytest.approx(single["probe"]) and ranks[1]["probe"] is None  # rank 0 fits


def test_evaluation_sees_every_example_exactly_once(runs):
    for r in runs["ranks"]:
        assert r["order"] == [float(i) for i in range(13)]  # 13 examples over 2 ranks: no padding duplicate
    assert list(D.shard(13, D.DistInfo(rank=1, world_size=2))) == list(range(1, 13, 2))


def test_single_process_defaults():
    info = D.current()
    assert info.world_size == 1 and info.is_main and not info.enabled
    assert D.any_rank(True) and not D.any_rank(False)
    assert D.all_gather_object(3) == [3]
    t = torch.arange(5.0)
    assert torch.equal(D.gather_rows(t, 5), t)
    assert D.resolve_device("cpu") == torch.device("cpu")
