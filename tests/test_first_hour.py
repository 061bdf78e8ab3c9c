"""What a new user meets first: checks before data work, self-describing checkpoints, tables
that tell runs apart, one-line errors, and runs that say what they are doing."""

from __future__ import annotations


import pytest
import torch

from ssl_bench.splitdata import TaskData
from ssl_bench.config import ConfigError
from ssl_bench.registry import set_registry
from ssl_bench.runner import run_experiment
from trainfixtures import SMALL, tiny_config, tiny_registry

#: The tiny model's sizes as --set values (what tiny_config applies).
SMALL_SETTINGS = {k: ("null" if v is None else v) for k, v in SMALL.items()}


@pytest.fixture(scope="module")
def registry():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reg = tiny_registry()
    old = set_registry(reg)
    yield reg
    set_registry(old)
    torch.set_num_threads(threads)


class _Stop(RuntimeError):
    pass


def _stop_at_features(monkeypatch, seen):
    def load_features(self, *args, **kwargs):
        seen.update(pretrain=self.config["pretrain"]["batch_size"], finetune=self.config["finetune"]["batch_size"])
        raise _Stop("features")

    monkeypatch.setattr(TaskData, "load_features", load_features)


def test_a_batch_larger_than_the_data_is_capped_before_features_with_a_warning(registry, tmp_path, monkeypatch,
                                                                              capsys):
    seen: dict = {}
    _stop_at_features(monkeypatch, seen)
    cfg = tiny_config(registry, **{"pretrain.batch_size": 512, "finetune.batch_size": 64})
    with pytest.raises(_Stop):
        run_experiment(cfg, data_dir=tmp_path / "data", results_root=tmp_path / "res", progress=False)
    # tinytones: 18 training clips per fold; fine-tuning keeps 14 after a quarter is carved out
    assert seen == {"pretrain": 18, "finetune": 14}
    err = capsys.readouterr().err
    assert "pretrain.batch_size 512 is larger than the 18 training examples" in err
    assert "using finetune.batch_size=14" in err


def test_accumulation_no_split_can_fill_is_an_error_naming_the_keys_before_features(registry, tmp_path,
                                                                                     monkeypatch):
    seen: dict = {}
    _stop_at_features(monkeypatch, seen)
    cfg = tiny_config(registry, **{"pretrain.batch_size": 512, "pretrain.accum_steps": 32})
    with pytest.raises(ConfigError, match=r"pretrain\.batch_size: the 18 training examples .* "
                                          r"pretrain\.accum_steps=32 .* lower pretrain\.accum_steps"):
        run_experiment(cfg, data_dir=tmp_path / "data", results_root=tmp_path / "res", progress=False)
    assert seen == {}  # nothing was extracted


def test_the_training_loop_names_the_key_and_a_value_that_fits():
    from ssl_bench.train import TrainConfig, TrainConfigError, fit

    data = [{"x": torch.randn(2), "y": torch.randn(1)} for _ in range(10)]
    model = torch.nn.Linear(2, 1)

    def loss(m, batch, step):
        return ((m(batch["x"]) - batch["y"]) ** 2).mean()

    with pytest.raises(TrainConfigError, match=r"finetune\.batch_size 16 is larger than the 10 .* "
                                               r"set finetune\.batch_size=10 or lower"):
        fit(model, data, loss, TrainConfig(batch_size=16), progress=False, section="finetune")


# --------------------------------------------------------------------------- self-describing checkpoints
SIZES = {"encoder.dim": 32, "encoder.depth": 1, "encoder.heads": 2, "decoder.dim": 48, "decoder.depth": 1,
         "decoder.heads": 2, "decoder": "global", "frontend.num_frames": 128, "masker.ratio": 0.6}


def _saved_checkpoint(registry, path):
    from ssl_bench.checkpoint import save_model
    from ssl_bench.model import create_model

    model = create_model("audiomae", preset="tiny", registry=registry, **SIZES)
    model.frontend.set_norm_stats(-3.5, 2.25)  # as a runner does after building
    save_model(model, path)
    return model


def test_a_checkpoint_rebuilds_its_model_with_no_other_setting(registry, tmp_path):
    from ssl_bench.checkpoint import safe_load
    from ssl_bench.model import create_model

    original = _saved_checkpoint(registry, tmp_path / "mine.pt")
    saved = safe_load(tmp_path / "mine.pt")
    assert (saved["model_name"], saved["preset"], saved["norm_stats"]) == ("audiomae", "tiny", [-3.5, 2.25])
    assert saved["config"]["frontend"]["mean"] == -3.5 and saved["config"]["decoder"]["dim"] == 48

    model = create_model(checkpoint=tmp_path / "mine.pt", registry=registry)
    assert model.frontend.norm_stats == (-3.5, 2.25)
    for slot in ("encoder", "masker", "decoder", "objective", "method"):
        assert model.config[slot] == original.config[slot], slot
    for key, value in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    # a setting the user gives still wins, and another decoder drops the saved one's settings
    assert create_model(checkpoint=tmp_path / "mine.pt", registry=registry, **{"masker.ratio": 0.7}) \
        .config["masker"]["ratio"] == 0.7


def test_reconstruct_needs_only_the_checkpoint(registry, tmp_path):
    from ssl_bench.cli import main
    from taskfixtures import tone, write_wav

    _saved_checkpoint(registry, tmp_path / "mine.pt")
    clip = write_wav(tmp_path / "clip.wav", tone(1, 1.28, 16000), 16000)
    out = tmp_path / "x.png"
    assert main(["reconstruct", "--checkpoint", str(tmp_path / "mine.pt"), str(clip), "-o", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 1000


def test_training_checkpoints_describe_their_model_too(registry, tmp_path):
    from ssl_bench.checkpoint import safe_load
    from ssl_bench.model import create_model
    from ssl_bench.train.state import save_train_checkpoint

    model = create_model("audiomae", preset="tiny", registry=registry, **SIZES)
    model.frontend.set_norm_stats(1.0, 2.0)
    opt = torch.optim.AdamW(model.parameters())

    class _Sched:
        def state_dict(self):
            return {}

    save_train_checkpoint(tmp_path / "last.pt", model, opt, _Sched(), torch.amp.GradScaler("cpu", enabled=False),
                          1, 0, [], [], torch.zeros(1), None, False)
    saved = safe_load(tmp_path / "last.pt")
    assert saved["model_name"] == "audiomae" and saved["norm_stats"] == [1.0, 2.0]


def test_probe_with_an_own_checkpoint_needs_no_model_flag(registry, tmp_path):
    from ssl_bench import results
    from ssl_bench.cli import main

    _saved_checkpoint(registry, tmp_path / "mine.pt")
    assert main(["probe", "--task", "tinytones", "--checkpoint", str(tmp_path / "mine.pt"), "--quiet",
                 "--data-dir", str(tmp_path / "data"), "--results", str(tmp_path / "res"), "--splits", "fold1"]) == 0
    df = results.load(tmp_path / "res")
    assert set(df["model"]) == {"audiomae"} and set(df["decoder"]) == {"global"}
    assert set(df["encoder.dim"]) == {32}


# --------------------------------------------------------------------------- tables that tell runs apart
def _write(root, runs):
    from ssl_bench.results import RunWriter

    for i, (run_id, config, values) in enumerate(runs):
        with RunWriter(root, run_id, config) as w:
            for split, value in enumerate(values):
                for protocol in ("finetune", "linear"):
                    w.add_row(task="t", protocol=protocol, split=f"fold{split + 1}", seed=0, init="pretrained",
                              init_id=f"id{i}", metric="accuracy", value=value)


def _sweep(root):
    runs = []
    for k, (masker, ratio) in enumerate([("random", 0.6), ("random", 0.8), ("time-stripes", 0.6),
                                         ("time-stripes", 0.8)]):
        node = {"name": masker, "ratio": ratio, **({"width": 2} if masker == "time-stripes" else {})}
        runs.append((f"20261201-10000{k}-m-t-abcde{k}-00{k}0", {"model": "m", "task": "t", "masker": node,
                                                               "pretrain": {"epochs": 10}}, [0.5 + k / 10]))
    _write(root, runs)


def test_a_sweep_summary_keeps_every_run_and_shows_the_masker(tmp_path):
    from ssl_bench import results

    _sweep(tmp_path)
    df = results.load(tmp_path)
    assert set(df["masker.width"].astype(str)) == {"-", "2"}
    table = results.split_table(df)
    assert len(table.xs("linear", level="protocol")) == 4 and len(table.xs("finetune", level="protocol")) == 4
    assert "masker" in table.index.names and "masker.width" in table.index.names
    assert set(table["n"]) == {1}
    assert not any("±" in cell for cell in table["mean ± std"])  # one value: its mean, no "± 0.0000"
    assert set(table["runs"]) == {f"abcde{k}-00{k}0" for k in range(4)}
    md = results.format_table(table, "md")
    header = md.splitlines()[0]
    assert "/  |" not in header and "| masker |" in header


def test_compare_does_not_pool_runs_that_differ_in_an_unnamed_setting(tmp_path):
    from ssl_bench import results

    runs = [("20261201-100000-m-t-aaaaaa-0001", {"model": "m", "task": "t", "masker": {"name": "random", "ratio": 0.8},
                                                 "pretrain": {"epochs": 80}}, [0.9, 0.8, 0.85, 0.9, 0.7]),
            ("20261202-100000-m-t-bbbbbb-0002", {"model": "m", "task": "t", "masker": {"name": "random", "ratio": 0.8},
                                                 "pretrain": {"epochs": 10}}, [0.5]),
            ("20261203-100000-m-t-cccccc-0003", {"model": "m", "task": "t", "masker": {"name": "random", "ratio": 0.6},
                                                 "pretrain": {"epochs": 10}}, [0.4])]
    _write(tmp_path, runs)
    df = results.load(tmp_path)
    table = results.compare(df[df["protocol"] == "linear"], ["masker.ratio"])
    assert "pretrain.epochs" in table.index.names and len(table) == 2
    assert sorted(table["runs"]) == ["aaaaaa-0001", "bbbbbb-0002, cccccc-0003"]
    # filters: a run by its short id, a date, a setting
    assert set(results.select(df, runs=["bbbbbb-0002"])["run"]) == {"bbbbbb-0002"}
    assert set(results.select(df, since="2026-12-02")["run"]) == {"bbbbbb-0002", "cccccc-0003"}
    assert set(results.select(df, where=["pretrain.epochs=80"])["run"]) == {"aaaaaa-0001"}
    assert set(results.select(df, where=["masker.ratio=0.6", "pretrain.epochs=10"])["run"]) == {"cccccc-0003"}


def test_results_command_filters_and_prints_one_precision(tmp_path, capsys):
    from ssl_bench.cli import main

    _sweep(tmp_path)
    assert main(["results", str(tmp_path), "--where", "masker=random", "--protocol", "linear",
                 "--format", "md"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 2  # the header and the two random-masker runs
    assert "abcde0-0000" in out and "abcde2" not in out
    import re

    numbers = re.findall(r"\b0\.\d+\b", out)
    assert numbers and all(len(n) == 6 for n in numbers)  # 4 decimals throughout
    assert main(["results", str(tmp_path), "--where", "nokey=1"]) == 2
    assert "no such column" in capsys.readouterr().err


# --------------------------------------------------------------------------- one-line errors
def test_missing_data_is_one_line_with_the_hint(tmp_path, monkeypatch, capsys):
    from ssl_bench.cli import main

    monkeypatch.setenv("SSL_BENCH_OFFLINE", "1")
    assert main(["run", "--model", "audiomae", "-p", "tiny", "--task", "esc50", "--data-dir", str(tmp_path / "none"),
                 "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip()
    assert "as published (the data is not here yet)" in err  # the plan came first, from the published sizes
    assert [line for line in err.splitlines() if not line.startswith(("plan:", "  "))] == [err.splitlines()[-1]]
    err = err.splitlines()[-1]
    assert err.startswith("ssl-bench: error:") and "unpack it into" in err and "--data-dir" in err


# --------------------------------------------------------------------------- long runs talk
def _regression():
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(2, generator=g), "y": torch.randn(1, generator=g)} for _ in range(16)]


def _mse(m, batch, step):
    return ((m(batch["x"]) - batch["y"]) ** 2).mean()


def test_a_resumed_training_says_where_it_continues_and_a_long_one_gives_an_estimate(tmp_path, monkeypatch):
    from ssl_bench.train import FitHooks, TrainConfig, fit
    from ssl_bench.train import loop

    class _Abort(RuntimeError):
        pass

    def abort_at_second(epoch, model):
        if epoch == 1:
            raise _Abort

    cfg = TrainConfig(batch_size=4, epochs=3, checkpoint_min_s=0)
    lines: list[str] = []
    with pytest.raises(_Abort):
        fit(torch.nn.Linear(2, 1), _regression(), _mse, cfg, checkpoint_dir=tmp_path, progress=False,
            hooks=FitHooks(on_epoch_end=abort_at_second, log=lines.append), desc="pretrain")
    monkeypatch.setattr(loop, "LONG_RUN_S", 0.0)  # every training counts as long
    fit(torch.nn.Linear(2, 1), _regression(), _mse, cfg, checkpoint_dir=tmp_path, progress=False,
        hooks=FitHooks(log=lines.append), desc="pretrain")
    assert lines[0] == f"pretrain: resuming from epoch 2/3, step 0/4 ({tmp_path / 'last.pt'})"
    assert len(lines) == 2 and "s per step; its 8 steps (3 epochs) will take about" in lines[1]


def test_progress_off_a_terminal_is_periodic_plain_lines(capsys):
    from ssl_bench.progress import PlainProgress, bar

    assert isinstance(bar(10, "x"), PlainProgress)  # pytest's stderr is no terminal
    meter = PlainProgress(total=4, desc="pretrain 1/2", unit="steps", every=0.0)
    for _ in range(4):
        meter.update(1)
        meter.set_postfix(loss="0.5000")
    meter.close()  # the last count was said already
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 4 and lines[0].startswith("pretrain 1/2: 1/4 steps (25%), 0 s")
    assert lines[-1].startswith("pretrain 1/2: 4/4 steps (100%)") and lines[-1].endswith("loss 0.5000")


def test_the_run_says_which_split_of_how_many_and_what_is_left(registry, tmp_path):
    from ssl_bench.runner import run_experiment

    run_dir = run_experiment(tiny_config(registry), data_dir=tmp_path / "data", results_root=tmp_path / "res",
                             protocols=("linear",), progress=False)
    log = (run_dir / "log.txt").read_text().splitlines()
    assert any(line.startswith("[fold1 1/2] linear (random encoder): ") and line.endswith(" elapsed")
               for line in log)
    assert any(line.startswith("[fold2 2/2] linear (random encoder): ") and line.endswith(" left") for line in log)


def test_the_estimate_counts_a_reused_pretraining_once():
    """Split 1 pretrained (100 s) and probed (10 s); split 2 reused the encoder (0 s): the
    estimate for split 2's probe and the 3 splits after is 10 s + 3 x 10 s, not 4 x 110 s."""
    from ssl_bench.progress import RunClock

    lines: list[str] = []
    clock = RunClock(5, lines.append, is_pretraining=lambda name: name == "pretrain", is_frozen=lambda name: False)
    clock.t_splits -= 110
    clock.start_split(1)
    clock.protocol_seconds = {("pretrain", "random"): 0.0, ("linear", "pretrained"): 10.0}
    clock.ran_here = {("pretrain", "random"): 0.0}
    clock.announce("fold2", "linear", "pretrained")
    assert lines == ["[fold2 2/5] linear: 1 min 50 s elapsed, about 40 s left"]
    clock.ran_here = {}  # before split 2 has pretrained, reuse is unknown: no estimate
    clock.announce("fold2", "pretrain", "random")
    assert lines[-1] == "[fold2 2/5] pretrain: 1 min 50 s elapsed"


# --------------------------------------------------------------------------- small things
def test_run_directories_name_the_swept_values():
    from ssl_bench import results
    from ssl_bench.config import parse_overrides

    sweeps = parse_overrides(["masker=random,time", "masker.ratio=0.6,0.8", "encoder.depth=2"])
    labels = results.sweep_labels(sweeps)
    assert labels == ["masker=random_masker.ratio=0.6", "masker=random_masker.ratio=0.8",
                      "masker=time_masker.ratio=0.6", "masker=time_masker.ratio=0.8"]
    run_id = results.new_run_id({"model": "m", "task": "t"}, labels[1])
    assert "-m-t-masker=random_masker.ratio=0.8-" in run_id
    assert results.short_run_id(run_id) == "-".join(run_id.split("-")[-2:])
    assert results.sweep_labels([{}]) == [""]


def test_plugins_json_carries_presets_and_notes(capsys):
    import json

    from ssl_bench.cli import main

    assert main(["plugins", "--json"]) == 0
    info = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    audiomae = info["audiomae"]["models"]["audiomae"]
    assert {"tiny", "base"} <= set(audiomae["presets"]) and audiomae["default_preset"]
    assert audiomae["notes"] and "esc50" in audiomae["recipes"]


def test_a_slow_first_step_gives_the_estimate_at_once(monkeypatch):
    from ssl_bench.train import FitHooks, TrainConfig, fit
    from ssl_bench.train import loop

    monkeypatch.setattr(loop, "LONG_RUN_S", 0.0)
    monkeypatch.setattr(loop, "SLOW_STEP_S", 0.0)
    lines: list[str] = []
    steps: list[int] = []
    done: list[int] = []  # optimiser steps finished, as each line is said
    fit(torch.nn.Linear(2, 1), _regression(), _mse, TrainConfig(batch_size=4, accum_steps=2, epochs=2),
        progress=False, desc="pretrain",
        hooks=FitHooks(log=lambda line: (lines.append(line), done.append(len(steps))),
                       on_step_end=lambda s, m: steps.append(s)))
    assert len(lines) == 1 and "its 8 steps (2 epochs) will take about" in lines[0]
    assert done == [0]  # said after the first micro-batch, before the first step ends


def test_a_masker_sweep_prints_four_rows_per_protocol_with_a_masker_column(registry, tmp_path, capsys):
    from ssl_bench.cli import main

    sizes = ["encoder.dim=32", "encoder.depth=1", "encoder.heads=2", "decoder.dim=32", "decoder.depth=1",
             "decoder.heads=2", "pretrain.epochs=1", "pretrain.batch_size=8", "data.valid_fraction=0.25"]
    argv = ["run", "-m", "audiomae", "-t", "tinytones", "-p", "tiny", "--quiet", "--splits", "fold1",
            "--protocols", "pretrain,linear", "--data-dir", str(tmp_path / "data"), "--results", str(tmp_path / "res"),
            "--set", "masker=random,time", "--set", "masker.ratio=0.6,0.8"]
    for setting in sizes:
        argv += ["--set", setting]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out[:out.index("results written to")].splitlines() if line.strip()]
    assert lines[1].split()[:2] == ["masker", "masker.ratio"]  # the index names under the column names
    rows = lines[2:]
    assert sum(" pretrain " in f" {r} " for r in rows) == 4
    assert sum("pretrained" in r for r in rows) == 4 and len(rows) == 12  # + 4 random-init baselines
    dirs = sorted(p.name for p in (tmp_path / "res").iterdir() if not p.name.startswith("."))
    assert [d.split("-tinytones-")[1].rsplit("-", 2)[0] for d in dirs] == [
        "masker=random_masker.ratio=0.6", "masker=random_masker.ratio=0.8",
        "masker=time_masker.ratio=0.6", "masker=time_masker.ratio=0.8"]


def test_short_meters_in_a_row_still_write_periodic_lines(capsys, monkeypatch):
    from ssl_bench import progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(progress, "_LAST_LINE", [clock[0]])
    for epoch in range(6):  # 6 epochs of 4 steps, 4 s each: no epoch lasts the 30 s interval
        meter = progress.PlainProgress(total=4, desc=f"pretrain {epoch + 1}/6", unit="steps", every=30.0)
        for _ in range(4):
            clock[0] += 4.0
            meter.update(1)
        meter.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[0].startswith("pretrain 2/6: 4/4 steps")  # at 32 s, 64 s and 96 s


def test_a_file_that_names_no_model_asks_for_one(registry, tmp_path):
    from ssl_bench.model import create_model

    torch.save({"encoder.cls_token": torch.zeros(1, 1, 32)}, tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="name the model"):
        create_model(checkpoint=tmp_path / "bare.pt", registry=registry)


def test_filters_that_leave_nothing_keep_the_columns(tmp_path):
    from ssl_bench import results

    _sweep(tmp_path)
    df = results.select(results.load(tmp_path), runs=["nosuchrun"])
    assert df.empty and "masker" in df.columns
    assert results.select(df, where=["masker=random"], since="2026-12-01").empty


def test_a_single_value_for_a_list_setting_is_a_one_value_grid():
    from ssl_bench.protocols.base import section_config
    from ssl_bench.protocols.linear import LinearProtocol

    assert section_config(LinearProtocol, {"C": 1.0}).C == [1.0]
    assert section_config(LinearProtocol, {"C": [0.1, 1.0]}).C == [0.1, 1.0]


# --------------------------------------------------------------------------- a command line that starts at once
_PROBE = """
import sys
from ssl_bench.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
heavy = sorted(m for m in ("torch", "pandas", "sklearn", "scipy") if m in sys.modules)
print("IMPORTED", ",".join(heavy) or "none", status)
"""


def _cli(argv, index, cwd):
    import os
    import subprocess
    import sys

    env = {**os.environ, "SSL_BENCH_PLUGIN_INDEX": str(index)}
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)
    return done.stdout, done.stderr


def test_help_and_plugins_import_no_torch_once_the_index_knows_the_plugins(tmp_path):
    from ssl_bench.registry import Registry

    index = tmp_path / "index.json"
    Registry(index=index)  # the plugins imported once (here, where torch is loaded already): the index is written
    out, err = _cli(["--help"], index, tmp_path)
    assert out.splitlines()[-1] == "IMPORTED none 0", err
    assert "bench" in out and "knn" in out and "results" in out  # a plugin's command, a protocol's, a core one
    out, err = _cli(["plugins"], index, tmp_path)
    assert out.splitlines()[-1] == "IMPORTED none 0", err
    assert "audiomae  (built-in, " in out and "audiomae: tiny, small, base" in out
    out, err = _cli(["results", str(tmp_path / "nothing")], index, tmp_path)
    assert out.splitlines()[-1] == "IMPORTED pandas 0", err  # pandas for the table; no torch, no scipy
    _sweep(tmp_path / "res")  # runs whose configs name components (the protocols' slots are looked up)
    out, err = _cli(["results", str(tmp_path / "res")], index, tmp_path)
    assert "time-stripes" in out and out.splitlines()[-1] == "IMPORTED pandas 0", err


def test_a_lazy_registry_imports_a_plugin_at_first_use_and_sees_a_changed_file(tmp_path):
    import hashlib
    import os
    import sys

    from ssl_bench.registry import Registry

    folder, index = tmp_path / "plugs", tmp_path / "index.json"
    folder.mkdir()
    plugin = folder / "tally.py"
    text = ("from ssl_bench import hookimpl\n\nclass Tally:\n    help = 'count things'\n\n"
            "@hookimpl\ndef register_commands(register):\n    register('tally', Tally())\n")
    plugin.write_text(text)
    Registry(plugins_dirs=[folder], index=index, entry_points=False)
    sys.modules.pop("ssl_bench_plugin_tally", None)
    lazy = Registry(plugins_dirs=[folder], index=index, entry_points=False, lazy=True)
    entry = lazy.get("command", "tally")
    assert entry.listing["help"] == "count things" and "ssl_bench_plugin_tally" not in sys.modules
    assert type(entry.factory).__name__ == "Tally" and "ssl_bench_plugin_tally" in sys.modules
    info = {p["name"]: p for p in lazy.describe()}["tally"]
    assert info["sha256"] == hashlib.sha256(text.encode()).hexdigest() and info["origin"] == f"file {plugin}"

    plugin.write_text(text.replace("'tally'", "'count'"))  # edited: its index record no longer holds
    os.utime(plugin, ns=(plugin.stat().st_atime_ns, plugin.stat().st_mtime_ns + 10**9))
    fresh = Registry(plugins_dirs=[folder], index=index, entry_points=False, lazy=True)
    assert fresh.names("command") == ["count"]


def test_every_loaded_plugin_is_in_the_run_record_and_a_column_that_splits_no_table(tmp_path):
    from ssl_bench import results
    from ssl_bench.provenance import run_record
    from ssl_bench.registry import Registry
    from ssl_bench.results import RunWriter

    folder = tmp_path / "plugs"
    folder.mkdir()
    (folder / "extra.py").write_text("from ssl_bench import hookimpl\n")
    record = run_record(None, registry=Registry(plugins_dirs=[folder]))
    plugins = {p["name"]: p for p in record["plugins"]}
    assert plugins["audiomae"]["origin"] == "built-in" and plugins["audiomae"]["version"]
    assert len(plugins["extra"]["sha256"]) == 64
    for run, digest in (("20261201-100000-m-t-aaaaaa-0001", "a" * 64), ("20261201-100001-m-t-aaaaaa-0002", "b" * 64)):
        provenance = {"plugins": [*record["plugins"][:1], {"name": "extra", "origin": "file x", "sha256": digest}]}
        with RunWriter(tmp_path / "res", run, {"model": "m", "task": "t"}, provenance=provenance) as w:
            w.add_row(task="t", protocol="linear", split="fold1", seed=0, init="random", init_id="random",
                      metric="accuracy", value=0.5)
    df = results.load(tmp_path / "res")
    assert sorted(df["plugin.extra"]) == ["sha256:aaaaaaaaaaaa", "sha256:bbbbbbbbbbbb"]
    assert len(results.summary(df)) == 1  # like code_version: shown and filtered on, never a setting
    assert len(results.select(df, where=["plugin.extra=sha256:aaaaaaaaaaaa"])) == 1


# --------------------------------------------------------------------------- partial runs, empty filters
def test_an_interrupted_runs_finished_splits_show_marked_and_apart(registry, tmp_path, monkeypatch, capsys):
    from ssl_bench import results
    from ssl_bench.cli import main
    from ssl_bench.runner import _Run

    real = _Run.run_split

    def stop_at_the_second(self, split):
        if split.name == "fold2":
            raise KeyboardInterrupt
        return real(self, split)

    monkeypatch.setattr(_Run, "run_split", stop_at_the_second)
    res = tmp_path / "res"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny_config(registry), data_dir=tmp_path / "data", results_root=res, protocols=("linear",),
                       progress=False)
    df = results.load(res)
    assert set(df["split"]) == {"fold1"} and set(df["status"]) == {"interrupted"}
    table = results.summary(df)
    assert "status" in table.columns and set(table["status"]) == {"interrupted"}
    assert main(["results", str(res)]) == 0
    captured = capsys.readouterr()
    assert "interrupted" in captured.out and "not finished" in captured.err

    monkeypatch.setattr(_Run, "run_split", real)  # the same command again: it finishes, the record goes
    run_experiment(tiny_config(registry), data_dir=tmp_path / "data", results_root=res, protocols=("linear",),
                   progress=False)
    df = results.load(res)
    assert "status" not in df.columns and set(df["split"]) == {"fold1", "fold2"} and df["run_id"].nunique() == 1


def test_a_filter_that_matches_nothing_says_so_and_what_there_is(tmp_path, capsys):
    from ssl_bench.cli import main

    _sweep(tmp_path)
    assert main(["results", str(tmp_path), "--where", "masker=block", "--task", "t"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == ("no rows match --task t --where masker=block (8 rows of 4 run(s) under "
                   f"{tmp_path}; task: t; masker: random, time-stripes)")
    assert main(["results", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.strip() == f"no results under {tmp_path / 'empty'}"


# --------------------------------------------------------------------------- Ctrl-C says what it does
def _interrupt(tmp_path, capfd, stops, checkpoint_min_s=0.0):
    """A 2-epoch x 4-step training; in global step ``k`` the process sends itself SIGINT
    ``stops[k]`` times (as a terminal's Ctrl-C would).  Returns what was printed at once and the
    exception."""
    import os
    import signal

    from ssl_bench.train import FitHooks, TrainConfig, TrainingInterrupted, fit

    def hit(step, model):
        for _ in range(stops.get(step, 0)):
            os.kill(os.getpid(), signal.SIGINT)

    cfg = TrainConfig(batch_size=4, epochs=2, checkpoint_min_s=checkpoint_min_s)
    with pytest.raises(TrainingInterrupted) as info:
        fit(torch.nn.Linear(2, 1), _regression(), _mse, cfg, checkpoint_dir=tmp_path, progress=False,
            desc="pretrain", hooks=FitHooks(on_step_end=hit))
    return capfd.readouterr().err, info.value


def test_the_first_ctrl_c_says_at_once_which_step_it_finishes_and_what_a_second_would_leave(tmp_path, capfd):
    err, exc = _interrupt(tmp_path, capfd, stops={2: 1})
    said = [line for line in err.splitlines() if line.startswith("ssl-bench: SIGINT received")]
    assert len(said) == 1 and "pretrain: finishing step 2 of 8 (about " in said[0]  # said in step 2
    assert "Ctrl-C again to stop at once without saving (nothing saved yet: a rerun would start pretrain over)" \
        in said[0]
    assert exc.checkpoint == tmp_path / "last.pt" and exc.exit_code == 130
    assert str(exc) == (f"stopped by SIGINT; checkpoint saved to {tmp_path / 'last.pt'}; run the same command again "
                        f"to resume pretrain from {tmp_path / 'last.pt'} (epoch 1 of 2, step 2 of 4)")


def test_a_second_ctrl_c_stops_at_once_and_promises_only_the_checkpoint_there_is(tmp_path, capfd):
    err, exc = _interrupt(tmp_path / "none", capfd, stops={1: 2}, checkpoint_min_s=1e9)
    assert exc.checkpoint is None and exc.resume_from is None
    assert str(exc) == "stopped by SIGINT; pretrain had no checkpoint yet, so running the same command again starts " \
                       "it over"
    # with a checkpoint at the end of epoch 1 (checkpoint_every 1, no minimum interval)
    err, exc = _interrupt(tmp_path / "one", capfd, stops={5: 2})
    assert "(a rerun resumes from " in err
    assert exc.checkpoint is None and str(exc).endswith(
        f"run the same command again to resume pretrain from {tmp_path / 'one' / 'last.pt'} (after epoch 1 of 2)")


# --------------------------------------------------------------------------- the plan before the work
def test_dry_run_prints_the_plan_and_reads_no_audio(registry, tmp_path, monkeypatch, capsys):
    from ssl_bench.cli import main

    def no_audio(self, *args, **kwargs):
        raise AssertionError("a dry run read audio")

    monkeypatch.setattr(TaskData, "load_features", no_audio)
    argv = ["run", "-m", "audiomae", "-t", "tinytones", "-p", "tiny", "--dry-run", "--data-dir", str(tmp_path / "d"),
            "--results", str(tmp_path / "res"), "--protocols", "pretrain,finetune,linear,knn"]
    for key, value in SMALL_SETTINGS.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("plan: audiomae, preset tiny, 0.0 M parameters, task tinytones, device cpu")
    assert out[1] == "  2 split(s): each train 14, valid 4, test 18 clips, from the task's metadata"
    assert out[2].split()[:6] == ["pretrain", "2", "split(s)", "x", "2", "epochs"]
    assert "linear    2 split(s) x 2 encoders (trained, random init) x 36 clips embedded" in out[4]
    assert "(embeddings shared)" in out[5] and out[5].split()[0] == "knn"
    assert out[6].startswith("  whole run: about ")
    assert not (tmp_path / "res").exists() and not (tmp_path / "d").exists()


def test_the_estimate_counts_each_protocols_work_once_per_split_and_encoder(registry):
    from ssl_bench.plan import estimate
    from ssl_bench.protocols.base import SplitSizes

    cfg = tiny_config(registry, **{"pretrain.epochs": 3, "pretrain.batch_size": 8, "finetune.epochs": 2,
                                   "finetune.batch_size": 4, "finetune.aug_factors": None,
                                   "finetune.head_init": "random"})
    sizes = {"a": SplitSizes(train=10, valid=2, test=5, unlabeled=12), "b": SplitSizes(10, 2, 5, 12)}
    per = {"pretrain": 1.0, "train": 0.1, "forward": 0.01}
    plans = {p.name: p for p in estimate(cfg, registry, ["pretrain", "finetune", "linear", "knn"], sizes, per,
                                         checkpoint=False)}
    assert plans["pretrain"].seconds == 2 * 3 * 8 * 1.0  # 2 splits x 3 epochs x one batch of 8 (of 12 clips)
    assert plans["finetune"].seconds == pytest.approx(2 * (2 * 8 * 0.1 + (2 * 2 + 5) * 0.01))  # + valid, test
    grid = tiny_config(registry, **{"finetune.epochs": 2, "finetune.batch_size": 4, "finetune.lr_factors": [1, 3],
                                    "finetune.aug_factors": [0, 1], "finetune.head_init": "probe"})
    four = estimate(grid, registry, ["finetune"], sizes, per, checkpoint=False)[0]
    assert four.seconds == pytest.approx(2 * (4 * 2 * 8 * 0.1 + (4 * 2 * 2 + 5 + 12) * 0.01))  # + the probe head
    assert four.work == "2 split(s) x 4 settings x 2 epochs x 8 clips"
    assert plans["linear"].seconds == pytest.approx(2 * 2 * 17 * 0.01)  # trained and random init, one pass each
    assert plans["knn"].seconds == 0.0  # the same embeddings
    with_corpus = estimate({**cfg, "pretrain": {**cfg["pretrain"], "corpus": "task"}}, registry, ["pretrain"], sizes,
                           per, checkpoint=False)
    assert with_corpus[0].seconds == 3 * 8 * 1.0  # one encoder for every split
    from_checkpoint = {p.name: p for p in estimate(cfg, registry, ["pretrain", "linear"], sizes, per,
                                                   checkpoint=True)}
    assert from_checkpoint["pretrain"].seconds == 0.0 and "--checkpoint" in from_checkpoint["pretrain"].work


def test_a_gpu_sized_preset_on_the_cpu_says_so_and_names_the_small_one(registry, tmp_path, monkeypatch):
    from ssl_bench import plan
    from ssl_bench.config import resolve

    monkeypatch.setattr(plan, "CPU_SIZED_PARAMETERS", 200_000)  # "small" cut to 2 blocks stands in for ViT-B
    cfg = resolve("audiomae", preset="small", task="tinytones", registry=registry,
                  overrides={"encoder.depth": 2, "decoder.depth": 1, "device": "cpu"})
    made = plan.plan_run(cfg, registry, ["linear"], data_dir=tmp_path / "d", preset_given=False)
    text = "\n".join(made.lines())
    assert "preset small (the model's default; -p chooses another)" in text.splitlines()[0]
    assert "warning: preset small (" in text and "is sized for a GPU and this run is on the CPU: about " in text
    assert ". Preset tiny (0.1 M) is CPU-sized: about " in text and "(-p tiny)" in text
    assert text.endswith("Nothing is changed: the run goes on with preset small")


def test_sizes_of_a_task_whose_data_is_not_here_are_the_published_ones_and_nothing_is_fetched(tmp_path, monkeypatch):
    from ssl_bench import download
    from ssl_bench.config import resolve
    from ssl_bench.plan import split_sizes
    from ssl_bench.registry import get_registry

    def no_network(*args, **kwargs):
        raise AssertionError("the plan tried to download")

    monkeypatch.setattr(download, "download", no_network)
    reg = get_registry()
    cfg = resolve("audiomae", preset="tiny", task="esc50", registry=reg)
    task = reg.get("task", "esc50").factory(data_dir=tmp_path / "esc")
    sizes, source = split_sizes(cfg, task, ["fold2"])
    assert source == "as published (the data is not here yet)" and list(sizes) == ["fold2"]
    assert (sizes["fold2"].train + sizes["fold2"].valid, sizes["fold2"].test) == (1600, 400)
    assert not (tmp_path / "esc").exists()


# --------------------------------------------------------------------------- plot always has something to say
def test_plot_draws_the_board_of_two_checkpoints_and_says_what_it_cannot_draw(tmp_path, capsys):
    from ssl_bench.cli import main
    from ssl_bench.results import RunWriter

    for k, (init, values) in enumerate((("ckpt-a", [0.6, 0.7]), ("ckpt-b", [0.4]))):
        with RunWriter(tmp_path, f"20261201-10000{k}-m-t-aaaaa{k}-000{k}", {"model": "m", "task": "t"}) as w:
            for split, value in enumerate(values):
                w.add_row(task="t", protocol="linear", split=f"fold{split + 1}", seed=0, init=init,
                          init_id=f"id{k}", metric="accuracy", value=value, primary_metric="accuracy")
    assert main(["plot", str(tmp_path), "--kind", "board", "--kind", "layers,curves"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "plots" / "board.png") and (tmp_path / "plots" / "board.png").stat().st_size > 5000
    assert out[1:] == ["layers: nothing to draw (no per-layer probe rows: --protocols layers makes them)",
                       "curves: nothing to draw (no run here trained: pretraining and fine-tuning write curves)"]
    assert main(["plot", str(tmp_path), "--kind", "bars"]) == 2
    assert "choose from board, ablation, layers, label-efficiency, curves" in capsys.readouterr().err


def test_an_ablation_plot_never_pools_runs_that_differ_in_another_setting(tmp_path):
    from ssl_bench import results
    from ssl_bench.plots import ablation_cells, plot_ablation

    _sweep(tmp_path)  # masker random / time-stripes x ratio 0.6 / 0.8
    df = results.load(tmp_path)
    summary, others, panels = ablation_cells(df, "masker.ratio")
    assert "masker" in others and {p[4] for p in panels} == {"random", "time-stripes"}
    assert len(panels) == 2 * 2  # finetune and linear, for each masker
    assert set(summary["n"]) == {1}  # no bar pools two runs
    assert plot_ablation(df, "masker.ratio", tmp_path / "a.png").stat().st_size > 5000
