"""What each plugin registers, kept on disk, so that listing commands import no plugin.

``ssl-bench --help``, ``plugins``, ``results`` and ``plot`` need the names plugins register and
a help line or two, not their code; importing the built-in plugins imports torch, seconds on
a small CPU.  The index keeps, per plugin, what it registered and what a listing shows of it
(:func:`listing`: a protocol's and a command's help line, a protocol's component slots, a
model's presets and notes),
under a fingerprint of the plugin's source files: their paths, sizes and modification times
(what Python's own bytecode cache trusts), with the distribution's version for a package.
A plugin whose fingerprint changed, that is not in the index or whose last import failed is
imported for real, and its record refreshed.

The file is ``$SSL_BENCH_PLUGIN_INDEX``, else ``$XDG_CACHE_HOME/ssl-bench/plugin-index.json``
(``~/.cache/ssl-bench/``).  It only saves time: an unreadable or unwritable index is ignored.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

#: Bumped when the shape of a record changes, so an old index is ignored rather than misread.
FORMAT = 2


def index_path() -> Path | None:
    """Where the index lives (see the module docstring); ``None`` when it is switched off
    (``SSL_BENCH_PLUGIN_INDEX=""``)."""
    explicit = os.environ.get("SSL_BENCH_PLUGIN_INDEX")
    if explicit is not None:
        return Path(explicit).expanduser() if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ssl-bench" / "plugin-index.json"


def read_index(path: Path | None) -> dict[str, Any]:
    """The records of the index at ``path`` (empty when there is none or it cannot be read)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("plugins"), dict):
        return {}
    return data["plugins"]


def write_index(path: Path | None, records: dict[str, Any]) -> None:
    """Replace the index at ``path`` with ``records`` (atomically; failures are ignored)."""
    if path is None:
        return
    from .files import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": FORMAT, "plugins": records}, default=str))
    except OSError:
        pass


def files_fingerprint(files: list[Path], salt: str = "") -> str:
    """A digest of ``files``' paths, sizes and modification times (and ``salt``)."""
    h = hashlib.sha256(salt.encode())
    for path in sorted(files):
        try:
            st = path.stat()
        except OSError:
            continue
        h.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _python_files(location: Path) -> list[Path]:
    return [p for p in location.rglob("*.py") if "__pycache__" not in p.parts]


def module_files(module: str) -> list[Path] | None:
    """The source files of ``module`` (a package: every ``.py`` under it), found without
    importing it (its parent packages are imported); ``None`` when they cannot be found."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return [f for loc in spec.submodule_search_locations for f in _python_files(Path(loc))]
    if spec.origin and spec.origin.endswith(".py"):
        return [Path(spec.origin)]
    return None


@lru_cache(maxsize=1)
def builtin_fingerprint() -> str:
    """The fingerprint of every built-in plugin: all of ssl-bench's source (a built-in's
    registrations read core classes too), with its version."""
    from .version import __version__

    files: list[Path] = []
    for package in ("ssl_bench", "ssl_bench.plugins", "ssl_bench.tasks"):
        found = module_files(package)
        files += found or []
    return files_fingerprint(sorted(set(files)), f"ssl-bench {__version__}")


def listing(kind: str, factory: Any) -> dict[str, Any]:
    """What a listing shows of one registration, as JSON values: a model's description,
    presets, default preset, recipes and notes; a protocol's or a command's help line (a
    protocol's ``subcommand`` flag and component ``slots``, a command's description); nothing
    for other kinds."""
    if kind == "model":
        out = {
            "description": getattr(factory, "description", "") or "",
            "default_preset": getattr(factory, "default_preset", None),
            "presets": dict(getattr(factory, "presets", {}) or {}),
            "recipes": sorted(getattr(factory, "recipes", {}) or {}),
            "notes": dict(getattr(factory, "notes", {}) or {}),
        }
    elif kind == "protocol":
        out = {"help": getattr(factory, "help", "") or "", "subcommand": bool(getattr(factory, "subcommand", True)),
               "slots": dict(getattr(factory, "slots", None) or {})}
    elif kind == "command":
        out = {"help": getattr(factory, "help", "") or "", "description": getattr(factory, "description", None)}
    else:
        return {}
    return json.loads(json.dumps(out, default=str))
