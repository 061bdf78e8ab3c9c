"""Plugin discovery and the name -> factory registry.

Plugins come from three places:

* the ``ssl_bench`` entry-point group (the built-ins are declared there too, so they use
  the same API as third-party plugins); ``SSL_BENCH_LOAD_PLUGINS=a,b`` loads only the named
  third-party entry points (empty: none); the built-ins always load;
* single-file plugins in ``--plugins-dir DIR`` or ``SSL_BENCH_PLUGINS_DIR`` (``os.pathsep``
  separated);
* objects added in code with :meth:`Registry.add_plugin` (tests, notebooks).

Each plugin is loaded and called on its own: one that fails to import, misspells a hook or
raises in a hook is reported in one line naming it and the cause, and everything else keeps
working.  A name registered twice is an error naming both plugins whenever it is used.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

from . import hookspecs
from .components import KINDS
from .errors import UserError

ENTRY_POINT_GROUP = "ssl_bench"
DISTRIBUTION = "ssl-bench"

def _declared_builtins() -> dict[str, str]:
    """The built-in plugins as ``pyproject.toml`` beside this source tree declares them in the
    entry-point group: ``{name: module}``, or ``{}`` away from a source tree (an installed
    package, whose entry points are visible).  One list: adding a built-in plugin is a line in
    pyproject, never an edit here."""
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    head = f"[project.entry-points.{ENTRY_POINT_GROUP}]"
    if head not in text:
        return {}
    section = text.split(head, 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+)"\s*$', section, flags=re.M))  # tomllib is 3.11+


#: Built-in plugin modules, loaded directly when the package's entry points are not visible
#: (running from a source tree that was never installed): read from pyproject.toml.
BUILTIN_MODULES = _declared_builtins()

#: The core's own registrations (the built-in protocols, metrics and launchers), loaded into every
#: registry, also one made with ``entry_points=False``: they use the same hooks as any plugin, but
#: are not optional.
CORE_MODULES = {"protocols": "ssl_bench.protocols.builtin", "metrics": "ssl_bench.metrics.builtin",
                "launchers": "ssl_bench.launch.builtin"}

HOOKS = {f"register_{kind}s": kind for kind in KINDS}


class RegistryError(UserError, LookupError):
    """An unknown or ambiguous name; the message lists what exists."""


@dataclass
class Entry:
    kind: str
    name: str
    factory: Any
    plugin: str


@dataclass
class PluginInfo:
    name: str
    origin: str  # "built-in", "package NAME VERSION", "file PATH", "code"
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


class Registry:
    """Holds every registered factory, by kind and name."""

    def __init__(self, *, entry_points: bool = True, plugins_dirs: list[str | Path] | None = None):
        self.pm = pluggy.PluginManager("ssl_bench")
        self.pm.add_hookspecs(hookspecs)
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.conflicts: dict[tuple[str, str], list[str]] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.errors: list[str] = []
        for name, module in CORE_MODULES.items():
            self._load_module(name, "built-in", lambda m=module: importlib.import_module(m))
        if entry_points:
            self._load_entry_points()
        dirs = list(plugins_dirs or [])
        env_dirs = os.environ.get("SSL_BENCH_PLUGINS_DIR")
        if env_dirs:
            dirs += [d for d in env_dirs.split(os.pathsep) if d]
        for d in dirs:
            self.load_plugins_dir(d)

    # ------------------------------------------------------------------ loading
    def _load_entry_points(self) -> None:
        wanted = os.environ.get("SSL_BENCH_LOAD_PLUGINS")
        wanted_set = None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}
        seen_builtin = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            builtin = dist_name is not None and dist_name.lower() == DISTRIBUTION
            if builtin:
                if ep.name in seen_builtin or ep.name in CORE_MODULES:
                    continue  # the same distribution seen twice on sys.path
                seen_builtin.add(ep.name)
            elif wanted_set is not None and ep.name not in wanted_set:
                continue
            origin = "built-in" if builtin else f"package {dist_name} {dist.version if dist else ''}".strip()
            self._load_module(ep.name, origin, ep.load)
        for name, module in BUILTIN_MODULES.items():
            if name not in seen_builtin:
                self._load_module(name, "built-in", lambda m=module: importlib.import_module(m))

    def load_plugins_dir(self, directory: str | Path) -> None:
        """Load every ``*.py`` file in ``directory`` as a single-file plugin."""
        directory = Path(directory)
        if not directory.is_dir():
            self._error(str(directory), f"plugins directory {directory} does not exist")
            return
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue

            def load(path=path):
                mod_name = f"ssl_bench_plugin_{path.stem}"
                spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(mod_name, None)
                    raise
                return module

            self._load_module(path.stem, f"file {path}", load)

    def _load_module(self, name: str, origin: str, load: Callable[[], Any]) -> None:
        try:
            module = load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure (sys.exit too) is reported
            self.plugins[name] = PluginInfo(name, origin, error=f"failed to import: {_cause(exc)}")
            self._error(name, f"failed to import: {_cause(exc)}")
            return
        self.add_plugin(module, name=name, origin=origin)

    def add_plugin(self, plugin: Any, name: str | None = None, origin: str = "code") -> None:
        """Register a plugin object (module, class or instance with ``@hookimpl`` functions)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        info = PluginInfo(name, origin)
        self.plugins[name] = info
        if self.pm.is_registered(plugin):
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - e.g. a hook with wrong argument names
            info.error = _cause(exc)
            self._error(name, info.error)
            return
        unknown = [
            hc.name for hc in self.pm.get_hookcallers(plugin) or [] if not hc.has_spec()
        ]
        if unknown:
            info.error = "unknown hook " + ", ".join(sorted(unknown)) + "; valid hooks: " + ", ".join(sorted(HOOKS))
            self._error(name, info.error)
            self.pm.unregister(plugin)
            return
        self.pm.check_pending()  # every remaining hook has a spec; kept as a safety net
        for hc in self.pm.get_hookcallers(plugin) or []:
            kind = HOOKS[hc.name]
            for impl in hc.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    impl.function(**{arg: self._register_fn(kind, name, info) for arg in impl.argnames})
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - a raising hook only loses its own plugin
                    info.error = f"{hc.name} raised {_cause(exc)}"
                    self._error(name, info.error)

    def _register_fn(self, kind: str, plugin: str, info: PluginInfo) -> Callable[[str, Any], None]:
        def register(name: str, factory: Any) -> None:
            existing = self.entries[kind].get(name)
            if existing is not None and existing.plugin != plugin:
                message = f"{kind} {name!r} is already registered by plugin {existing.plugin!r}"
                if self.plugins.get(existing.plugin, PluginInfo("", "")).origin == "built-in":
                    # the built-in keeps its name; the newcomer's registration is refused
                    message += " (built-in, kept); rename yours"
                    info.error = f"{info.error}; {message}" if info.error else message
                    self._error(plugin, message)
                    return
                owners = self.conflicts.setdefault((kind, name), [existing.plugin])
                owners.append(plugin)
                info.error = f"{info.error}; {message}" if info.error else message
                self._error(plugin, message)
                return
            self.entries[kind][name] = Entry(kind, name, factory, plugin)
            info.registered.setdefault(kind, []).append(name)

        return register

    def _error(self, plugin: str, message: str) -> None:
        line = f"ssl-bench: plugin {plugin!r}: {message}"
        self.errors.append(line)
        print(line, file=sys.stderr)

    # ------------------------------------------------------------------ lookup
    def get(self, kind: str, name: str) -> Entry:
        if kind not in self.entries:
            raise RegistryError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        if (kind, name) in self.conflicts:
            owners = " and ".join(repr(p) for p in self.conflicts[(kind, name)])
            raise RegistryError(f"{kind} {name!r} is registered by plugins {owners}; uninstall or rename one")
        try:
            return self.entries[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.entries[kind])) or "none"
            raise RegistryError(f"unknown {kind} {name!r}; available: {known}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def describe(self) -> list[dict[str, Any]]:
        """Every plugin with origin, registrations and error, for ``ssl-bench plugins``; a plugin
        that registers models also gives each one's description, presets (with their settings),
        default preset, the tasks it has recipes for, and its notes."""
        out = []
        for info in self.plugins.values():
            entry = {
                "name": info.name,
                "origin": info.origin,
                "registered": {k: sorted(v) for k, v in info.registered.items()},
                "error": info.error,
            }
            models = {}
            for name in sorted(info.registered.get("model", ())):
                try:
                    spec = self.get("model", name).factory
                except Exception:  # noqa: BLE001 - a name another plugin took: listed, not described
                    continue
                models[name] = {
                    "description": getattr(spec, "description", ""),
                    "default_preset": getattr(spec, "default_preset", None),
                    "presets": dict(getattr(spec, "presets", {}) or {}),
                    "recipes": sorted(getattr(spec, "recipes", {}) or {}),
                    "notes": dict(getattr(spec, "notes", {}) or {}),
                }
            if models:
                entry["models"] = models
            suites = {}
            for name in sorted(info.registered.get("suite", ())):
                try:
                    suite = self.get("suite", name).factory
                except Exception:  # noqa: BLE001 - a name another plugin took: listed, not described
                    continue
                suites[name] = {"version": str(getattr(suite, "version", "")),
                                "description": getattr(suite, "description", ""),
                                "tasks": [{"task": t.task, "protocols": list(t.protocols), "settings": dict(t.settings),
                                           "splits": list(t.splits) if t.splits else None}
                                          for t in getattr(suite, "tasks", ())]}
            if suites:
                entry["suites"] = suites
            launchers = {}
            for name in sorted(info.registered.get("launcher", ())):
                try:
                    cls = self.get("launcher", name).factory
                except Exception:  # noqa: BLE001
                    continue
                import dataclasses

                config = getattr(cls, "Config", None)
                launchers[name] = {"help": getattr(cls, "help", ""), "settings": {
                    f.name: (f.default if f.default is not dataclasses.MISSING else None)
                    for f in (dataclasses.fields(config) if config is not None and dataclasses.is_dataclass(config)
                              else ())}}
            if launchers:
                entry["launchers"] = launchers
            out.append(entry)
        return out


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, created on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def set_registry(registry: Registry | None) -> Registry | None:
    """Replace the process-wide registry (tests, ``--plugins-dir``); returns the old one."""
    global _REGISTRY
    old, _REGISTRY = _REGISTRY, registry
    return old
