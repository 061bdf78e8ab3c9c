"""README is executable truth: its commands and code blocks run as written (CI-cheap variants).

* every ``ssl-bench`` command in README's shell blocks (``torchrun -m ssl_bench`` too) parses
  with the real command line, and every ``run`` among them resolves and dry-builds its model,
  with README's plugin files loaded from ``my_plugins/``, as README tells a reader to do;
* README's plugin files load and register what README then runs;
* the plugin example runs, on one fold with one pretraining epoch, then README's ``results``
  and ``reconstruct`` lines run as written against what it made;
* the Python API block runs, skipping only the lines that read files README assumes you have
  (an official checkpoint, a Hugging Face directory, a downloaded dataset).

Slow commands (base-size models, real datasets, GPUs) are only parsed and dry-built, never run.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: Lines of README's Python API block that read files a reader brings (README says so next to them).
NEEDS_FILES = ("pretrained.pth", "ast-finetuned-audioset", "data/ESC-50-master")


def blocks() -> list[tuple[int, str, str]]:
    """``(line, language, text)`` of every fenced code block of README."""
    out, lang, start, lines = [], None, 0, []
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, lines = line[3:].strip() or "text", number, []
            else:
                out.append((start, lang, "\n".join(lines)))
                lang = None
        elif lang is not None:
            lines.append(line)
    return out


def shell_commands() -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of every ssl-bench command in README's shell blocks (continuations joined,
    comments dropped, ``a | b`` alternatives and ``[--flag]`` options expanded)."""
    found = []
    for start, lang, text in blocks():
        if lang != "bash":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            command = re.search(r"(?:^|\s)ssl-bench\s", line)
            if command and " && " not in line:  # (install lines are for a fresh machine)
                argv = line[command.end():].split()
            elif "-m ssl_bench" in line:
                argv = line[line.index("-m ssl_bench") + len("-m ssl_bench"):].split()
            else:
                continue
            for variant in _alternatives(" ".join(argv)):
                found.append((start, shlex.split(variant)))
    return found


def _alternatives(line: str) -> list[str]:
    """``--format md | csv | latex`` -> one line per format; ``[--json]`` -> without and with."""
    option = re.search(r"\[([^\]]+)\]", line)
    if option:
        return _alternatives(line[:option.start()] + line[option.end():]) + \
            _alternatives(line[:option.start()] + option.group(1) + line[option.end():])
    bar = re.search(r"(\S+)((?: \| \S+)+)", line)
    if bar:
        choices = [bar.group(1)] + bar.group(2).split(" | ")[1:]
        return [line[:bar.start()] + c.strip() + line[bar.end():] for c in choices]
    return [line]


def plugin_files() -> dict[str, str]:
    """README's plugin files by name (``# my_plugins/NAME.py`` opens each)."""
    out = {}
    for _, lang, text in blocks():
        first = text.splitlines()[0] if text else ""
        if lang == "python" and first.startswith("# my_plugins/"):
            out[first[2:].strip().split("/", 1)[1]] = text
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A reader's working directory: README's plugin files in ``my_plugins/``, data under it."""
    root = tmp_path_factory.mktemp("reader")
    (root / "my_plugins").mkdir()
    for name, text in plugin_files().items():
        (root / "my_plugins" / name).write_text(text)
    return root


@pytest.fixture
def reader(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("SSL_BENCH_DATA", str(workdir / "data"))
    monkeypatch.delenv("SSL_BENCH_RESULTS", raising=False)
    monkeypatch.delenv("SSL_BENCH_CACHE", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield workdir
    torch.set_num_threads(threads)


def test_readme_has_what_this_test_reads():
    commands = shell_commands()
    assert len(commands) >= 12
    assert set(plugin_files()) >= {"checkerboard.py", "delta_mae.py", "centroid.py"}
    assert any(argv[:2] == ["--plugins-dir", "my_plugins"] for _, argv in commands)


def test_readme_plugin_files_load_and_register(reader):
    from ssl_bench.registry import Registry

    reg = Registry(plugins_dirs=["my_plugins"])
    errors = [(p["name"], p["error"]) for p in reg.describe() if p["error"]]
    assert errors == []
    assert "mae-checker" in reg.names("model") and "checkerboard" in reg.names("masker")
    assert "delta-mae" in reg.names("method") and "centroid" in reg.names("protocol")


def test_every_readme_command_parses_and_every_run_resolves(reader):
    from ssl_bench.cli import _registry, build_parser
    from ssl_bench.config import ConfigError, parse_overrides, resolve
    from ssl_bench.model import check_config
    from ssl_bench.registry import set_registry

    for line, argv in shell_commands():
        registry = _registry(["--plugins-dir", "my_plugins", *argv])  # every README plugin present
        old = set_registry(registry)
        try:
            try:
                args = build_parser(registry).parse_args(argv)
            except SystemExit as exc:
                raise AssertionError(f"README line {line}: ssl-bench {' '.join(argv)} does not parse") from exc
            if args.command != "run" or not getattr(args, "model", None):
                continue
            entries = [(task, {}) for task in (args.task or "").split(",") if task]
            if getattr(args, "suite", None):  # a suite's tasks, with the settings it pins
                from ssl_bench.suites import get_suite

                entries = [(e.task, dict(e.settings)) for e in get_suite(args.suite, registry)[1].tasks]
            assert entries, f"README line {line}: ssl-bench {' '.join(argv)} names no task"
            for task, pinned in entries:
                for sweep in parse_overrides(args.overrides):
                    config = resolve(args.model, preset=args.preset, task=task, files=args.config,
                                     overrides={**pinned, **sweep}, registry=registry)
                    if config["model"] == "hear" and importlib.util.find_spec(
                            str(config["encoder"].get("module") or "-")) is None:
                        # README installs the exported module the line before; without it, one clear line
                        with pytest.raises(ConfigError, match="install the HEAR package first"):
                            check_config(config, registry, memory_bytes=2**40)
                        continue
                    check_config(config, registry, memory_bytes=2**40)  # sizes are checked, not the machine
        finally:
            set_registry(old)


def test_the_plugin_example_then_results_and_reconstruct_as_written(reader, capsys):
    from ssl_bench import results
    from ssl_bench.cli import main

    example = next(argv for _, argv in shell_commands() if "mae-checker" in argv)
    cheap = ["--splits", "fold1", "--protocols", "pretrain,linear", "--set", "pretrain.epochs=1", "--quiet"]
    assert main([*example, *cheap]) == 0
    df = results.load("results")
    assert set(df["model"]) == {"mae-checker"} and set(df["frontend.num_frames"]) == {256}  # 2 s clips
    # README's ablation, which its `results --compare masker.ratio` line reads
    ablation = next(argv for _, argv in shell_commands() if "masker.ratio=0.6,0.8" in argv)
    assert main([*ablation, "--splits", "fold1", "--protocols", "pretrain", "--set", "pretrain.epochs=1",
                 "--quiet"]) == 0
    capsys.readouterr()

    for _, argv in shell_commands():
        if argv[0] == "results":
            assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "mae-checker" in out and "0.6" in out and "0.8" in out and "\r" not in out

    line = next(argv for _, argv in shell_commands() if argv[0] == "reconstruct")
    checkpoint = next(Path("results/.cache/pretrain").glob("*/pretrained.pt"))
    shutil.copy(next(Path("data/synthetic").rglob("*.wav")), "clip.wav")
    argv = [a.replace("<hash>", checkpoint.parent.name) for a in line]
    assert main(argv) == 0
    assert Path(argv[argv.index("-o") + 1]).stat().st_size > 1000


def test_the_python_api_block(reader):
    import ssl_bench

    block = next(text for _, lang, text in blocks() if lang == "python" and "create_model" in text)
    kept = [line for line in block.splitlines() if not any(name in line for name in NEEDS_FILES)]
    namespace = {"waveform": torch.randn(1, 16000), "m": None}
    exec(compile("\n".join(kept), str(README), "exec"), namespace)  # noqa: S102 - README's own code
    assert isinstance(namespace["model"], ssl_bench.model.SSLModel)
    assert namespace["layers"].shape[1] == namespace["model"].encoder.depth + 2
