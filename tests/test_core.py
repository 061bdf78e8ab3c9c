"""Registry, config and results: the core that every plugin relies on."""

from __future__ import annotations

import json
import multiprocessing as mp
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ssl_bench import hookimpl
from ssl_bench.checkpoint import CheckpointError, atomic_save, safe_load
from ssl_bench.components import Component
from ssl_bench.config import ConfigError, flatten, parse_overrides, resolve
from ssl_bench.model import ModelSpec
from ssl_bench.registry import Registry, RegistryError
from ssl_bench import results


# --------------------------------------------------------------------------- throw-away plugin
class ToyMasker(Component):
    @dataclass
    class Config:
        ratio: float = 0.5
        block: int = 1

    def forward(self, batch_size, grid, layout, device="cpu", generator=None):
        n = grid[0] * grid[1]
        mask = torch.zeros(batch_size, n, dtype=torch.bool)
        mask[:, : int(n * self.cfg.ratio)] = True
        return mask


class ToyEncoder(Component):
    @dataclass
    class Config:
        dim: int = 8
        depth: int = 1


class ToyPlugin:
    @staticmethod
    @hookimpl
    def register_maskers(register):
        register("toy", ToyMasker)

    @staticmethod
    @hookimpl
    def register_encoders(register):
        register("toy-enc", ToyEncoder)

    @staticmethod
    @hookimpl
    def register_models(register):
        register("toy-model", ModelSpec(
            components={"encoder": "toy-enc", "masker": "toy"},
            settings={"pretrain.epochs": 3},
            presets={"tiny": {"encoder.dim": 4, "decoder.depth": 9}, "wide": {"encoder.dim": 64}},
            default_preset="tiny",
            recipes={"esc50": {"finetune.epochs": 7}},
        ))


@pytest.fixture
def registry() -> Registry:
    reg = Registry(entry_points=False)
    reg.add_plugin(ToyPlugin, name="toy")
    return reg


# --------------------------------------------------------------------------- registry
def test_registry_registers_and_lists(registry):
    assert registry.get("masker", "toy").factory is ToyMasker
    info = {p["name"]: p for p in registry.describe()}
    assert info["toy"]["registered"] == {"encoder": ["toy-enc"], "masker": ["toy"], "model": ["toy-model"]}
    with pytest.raises(RegistryError, match="available: toy"):
        registry.get("masker", "nope")


def test_builtins_are_registered_through_entry_points():
    reg = Registry()
    origins = {p["name"]: p["origin"] for p in reg.describe()}
    assert origins.get("audio") == "built-in"
    assert "audiomae" in origins and "synthetic" in origins


def test_duplicate_name_names_both_plugins(registry, capsys):
    class Other:
        @staticmethod
        @hookimpl
        def register_maskers(register):
            register("toy", ToyMasker)

    registry.add_plugin(Other, name="other")
    err = capsys.readouterr().err
    assert "'other'" in err and "already registered by plugin 'toy'" in err
    with pytest.raises(RegistryError, match="'toy' and 'other'"):
        registry.get("masker", "toy")


def test_plugins_dir_broken_and_misspelled_plugins_are_one_line_each(tmp_path, capsys):
    (tmp_path / "good.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        import torch
        from ssl_bench import hookimpl
        from ssl_bench.components import Component

        class Stripes(Component):
            @dataclass
            class Config:
                ratio: float = 0.5
            def forward(self, batch_size, grid, layout, device="cpu", generator=None):
                n = grid[0] * grid[1]
                m = torch.zeros(batch_size, n, dtype=torch.bool)
                m[:, ::2] = True
                return m

        @hookimpl
        def register_maskers(register):
            register("stripes", Stripes)
    """))
    (tmp_path / "broken.py").write_text("import this_module_does_not_exist\n")
    (tmp_path / "typo.py").write_text(textwrap.dedent("""
        from ssl_bench import hookimpl
        @hookimpl
        def register_maskerz(register):
            register("never", object)
    """))
    (tmp_path / "raises.py").write_text(textwrap.dedent("""
        from ssl_bench import hookimpl
        @hookimpl
        def register_decoders(register):
            raise RuntimeError("boom")
    """))
    reg = Registry(entry_points=False, plugins_dirs=[tmp_path])
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err_lines) == 3
    assert any("'broken'" in line and "ModuleNotFoundError" in line for line in err_lines)
    assert any("'typo'" in line and "unknown hook register_maskerz" in line for line in err_lines)
    assert any("'raises'" in line and "RuntimeError: boom" in line for line in err_lines)
    assert reg.get("masker", "stripes").plugin == "good"
    assert "never" not in reg.names("masker")


def test_load_plugins_env_switch_filters_third_party(monkeypatch):
    monkeypatch.setenv("SSL_BENCH_LOAD_PLUGINS", "")
    reg = Registry()
    assert all(p["origin"] == "built-in" for p in reg.describe())


# --------------------------------------------------------------------------- config
def test_resolve_layers_and_slots(registry):
    cfg = resolve("toy-model", registry=registry)
    assert cfg["preset"] == "tiny" and cfg["encoder"] == {"name": "toy-enc", "dim": 4, "depth": 1}
    assert cfg["masker"] == {"name": "toy", "ratio": 0.5, "block": 1}
    assert cfg["decoder"] is None  # the preset's decoder.depth is dropped: no decoder here
    assert cfg["pretrain"]["epochs"] == 3
    cfg = resolve("toy-model", preset="wide", task="esc50", overrides={"masker.ratio": 0.9, "seed": 3},
                  registry=registry)
    assert cfg["encoder"]["dim"] == 64 and cfg["masker"]["ratio"] == 0.9 and cfg["seed"] == 3
    assert cfg["finetune"]["epochs"] == 7


def test_unknown_keys_list_valid_ones(registry):
    with pytest.raises(ConfigError, match=r"unknown key 'masker\.ratoi'.*masker\.block, masker\.ratio"):
        resolve("toy-model", overrides={"masker.ratoi": 0.1}, registry=registry)
    with pytest.raises(ConfigError, match="pretrain.epochs"):
        resolve("toy-model", overrides={"pretrain.epoch": 1}, registry=registry)
    with pytest.raises(ConfigError, match="available: toy"):
        resolve("toy-model", overrides={"masker": "nope"}, registry=registry)
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny, wide"):
        resolve("toy-model", preset="huge", registry=registry)
    with pytest.raises(RegistryError, match="unknown model 'nope'; available: toy-model"):
        resolve("nope", registry=registry)


def test_overrides_expand_into_sweeps():
    runs = parse_overrides(["masker.ratio=0.7,0.8", "encoder.depth=2", "linear.C=[0.1, 1.0]"])
    assert runs == [
        {"masker.ratio": 0.7, "encoder.depth": 2, "linear.C": [0.1, 1.0]},
        {"masker.ratio": 0.8, "encoder.depth": 2, "linear.C": [0.1, 1.0]},
    ]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["oops"])
    # YAML 1.1 would keep "4e-3" a string; a learning rate must arrive as a number
    assert parse_overrides(["pretrain.blr=4e-3", "decoder=global"]) == [{"pretrain.blr": 0.004, "decoder": "global"}]


def test_one_point_of_a_grid_is_a_list(registry):
    # `--set linear.C=1` (no brackets) used to reach the probe as a float and crash iterating it
    cfg = resolve("toy-model", overrides={"linear.C": 1.0}, registry=registry)
    assert cfg["linear"]["C"] == [1.0]
    cfg = resolve("toy-model", overrides={"linear.C": [0.1, 1.0]}, registry=registry)
    assert cfg["linear"]["C"] == [0.1, 1.0]


def test_yaml_files_and_flatten(registry, tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("masker:\n  name: toy\n  ratio: 0.25\npretrain:\n  epochs: 11\n")
    assert flatten({"masker": {"name": "toy", "ratio": 0.25}}) == {"masker": "toy", "masker.ratio": 0.25}
    cfg = resolve("toy-model", files=[f], registry=registry)
    assert cfg["masker"]["ratio"] == 0.25 and cfg["pretrain"]["epochs"] == 11
    bad = tmp_path / "bad.yaml"
    bad.write_text("masker: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        resolve("toy-model", files=[bad], registry=registry)


# --------------------------------------------------------------------------- checkpoints
def test_atomic_save_and_safe_load(tmp_path):
    import argparse

    path = atomic_save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1.0)}, tmp_path / "c.pth")
    assert torch.equal(safe_load(path)["model"]["w"], torch.ones(2))
    assert not list(tmp_path.glob(".*tmp"))
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="trunc.pth: cannot be read"):
        safe_load(trunc)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="evil.pth"):
        safe_load(evil)


# --------------------------------------------------------------------------- results
def _write_run(root: Path, ratio: float, split: str, value: float) -> str:
    config = {"model": "toy-model", "task": "synthetic", "masker": {"name": "toy", "ratio": ratio}}
    run_id = results.new_run_id(config)
    with results.RunWriter(root, run_id, config) as run:
        run.log("hello")
        run.metrics({"epoch": 0, "loss": 1.0})
        run.add_row(task="synthetic", protocol="linear", split=split, seed=0, init="pretrained",
                    metric="accuracy", value=value)
    return run_id


def test_run_writer_is_atomic_and_loads(tmp_path):
    _write_run(tmp_path, 0.7, "fold1", 0.5)
    _write_run(tmp_path, 0.7, "fold2", 0.7)
    _write_run(tmp_path, 0.8, "fold1", 0.9)
    with pytest.raises(RuntimeError):
        with results.RunWriter(tmp_path, "failing", {"model": "x"}) as run:
            run.add_row(task="t", protocol="linear", split="a", seed=0, init="random", metric="accuracy", value=1)
            raise RuntimeError("crash mid-run")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    df = results.load(tmp_path)
    assert len(df) == 3 and set(df["masker.ratio"]) == {0.7, 0.8}
    table = results.compare(df, ["masker.ratio"])
    assert list(table.columns) == ["0.7", "0.8", "p: 0.8 vs 0.7", "runs"]  # runs: what each row pools
    # mean ± the half-width of the 95% t interval (2 folds: t(0.975, 1) * 0.1414 / sqrt 2), n
    assert table.iloc[0]["0.7"] == "0.6000 ± 1.2706 (n=2)" and table.iloc[0]["0.8"] == "0.9000 (n=1)"
    assert table.iloc[0]["p: 0.8 vs 0.7"] == "n/a - (t, n=1)"  # one matched fold: no test
    assert "| model" in results.format_table(table, "md")
    with pytest.raises(KeyError, match="masker.ratio"):
        results.compare(df, ["masker.ration"])


def _writer_process(args):
    root, i = args
    return _write_run(Path(root), 0.1 * i, f"fold{i}", float(i))


def test_concurrent_writers_lose_no_row(tmp_path):
    with mp.get_context("spawn").Pool(8) as pool:
        ids = pool.map(_writer_process, [(str(tmp_path), i) for i in range(8)])
    df = results.load(tmp_path)
    assert sorted(df["run_id"]) == sorted(ids) and sorted(df["value"]) == [float(i) for i in range(8)]
    assert all(json.loads((tmp_path / i / "result.json").read_text())["rows"] for i in ids)


def test_source_tree_fallback_lists_every_entry_point(monkeypatch):
    # a plugin added to pyproject's entry points but not to a hand-kept list vanished when run
    # from a source tree that was never installed (beats, wav2vec2 and hear-api did): the
    # fallback now reads pyproject itself, and loads every built-in without entry points
    import importlib.metadata
    import re

    from ssl_bench.registry import BUILTIN_MODULES, ENTRY_POINT_GROUP

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    section = text.split(f"[project.entry-points.{ENTRY_POINT_GROUP}]", 1)[1].split("\n[", 1)[0]
    declared = dict(re.findall(r'^([\w-]+) = "([\w.]+)"$', section, flags=re.M))  # tomllib is 3.11+
    assert declared == BUILTIN_MODULES and {"audiomae", "hear", "folder-events", "synthetic-events"} <= set(declared)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    reg = Registry()
    assert {n for n, p in reg.plugins.items() if p.origin == "built-in" and not p.error} >= set(declared)
    assert {"folder-events", "synthetic-events"} <= set(reg.names("task"))
