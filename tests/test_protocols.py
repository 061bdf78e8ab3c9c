"""The evaluation protocols beyond pretrain/finetune/linear: the joint torch linear probe
(agreement with scikit-learn), kNN, the MLP probe, the per-layer probes with the learned
weighted sum, and a single-file protocol plugin run from ``--plugins-dir``.

One tiny end-to-end run (the ``tiny`` AudioMAE on ``synthetic``, fold 1, two pretraining epochs
on the fold's training audio) serves the end-to-end tests: ``pretrain,layers,knn,mlp`` first,
then the README's centroid plugin in a second command that reuses its cached pretraining.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_bench import results
from ssl_bench.cli import main
from ssl_bench.config import ConfigError
from ssl_bench.metrics import accuracy
from ssl_bench.protocols.knn import fit_knn, neighbours, vote_scores
from ssl_bench.protocols.layers import layer_names
from ssl_bench.protocols.linear import fit_linear
from ssl_bench.protocols.mlp import MLPConfig, fit_mlp
from ssl_bench.protocols.torch_linear import fit_layer_mixture, fit_linear_torch

# The README's single-file protocol plugin, verbatim.
CENTROID_PLUGIN = textwrap.dedent('''
    """A nearest-class-centroid probe: ssl-bench --plugins-dir DIR run ... --protocols pretrain,centroid"""
    from dataclasses import dataclass

    import numpy as np

    from ssl_bench import hookimpl
    from ssl_bench.protocols.base import Protocol, ProtocolResult


    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


    class Centroid(Protocol):
        help = "nearest class centroid (cosine) on frozen embeddings"
        frozen = True  # the runner also scores the random-init encoder: the baseline row

        @dataclass
        class Config:
            enabled: bool = True
            batch_size: int = 64  # clips per forward pass when extracting embeddings

        def run(self, ctx):
            X, y = ctx.embeddings(), ctx.targets()  # cached frozen embeddings, per part
            mean = X["train"].mean(axis=0)  # centre on the training clips, then cosine
            train, test = unit(X["train"] - mean), unit(X["test"] - mean)
            hot = y["train"] if ctx.data.multilabel else np.eye(ctx.data.num_classes)[y["train"]]
            counts = hot.sum(axis=0)
            centroids = unit(hot.T @ train / np.maximum(counts, 1)[:, None])
            scores = test @ centroids.T  # cosine similarity to each class centroid
            scores[:, counts == 0] = -2.0  # a class with no training clip ranks last
            metrics = ctx.evaluate(scores, "test")
            ctx.log(f"[{ctx.split}] centroid ({ctx.init}): "
                    + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            return [ProtocolResult(metrics, {"classes_seen": int((counts > 0).sum())})]


    @hookimpl
    def register_protocols(register):
        register("centroid", Centroid)
''')

TINY = ["--splits", "fold1", "--set", "pretrain.epochs=2", "--set", "pretrain.corpus=null",
        "--set", "mlp.hidden=[32,64]", "--set", "mlp.lr=[0.001]", "--set", "mlp.max_epochs=40",
        "--set", "mlp.patience=10", "--quiet"]


# --------------------------------------------------------------------------- generated problems
def split(X, Y, train=0.6, valid=0.2):
    a, b = int(len(X) * train), int(len(X) * (train + valid))
    return ({"train": X[:a], "valid": X[a:b], "test": X[b:]},
            {"train": Y[:a], "valid": Y[a:b], "test": Y[b:]})


def clusters(n=600, d=32, c=10, spread=0.6, seed=0):
    """Gaussian classes: linearly separable up to noise."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((c, d)) * spread
    y = rng.integers(0, c, n)
    return split((means[y] + rng.standard_normal((n, d))).astype(np.float32), y)


def audioset_like(n=1500, d=64, c=527, seed=0, offset=-7.0):
    """A 527-class multi-label problem with informative features: labels drawn from a logistic
    model of a 16-dimensional latent that the features observe through noise; rare and common
    classes (a few labels per clip for 527 classes; ``offset`` sets how rare labels are)."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 16))
    logits = latent @ rng.standard_normal((16, c)) * 0.6 + offset - 2.0 * rng.random(c)
    Y = (rng.random((n, c)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    X = latent @ rng.standard_normal((16, d)) + 0.5 * rng.standard_normal((n, d))
    return split(X.astype(np.float32), Y)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small problems: one thread (torch and the BLAS under numpy/scikit-learn) avoids OpenMP
    spin-waiting, which costs 100x on a busy 2-core machine."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- torch linear probe
def test_torch_probe_matches_sklearn_single_label():
    X, y = clusters()
    kw = {"num_classes": 10, "multilabel": False, "metrics": ["accuracy"], "Cs": [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]}
    sk, tl = fit_linear(X, y, **kw), fit_linear_torch(X, y, **kw)
    assert tl.C == sk.C and tl.selection == "valid" and tl.embed_dim == 32
    # one metric: the chosen fit's valid score is the one the selection computed
    assert tl.valid == {"accuracy": tl.valid_by_C[tl.C]} and abs(tl.valid["accuracy"] - sk.valid["accuracy"]) <= 0.02
    assert abs(tl.test["accuracy"] - sk.test["accuracy"]) <= 0.01
    assert tl.test["accuracy"] > 0.8
    # the same problem at every C, not just at the chosen one (both stop at a gradient of 1e-4,
    # so the weakly regularised fits may differ by a clip or two)
    diffs = [abs(tl.valid_by_C[C] - sk.valid_by_C[C]) for C in kw["Cs"]]
    assert np.mean(diffs) <= 0.01 and max(diffs) <= 0.02, diffs


@pytest.mark.filterwarnings("ignore:Label not .* is present in all training examples")
def test_torch_probe_matches_sklearn_on_527_class_multilabel():
    X, y = audioset_like()
    assert 1.0 < y["train"].sum(axis=1).mean() < 10.0  # a few labels per clip, as AudioSet
    kw = {"num_classes": 527, "multilabel": True, "metrics": ["mAP", "AUC"], "Cs": [1e-2, 1e-1]}
    sk, tl = fit_linear(X, y, **kw), fit_linear_torch(X, y, **kw)
    assert tl.C == sk.C
    assert abs(tl.test["mAP"] - sk.test["mAP"]) <= 0.01
    assert abs(tl.test["AUC"] - sk.test["AUC"]) <= 0.01
    assert tl.test["mAP"] > 0.15  # informative features: far above the label prevalence (~0.01)


def test_torch_probe_multilabel_thread_choice_solves_the_same_problem():
    """On a CPU with more than one thread, the multi-label fit times its first two evaluations
    (one thread, then all) and keeps the faster; the solution is the same either way, and the
    caller's thread count comes back."""
    X, y = audioset_like(n=600, d=24, c=40, offset=-3.0)
    kw = {"num_classes": 40, "multilabel": True, "metrics": ["mAP"], "Cs": [0.1, 1.0]}
    one = fit_linear_torch(X, y, **kw)
    torch.set_num_threads(2)
    try:
        two = fit_linear_torch(X, y, **kw)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert two.C == one.C
    assert all(abs(two.valid_by_C[C] - one.valid_by_C[C]) <= 1e-4 for C in kw["Cs"])
    assert abs(two.test["mAP"] - one.test["mAP"]) <= 1e-4


def test_torch_probe_binary_classes_absent_and_single_C():
    rng = np.random.default_rng(1)
    y_all = rng.choice([1, 3], 300)  # two of five classes: a binary problem, scores 0 elsewhere
    X_all = (rng.standard_normal((300, 8)) + (y_all == 3)[:, None] * 1.5).astype(np.float32)
    X, y = split(X_all, y_all)
    kw = {"num_classes": 5, "multilabel": False, "metrics": ["accuracy"], "Cs": [1.0]}
    sk, tl = fit_linear(X, y, **kw), fit_linear_torch(X, y, **kw)
    assert abs(tl.test["accuracy"] - sk.test["accuracy"]) <= 0.01 and tl.test["accuracy"] > 0.8
    no_valid = {**y, "valid": y["valid"][:0]}
    assert fit_linear_torch({**X, "valid": X["valid"][:0]}, no_valid, **kw).selection == "single C"
    with pytest.raises(ValueError, match="no validation data to choose C"):
        fit_linear_torch({**X, "valid": X["valid"][:0]}, no_valid, **{**kw, "Cs": [0.1, 1.0]})


# --------------------------------------------------------------------------- kNN
def test_knn_votes_ties_and_choice_of_k():
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    query = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.6, 0.4]]), dim=1)
    onehot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    sims, idx = neighbours(train, query, 4, chunk=1)
    assert idx[0, :2].tolist() == [0, 1] and (sims[:, :-1] >= sims[:, 1:]).all()
    s = vote_scores(sims, idx, onehot, 2, "uniform")
    np.testing.assert_allclose(s[0], [1.0, 0.0], atol=1e-6)  # both neighbours in class 0
    s4 = vote_scores(sims, idx, onehot, 4, "uniform")
    np.testing.assert_allclose(s4, 0.5, atol=1e-6)  # 2-2 votes ...
    assert s4[1, 0] > s4[1, 1]  # ... the closer class wins the tie
    X, y = clusters(n=400, d=16, c=5, spread=1.5)
    test, extra, _ = fit_knn(X, y, num_classes=5, metrics=["accuracy"], ks=[1, 5, 20])
    assert extra["k"] in (1, 5, 20) and extra["selection"] == "valid" and test["accuracy"] > 0.8
    assert set(extra["valid_by_k"]) == {"1", "5", "20"}
    assert max(extra["valid_by_k"].values()) == extra["valid_accuracy"]
    with pytest.raises(ConfigError, match="knn.weighting"):
        fit_knn(X, y, num_classes=5, metrics=["accuracy"], ks=[1], weighting="gaussian")


def test_knn_multilabel_scores_are_mean_of_neighbour_targets():
    X, y = audioset_like(n=300, d=16, c=20, seed=2, offset=-1.0)
    test, extra, _ = fit_knn(X, y, num_classes=20, metrics=["mAP"], ks=[1], weighting="similarity")
    assert extra["k"] == 1 and 0.0 < test["mAP"] <= 1.0
    # k = 1: each test clip's scores are its nearest training clip's multi-hot (plus the tie-break)
    Z = {p: (x - X["train"].mean(0)) / X["train"].std(0) for p, x in X.items()}
    Z = {p: z / np.linalg.norm(z, axis=1, keepdims=True) for p, z in Z.items()}
    nearest = (Z["test"] @ Z["train"].T).argmax(axis=1)
    sims, idx = neighbours(torch.tensor(Z["train"]), torch.tensor(Z["test"]), 1, chunk=64)
    assert (idx[:, 0].numpy() == nearest).all()
    scores = vote_scores(sims, idx, torch.tensor(y["train"]), 1, "uniform")
    np.testing.assert_allclose(scores, y["train"][nearest], atol=1e-5)


# --------------------------------------------------------------------------- MLP
def xor_problem(n=600, seed=0):
    """The class is the sign pattern of two features (XOR): no linear probe can read it."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(np.int64)
    return split(X, y)


def test_mlp_learns_what_a_linear_probe_cannot_and_is_deterministic():
    X, y = xor_problem()
    cfg = MLPConfig(hidden=[16, 64], lr=[1e-2, 1e-3], max_epochs=60, patience=15, train_batch_size=64)
    state = torch.random.get_rng_state()
    test, extra, scores = fit_mlp(X, y, num_classes=2, multilabel=False, metrics=["accuracy"], cfg=cfg, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left as found
    linear = fit_linear(X, y, num_classes=2, multilabel=False, metrics=["accuracy"], Cs=[1.0])
    assert test["accuracy"] > 0.85 and linear.test["accuracy"] < 0.7
    assert extra["hidden"] in (16, 64) and extra["lr"] in (1e-2, 1e-3) and 1 <= extra["best_epoch"] <= 60
    again = fit_mlp(X, y, num_classes=2, multilabel=False, metrics=["accuracy"], cfg=cfg, seed=3)
    assert again[:2] == (test, extra) and np.array_equal(again[2], scores)
    assert scores.shape == (len(y["test"]), 2) and accuracy(scores, y["test"]) == test["accuracy"]


def test_mlp_multilabel_and_bad_grid():
    X, y = audioset_like(n=400, d=16, c=12, seed=4, offset=-1.0)
    cfg = MLPConfig(hidden=[32], lr=[3e-3], max_epochs=30, patience=5, train_batch_size=64)
    test, extra, _ = fit_mlp(X, y, num_classes=12, multilabel=True, metrics=["mAP"], cfg=cfg)
    assert 0.2 < test["mAP"] <= 1.0 and extra["selection"] == "valid"
    with pytest.raises(ConfigError, match="mlp.hidden and mlp.lr"):
        fit_mlp(X, y, num_classes=12, multilabel=True, metrics=["mAP"], cfg=MLPConfig(hidden=[]))
    no_valid = {**y, "valid": y["valid"][:0]}
    with pytest.raises(ConfigError, match="no validation data"):
        fit_mlp({**X, "valid": X["valid"][:0]}, no_valid, num_classes=12, multilabel=True, metrics=["mAP"],
                cfg=MLPConfig(hidden=[8, 16], lr=[1e-3]))


# --------------------------------------------------------------------------- layers
def test_layer_mixture_weights_find_the_informative_layer():
    X, y = clusters(n=600, d=16, c=5, spread=1.2, seed=5)
    rng = np.random.default_rng(6)
    # four "layers": only layer 2 carries the classes, the others are noise
    E = {p: np.stack([rng.standard_normal(x.shape).astype(np.float32) if k != 2 else x for k in range(4)], axis=1)
         for p, x in X.items()}
    result, weights = fit_layer_mixture(E, y, num_classes=5, multilabel=False, metrics=["accuracy"],
                                        Cs=[0.01, 0.1, 1.0])
    assert len(weights) == 4 and abs(sum(weights) - 1) < 1e-6
    assert int(np.argmax(weights)) == 2 and weights[2] > 0.5
    alone = fit_linear_torch(X, y, num_classes=5, multilabel=False, metrics=["accuracy"], Cs=[0.01, 0.1, 1.0])
    assert result.test["accuracy"] >= alone.test["accuracy"] - 0.05 and result.test["accuracy"] > 0.7
    assert layer_names(4) == ["0", "1", "2", "final"]
    assert layer_names(14)[:2] == ["00", "01"] and layer_names(14)[-2:] == ["12", "final"]


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """``run -m audiomae -t synthetic -p tiny --protocols pretrain,layers,knn,mlp`` on fold 1,
    counting embedding extractions and keeping the per-layer problems it probed."""
    import ssl_bench.protocols.embeddings as embeddings_mod
    import ssl_bench.protocols.layers as layers_mod

    root = tmp_path_factory.mktemp("protocols")
    extractions, problems = [], []
    predict, probe = embeddings_mod.predict, layers_mod.probe_embeddings

    def counting_predict(fn, dataset, **kw):
        extractions.append(kw.get("desc"))
        return predict(fn, dataset, **kw)

    def keeping_probe(X, y, data, section, seed, device="cpu"):
        problems.append((X, y, data.num_classes, list(data.metrics)))
        return probe(X, y, data, section, seed, device)

    mp = pytest.MonkeyPatch()
    mp.setattr(embeddings_mod, "predict", counting_predict)
    mp.setattr(layers_mod, "probe_embeddings", keeping_probe)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = main(["run", "-m", "audiomae", "-t", "synthetic", "-p", "tiny", "--results", str(root / "res"),
                       "--protocols", "pretrain,layers,knn,mlp", *TINY])
    finally:
        mp.undo()
    assert rc == 0
    return {"root": root, "extractions": extractions, "problems": problems, "stdout": out.getvalue()}


def _rows(root: Path, protocol: str) -> list[dict]:
    rows = []
    for d in results.run_dirs(root):
        rows += [r for r in json.loads((d / "result.json").read_text())["rows"] if r["protocol"] == protocol]
    return rows


def test_layers_rows_from_one_extraction_per_split_and_init(e2e):
    # one forward pass over the split's clips per encoder (pretrained, random-init baseline):
    # every layer, the weighted sum, knn and mlp all read those embeddings
    assert e2e["extractions"] == ["embed", "embed"]
    files = sorted(p.name for p in (e2e["root"] / "res" / ".cache" / "embeddings").glob("*.npy"))
    keys = sorted({name.split(".")[0] for name in files})
    assert len(keys) == 2 and files == sorted(f"{k}{ext}" for k in keys for ext in (".layers.npy", ".npy"))
    rows = _rows(e2e["root"] / "res", "layers")
    for init in ("pretrained", "random"):
        layers = [r["layer"] for r in rows if r["init"] == init]
        assert layers == ["0", "1", "2", "final", "weighted"]  # tiny: 2 blocks
        weighted = next(r for r in rows if r["init"] == init and r["layer"] == "weighted")
        assert len(weighted["layer_weights"]) == 4 and abs(sum(weighted["layer_weights"]) - 1) < 1e-4
    assert all(0.0 <= r["value"] <= 1.0 and r["metric"] == "accuracy" for r in rows)
    # the printed table and the summary keep one row per layer and init (5 layers x 2 inits)
    # (one split: the mean alone, n 1, no interval)
    printed = re.findall(r"(?m)\b(0|1|2|final|weighted)\s+\d\.\d{4}\s+\d\.\d{4}\s+1\s+-\s", e2e["stdout"])
    assert printed == ["0", "1", "2", "final", "weighted"] * 2, e2e["stdout"]
    summary = results.summary(results.load(e2e["root"] / "res"))
    per_layer = summary[summary["protocol"] == "layers"]
    assert len(per_layer) == 10 and (per_layer["n"] == 1).all()


def test_knn_and_mlp_run_with_their_random_init_baselines(e2e):
    for protocol, column in (("knn", "k"), ("mlp", "hidden")):
        rows = _rows(e2e["root"] / "res", protocol)
        assert {r["init"] for r in rows} == {"pretrained", "random"}, protocol
        assert all(r["embeddings_cached"] and column in r and 0.0 <= r["value"] <= 1.0 for r in rows)


def test_torch_probe_matches_sklearn_on_synthetic_embeddings(e2e):
    """The per-layer problems of the end-to-end run (tiny AudioMAE embeddings of ``synthetic``,
    pretrained and random-init): the two solvers' test accuracies agree within 1 point on
    average, and on most problems exactly."""
    problems = e2e["problems"]
    assert len(problems) == 8  # 4 layers x 2 inits
    diffs = []
    Cs = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    for X, y, num_classes, metrics in problems:
        kw = {"num_classes": num_classes, "multilabel": False, "metrics": metrics, "Cs": Cs}
        diffs.append(fit_linear_torch(X, y, **kw).test["accuracy"] - fit_linear(X, y, **kw).test["accuracy"])
    assert abs(np.mean(diffs)) <= 0.01, diffs
    assert sum(d == 0 for d in diffs) >= len(diffs) // 2, diffs


def test_single_file_protocol_plugin_runs_with_its_baseline(e2e, capsys):
    plugdir = e2e["root"] / "my_plugins"
    plugdir.mkdir()
    (plugdir / "centroid.py").write_text(CENTROID_PLUGIN)
    assert len(CENTROID_PLUGIN.strip().splitlines()) <= 45  # "about 40 lines", as README shows it
    capsys.readouterr()
    rc = main(["--plugins-dir", str(plugdir), "run", "-m", "audiomae", "-t", "synthetic", "-p", "tiny",
               "--results", str(e2e["root"] / "res"), "--protocols", "pretrain,centroid", *TINY])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = _rows(e2e["root"] / "res", "centroid")
    assert {r["init"] for r in rows} == {"pretrained", "random"}
    assert all(r["metric"] == "accuracy" and 0.0 <= r["value"] <= 1.0 and r["classes_seen"] == 10 for r in rows)
    assert "centroid" in out
