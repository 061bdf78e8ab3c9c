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

Each plugin is recorded with where it came from and which code it is (``version``: the
distribution's version, ssl-bench's for the built-ins; ``sha256``: a single-file plugin's
content), so a run can say which plugins produced it (:meth:`Registry.provenance`).

A registry made with ``lazy=True`` and an ``index`` (:mod:`ssl_bench.plugin_index`) imports no
plugin whose registrations the index holds for the same source files: it registers their
names with what listings show (:attr:`Entry.listing`), and the first use of an entry's
``factory`` imports its plugin.  ``ssl-bench --help``, ``plugins``, ``results`` and ``plot``
start that way, without importing torch.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import UserError
from .hookspecs import KINDS
from .plugin_index import builtin_fingerprint, files_fingerprint, listing, module_files, read_index, write_index

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


class Entry:
    """One registration: ``kind``, ``name``, the ``factory`` and the ``plugin`` that registered
    it; ``listing``: what listings show of it (:func:`ssl_bench.plugin_index.listing`).  An
    entry read from the plugin index has no factory yet: reading ``factory`` imports its
    plugin (``load``)."""

    def __init__(self, kind: str, name: str, factory: Any, plugin: str, listing: dict[str, Any] | None = None,
                 load: Callable[[], Any] | None = None):
        self.kind, self.name, self.plugin = kind, name, plugin
        self._factory, self._load = factory, load
        self.listing = listing if listing is not None else {}

    @property
    def factory(self) -> Any:
        if self._load is not None:
            self._factory, self._load = self._load(), None
        return self._factory

    def __repr__(self) -> str:
        return f"Entry({self.kind!r}, {self.name!r}, plugin={self.plugin!r}{', not imported' if self._load else ''})"


@dataclass
class PluginInfo:
    name: str
    origin: str  # "built-in", "package NAME VERSION", "file PATH", "code"
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    version: str | None = None  # the distribution's version (ssl-bench's for a built-in)
    sha256: str | None = None  # a single-file plugin's content
    listings: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> name -> listing


class Registry:
    """Holds every registered factory, by kind and name."""

    def __init__(self, *, entry_points: bool = True, plugins_dirs: list[str | Path] | None = None,
                 index: Path | None = None, lazy: bool = False):
        self.pm = pluggy.PluginManager("ssl_bench")
        self.pm.add_hookspecs(hookspecs)
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.conflicts: dict[tuple[str, str], list[str]] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.errors: list[str] = []
        # the plugin index: read when lazy, refreshed with what was imported for real
        self.index_path, self.lazy = index, lazy and index is not None
        self._index = read_index(index) if index is not None else {}
        self._indexed: dict[str, dict[str, Any]] = {}
        for name, module in CORE_MODULES.items():
            self._load_module(name, "built-in", lambda m=module: importlib.import_module(m),
                              fingerprint=lambda: builtin_fingerprint())
        if entry_points:
            self._load_entry_points()
        dirs = list(plugins_dirs or [])
        env_dirs = os.environ.get("SSL_BENCH_PLUGINS_DIR")
        if env_dirs:
            dirs += [d for d in env_dirs.split(os.pathsep) if d]
        for d in dirs:
            self.load_plugins_dir(d)
        self._save_index()

    # ------------------------------------------------------------------ loading
    def _load_entry_points(self) -> None:
        wanted = os.environ.get("SSL_BENCH_LOAD_PLUGINS")
        wanted_set = None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}
        seen_builtin = set()
        found = []
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            found.append((dist_name is not None and dist_name.lower() == DISTRIBUTION, ep, dist, dist_name))
        third_party = []
        for builtin, ep, dist, dist_name in found:  # the built-ins first: they keep their names
            if not builtin:
                third_party.append((ep, dist, dist_name))
                continue
            if ep.name in seen_builtin or ep.name in CORE_MODULES:
                continue  # the same distribution seen twice on sys.path
            seen_builtin.add(ep.name)
            self._load_module(ep.name, "built-in", ep.load, version=dist.version if dist is not None else None,
                              fingerprint=builtin_fingerprint)
        for name, module in BUILTIN_MODULES.items():
            if name not in seen_builtin:
                self._load_module(name, "built-in", lambda m=module: importlib.import_module(m),
                                  fingerprint=builtin_fingerprint)
        for ep, dist, dist_name in third_party:
            if wanted_set is not None and ep.name not in wanted_set:
                continue
            version = dist.version if dist is not None else None
            self._load_module(ep.name, f"package {dist_name} {version or ''}".strip(), ep.load, version=version,
                              fingerprint=partial(_package_fingerprint, ep, version))

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

            self._load_module(path.stem, f"file {path}", load, fingerprint=lambda path=path: files_fingerprint([path]),
                              sha256=lambda path=path: _file_sha256(path))

    def _load_module(self, name: str, origin: str, load: Callable[[], Any], *,
                     fingerprint: Callable[[], str | None] | None = None, version: str | None = None,
                     sha256: Callable[[], str | None] | None = None) -> None:
        """Import plugin ``name`` and register what it brings, or, in a lazy registry whose
        index holds its registrations for the same ``fingerprint``, register those without
        importing it.  ``version``/``sha256``: which code it is (a built-in gets ssl-bench's
        version)."""
        from .version import __version__

        if name in self.plugins:  # a file or package named like a plugin already loaded
            self._refuse_name(name, origin)
            return
        version = __version__ if origin == "built-in" else version
        key = f"{origin}\t{name}"
        stamp = fingerprint() if fingerprint is not None and self.index_path is not None else None
        record = self._index.get(key)
        if self.lazy and stamp is not None and isinstance(record, dict) and record.get("fingerprint") == stamp:
            self._register_indexed(name, origin, record, load)
            return
        try:
            module = load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure (sys.exit too) is reported
            self.plugins[name] = PluginInfo(name, origin, error=f"failed to import: {_cause(exc)}", version=version)
            self._error(name, f"failed to import: {_cause(exc)}")
            return
        self.add_plugin(module, name=name, origin=origin)
        info = self.plugins[name]
        info.version, info.sha256 = version, sha256() if sha256 is not None else None
        if stamp is not None and info.error is None:
            self._indexed[key] = {"fingerprint": stamp, "version": info.version, "sha256": info.sha256,
                                  "listings": info.listings}

    def _refuse_name(self, name: str, origin: str) -> None:
        """A plugin whose name another already has is not loaded; the one loaded first keeps it."""
        holder = self.plugins.get(name)
        whose = "the built-in plugin" if holder is None or holder.origin == "built-in" else "the plugin"
        where = origin.removeprefix("file ")
        message = (f"{where} has the name of {whose} {name!r}, which keeps it; this one is not loaded "
                   "(rename it)")
        label = where if origin != "code" else name
        self.plugins[label] = PluginInfo(label, origin, error=message)
        self._error(label, message)

    def _register_indexed(self, name: str, origin: str, record: dict[str, Any], load: Callable[[], Any]) -> None:
        """Register plugin ``name``'s names from its index ``record``; the first use of one of
        their factories imports the plugin (:meth:`_import_indexed`)."""
        info = PluginInfo(name, origin, version=record.get("version"), sha256=record.get("sha256"))
        self.plugins[name] = info
        state: dict[str, Any] = {}

        def factory(kind: str, entry_name: str) -> Any:
            if "done" not in state:
                state["done"] = True
                self._import_indexed(name, origin, load, info)
            entry = self.entries[kind].get(entry_name)
            if entry is None or entry.plugin != name or entry._load is not None:
                raise RegistryError(f"plugin {name!r} no longer registers {kind} {entry_name!r} "
                                    f"({info.error or 'its code changed since it was listed'})")
            return entry.factory

        for kind, names in (record.get("listings") or {}).items():
            register = self._register_fn(kind, name, info)
            for entry_name, shown in names.items():
                register(entry_name, None, listing=shown,
                         load=lambda kind=kind, entry_name=entry_name: factory(kind, entry_name))

    def _import_indexed(self, name: str, origin: str, load: Callable[[], Any], info: PluginInfo) -> None:
        """Import a plugin registered from the index, replacing its entries with the real ones."""
        try:
            module = load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported like any import failure
            info.error = f"failed to import: {_cause(exc)}"
            self._error(name, info.error)
            return
        self.add_plugin(module, name=name, origin=origin, info=info)

    def _save_index(self) -> None:
        """Add what this registry imported for real to the plugin index (when it has one)."""
        if self.index_path is None or not self._indexed:
            return
        records = {**read_index(self.index_path), **self._indexed}
        write_index(self.index_path, records)
        self._index, self._indexed = records, {}

    def add_plugin(self, plugin: Any, name: str | None = None, origin: str = "code",
                   info: PluginInfo | None = None) -> None:
        """Register a plugin object (module, class or instance with ``@hookimpl`` functions)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if self.pm.is_registered(plugin):
            return
        if self.pm.get_plugin(name) is not None:  # pluggy would refuse it with its own words
            self._refuse_name(name, origin)
            return
        if info is None:
            info = PluginInfo(name, origin)
        else:  # a plugin registered from the index: its registrations again, from its code
            info.registered, info.listings = {}, {}
        self.plugins[name] = info
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

    def _register_fn(self, kind: str, plugin: str, info: PluginInfo) -> Callable[..., None]:
        def register(name: str, factory: Any, *, listing: dict[str, Any] | None = None,
                     load: Callable[[], Any] | None = None) -> None:
            existing = self.entries[kind].get(name)
            if existing is not None and existing.plugin != plugin:
                if plugin in self.conflicts.get((kind, name), ()):
                    return  # a plugin imported after its names came from the index: said already
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
            shown = listing if listing is not None else _listing(kind, factory)
            self.entries[kind][name] = Entry(kind, name, factory, plugin, shown, load)
            info.registered.setdefault(kind, []).append(name)
            info.listings.setdefault(kind, {})[name] = shown

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
        """Every plugin with origin, version (or a file plugin's SHA-256), registrations and
        error, for ``ssl-bench plugins``; a plugin that registers models also gives each one's
        description, presets (with their settings), default preset, the tasks it has recipes
        for, and its notes."""
        out = []
        for info in self.plugins.values():
            entry = {
                "name": info.name,
                "origin": info.origin,
                "version": info.version,
                "sha256": info.sha256,
                "registered": {k: sorted(v) for k, v in info.registered.items()},
                "error": info.error,
            }
            models = {}
            for name in sorted(info.registered.get("model", ())):
                found = self.entries["model"].get(name)
                if found is None or found.plugin != info.name or (("model", name) in self.conflicts):
                    continue  # a name another plugin took: listed, not described
                models[name] = dict(found.listing)
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

    def provenance(self) -> list[dict[str, Any]]:
        """Which plugins were loaded, as a run records them: name, origin, version (or a file
        plugin's SHA-256) and error."""
        return [{"name": i.name, "origin": i.origin, "version": i.version, "sha256": i.sha256, "error": i.error}
                for i in self.plugins.values()]


def _listing(kind: str, factory: Any) -> dict[str, Any]:
    try:
        return listing(kind, factory)
    except Exception:  # noqa: BLE001 - a factory whose attributes raise is listed by name only
        return {}


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _package_fingerprint(ep: Any, version: str | None) -> str | None:
    """An installed plugin's fingerprint: its distribution's version and its module's files
    (an editable install changes files, not versions)."""
    files = module_files(ep.value.split(":")[0].strip())
    return None if files is None else files_fingerprint(files, f"{ep.value} {version}")


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


def current_registry() -> Registry | None:
    """The process-wide registry if one was made or set, else ``None`` (nothing is loaded)."""
    return _REGISTRY


def set_registry(registry: Registry | None) -> Registry | None:
    """Replace the process-wide registry (tests, ``--plugins-dir``); returns the old one."""
    global _REGISTRY
    old, _REGISTRY = _REGISTRY, registry
    return old
