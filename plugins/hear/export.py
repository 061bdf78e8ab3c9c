"""``ssl-bench export-hear``: an installable HEAR 2021 module of any ssl-bench encoder.

The package written to ``-o DIR``::

    DIR/pyproject.toml          name NAME; its build backend is DIR/hear_build.py (a few
                                lines, no dependencies: installs offline)
    DIR/NAME/__init__.py        load_model, get_scene_embeddings, get_timestamp_embeddings
                                (+ get_layer_embeddings, an ssl-bench extension)
    DIR/NAME/model.pt           ssl-bench checkpoint: weights and the resolved config
                                (frontend statistics and input length included)

``pip install DIR`` (offline: ``pip install --no-deps DIR``) makes
``import NAME`` a HEAR module; it needs ``ssl-bench`` itself, which builds the model from the
config.  ``load_model()`` without an argument loads the packaged weights;
``load_model(path)`` any checkpoint export-hear wrote.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ssl_bench.checkpoint import save_model
from ssl_bench.commands import Command
from ssl_bench.config import ConfigError, parse_overrides
from ssl_bench.frames import HOP_METHODS

MODULE_TEMPLATE = '''"""HEAR 2021 module exported by ssl-bench.

model {model}, checkpoint {source} (init_id {init_id}); {hop_ms:.1f} ms between timestamps
({hop_how}), {window_s:.2f} s windows at {sample_rate} Hz, {dim}-dimensional embeddings.
"""

from pathlib import Path

from ssl_bench.plugins.hear.api import HearModel, load_exported

WEIGHTS = Path(__file__).with_name("model.pt")
#: seconds between timestamps when finer than the encoder's time columns (None: the columns)
HOP_S = {hop_s!r}
#: how the finer frames are made (ssl_bench.frames): "interpolate" or "overlap"
HOP_METHOD = {hop_method!r}


def load_model(model_file_path: str = "") -> HearModel:
    """The model (a torch.nn.Module with sample_rate, scene_embedding_size, timestamp_embedding_size)."""
    return load_exported(model_file_path or WEIGHTS, hop_s=HOP_S, hop_method=HOP_METHOD)


def get_timestamp_embeddings(audio, model):
    """(embeddings [n_sounds, n_timestamps, D], timestamps [n_sounds, n_timestamps] in ms)."""
    return model.timestamp_embeddings(audio)


def get_scene_embeddings(audio, model):
    """[n_sounds, D]."""
    return model.scene_embeddings(audio)


def get_layer_embeddings(audio, model):
    """ssl-bench extension: [n_sounds, layers, D], every layer's pooled output."""
    return model.layer_embeddings(audio)
'''

PYPROJECT_TEMPLATE = '''[build-system]
# a build backend in the package itself (hear_build.py): installs offline, needs no setuptools or wheel
requires = []
build-backend = "hear_build"
backend-path = ["."]

[project]
name = "{name}"
version = "0.1.0"
description = "HEAR 2021 module of ssl-bench model {model} (init_id {init_id})"
requires-python = ">=3.10"
dependencies = ["ssl-bench"]
'''

#: A PEP 517 backend of a few lines: the wheel is the package folder plus its dist-info.
BUILD_BACKEND = '''"""Build backend of this HEAR package (PEP 517): a wheel of {name}/ and its metadata."""

import base64
import hashlib
import zipfile
from pathlib import Path

NAME, VERSION = "{name}", "0.1.0"
ROOT = Path(__file__).parent
DIST_INFO = f"{{NAME}}-{{VERSION}}.dist-info"
METADATA = f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\nRequires-Dist: ssl-bench\\n"
WHEEL = "Wheel-Version: 1.0\\nGenerator: ssl-bench export-hear\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"


def _digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    files = {{f"{{NAME}}/{{p.name}}": p.read_bytes() for p in sorted((ROOT / NAME).iterdir()) if p.is_file()}}
    files[f"{{DIST_INFO}}/METADATA"] = METADATA.encode()
    files[f"{{DIST_INFO}}/WHEEL"] = WHEEL.encode()
    record = "".join(f"{{k}},{{_digest(v)}},{{len(v)}}\\n" for k, v in files.items()) + f"{{DIST_INFO}}/RECORD,,\\n"
    files[f"{{DIST_INFO}}/RECORD"] = record.encode()
    with zipfile.ZipFile(Path(wheel_directory) / name, "w", zipfile.ZIP_DEFLATED) as whl:
        for k, v in files.items():
            whl.writestr(k, v)
    return name


def get_requires_for_build_wheel(config_settings=None):
    return []
'''


def build_for_export(checkpoint: str, model_name: str | None = None, preset: str | None = None,
                     overrides: dict[str, Any] | None = None,
                     window_seconds: float | None = None) -> tuple[Any, dict[str, Any]]:
    """The model a checkpoint holds, built and loaded, and its identity.

    An ssl-bench checkpoint is rebuilt from the config saved in it (every ``--set`` of the run
    that made it); any other file through ``create_model(model_name, checkpoint=...)``.
    ``overrides`` (dotted keys) apply on top, e.g. the frontend statistics.
    """
    from ssl_bench.model import build_model, create_model, load_checkpoint
    from ssl_bench.provenance import checkpoint_payload, encoder_identity
    from ssl_bench.sources import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    overrides = dict(overrides or {})
    payload = checkpoint_payload(path)
    saved = (payload or {}).get("config")
    if isinstance(saved, dict) and (model_name is None or model_name == saved.get("model")):
        config = _with(saved, overrides)
        model = build_model(config)
        load_checkpoint(model, path)
    else:
        if model_name is None:
            raise ConfigError(f"{path}: not an ssl-bench checkpoint with its config; name its model with --model")
        model = create_model(model_name, preset=preset, checkpoint=path, **overrides)
    frontend = model.frontend
    stats = getattr(frontend, "norm_stats", None)
    if stats is not None:  # statistics set after the build live in the frontend: the config must carry them
        model.config["frontend"]["mean"], model.config["frontend"]["std"] = float(stats[0]), float(stats[1])
    fixed = model.config["frontend"].get("num_frames")
    if fixed and window_seconds is not None:
        raise ConfigError(f"--window-seconds: the model is built for {fixed} input frames (its windows); the option "
                          "is for models of any input length, such as wav2vec2 on waveforms")
    if not fixed:  # a model of any input length: windows of window_seconds (10 s by default)
        model.config["frontend"]["num_frames"] = int(frontend.num_frames_for(float(window_seconds or 10.0)))
    return model, {**encoder_identity(path), "source": str(checkpoint)}


def _with(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(config)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {key}: the checkpoint's config has no section {part!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"--set {key}: the checkpoint's config has no key {parts[-1]!r} there")
        node[parts[-1]] = value
    return out


def export_hear(checkpoint: str, out: str | Path, *, name: str | None = None, model_name: str | None = None,
                preset: str | None = None, overrides: dict[str, Any] | None = None,
                window_seconds: float | None = None, hop_ms: float | None = None,
                hop_method: str = "interpolate") -> Path:
    """Write the installable HEAR package of ``checkpoint`` to ``out`` (see the module docstring).

    ``hop_ms``: timestamps this many ms apart instead of the encoder's time columns, made by
    ``hop_method`` (:mod:`ssl_bench.frames`: ``interpolate`` or ``overlap``)."""
    from .api import HearModel

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"-o {out}: exists and is not empty; choose a new directory")
    model, identity = build_for_export(checkpoint, model_name, preset, overrides, window_seconds)
    hop_s = None if hop_ms is None else float(hop_ms) / 1000.0
    # checks the input length, the statistics and the hop before anything is written
    hear = HearModel(model, hop_s=hop_s, hop_method=hop_method)
    if hop_s is not None and hop_method == "overlap":
        hear.timestamp_embeddings(torch.zeros(1, hear.window_samples))  # a hop that does not divide the stride
    name = name or f"sslbench_{model.config['model']}_{identity['init_id'][:8]}"
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not name.isidentifier():
        raise ConfigError(f"--name {name!r}: a HEAR module name must be a Python identifier")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pkg = tmp / name
        pkg.mkdir()
        save_model(model, pkg / "model.pt", source=identity["source"], init_id=identity["init_id"])
        info = dict(model=model.config["model"], source=identity["source"], init_id=identity["init_id"],
                    hop_ms=hear.hop_ms, hop_s=hop_s, hop_method=hop_method if hop_s is not None else "interpolate",
                    hop_how=(f"method {hop_method}" if hop_s is not None else "the encoder's time columns"),
                    window_s=hear.window_samples / hear.sample_rate,
                    sample_rate=hear.sample_rate, dim=hear.scene_embedding_size, name=name)
        (pkg / "__init__.py").write_text(MODULE_TEMPLATE.format(**info))
        (tmp / "pyproject.toml").write_text(PYPROJECT_TEMPLATE.format(**info))
        (tmp / "hear_build.py").write_text(BUILD_BACKEND.format(**info))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / name


class ExportHear(Command):
    help = "write an installable HEAR 2021 module (load_model, get_scene/timestamp_embeddings) of an encoder"
    description = ("Export an ssl-bench encoder as a HEAR 2021 module: a package directory to `pip install`, "
                   "whose load_model() loads the packaged weights.")

    def add_arguments(self, parser):
        parser.add_argument("--checkpoint", required=True,
                            help="the encoder: an ssl-bench checkpoint, a file or Hugging Face directory of --model, "
                                 "torchaudio:BUNDLE, or an encoder id from `ssl-bench pretrain`")
        parser.add_argument("--out", "-o", required=True, help="directory to write the package to (new or empty)")
        parser.add_argument("--model", "-m", help="the model of a checkpoint that carries no ssl-bench config")
        parser.add_argument("--preset", "-p", help="its size preset")
        parser.add_argument("--name", help="the Python module name (default sslbench_<model>_<init_id>)")
        parser.add_argument("--window-seconds", type=float,
                            help="window length for a model of any input length (wav2vec2 family; default 10 s)")
        parser.add_argument("--hop-ms", type=float,
                            help="milliseconds between timestamps, finer than the encoder's time columns (AudioMAE: "
                                 "160); HEAR's validator asks for 50 or less")
        parser.add_argument("--hop-method", choices=HOP_METHODS, default="interpolate",
                            help="how frames finer than the columns are made: interpolate (linear, no extra cost) or "
                                 "overlap (the encoder on inputs shifted by the hop; stride/hop times the compute)")
        parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="dotted setting, e.g. frontend.mean=-4.27 (statistics the encoder was trained with)")

    def run(self, args) -> int:
        sweeps = parse_overrides(args.overrides)
        if len(sweeps) != 1:
            raise ConfigError("export-hear exports one encoder: give each --set one value")
        pkg = export_hear(args.checkpoint, args.out, name=args.name, model_name=args.model, preset=args.preset,
                          overrides=sweeps[0], window_seconds=args.window_seconds, hop_ms=args.hop_ms,
                          hop_method=args.hop_method)
        print(f"HEAR module {pkg.name} written to {Path(args.out)}\n"
              f"install: pip install {args.out}   (offline: pip install --no-deps {args.out})\n"
              f"evaluate it here: ssl-bench run -m hear --set encoder.module={pkg.name} "
              f"--checkpoint {pkg / 'model.pt'} -t TASK --protocols linear")
        return 0
