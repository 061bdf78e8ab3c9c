"""README is executable truth: every line of its shell blocks and its code blocks runs as written.

Each step of README's shell blocks (``a && b`` is two steps) meets one of these, in README's
order, and a step none of them knows fails the test:

* ``ssl-bench`` commands (``torchrun -m ssl_bench`` and ``srun torchrun ...`` too) run through
  the real command line as written: ``run`` and its protocol subcommands with ``--dry-run``
  appended (everything up to the first audio: plugins, checkpoints, settings, checks, the
  plan, with the plan's per-example timing replaced by constants, since a ViT-B timed on a CI
  CPU costs minutes; the timing itself is tested in test_first_hour.py), the others for real
  (``results``, ``plugins``, ``plot``, ``reconstruct``, ``export-hear``) on what README's plugin
  example and ablation made (run first, on one fold with one pretraining epoch); a ``<hash>``
  placeholder becomes the encoder they pretrained;
* a ``run`` that needs a file the reader brings (an official checkpoint, a torch hub file) is
  parsed, resolved and checked (:data:`NEEDS_FILES`);
* README's other commands run as written with CI-sized arguments where the written ones take
  minutes (:data:`CHEAPER`): the fixture script, ``pip install`` of the exported HEAR package
  (into a temporary target, offline) and the ``python -c`` that imports it;
* a short list of steps is checked, not run, each with its reason (:data:`CHECKED`): making and
  activating the venv and installing this checkout (the test runs in it), the test suite
  itself, GPU scripts, SLURM's environment lines; every shell block must also pass
  ``bash -n``;
* README's plugin files load and register what README then runs; the Python API block runs,
  skipping only the lines that read files README assumes you have.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: What README's lines name that a reader brings (README says so next to them): an official
#: checkpoint, a Hugging Face directory, a torch hub file, a downloaded dataset.
NEEDS_FILES = ("pretrained.pth", "ast-finetuned-audioset", "data/ESC-50-master/", "BEATs_iter3.pt",
               "torchaudio:HUBERT_BASE", "./wav2vec2-base/", "my_wavlm.pth",
               "hear/dcase2016_task2-hear2021-full")
#: HEAR modules README's runs evaluate that a reader installs from PyPI (offline here): resolved and
#: checked, which refuses them in one line naming the package to install.
NEEDS_PACKAGES = ("hearbaseline",)
#: Steps run with smaller arguments than README's (the written ones take minutes): README's
#: words -> the words run.
CHEAPER = {"--per-class 40 --unlabeled 400": "--per-class 5 --unlabeled 2 --classes 2 --seconds 0.5"}
#: Steps checked, not run: a pattern and why.
CHECKED = [
    (r"python3 -m venv \.venv", "the test runs in the venv README makes"),
    (r"\. \.venv/bin/activate", "the test runs in the venv README makes"),
    (r"(\.venv/bin/)?pip install (-q )?-e (\.|'\.\[test\]')", "this checkout, installed: the test runs in it"),
    (r"(\.venv/bin/)?pip install torch==(\S+) torchaudio==(\S+) --index-url https://download\.pytorch\.org/whl/cpu",
     "the CPU wheels of the torch the test runs on"),
    (r"(SSL_BENCH_TEST_DEVICE=cuda )?\.venv/bin/python -m pytest -q", "the test suite itself"),
    (r"scripts/gpu_check\.sh gpu_check\.json", "needs a GPU"),
    (r"export SSL_BENCH_CACHE=\S+", "SLURM script environment"),
    (r'head=\$\(scontrol show hostnames "\$SLURM_JOB_NODELIST" \| head -n 1\)', "SLURM script environment"),
    (r"ssl-bench bench --preset tiny --quick", "tests/test_bench.py runs it"),
]


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


def shell_steps() -> list[tuple[int, str]]:
    """``(block line, step)`` of every step of README's shell blocks: continuations joined,
    comment lines and trailing ``  # ...`` comments dropped, ``a && b`` split in two."""
    found = []
    for start, lang, text in blocks():
        if lang != "bash":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if not line or line.startswith("#"):
                continue
            found += [(start, step.strip()) for step in line.split(" && ")]
    return found


def ssl_bench_argv(step: str) -> list[str] | None:
    """The ssl-bench arguments of a step (``ssl-bench ...``, ``[srun] torchrun ... -m ssl_bench ...``)."""
    words = shlex.split(step)
    if words[0] in ("ssl-bench", ".venv/bin/ssl-bench"):
        return words[1:]
    if "ssl_bench" in words and words[words.index("ssl_bench") - 1] == "-m":
        return words[words.index("ssl_bench") + 1:]
    return None


def shell_commands() -> list[tuple[int, list[str]]]:
    """``(block line, argv)`` of every ssl-bench command of README."""
    return [(start, argv) for start, step in shell_steps() if (argv := ssl_bench_argv(step)) is not None]


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
    assert len(commands) >= 20
    assert set(plugin_files()) >= {"checkerboard.py", "delta_mae.py", "centroid.py"}
    assert any(argv[:2] == ["--plugins-dir", "my_plugins"] for _, argv in commands)
    # lines to run, not menus: no `a | b | c` alternatives, no `[--optional]` flags
    assert not any(a in ("|", "||") or a.startswith("[") for _, argv in commands for a in argv)


def test_readme_plugin_files_load_and_register(reader):
    from ssl_bench.registry import Registry

    reg = Registry(plugins_dirs=["my_plugins"])
    errors = [(p["name"], p["error"]) for p in reg.describe() if p["error"]]
    assert errors == []
    assert "mae-checker" in reg.names("model") and "checkerboard" in reg.names("masker")
    assert "delta-mae" in reg.names("method") and "centroid" in reg.names("protocol")


def _quick_timing(config, registry, device, pretrain=True):
    """The plan's per-example timing, replaced by constants (see the module docstring)."""
    from ssl_bench.model import build_model

    n = sum(p.numel() for p in build_model(config, registry, dry_run=True).encoder.parameters())
    return {"pretrain": (0.003, 16), "forward": (0.001, 16), "train": (0.003, 16)}, n


def _resolves(argv: list[str]) -> None:
    """A ``run`` that needs a file the reader brings: parsed, resolved and checked."""
    from ssl_bench.cli import _registry, build_parser
    from ssl_bench.config import ConfigError, parse_overrides, resolve
    from ssl_bench.model import check_config
    from ssl_bench.registry import set_registry

    registry = _registry(["--plugins-dir", "my_plugins", *argv], listing=False)
    old = set_registry(registry)
    try:
        args = build_parser(registry).parse_args(argv)
        entries = [(task, {}) for task in (args.task or "").split(",") if task]
        if getattr(args, "suite", None):  # a suite's tasks, with the settings it pins
            from ssl_bench.suites import get_suite

            entries = [(e.task, dict(e.settings)) for e in get_suite(args.suite, registry)[1].tasks]
        assert entries, f"ssl-bench {' '.join(argv)} names no task"
        for task, pinned in entries:
            for sweep in parse_overrides(args.overrides):
                config = resolve(args.model, preset=args.preset, task=task, files=args.config,
                                 overrides={**pinned, **sweep}, registry=registry)
                if config["model"] == "hear" and importlib.util.find_spec(
                        str(config["encoder"].get("module") or "-")) is None:
                    with pytest.raises(ConfigError, match="install the HEAR package first"):
                        check_config(config, registry, memory_bytes=2**40)
                    continue
                check_config(config, registry, memory_bytes=2**40)  # sizes are checked, not the machine
    finally:
        set_registry(old)


def _checked(step: str) -> str | None:
    """Why ``step`` is checked rather than run (:data:`CHECKED`), after checking what can be."""
    for pattern, reason in CHECKED:
        match = re.fullmatch(pattern, step)
        if match is None:
            continue
        if "pip install torch==" in step:  # the pins are the versions the test runs on
            assert torch.__version__.split("+")[0] == match.group(2), step
        if "-e '.[test]'" in step:
            assert "test = [" in (ROOT / "pyproject.toml").read_text()
        if "gpu_check.sh" in step:
            assert (ROOT / "scripts" / "gpu_check.sh").is_file()
        return reason
    return None


def test_every_readme_shell_block_is_valid_bash():
    for start, lang, text in blocks():
        if lang == "bash":
            done = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
            assert done.returncode == 0, f"README line {start}: {done.stderr}"


def test_every_readme_step_runs_as_written(reader, capsys, monkeypatch):
    from ssl_bench import plan, results
    from ssl_bench.cli import main

    monkeypatch.setattr(plan, "per_example_seconds", _quick_timing)
    # what README's results, plot, reconstruct and export lines read: the plugin example and the
    # ablation, on one fold with one pretraining epoch
    example = next(argv for _, argv in shell_commands() if "mae-checker" in argv)
    cheap = ["--splits", "fold1", "--protocols", "pretrain,linear", "--set", "pretrain.epochs=1", "--quiet"]
    assert main([*example, *cheap]) == 0
    df = results.load("results")
    assert set(df["model"]) == {"mae-checker"} and set(df["frontend.num_frames"]) == {256}  # 2 s clips
    ablation = next(argv for _, argv in shell_commands() if "masker.ratio=0.6,0.8" in argv)
    assert main([*ablation, "--splits", "fold1", "--protocols", "pretrain", "--set", "pretrain.epochs=1",
                 "--quiet"]) == 0
    encoder = next(Path("results/.cache/pretrain").glob("*/pretrained.pt")).parent.name
    shutil.copy(next(Path("data/synthetic").rglob("*.wav")), "clip.wav")
    site = Path("site").resolve()
    capsys.readouterr()

    ran, checked = [], []
    for start, step in shell_steps():
        where = f"README line {start}: {step}"
        reason = _checked(step)
        if reason is not None:
            checked.append((step, reason))
            continue
        argv = ssl_bench_argv(step)
        if argv is not None:
            argv = [a.replace("<hash>", encoder) for a in argv]
            command = argv[2] if argv[:1] == ["--plugins-dir"] else argv[0]
            if command not in ("results", "plugins", "plot", "reconstruct", "export-hear", "status"):  # a run
                if any(name in step for name in NEEDS_FILES if not Path(name).exists()):
                    _resolves(argv)
                    checked.append((step, "needs a file the reader brings"))
                    continue
                if any(f"encoder.module={name}" in step for name in NEEDS_PACKAGES
                       if importlib.util.find_spec(name) is None):
                    _resolves(argv)
                    checked.append((step, "needs a HEAR package the reader installs"))
                    continue
                argv = [*argv, "--dry-run"]
            assert main(argv) == 0, where
            out = capsys.readouterr().out
            assert "Traceback" not in out, where
            if "--dry-run" in argv:
                assert out.startswith("plan: ") and "whole run:" in out, where
        elif step.startswith("python scripts/make_esc50_fixture.py"):
            for written, cheaper in CHEAPER.items():
                step = step.replace(written, cheaper)
            words = shlex.split(step)  # the script is the clone's; the reader's directory holds what it writes
            done = subprocess.run([sys.executable, str(ROOT / words[1]), *words[2:]], capture_output=True, text=True)
            assert done.returncode == 0, f"{where}: {done.stderr}"
        elif step.startswith("pip install"):  # offline, into a temporary target instead of the venv
            words = shlex.split(step)
            done = subprocess.run([sys.executable, "-m", "pip", *words[1:3], "-q", "--no-index", "--target", str(site),
                                   *words[3:]], capture_output=True, text=True)
            assert done.returncode == 0, f"{where}: {done.stderr}"
            sys.path.insert(0, str(site))
        elif step.startswith("python -c "):
            code = shlex.split(step)[2]
            exec(compile(code, str(README), "exec"), {})  # noqa: S102 - README's own line
            assert capsys.readouterr().out.split() == ["16000", "64"], where  # the tiny encoder's rate and width
        else:
            raise AssertionError(f"{where}: no way to run or check this step; add one to test_readme.py")
        ran.append(step)
    out = capsys.readouterr().out
    assert "\r" not in out
    brought = [step for step, reason in checked if reason == "needs a file the reader brings"]
    assert len(ran) >= 25 and len(brought) <= 7, (len(ran), brought)
    sys.path.remove(str(site))
    sys.modules.pop("my_audiomae", None)
    assert Path("rec.png").stat().st_size > 1000 and Path("results/plots").is_dir()


def test_the_python_api_block(reader):
    import ssl_bench

    block = next(text for _, lang, text in blocks() if lang == "python" and "create_model" in text)
    kept = [line for line in block.splitlines() if not any(name in line for name in NEEDS_FILES)]
    namespace = {"waveform": torch.randn(1, 16000), "m": None}
    exec(compile("\n".join(kept), str(README), "exec"), namespace)  # noqa: S102 - README's own code
    assert isinstance(namespace["model"], ssl_bench.model.SSLModel)
    assert namespace["layers"].shape[1] == namespace["model"].encoder.depth + 2
