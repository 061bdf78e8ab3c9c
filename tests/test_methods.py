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
