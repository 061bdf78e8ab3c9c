"""Pretraining methods are plugins: a single-file method runs by name, and the core names none.

The method plugin below is the one README shows (MAE with another target: the spectrogram's
frame-to-frame difference instead of the spectrogram itself).
"""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest
import torch

from ssl_bench import cli
from ssl_bench.registry import Registry

ROOT = Path(__file__).resolve().parents[1]

DELTA_MAE = textwrap.dedent('''
    """MAE with another target: predict the frame-to-frame difference of the masked patches."""
    from dataclasses import dataclass

    import torch

    from ssl_bench import hookimpl
    from ssl_bench.components import Component


    class DeltaMAE(Component):
        @dataclass
        class Config:
            lag: int = 1  # frames between the two spectrogram frames subtracted

        def loss(self, model, spec, step):
            encoder = model.encoder
            grid = encoder.grid_for(spec.shape[1], spec.shape[2])
            # one mask per clip of the global batch, sliced: any split of the batch masks alike
            mask = model.masker(step.global_batch, grid, encoder.layout, "cpu", step.generator())
            mask = mask[step.offset:step.offset + spec.shape[0]]
            pred = model.decoder(encoder(spec, mask), mask.to(spec.device), grid)
            delta = spec - torch.roll(spec, self.cfg.lag, dims=1)
            return model.objective(pred.float(), encoder.patchify(delta).float(), mask.to(spec.device))


    @hookimpl
    def register_methods(register):
        register("delta-mae", DeltaMAE)
''')


def test_method_plugin_runs_by_name(tmp_path, capsys):
    plugins = tmp_path / "my_plugins"
    plugins.mkdir()
    (plugins / "delta_mae.py").write_text(DELTA_MAE)
    results = tmp_path / "results"
    code = cli.main(["--plugins-dir", str(plugins), "run", "-m", "audiomae", "-t", "synthetic", "-p", "tiny",
                     "--protocols", "pretrain,linear", "--splits", "fold1", "-q", "--results", str(results),
                     "--set", "method=delta-mae", "--set", "method.lag=2",
                     "--set", "pretrain.epochs=2", "--set", "pretrain.warmup_epochs=1"])
    assert code == 0, capsys.readouterr().err
    run_dir = next(p for p in results.iterdir() if not p.name.startswith("."))
    rows = json.loads((run_dir / "result.json").read_text())["rows"]
    pre = [r for r in rows if r["protocol"] == "pretrain"]
    assert len(pre) == 1 and pre[0]["metric"] == "loss" and pre[0]["value"] > 0
    assert {r["init"] for r in rows if r["protocol"] == "linear"} == {"pretrained", "random"}
    config = (run_dir / "config.yaml").read_text()
    assert "delta-mae" in config and "lag: 2" in config


def test_methods_and_protocols_are_listed():
    from ssl_bench.registry import get_registry

    reg = get_registry()
    assert "mae" in reg.names("method")
    assert {"pretrain", "finetune", "linear"} <= set(reg.names("protocol"))
    assert {"bench", "reconstruct"} <= set(reg.names("command"))


def test_core_protocols_in_a_bare_registry():
    """A registry without entry points (tests, notebooks) still has the core's own protocols."""
    reg = Registry(entry_points=False)
    assert {"pretrain", "finetune", "linear"} <= set(reg.names("protocol"))


def test_mae_method_state_is_saved_once():
    """The method uses the model's parts through its argument: no weight is saved twice."""
    import ssl_bench

    model = ssl_bench.create_model("audiomae", preset="tiny", task="synthetic",
                                   **{"frontend.num_frames": 64})
    keys = list(model.state_dict())
    assert not [k for k in keys if k.startswith("method.")]
    assert any(k.startswith("decoder.") for k in keys)
    spec = torch.randn(2, 64, 128)
    out = model.forward_pretrain(spec)
    assert out.loss.ndim == 0 and out.mask.shape == (2, 4 * 8)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(("." * node.level) + (node.module or ""))
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "ssl_bench").rglob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_plugin(path):
    """The core never imports a plugin or a task module (the registry's entry-point list names
    the built-in ones as strings, and that is all)."""
    bad = [n for n in _imports(path)
           if "plugins" in n.split(".") or "tasks" in n.split(".") or n.startswith((".plugins", "..plugins"))]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _code_strings_and_names(path: Path) -> list[tuple[int, str]]:
    """String constants (docstrings excluded) and attribute/keyword names in a module's code."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.Attribute):
            out.append((node.lineno, node.attr))
    return out


def test_core_names_no_component_kind():
    """No core module branches on a plugin's component names or settings (the registry's list
    of built-in entry points is the one place that names them)."""
    words = {"global", "hybrid", "norm_pix", "shifted-window", "audiomae", "vit", "kaldi-fbank", "masked-mse"}
    found = []
    for path in sorted((ROOT / "ssl_bench").rglob("*.py")):
        for lineno, text in _code_strings_and_names(path):
            if text in words and not (path.name == "registry.py" and "BUILTIN_MODULES" in path.read_text()
                                      and text in ("audiomae",)):
                found.append(f"{path.relative_to(ROOT)}:{lineno}: {text!r}")
    assert not found, "\n".join(found)


WAVE_FRONTEND = textwrap.dedent('''
    """A frontend with no dataset statistics: 10 ms frames of the raw waveform as features."""
    from dataclasses import dataclass

    import torch

    from ssl_bench import hookimpl
    from ssl_bench.components import Component


    class WaveFrames(Component):
        stats_key = None  # normalises with nothing measured on data

        @dataclass
        class Config:
            sample_rate: int = 16000
            hop: int = 160

        def __init__(self, cfg=None, build=None):
            super().__init__(cfg, build)
            self.build.num_bins = self.cfg.hop

        @property
        def sample_rate(self):
            return self.cfg.sample_rate

        @property
        def num_bins(self):
            return self.cfg.hop

        def compute(self, waveform):
            n = waveform.shape[-1] // self.cfg.hop
            return waveform[..., : n * self.cfg.hop].reshape(*waveform.shape[:-1], n, self.cfg.hop)

        def num_frames_for(self, seconds):
            return int(round(seconds * self.cfg.sample_rate)) // self.cfg.hop // 16 * 16

        def normalize(self, x):
            return x * 10.0

        def cache_config(self):
            return {"name": "wave-frames", "hop": self.cfg.hop}


    @hookimpl
    def register_frontends(register):
        register("wave-frames", WaveFrames)
''')


def test_a_frontend_without_statistics_is_not_given_any(tmp_path, capsys):
    """The runner fills statistics only for a frontend that declares them (stats_key): a waveform
    frontend runs, and is never normalised with the task's log-mel statistics."""
    plugins = tmp_path / "fe"
    plugins.mkdir()
    (plugins / "wave_frames.py").write_text(WAVE_FRONTEND)
    results = tmp_path / "results"
    code = cli.main(["--plugins-dir", str(plugins), "run", "-m", "audiomae", "-t", "synthetic", "-p", "tiny",
                     "--protocols", "linear", "--splits", "fold1", "-q", "--results", str(results),
                     "--set", "frontend=wave-frames", "--set", "linear.C=[1.0]"])
    assert code == 0, capsys.readouterr().err
    run_dir = next(p for p in results.iterdir() if not p.name.startswith("."))
    log = (run_dir / "log.txt").read_text()
    assert "norm mean" not in log
    rows = json.loads((run_dir / "result.json").read_text())["rows"]
    assert {r["protocol"] for r in rows} == {"linear"} and all(0 <= r["value"] <= 1 for r in rows)


def test_task_statistics_only_for_the_same_features():
    """A task's published statistics are keyed by the frontend's stats_key: another bin count
    (other features) computes its own, the 128-bin Kaldi fbank takes the task's."""
    from ssl_bench.tasks.common import KALDI_FBANK_128

    import ssl_bench

    fe128 = ssl_bench.create_model("audiomae", preset="tiny").frontend
    fe64 = ssl_bench.create_model("audiomae", preset="tiny", **{"frontend.num_bins": 64}).frontend
    assert fe128.stats_key == KALDI_FBANK_128
    assert fe64.stats_key != KALDI_FBANK_128
    # no preset or default lends AudioSet statistics to every task any more
    assert fe128.norm_stats is None


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys):
    assert cli.main(["run", "-m", "audiomae", "-t", "synthetic", "--set", "encoder.depht=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "encoder.depht" in err
    plugins = tmp_path / "buggy"
    plugins.mkdir()
    (plugins / "buggy.py").write_text(textwrap.dedent('''
        from ssl_bench import hookimpl
        from ssl_bench.commands import Command

        class Crash(Command):
            help = "a command with a bug"

            def run(self, args):
                return {}["missing"]

        @hookimpl
        def register_commands(register):
            register("crash", Crash())
    '''))
    with pytest.raises(KeyError):  # a bug is not turned into "ssl-bench: error: ..."
        cli.main(["--plugins-dir", str(plugins), "crash"])
