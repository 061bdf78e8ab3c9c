"""End to end through the command line: plugins dir, sweeps, results table, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssl_bench import results
from ssl_bench.cli import main

# Small enough for CI: 2 folds, one epoch each, a tiny encoder.
FAST = [
    "--splits", "fold1,fold2",
    "--set", "pretrain.epochs=1", "--set", "finetune.epochs=1",
    "--set", "encoder.depth=1", "--set", "linear.C=[1.0]", "--quiet",
]

PLUGIN = textwrap.dedent('''
    """A drop-in variant: a checkerboard masker and a model preset that uses it."""
    from dataclasses import dataclass

    import torch

    from ssl_bench import hookimpl
    from ssl_bench.components import TIME_MAJOR, Component
    from ssl_bench.model import ModelSpec


    class CheckerboardMasker(Component):
        @dataclass
        class Config:
            phase: int = 0

        def forward(self, batch_size, grid, layout, device="cpu", generator=None):
            t = torch.arange(grid[0]).view(-1, 1)
            f = torch.arange(grid[1]).view(1, -1)
            cells = ((t + f + self.cfg.phase) % 2 == 0)
            if layout != TIME_MAJOR:
                cells = cells.T
            return cells.reshape(1, -1).expand(batch_size, -1).to(device)


    @hookimpl
    def register_maskers(register):
        register("checkerboard", CheckerboardMasker)


    @hookimpl
    def register_models(register):
        register("mae-checker", ModelSpec(
            components={"frontend": "kaldi-fbank", "encoder": "vit", "masker": "checkerboard",
                        "decoder": "global", "objective": "masked-mse", "method": "mae"},
            presets={"tiny": {"encoder.dim": 32, "encoder.depth": 1, "encoder.heads": 2,
                              "decoder.dim": 32, "decoder.depth": 1, "decoder.heads": 2,
                              "pretrain.batch_size": 16, "finetune.batch_size": 16}},
            default_preset="tiny",
        ))
''')


def test_plugins_dir_masker_and_model_run_by_name(tmp_path, capsys):
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "checker.py").write_text(PLUGIN)
    (plugdir / "broken.py").write_text("raise ImportError('missing dependency foo')\n")
    rc = main(["--plugins-dir", str(plugdir), "run", "--model", "mae-checker", "--task", "synthetic",
               "--results", str(tmp_path / "res"), *FAST])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "plugin 'broken': failed to import: ImportError: missing dependency foo" in err
    df = results.load(tmp_path / "res")
    assert set(df["masker"]) == {"checkerboard"}
    assert {"finetune", "linear"} <= set(df["protocol"])
    assert set(df["split"]) == {"fold1", "fold2"}
    assert "fold1" in out and "linear" in out


def test_sweep_becomes_one_comparison_table(tmp_path, capsys):
    res = tmp_path / "res"
    rc = main(["run", "--model", "audiomae", "--task", "synthetic", "--preset", "tiny", "--results", str(res),
               "--protocols", "pretrain,linear", "--set", "masker.ratio=0.6,0.8", *FAST])
    assert rc == 0
    capsys.readouterr()
    assert main(["results", str(res), "--compare", "masker.ratio"]) == 0
    table = capsys.readouterr().out
    assert "0.6" in table and "0.8" in table and "(McNemar, " in table  # per-clip predictions: paired by clip
    assert re.search(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] \(n=\d\)", table)  # mean [interval] (n)
    df = results.load(res)
    assert sorted(df["masker.ratio"].unique()) == [0.6, 0.8]
    assert main(["results", str(res), "--compare", "masker.ratio", "--format", "md"]) == 0
    assert capsys.readouterr().out.startswith("|")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--model", "nope", "--task", "synthetic"], "unknown model 'nope'; available: "),
        (["run", "--model", "audiomae", "--task", "nope"], "unknown task 'nope'; available: "),
        (["run", "--model", "audiomae", "--task", "synthetic", "--preset", "huge"], "unknown preset 'huge'"),
        (["run", "--model", "audiomae", "--task", "synthetic", "--set", "encoder.dpth=2"],
         "unknown key 'encoder.dpth'; valid keys: "),
        (["run", "--model", "audiomae", "--task", "synthetic", "--protocols", "pretrian"], "unknown protocol pretrian"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    rc = main([*argv, "--results", str(tmp_path / "res")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


def test_plugins_command_lists_builtins(capsys):
    assert main(["plugins", "--json"]) == 0
    info = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert info["audiomae"]["origin"] == "built-in" and "audiomae" in info["audiomae"]["registered"]["model"]
    assert "synthetic" in info["synthetic"]["registered"]["task"]
    assert all(p["error"] is None for p in info.values())


def test_python_dash_m_and_help():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "ssl_bench", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0
    for cmd in ("run", "results", "plugins", "bench", "reconstruct"):
        assert cmd in out.stdout



def test_a_reader_that_leaves_early_is_not_an_error(monkeypatch, capsys):
    # `ssl-bench plugins --json | head -c 10` ended in a BrokenPipeError traceback
    class GoneReader:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            raise ValueError("no file")

    monkeypatch.setattr(sys, "stdout", GoneReader())
    assert main(["plugins", "--json"]) == 0
