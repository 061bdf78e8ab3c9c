"""Tables you cannot misread: encoder identity, provenance, pretrain once / evaluate many,
statistics, leaderboard, plots and experiment tracking.

The end-to-end part is one module fixture: ``ssl-bench pretrain`` makes two tiny encoders
(masker.ratio 0.6 and 0.8) on a small corpus once, one ``ssl-bench run --checkpoint a,b``
evaluates both on two tasks, and ``results`` / ``plot`` read the runs back.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from ssl_bench import results
from ssl_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]

# a second task of another clip length, next to the tinytones one, for --plugins-dir
TASKS_PLUGIN = textwrap.dedent('''
    from ssl_bench import hookimpl
    from trainfixtures import TinyTones


    class TinyTonesLong(TinyTones):
        name = "tinytones-long"
        clip_seconds = 0.8
        PER_CLASS = 8

        def __init__(self, data_dir=None):
            super().__init__(data_dir)
            self.root = self.root / "long"


    @hookimpl
    def register_tasks(register):
        register("tinytones", TinyTones)
        register("tinytones-long", TinyTonesLong)
''')

TINY = ["-p", "tiny", "-q", "--set", "encoder.dim=32", "--set", "encoder.depth=1", "--set", "encoder.heads=2",
        "--set", "decoder.dim=32", "--set", "decoder.depth=1", "--set", "decoder.heads=2"]
PRETRAIN = ["--set", "pretrain.epochs=2", "--set", "pretrain.batch_size=8", "--set", "pretrain.warmup_epochs=1"]


def _corpus(folder: Path, n: int = 12, offset: int = 0) -> Path:
    from taskfixtures import tone, write_wav

    for k in range(n):
        write_wav(folder / f"c{k:02d}.wav", tone(k % 3, 0.5, 16000, seed=300 + k + offset), 16000)
    return folder


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread avoids OpenMP spin on a busy machine
    base = tmp_path_factory.mktemp("flow")
    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "tinytasks.py").write_text(TASKS_PLUGIN)
    corpus = _corpus(base / "corpus")
    res, data = base / "res", base / "data"
    common = ["--plugins-dir", str(plugins)]
    try:
        assert main([*common, "pretrain", "-m", "audiomae", "--corpus", str(corpus), "--results", str(res),
                     "--set", "masker.ratio=0.6,0.8", "--mlflow", *TINY, *PRETRAIN]) == 0
        df = results.load(res)
        ids = {float(r): e for r, e in zip(df["masker.ratio"], df["init_id"])}
        assert main([*common, "run", "-m", "audiomae", "-t", "tinytones,tinytones-long", "--data-dir", str(data),
                     "--checkpoint", f"{ids[0.6]},{ids[0.8]}", "--results", str(res), "--protocols", "linear",
                     "--set", "linear.C=[1.0]", "--set", "data.valid_fraction=0.25", *TINY]) == 0
    finally:
        torch.set_num_threads(torch_threads)
    return {"res": res, "data": data, "corpus": corpus, "ids": ids, "plugins": plugins, "common": common}


def _evaluation_rows(res: Path) -> pd.DataFrame:
    df = results.load(res)
    return df[df["protocol"] == "linear"]


def test_pretrain_once_then_evaluate_both_encoders_on_two_tasks(flow, capsys):
    df = results.load(flow["res"])
    pre = df[df["protocol"] == "pretrain"]
    assert len(pre) == 2 and set(pre["task"]) == {"corpus:corpus"}
    lin = _evaluation_rows(flow["res"])
    assert set(lin["task"]) == {"tinytones", "tinytones-long"}
    trained = lin[lin["init_id"] != "random"]
    # each encoder's rows carry its content id and the settings it was pretrained with
    for ratio, encoder_id in flow["ids"].items():
        rows = trained[trained["init_id"] == encoder_id]
        assert len(rows) == 4  # 2 tasks x 2 folds
        assert set(rows["masker.ratio"]) == {ratio} and set(rows["pretrain.epochs"]) == {2}
        assert set(rows["pretrained_by"]) == {"checkpoint config"}
        assert set(rows["init"]) == {f"audiomae-tiny-corpus-{pre[pre['init_id'] == encoder_id]['pretrain_hash'].iloc[0][:6]}"}
    # the encoder kept its own length (0.5 s corpus clips -> 64 frames) and corpus statistics
    saved = torch.load(pre["encoder_path"].iloc[0], weights_only=True, mmap=True)
    assert saved["config"]["frontend"]["num_frames"] == 64 and saved["config"]["frontend"]["mean"] is not None
    capsys.readouterr()
    assert main(["results", str(flow["res"]), "--compare", "masker.ratio", "--protocol", "linear", "-f", "md"]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0]
    assert "| 0.6 | 0.8 | p: 0.8 vs 0.6 |" in header
    for task in ("tinytones", "tinytones-long"):
        line = next(ln for ln in table.splitlines() if f"| {task} |" in ln and "corpus" in ln)
        intervals = re.findall(r"(\d\.\d{4}) \[(\d\.\d{4}), (\d\.\d{4})\] \(n=2\)", line)
        assert len(intervals) == 2, line  # one interval per ratio, from the clips of both folds
        assert all(0 <= float(lo) <= float(m) <= float(hi) <= 1 for m, lo, hi in intervals), line
        assert re.search(r"\d[\d.e-]* (\*+|ns) \(McNemar, \d+ clips\)", line), line  # paired clip by clip


def test_the_encoder_is_reused_by_audio_content_and_retrained_when_it_changes(flow, tmp_path):
    # the same sounds in another folder: the same pretraining (keyed by content, not paths)
    moved = _corpus(tmp_path / "moved")
    args = [*flow["common"], "pretrain", "-m", "audiomae", "--corpus", str(moved), "--results", str(flow["res"]),
            "--set", "masker.ratio=0.6", *TINY, *PRETRAIN]
    def new_pretrain_row():
        before = {d.name for d in results.run_dirs(flow["res"])}
        assert main(args) == 0
        df = results.load(flow["res"])
        rows = df[(df["protocol"] == "pretrain") & ~df["run_id"].isin(before)]  # run ids share a second
        assert len(rows) == 1
        return rows.iloc[0]

    again = new_pretrain_row()
    assert bool(again["reused"]) and again["init_id"] == flow["ids"][0.6]
    # the same paths with other sounds: a new pretraining, a new id
    _corpus(moved, n=1, offset=77)
    changed = new_pretrain_row()
    assert not bool(changed["reused"]) and changed["pretrain_hash"] != again["pretrain_hash"]
    assert changed["init_id"] != again["init_id"]


def test_result_json_holds_the_provenance(flow):
    run = next(d for d in results.run_dirs(flow["res"])
               if json.loads((d / "result.json").read_text())["config"]["task"] == "tinytones")
    record = json.loads((run / "result.json").read_text())
    prov = record["provenance"]
    assert prov["versions"]["ssl_bench"] and prov["versions"]["torch"] == torch.__version__
    assert "torchaudio" in prov["versions"] and "cuda" in prov["versions"] and prov["versions"]["python"]
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert prov["git"]["commit"] == head.strip() and isinstance(prov["git"]["dirty"], bool)
        assert prov["code_version"].startswith(f"{prov['versions']['ssl_bench']}+g{head.strip()[:12]}")
    assert prov["device"]["type"] == "cpu" and prov["device"]["name"] is not None and prov["host"]
    assert prov["command"].startswith("ssl-bench") and " run -m audiomae -t tinytones,tinytones-long " in prov["command"]
    # the data read: its files, bytes and a digest of (key, content)
    data = prov["data"]
    clips = sorted((flow["data"]).glob("*.wav"))
    assert data["task"] == "tinytones" and data["files"] == len(clips) == 36 and data["missing"] == 0
    assert data["bytes"] == sum(p.stat().st_size for p in clips) and len(data["sha256"]) == 64
    # the checkpoint: its content hash, id and the config saved in it; the resolved config
    ckpt = prov["checkpoint"]
    assert ckpt["sha256"] == hashlib.sha256(Path(ckpt["path"]).read_bytes()).hexdigest()
    assert ckpt["init_id"] == ckpt["sha256"][:12] and ckpt["config"]["masker"]["name"] == "random"
    assert record["config"]["checkpoint"] == ckpt["path"] and record["config"]["task"] == "tinytones"
    # rows say which code and data made them
    row = record["rows"][0]
    assert row["code_version"] == prov["code_version"] and row["data_sha256"] == data["sha256"][:12]
    assert row["primary_metric"] == "accuracy"


def test_board_and_plots(flow, capsys, tmp_path):
    for fmt in ("md", "csv", "latex"):
        assert main(["results", str(flow["res"]), "--board", "-f", fmt]) == 0
        out = capsys.readouterr().out
        assert "tinytones (accuracy)" in out and "tinytones-long (accuracy)" in out
        for encoder_id in flow["ids"].values():
            assert encoder_id in out
    board = results.board(results.load(flow["res"]))
    assert "corpus" not in " ".join(board.columns)  # pretraining losses are no task
    random_rows = board.xs("random", level="init_id")
    assert len(random_rows) == 1  # the random baseline once, whatever the pretraining sweep
    assert random_rows.iloc[0, 0].endswith("(n=2)")
    out = tmp_path / "plots"
    assert main(["plot", str(flow["res"]), "--out", str(out), "--compare", "masker.ratio"]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert "ablation-masker.ratio.png" in names
    assert sum(n.startswith("curves-") for n in names) >= 2  # the pretraining runs' loss curves
    import matplotlib.image as mpimg

    img = mpimg.imread(out / "ablation-masker.ratio.png")
    assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.05  # a drawn picture


def test_mlflow_run_is_read_back_with_mlflow_client(flow):
    from mlflow.tracking import MlflowClient

    pre = results.load(flow["res"])
    pre = pre[(pre["protocol"] == "pretrain") & (pre["masker.ratio"] == 0.6)].sort_values("run_id").iloc[0]
    record = json.loads((flow["res"] / pre["run_id"] / "result.json").read_text())
    tracking = record["provenance"]["tracking"]["mlflow"]
    assert tracking["uri"].startswith(("file:", "sqlite:")) and str(flow["res"].resolve()) in tracking["uri"]
    client = MlflowClient(tracking_uri=tracking["uri"])
    run = client.get_run(tracking["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == pre["run_id"]
    assert run.data.params["masker.ratio"] == str(pre["masker.ratio"]) and run.data.params["encoder.dim"] == "32"
    assert run.data.tags["ssl_bench.run_id"] == pre["run_id"]
    history = client.get_metric_history(tracking["run_id"], "pretrain/corpus/loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]  # per epoch
    final = client.get_metric_history(tracking["run_id"], "corpus_corpus/pretrain/pretraining from random/loss/corpus/seed0")
    assert len(final) == 1 and final[0].value == pytest.approx(pre["value"])


# --------------------------------------------------------------------------- identity
def test_two_checkpoints_with_one_file_name_are_two_rows(tmp_path, capsys):
    from trainfixtures import tiny_config, tiny_registry

    from ssl_bench.checkpoint import save_model
    from ssl_bench.model import build_model
    from ssl_bench.registry import set_registry
    from ssl_bench.runner import run_experiment

    reg = tiny_registry()
    old = set_registry(reg)
    try:
        cfg = tiny_config(reg, **{"linear.C": [1.0]})
        paths = []
        for seed, folder in ((1, "a"), (2, "b")):
            torch.manual_seed(seed)
            paths.append(save_model(build_model(cfg, reg), tmp_path / folder / "pretrained.pt"))
        for path in paths:
            run_experiment(cfg, data_dir=tmp_path / "data", results_root=tmp_path / "res", protocols=("linear",),
                           checkpoint=path, splits=["fold1"], progress=False)
    finally:
        set_registry(old)
    df = results.load(tmp_path / "res")
    s = results.summary(df[df["init"] != "random"])
    ids = [hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in paths]
    assert sorted(s["init_id"]) == sorted(ids) and ids[0] != ids[1]  # two rows, never averaged
    assert sorted(s["init"]) == ["a/pretrained", "b/pretrained"] and list(s["n"]) == [1, 1]
    capsys.readouterr()
    assert main(["results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert ids[0] in out and ids[1] in out


def test_checkpoint_ids_and_directories_resolve(tmp_path):
    from ssl_bench.config import ConfigError
    from ssl_bench.provenance import encoder_identity, find_checkpoint

    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"weights")
    (hf / "config.json").write_text('{"max_length": 1024}')
    assert find_checkpoint(hf, tmp_path / "cache") == hf  # a Hugging Face directory is accepted
    first = encoder_identity(hf)
    assert first["init"] == "hf-model" and first["config"] is None
    (hf / "config.json").write_text('{"max_length": 512}')  # another input length: another encoder
    assert encoder_identity(hf)["init_id"] != first["init_id"]
    store = tmp_path / "cache" / "pretrain" / "abcdef0123456789"
    store.mkdir(parents=True)
    (store / "pretrained.pt").write_bytes(b"x")
    (store / "meta.json").write_text(json.dumps({"weights_sha256": "1234abcd" + "0" * 56, "name": "enc"}))
    assert find_checkpoint("1234abcd", tmp_path / "cache") == store / "pretrained.pt"  # by weights id
    assert find_checkpoint("abcdef01", tmp_path / "cache") == store / "pretrained.pt"  # by pretraining hash
    with pytest.raises(ConfigError, match=r"--checkpoint 99999999: no such file .*encoder ids there: 1234abcd0000"):
        find_checkpoint("99999999", tmp_path / "cache")


# --------------------------------------------------------------------------- statistics
def _write_runs(root: Path, rows_by_run: list[tuple[dict, list[dict]]]) -> None:
    from ssl_bench.results import RunWriter

    for i, (config, rows) in enumerate(rows_by_run):
        with RunWriter(root, f"run{i}", config) as w:
            for r in rows:
                w.add_row(**r)


def _rows(task, values, init="enc", init_id="e1", protocol="linear", seeds=(0,), metric="accuracy", **extra):
    out, k = [], 0
    for split in [f"fold{i + 1}" for i in range(len(values) // len(seeds))]:
        for seed in seeds:
            out.append(dict(task=task, protocol=protocol, split=split, seed=seed, init=init, init_id=init_id,
                            metric=metric, value=values[k], primary_metric="accuracy", **extra))
            k += 1
    return out


def test_without_per_clip_data_the_interval_resamples_the_values_and_stays_among_them(tmp_path):
    values = [0.80, 0.82, 0.70, 0.74, 0.90, 0.86]  # 3 folds x 2 seeds, rows without predictions
    _write_runs(tmp_path, [({"model": "m", "task": "t"}, _rows("t", values, seeds=(0, 1)))])
    s = results.summary(results.load(tmp_path)).iloc[0]
    assert s["n"] == 6 and s["n_splits"] == 3 and s["n_seeds"] == 2 and s["ci_method"] == "values"
    assert s["mean"] == pytest.approx(np.mean(values)) and s["std"] == pytest.approx(np.std(values, ddof=1))
    fold_means = np.array(values).reshape(3, 2).mean(axis=1)
    assert min(values) <= s["ci_low"] < s["mean"] < s["ci_high"] <= max(values)
    assert s["std_split"] == pytest.approx(fold_means.std(ddof=1))
    within = np.array(values).reshape(3, 2).std(axis=1, ddof=1)
    assert s["std_seed"] == pytest.approx(np.sqrt((within ** 2).mean()))
    again = results.summary(results.load(tmp_path)).iloc[0]
    assert (again["ci_low"], again["ci_high"]) == (s["ci_low"], s["ci_high"])  # seeded: the same table twice
    # one value: no interval is claimed
    _write_runs(tmp_path / "one", [({"model": "m", "task": "t"}, _rows("t", [0.5]))])
    s = results.summary(results.load(tmp_path / "one")).iloc[0]
    assert math.isnan(s["ci_low"]) and s["ci_method"] == "-"
    assert results.format_cell(s["mean"], s["ci_low"], s["ci_high"], s["n"]) == "0.5000 (n=1)"


def test_paired_tests_follow_scipy():
    a = np.array([0.1, 0.3, -0.05, 0.2, 0.15])
    test, p = results.paired_test(a)
    assert test == "t" and p == pytest.approx(stats.ttest_1samp(a, 0).pvalue)
    b = np.array([0.1, 0.3, -0.05, 0.2, 0.15, 0.12, 0.08, -0.02, 0.11, 0.07])
    test, p = results.paired_test(b)
    assert test == "W" and p == pytest.approx(stats.wilcoxon(b).pvalue)
    assert results.paired_test(np.zeros(4)) == ("t", 1.0)
    assert math.isnan(results.paired_test(np.array([0.1]))[1])
    assert [results.significance(p) for p in (1e-4, 5e-3, 0.03, 0.2, float("nan"))] == ["***", "**", "*", "ns", "-"]


def test_compare_pairs_splits_and_seeds_against_the_baseline(tmp_path):
    base = [0.70, 0.72, 0.68, 0.71, 0.69]
    better = [v + d for v, d in zip(base, [0.05, 0.06, 0.04, 0.05, 0.07])]
    runs = [({"model": "m", "task": "t", "masker": {"name": "random", "ratio": r}},
             _rows("t", vals, init=f"enc{r}", init_id=f"id{r}"))
            for r, vals in ((0.6, base), (0.8, better))]
    _write_runs(tmp_path, runs)
    df = results.load(tmp_path)
    table = results.compare(df, ["masker.ratio"], baseline="0.6")
    row = table.iloc[0]
    diffs = np.array(better) - np.array(base)
    p = stats.ttest_1samp(diffs, 0).pvalue  # no per-clip data: the t-test over the fold pairs
    assert row["p: 0.8 vs 0.6"] == f"{p:.3g} {results.significance(p)} (t, 5 pairs)"
    mean, low, high = re.fullmatch(r"(\S+) \[(\S+), (\S+)\] \(n=5\)", row["0.6"]).groups()
    assert float(mean) == pytest.approx(np.mean(base), abs=5e-5) and min(base) <= float(low) <= float(high) <= max(base)
    assert table.index.get_level_values("init")[0] == "enc0.6, enc0.8"  # one row, the encoders named
    with pytest.raises(KeyError, match="takes the values 0.6, 0.8"):
        results.compare(df, ["masker.ratio"], baseline="0.7")
    # two encoders that the compared key does not tell apart get rows of their own
    runs = [({"model": "m", "task": "t", "linear": {"C": 1.0}}, _rows("t", base, init="same.pt", init_id=i))
            for i in ("aaa", "bbb")]
    _write_runs(tmp_path / "two", runs)
    table = results.compare(results.load(tmp_path / "two"), ["linear.C"])
    assert sorted(table.index.get_level_values("init_id")) == ["aaa", "bbb"]


def test_tensorboard_scalars_and_per_layer_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ssl_bench.plots import plot_results
    from ssl_bench.results import RunWriter

    with RunWriter(tmp_path, "run0", {"model": "m", "task": "t"}, track={"tensorboard": "default"}) as w:
        for epoch, loss in ((1, 0.9), (2, 0.7)):
            w.metrics({"protocol": "finetune", "split": "fold1", "epoch": epoch, "loss": loss,
                       "valid_accuracy": 0.5 + epoch / 10})
        for layer, acc in enumerate((0.4, 0.6, 0.7, 0.65)):
            for split, d in (("fold1", 0.0), ("fold2", 0.02)):
                w.add_row(task="t", protocol="layers", split=split, seed=0, init="enc", init_id="e1",
                          metric="accuracy", value=acc + d, layer=layer, primary_metric="accuracy")
    events = EventAccumulator(str(tmp_path / "tensorboard" / "run0"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("finetune/fold1/loss")] == [(1, 0.9), (2, 0.7)]
    assert events.Scalars("t/layers/enc/accuracy/layer2/mean")[0].value == pytest.approx(0.71)
    record = json.loads((tmp_path / "run0" / "result.json").read_text())
    assert record["provenance"]["tracking"]["tensorboard"]["dir"].endswith("run0")
    written, notes = plot_results(results.load(tmp_path), tmp_path, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["board.png", "curves-run0.png", "layers-t.png"]
    assert notes == ["ablation: nothing to draw (no setting varies between these runs; --compare KEY names one)"]


# --------------------------------------------------------------------------- statistics from per-clip predictions
def _clip_run(root: Path, run_id: str, config: dict, evaluations: list[dict]) -> None:
    """A run whose rows name per-clip predictions: each evaluation ``{split, seed, init, init_id,
    correct}`` scores ``len(correct)`` clips of 3 classes, right where ``correct`` says so."""
    from ssl_bench import predictions as P
    from ssl_bench.results import RunWriter

    labels = ["a", "b", "c"]
    with RunWriter(root, run_id, config) as w:
        for e in evaluations:
            correct = np.asarray(e["correct"], dtype=bool)
            truth = np.arange(len(correct)) % 3
            scores = np.eye(3)[np.where(correct, truth, (truth + 1) % 3)] * 0.8 + 0.1
            keys = [f"clip{i}.wav" for i in range(len(correct))]
            name = f"linear-{e['init']}-{e['seed']}"
            P.write(w.dir / "predictions" / e["split"], name, P.scene_layout(keys, scores, labels),
                    P.scene_reference(keys, truth, labels))
            w.add_row(task="t", protocol="linear", split=e["split"], seed=e["seed"], init=e["init"],
                      init_id=e["init_id"], metric="accuracy", value=float(correct.mean()), primary_metric="accuracy",
                      predictions=f"predictions/{e['split']}/{name}.json")


def test_a_two_fold_accuracys_interval_resamples_clips_and_stays_inside_0_1(tmp_path):
    rng = np.random.default_rng(0)
    folds = {"fold1": rng.random(20) < 0.05, "fold2": rng.random(20) < 0.95}  # about 0.05 and 0.95
    _clip_run(tmp_path, "20261201-100000-m-t-aaaaaa-0001", {"model": "m", "task": "t"},
              [dict(split=s, seed=0, init="enc", init_id="e1", correct=c) for s, c in folds.items()])
    s = results.summary(results.load(tmp_path)).iloc[0]
    mean = np.mean([c.mean() for c in folds.values()])
    assert s["ci_method"] == "splits and clips" and s["n_clips"] == 40 and s["mean"] == pytest.approx(mean)
    assert 0.0 <= s["ci_low"] < mean < s["ci_high"] <= 1.0  # Student's t on 2 folds would leave [0, 1]
    half = stats.t.ppf(0.975, 1) * np.std([c.mean() for c in folds.values()], ddof=1) / math.sqrt(2)
    assert mean - half < 0 and mean + half > 1
    # one fold alone: its 20 clips still give an interval
    one = results.summary(results.load(tmp_path)[lambda d: d["split"] == "fold1"]).iloc[0]
    assert one["ci_method"] == "clips" and 0.0 <= one["ci_low"] <= one["mean"] <= one["ci_high"] <= 1.0
    assert one["ci_high"] > one["ci_low"]


def test_compare_is_paired_clip_by_clip_and_holm_adjusted(tmp_path):
    from ssl_bench.results.stats import holm, mcnemar_exact

    base = np.zeros(30, dtype=bool)
    base[:10] = True  # 10 of 30 right
    variants = {0.6: base, 0.7: base.copy(), 0.8: base.copy(), 0.9: base.copy()}
    variants[0.7][10:16] = True  # 6 more right, none lost: McNemar 6 vs 0
    variants[0.8][10:22] = True  # 12 more right
    variants[0.9][10:13], variants[0.9][:2] = True, False  # 3 won, 2 lost
    for k, (ratio, correct) in enumerate(variants.items()):
        config = {"model": "m", "task": "t", "masker": {"name": "random", "ratio": ratio}}
        _clip_run(tmp_path, f"20261201-10000{k}-m-t-abcde{k}-000{k}", config,
                  [dict(split="fold1", seed=0, init=f"enc{ratio}", init_id=f"id{ratio}", correct=correct)])
    table = results.compare(results.load(tmp_path), ["masker.ratio"], baseline="0.6")
    row = table.iloc[0]
    raw = {0.7: mcnemar_exact(6, 0), 0.8: mcnemar_exact(12, 0), 0.9: mcnemar_exact(3, 2)}
    adjusted = dict(zip(raw, holm(list(raw.values()))))
    assert raw[0.8] == pytest.approx(2 * 0.5 ** 12) and adjusted[0.8] == pytest.approx(3 * raw[0.8])
    for ratio in (0.7, 0.8, 0.9):
        assert row[f"p: {ratio} vs 0.6"] == (f"{raw[ratio]:.3g} {results.significance(adjusted[ratio])} "
                                             f"(McNemar, 30 clips; Holm {adjusted[ratio]:.3g} of 3)")
    # 6 wins to none alone is p 0.031; among three comparisons with one baseline it is not significant
    assert raw[0.7] < 0.05 and adjusted[0.7] > 0.05 and row["p: 0.7 vs 0.6"].split()[1] == "ns"


def test_several_seeds_are_compared_by_a_paired_bootstrap_and_a_reused_pretraining_counts_once(tmp_path):
    rng = np.random.default_rng(1)
    evaluations = {r: [dict(split=f"fold{f}", seed=s, init=f"enc{r}", init_id=f"id{r}",
                            correct=rng.random(24) < (0.4 if r == 0.6 else 0.8)) for f in (1, 2) for s in (0, 1)]
                   for r in (0.6, 0.8)}
    for k, (ratio, evals) in enumerate(evaluations.items()):
        _clip_run(tmp_path, f"20261201-10000{k}-m-t-bbbbb{k}-000{k}",
                  {"model": "m", "task": "t", "masker": {"name": "random", "ratio": ratio}}, evals)
    row = results.compare(results.load(tmp_path), ["masker.ratio"]).iloc[0]
    cell = row["p: 0.8 vs 0.6"]
    assert cell.endswith("(paired bootstrap, 48 clips)") and float(cell.split()[0]) < 0.01
    # one pretraining that five folds reused: one value, no interval from five copies of it
    rows = [dict(task="t", protocol="pretrain", split=f"fold{i}", seed=0, init="pretraining from random",
                 init_id="w1", metric="loss", value=0.64, pretrain_hash="h1") for i in range(1, 6)]
    _write_runs(tmp_path / "pre", [({"model": "m", "task": "t"}, rows)])
    s = results.summary(results.load(tmp_path / "pre")).iloc[0]
    assert s["n"] == 1 and math.isnan(s["ci_low"])
