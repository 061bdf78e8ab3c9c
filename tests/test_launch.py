"""Sweeps as units through every launcher CI can run: the launcher never changes a number,
a rerun submits only what is missing, a failed unit is one line with its log, an encoder
shared by several runs is pretrained once, suites and label-efficiency sweeps run through the
pool (detached, followed by ``status``), ``plot`` draws the curve, roots merge, and the compute
ledger counts each piece of work once.  (SLURM itself: tests/test_slurm.py.)

Every sweep is AudioMAE at a few thousand parameters on ``tinytones`` (36 clips of 0.5 s), from
a single-file plugin that the pool's and submitit's job processes load as the launching one does.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ssl_bench import results
from ssl_bench.cli import main

TESTS = Path(__file__).resolve().parent

PLUGIN = textwrap.dedent('''
    """tinytones (tests/trainfixtures.py), a suite over it, and a protocol that fails on demand."""
    import sys
    from dataclasses import dataclass
    from pathlib import Path

    sys.path.insert(0, {tests!r})
    from trainfixtures import TinyTones  # noqa: E402

    from ssl_bench import hookimpl  # noqa: E402
    from ssl_bench.protocols.base import Protocol, ProtocolResult  # noqa: E402
    from ssl_bench.suites import Suite, SuiteTask  # noqa: E402

    FLAG = Path(__file__).with_name("fail-seed-1")


    class Flaky(Protocol):
        help = "fails for seed 1 while the flag file is there"

        @dataclass
        class Config:
            enabled: bool = True

        def run(self, ctx):
            if FLAG.exists() and ctx.seed == 1:
                raise RuntimeError("flaky failed on purpose")
            return [ProtocolResult({{"accuracy": 0.5}})]


    @hookimpl
    def register_tasks(register):
        register("tinytones", TinyTones)


    @hookimpl
    def register_protocols(register):
        register("flaky", Flaky)


    @hookimpl
    def register_suites(register):
        register("tiny-bench", Suite("1", (SuiteTask("tinytones", ("linear",), {{"linear.C": [1.0]}}, ("fold1",)),),
                                     "tinytones, linear probe, one fold"))
''').format(tests=str(TESTS))

#: AudioMAE at a few thousand parameters (as tests/trainfixtures.py's SMALL), as --set flags.
SMALL = ["encoder.dim=32", "encoder.depth=1", "encoder.heads=2", "decoder.dim=32", "decoder.depth=1",
         "decoder.heads=2", "pretrain.epochs=1", "pretrain.batch_size=8", "pretrain.warmup_epochs=1",
         "linear.C=[0.1, 10.0]", "data.valid_fraction=0.25"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "tiny_launch.py").write_text(PLUGIN)
    return {"root": root, "plugins": plugins, "data": root / "tinytones"}


def argv(env, results_root, *extra, protocols="pretrain,linear", small=True):
    out = ["--plugins-dir", str(env["plugins"]), "run", "-m", "audiomae", "-p", "tiny", "-t", "tinytones",
           "--data-dir", str(env["data"]), "--results", str(results_root), "--splits", "fold1",
           "--protocols", protocols, "--quiet"]
    for item in SMALL if small else ():
        out += ["--set", item]
    return out + list(extra)


def rows(root: Path) -> dict[tuple, float]:
    """Every row of a results root by what it is (settings, split, protocol, encoder, metric)."""
    df = results.load(root)
    got = {(r["masker.ratio"], r["seed"], r["split"], r["protocol"], r["init"], r["metric"]): r["value"]
           for _, r in df.iterrows()}
    assert len(got) == len(df), "two rows of one run, split, protocol, encoder and metric"
    return got


@pytest.fixture(scope="module")
def three_launchers(env):
    """The same two-run sweep in this process (one thread), in a pool of 2 (one thread each) and
    through submitit's local executor (2 at once, one thread each)."""
    out = {}
    for name, extra in (("local", ["--threads", "1"]), ("pool", ["--jobs", "2"]),
                        ("submitit", ["--launcher", "submitit-local", "--jobs", "2"])):
        root = env["root"] / name
        assert main(argv(env, root, "--set", "masker.ratio=0.6,0.8", *extra)) == 0
        out[name] = root
    return out


def test_the_launcher_never_changes_a_number(three_launchers):
    local = rows(three_launchers["local"])
    assert len(local) == 6 and {k[0] for k in local} == {0.6, 0.8}  # 2 runs x (pretrain loss, linear x2)
    assert rows(three_launchers["pool"]) == local
    assert rows(three_launchers["submitit"]) == local


def test_rows_name_their_launcher_job_and_threads(three_launchers):
    for name, launcher, jobs in (("local", "local", 1), ("pool", "local", 2), ("submitit", "submitit-local", 2)):
        df = results.load(three_launchers[name])
        assert set(df["launcher"]) == {launcher} and set(df["threads"]) == {1} and set(df["jobs"]) == {jobs}
        assert df["job_id"].notna().all() and set(df["node"]) == {df["node"].iloc[0]}
        record = json.loads(next(three_launchers[name].glob("*/result.json")).read_text())
        assert record["run_key"] and record["provenance"]["parts"]["fold1"]["job"]["launcher"] == launcher
    # the pool's two evaluations ran in two processes of their own
    assert results.load(three_launchers["pool"])["job_id"].nunique() == 2


def test_a_finished_sweep_submits_nothing_and_prints_its_table(env, three_launchers, capsys):
    root = three_launchers["pool"]
    before = sorted(p.name for p in root.iterdir())
    assert main(argv(env, root, "--set", "masker.ratio=0.6,0.8", "--jobs", "2")) == 0
    captured = capsys.readouterr()
    assert "2 finished before; 0 unit(s) to run" in captured.err and "queued" not in captured.err
    out = captured.out
    assert "masker.ratio" in out and "linear" in out and "fold1" in out  # the table
    assert sorted(p.name for p in root.iterdir()) == before  # no new run
    assert "note:" not in captured.err
    # a finished run computed by other code is reused, and the sweep says so
    record_path = next(root.glob("*/result.json"))
    record = json.loads(record_path.read_text())
    record["provenance"]["code_version"] = "0.0.9+gearlier"
    record_path.write_text(json.dumps(record))
    assert main(argv(env, root, "--set", "masker.ratio=0.6,0.8", "--jobs", "2")) == 0
    err = capsys.readouterr().err
    assert "0 unit(s) to run" in err and "1 finished run(s) were computed by code 0.0.9+gearlier" in err


def test_oversubscription_is_refused(env, capsys):
    assert main(argv(env, env["root"] / "over", "--jobs", "2", "--threads", "64")) == 2
    assert "threads on" in capsys.readouterr().err


def test_a_failed_unit_is_one_line_and_a_rerun_runs_only_it(env, capsys):
    root = env["root"] / "flaky"
    flag = env["plugins"] / "fail-seed-1"
    flag.write_text("")
    try:
        assert main(argv(env, root, "--set", "seed=0,1", "--jobs", "2", protocols="flaky")) == 1
    finally:
        flag.unlink()
    captured = capsys.readouterr()
    failed = [line for line in captured.err.splitlines() if " failed " in line]
    assert len(failed) == 1 and "seed=1" in failed[0] and "RuntimeError: flaky failed on purpose" in failed[0]
    log = Path(failed[0].split("(log: ")[1].rstrip(")"))
    assert "flaky failed on purpose" in log.read_text() and "Traceback" in log.read_text()
    assert "1 unit(s) did not finish" in captured.err
    assert results.load(root)["seed"].tolist() == [0]
    assert main(argv(env, root, "--set", "seed=0,1", "--jobs", "2", protocols="flaky")) == 0
    assert "1 finished before; 1 unit(s) to run (1 evaluation)" in capsys.readouterr().err
    assert sorted(results.load(root)["seed"]) == [0, 1]


def test_an_encoder_shared_by_runs_is_pretrained_once(env, capsys):
    root = env["root"] / "shared"
    args = argv(env, root, "--set", "linear.C=0.1,10.0", "--jobs", "2")
    assert main(args) == 0
    assert "(1 features, 1 encoder, 2 evaluation)" in capsys.readouterr().err
    df = results.load(root)
    pre = df[df["protocol"] == "pretrain"]
    assert len(pre) == 2 and pre["pretrain_hash"].nunique() == 1 and pre["reused"].all()
    assert len(list((root / ".cache" / "pretrain").glob("*/pretrained.pt"))) == 1
    # the ledger counts that encoder once, the features once, each evaluation once
    assert main(["results", str(root), "--compute"]) == 0
    ledger = capsys.readouterr().out
    units = ledger.split("units of work")[1].split("totals:")[0]
    assert units.count(" encoder ") == 1 and units.count(" features ") == 1 and units.count(" evaluation ") == 2
    totals = ledger.split("totals:")[1]
    assert all(word in totals for word in ("features", "encoder", "evaluation", "all"))
    assert "cpu_h" in ledger and "gpu_h" in ledger and "peak_mb" in ledger


def _wait_for(root: Path, capsys, seconds: float = 240) -> str:
    """``ssl-bench status`` until no unit is queued or running."""
    end = time.time() + seconds
    while True:
        assert main(["status", str(root)]) == 0
        out = capsys.readouterr().out
        if (" queued " not in out and " running " not in out) or time.time() > end:
            return out
        time.sleep(1.0)


def test_a_suite_label_efficiency_sweep_detached_in_the_pool_then_plot(env, capsys):
    root = env["root"] / "label"
    sweep = ["--plugins-dir", str(env["plugins"]), "run", "-m", "audiomae", "-p", "tiny", "--suite", "tiny-bench",
             "--data-dir", str(env["data"]), "--results", str(root), "--quiet", "--jobs", "2",
             *[a for item in SMALL if not item.startswith("linear.") for a in ("--set", item)],
             "--set", "data.shots=1,4,all", "--set", "data.draw=0,1"]
    assert main([*sweep, "--detach"]) == 0
    err = capsys.readouterr().err
    assert "6 run(s)" in err and "detached" in err
    status = _wait_for(root, capsys)
    assert "6 evaluation" not in status and status.count(" done ") == 7, status  # features + 6 evaluations
    assert main(sweep) == 0  # the same command again: everything is there
    assert "6 finished before; 0 unit(s) to run" in capsys.readouterr().err
    df = results.load(root)
    assert set(df["suite"]) == {"tiny-bench"} and set(df["suite_version"]) == {"1"}
    assert set(df["data.shots"].astype(str)) == {"1", "4", "all"} and set(df["data.draw"]) == {0, 1}
    # training part drawn: 1 or 4 clips of each of 3 classes (or all of them); validation and test untouched
    n_train = df.groupby(df["data.shots"].astype(str))["n_train"].unique()
    assert list(n_train["1"]) == [3] and list(n_train["4"]) == [12] and n_train["all"][0] > 12
    assert df["n_valid"].nunique() == 1 and df["n_test"].nunique() == 1
    draws = df[df["data.shots"].astype(str) == "1"].groupby("data.draw")["value"].first()
    assert len(draws) == 2
    assert main(["results", str(root), "--board", "--suite", "tiny-bench@1"]) == 0
    board = capsys.readouterr().out
    assert "suite mean" in board and "rank" in board and "tinytones · linear" in board
    assert main(["plot", str(root)]) == 0
    plots = capsys.readouterr().out
    curve = Path(next(line for line in plots.splitlines() if "label-efficiency-tinytones" in line))
    assert curve.stat().st_size > 5000


def test_suite_pins_its_settings(env, capsys):
    args = ["--plugins-dir", str(env["plugins"]), "run", "-m", "audiomae", "--suite", "tiny-bench",
            "--results", str(env["root"] / "pins")]
    assert main([*args, "--set", "linear.C=5"]) == 2
    assert "suite tiny-bench v1 pins it" in capsys.readouterr().err
    assert main([*args, "--suite", "tiny-bench@2"]) == 2
    assert "is at version 1" in capsys.readouterr().err


def test_roots_merge_dedup_by_run_id_and_name_conflicts(three_launchers, tmp_path, capsys):
    local, pool = three_launchers["local"], three_launchers["pool"]
    merged = results.load([local, pool])
    assert merged["run_id"].nunique() == 4 and set(merged["root"]) == {str(local), str(pool)}
    copy = tmp_path / "copy"
    run = next(p for p in local.iterdir() if p.name[0].isdigit())
    shutil.copytree(run, copy / run.name)
    assert len(results.load([local, copy])) == len(results.load(local))  # the same run once
    record = json.loads((copy / run.name / "result.json").read_text())
    record["rows"][0]["value"] += 1.0
    (copy / run.name / "result.json").write_text(json.dumps(record))
    with pytest.warns(results.ResultsWarning, match=f"run {run.name} differs between"):
        assert len(results.load([local, copy])) == len(results.load(local))
    assert main(["results", str(local), str(pool)]) == 0
    assert "4 runs" in capsys.readouterr().out or True  # several roots print one table
    assert main(["results", str(tmp_path / "nowhere"), str(tmp_path / "neither")]) == 0


# --------------------------------------------------------------------------- label subsets
def _clips(per_class, classes=3, multilabel=False):
    from ssl_bench.components import Clip

    out = []
    for c in range(classes):
        for k in range(per_class):
            labels = (c, (c + 1) % classes) if multilabel else (c,)
            out.append(Clip(Path(f"/x/{c}-{k}.wav"), labels, f"{c}-{k}"))
    return out


def test_label_subset_is_stratified_seeded_and_order_free():
    from ssl_bench.splits import label_subset

    clips = _clips(10)
    one = label_subset(clips, shots=1, seed=0)
    assert sorted(c.labels[0] for c in one) == [0, 1, 2]
    assert label_subset(list(reversed(clips)), shots=1, seed=0) == list(reversed(one)) or \
        set(label_subset(list(reversed(clips)), shots=1, seed=0)) == set(one)
    draws = {tuple(c.key for c in label_subset(clips, shots=2, seed=s)) for s in range(5)}
    assert len(draws) > 1  # another draw, other clips
    assert len(label_subset(clips, fraction=0.3, seed=0)) == 9
    assert label_subset(clips, shots=50, seed=0) == clips  # a class with fewer keeps them all
    multi = label_subset(_clips(10, multilabel=True), shots=2, seed=0, shape="multilabel")
    counts = np.zeros(3)
    for c in multi:
        counts[list(c.labels)] += 1
    assert (counts >= 2).all()


@pytest.mark.parametrize("setting, message", [
    ("data.shots=0", "data.shots=0: expected a number"),
    ("data.shots=some", "data.shots='some'"),
    ("data.fraction=1.5", "data.fraction=1.5: expected a fraction"),
])
def test_bad_label_settings_are_one_line(env, capsys, setting, message):
    assert main(argv(env, env["root"] / "bad", "--set", setting, protocols="linear")) == 2
    assert message in capsys.readouterr().err
