"""run_experiment end to end on a tiny task with the real AudioMAE components (tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ssl_bench import results
from ssl_bench.files import cache_root
from ssl_bench.registry import set_registry
from ssl_bench.config import MODEL_SLOTS
from ssl_bench.encoders import pretrain_hash
from ssl_bench.runner import run_experiment
from trainfixtures import CLASSES, TinyTones, tiny_config, tiny_registry

@pytest.fixture(scope="module")
def registry():
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread avoids OpenMP spin on a busy machine
    reg = tiny_registry()
    old = set_registry(reg)
    yield reg
    set_registry(old)
    torch.set_num_threads(torch_threads)


def config(registry, **extra):
    return tiny_config(registry, **extra)


@pytest.fixture(scope="module")
def first_run(registry, tmp_path_factory):
    """One full run; the pretraining datasets it built are recorded."""
    root = tmp_path_factory.mktemp("results")
    data = tmp_path_factory.mktemp("tinytones")
    seen = []
    import ssl_bench.encoders as pre

    original = pre.pretrain

    def spy(model, dataset, cfg, **kw):
        seen.append({dataset.features.clips[int(i)].key for i in dataset.indices})
        return original(model, dataset, cfg, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(pre, "pretrain", spy)
    try:
        run_dir = run_experiment(config(registry), data_dir=data, results_root=root, progress=False)
    finally:
        mp.undo()
    return {"root": root, "data": data, "dir": run_dir, "pretrain_indices": seen}


def _rows(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "result.json").read_text())["rows"]


def test_rows_for_every_protocol_and_split(first_run):
    rows = _rows(first_run["dir"])
    got = {(r["split"], r["protocol"], r["init"], r["metric"]) for r in rows}
    for split in ("fold1", "fold2"):
        assert (split, "pretrain", "pretraining from random", "loss") in got
        assert (split, "finetune", "pretrained", "accuracy") in got
        assert (split, "linear", "pretrained", "accuracy") in got
        assert (split, "linear", "random", "accuracy") in got  # the baseline row
    for r in rows:
        for col in ("n_train", "n_valid", "n_test", "n_skipped", "split_protocol", "parameters", "flops_per_sample",
                    "samples_per_s", "wall_s", "gpu_hours", "peak_memory_mb", "world_size", "device"):
            assert col in r, col
        assert r["n_test"] == 18 and r["n_train"] + r["n_valid"] == 18 and r["n_skipped"] == 0
        # device "auto": the GPU's name where one is present (scripts/gpu_check.sh), else "cpu"
        expected = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        assert r["world_size"] == 1 and r["device"] == expected
        if r["protocol"] != "pretrain":
            assert 0.0 <= r["value"] <= 1.0
    ft_rows = [r for r in rows if r["protocol"] == "finetune"]
    assert all(r["selection"] == "valid" and 1 <= r["best_epoch"] <= 2 for r in ft_rows)
    assert all(r["flops_per_sample"] > 0 for r in rows)
    # the resolved config holds the model length the task's clip length implies
    saved = yaml.safe_load((first_run["dir"] / "config.yaml").read_text())
    assert saved["frontend"]["num_frames"] == 64
    # per-epoch metrics: 2 pretrain epochs per split; 2 finetune epochs per split and setting of
    # the validation grid, then one record per split of the setting chosen; the probe records
    records = [json.loads(line) for line in (first_run["dir"] / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["protocol"] == "pretrain" for r in records) == 4
    ft_epochs = [r for r in records if r["protocol"] == "finetune" and "epoch" in r]
    trials = {(r["split"], r["lr_peak"], r["aug"]) for r in ft_epochs}
    assert len(ft_epochs) == 2 * len(trials) and {s for s, _, _ in trials} == {"fold1", "fold2"}
    assert all("valid_accuracy" in r for r in ft_epochs)
    chosen = [r for r in records if r["protocol"] == "finetune" and "chosen" in r]
    assert sorted(r["split"] for r in chosen) == ["fold1", "fold2"]
    # results.load sees one run with every row
    df = results.load(first_run["root"])
    assert len(df) == len(rows) and set(df["init"]) == {"random", "pretrained", "pretraining from random"}


def test_every_evaluation_writes_its_per_clip_predictions_in_hears_layout(first_run):
    """Each evaluated split, protocol and init leaves its test predictions ({file: {label: score}})
    and reference ({file: [label]}) in the run directory, and they give the row's number back."""
    from ssl_bench import predictions
    from ssl_bench.metrics import evaluate

    rows = [r for r in _rows(first_run["dir"]) if r["protocol"] != "pretrain"]
    assert rows and all(r.get("predictions") for r in rows)
    assert len({r["predictions"] for r in rows}) == len({(r["split"], r["protocol"], r["init"]) for r in rows})
    for r in rows:
        path = first_run["dir"] / r["predictions"]
        predicted, reference = predictions.read(path)
        assert len(predicted) == r["n_test"] and set(predicted) == set(reference)
        assert all(list(scores) == list(CLASSES) for scores in predicted.values())
        files, labels, scores, targets = predictions.scores_and_targets(path)
        assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)  # class probabilities of one-label clips
        again = evaluate([r["metric"]], scores, targets.argmax(axis=1))[r["metric"]]
        assert again == pytest.approx(r["value"], abs=1e-9)


def test_pretraining_sees_only_training_audio(first_run):
    splits = TinyTones(first_run["data"]).splits()
    seen = first_run["pretrain_indices"]
    assert len(seen) == 2
    for split, used_keys in zip(splits, seen):
        assert used_keys == {c.key for c in split.train}  # all training audio (valid is carved from it) ...
        assert not used_keys & {c.key for c in split.test}  # ... and never a test clip
    rows = _rows(first_run["dir"])
    hashes = {r["split"]: r["pretrain_hash"] for r in rows if r["protocol"] == "pretrain"}
    assert hashes["fold1"] != hashes["fold2"]  # different training audio, different encoder


def test_pretraining_is_reused_when_the_hash_matches(first_run, registry):
    run2 = run_experiment(config(registry), data_dir=first_run["data"], results_root=first_run["root"],
                          protocols=("pretrain", "linear"), progress=False)
    rows1, rows2 = _rows(first_run["dir"]), _rows(run2)
    pre2 = [r for r in rows2 if r["protocol"] == "pretrain"]
    assert len(pre2) == 2 and all(r["reused"] for r in pre2)
    def lin(rows):
        return {(r["split"], r["init"]): r["value"] for r in rows if r["protocol"] == "linear"}

    assert lin(rows2) == lin(rows1)  # same encoder weights, same probe
    assert all(r["embeddings_cached"] for r in rows2 if r["protocol"] == "linear")
    # another masking ratio is another pretraining
    cfg = config(registry, **{"masker.ratio": 0.5})
    cfg_default = config(registry)
    clips = TinyTones(first_run["data"]).splits()[0].train
    assert pretrain_hash(cfg, clips, MODEL_SLOTS) != pretrain_hash(cfg_default, clips, MODEL_SLOTS)
    # bookkeeping settings do not change the hash
    for key, value in (("pretrain.checkpoint_every", 5), ("pretrain.checkpoint_min_s", 0)):
        assert pretrain_hash(config(registry, **{key: value}), clips, MODEL_SLOTS) == \
            pretrain_hash(cfg_default, clips, MODEL_SLOTS)


def test_a_checkpoint_replaces_pretraining(first_run, registry, tmp_path):
    cache = Path(cache_root(first_run["root"])) / "pretrain"
    ckpt = sorted(cache.glob("*/pretrained.pt"))[0]
    run = run_experiment(config(registry), data_dir=first_run["data"], results_root=tmp_path, protocols=("linear",),
                         checkpoint=ckpt, splits=["fold2"], progress=False)
    rows = _rows(run)
    assert {(r["split"], r["init"]) for r in rows} == {("fold2", f"pretrained-{ckpt.parent.name[:6]}"),
                                                      ("fold2", "random")}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["checkpoint"] == str(ckpt)


def test_an_unlabeled_corpus_replaces_the_training_audio(first_run, registry, tmp_path):
    from taskfixtures import tone, write_wav

    corpus = tmp_path / "corpus"
    for k in range(10):
        write_wav(corpus / f"sub{k % 2}" / f"c{k}.wav", tone(k % 3, 0.5, 16000, seed=100 + k), 16000)
    (corpus / "notes.txt").write_text("not audio")
    run = run_experiment(config(registry, **{"pretrain.corpus": str(corpus), "pretrain.batch_size": 4,
                                             "frontend.mean": -3.0, "frontend.std": 3.0}),
                         data_dir=first_run["data"], results_root=tmp_path / "res", protocols=("pretrain",),
                         progress=False)
    pre = [r for r in _rows(run) if r["protocol"] == "pretrain"]
    assert [r["n_pretrain"] for r in pre] == [10, 10]
    assert pre[0]["pretrain_hash"] == pre[1]["pretrain_hash"]  # one corpus, one encoder for every fold
    assert [r["reused"] for r in pre] == [False, True]


def test_nothing_is_left_in_results_after_an_error(first_run, registry, tmp_path, monkeypatch):
    def boom(self, *a, **kw):
        raise RuntimeError("injected failure")

    from ssl_bench.protocols.linear import LinearProtocol

    monkeypatch.setattr(LinearProtocol, "run", boom)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_experiment(config(registry), data_dir=first_run["data"], results_root=tmp_path,
                       protocols=("linear",), progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.name != ".cache"] == []
    assert results.load(tmp_path).empty


def test_bad_split_and_protocol_names(first_run, registry, tmp_path):
    with pytest.raises(ValueError, match="no split fold9"):
        run_experiment(config(registry), data_dir=first_run["data"], results_root=tmp_path, splits=["fold9"],
                       progress=False)
    with pytest.raises(ValueError, match="unknown protocol"):
        run_experiment(config(registry), data_dir=first_run["data"], results_root=tmp_path, protocols=("knnn",),
                       progress=False)
    assert not np.any([p.name for p in tmp_path.iterdir() if p.name != ".cache"])
