"""Configuration: dataclass configs, YAML files, dotted overrides, sweeps and hashing.

A resolved configuration is a plain nested dict, saved as ``config.yaml`` with every run::

    model: audiomae          preset: tiny          task: synthetic        seed: 0
    frontend:  {name: kaldi-fbank, num_bins: 128, ...}
    encoder:   {name: vit, dim: 768, depth: 12, heads: 12, ...}
    masker:    {name: random, ratio: 0.8}
    decoder:   {name: shifted-window, ...}      (null when the model has none)
    objective: {name: masked-mse, ...}
    method:    {name: mae}                      (the pretraining method)
    pretrain:  {epochs: ..., batch_size: ..., blr: ...}   one section per registered protocol
    finetune:  {..., masker: {name: time-frequency, ...} or null}
    linear:    {...}
    data:      {...}

*Slots* (the model's ``frontend``, ``encoder``, ``masker``, ``decoder``, ``objective``,
``method``, and those protocols declare, such as ``finetune.masker``) hold a component:
``--set decoder=NAME`` chooses one by name (its kind is the key), ``--set decoder.depth=4``
tunes it.  Sections (``pretrain``, ``linear``, ``knn``, ...) are the registered protocols'
``Config`` dataclasses, plus ``data``.  Settings come in layers, later
winning: the model's defaults, the model's recipe for the task, the size preset, YAML
files, then ``--set``.  Component choices are settled over all layers first, then values are
applied (with a task, a ``frontend.num_frames`` no layer sets follows the task's clips);
a value from the model's own layers that the chosen component does not have is
dropped (a preset written for another decoder), while an unknown key from the user is an
error that lists the valid ones.

:func:`validate` checks every value of a resolved config in one pass, before any data work:
types (from each dataclass's annotations: ``epochs=1e1`` is 10, ``epochs=1.5`` an error),
finite numbers, and the ranges each section's ``check()`` states; it names the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .registry import Registry, RegistryError, get_registry

#: The model's slots (path -> component kind), in build order.  Protocols add their own slots
#: inside their sections (``finetune.masker``): see :func:`slots`.
MODEL_SLOTS = {
    "frontend": "frontend",
    "encoder": "encoder",
    "masker": "masker",
    "decoder": "decoder",
    "objective": "objective",
    "method": "method",
}


class ConfigError(UserError, ValueError):
    """A bad configuration key or value; the message says which and what is valid."""


# --------------------------------------------------------------------------- run settings
@dataclass
class DataConfig:
    valid_fraction: float = 0.1  # carved from the training split when a task has no validation set
    cache: bool = True  # cache frontend features on disk
    strict: bool = False  # unreadable clips are errors instead of counted skips
    num_workers: int = 0
    # label efficiency: train on `shots` labelled clips per class ("all" or null: every clip), or
    # on `fraction` of each class's training clips; validation and test are untouched
    shots: int | str | None = None
    fraction: float | None = None
    draw: int = 0  # seed of the labelled subset: one draw per value (--set data.draw=0,1)

    def check(self) -> None:
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


def data_settings(config: dict[str, Any]) -> DataConfig:
    """The typed ``data`` section of a resolved config (its defaults where a key is absent)."""
    return DataConfig(**{f.name: config.get("data", {})[f.name] for f in dataclasses.fields(DataConfig)
                         if f.name in config.get("data", {})})


@dataclass
class RunSettings:
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with bf16 matrix instructions
    compile: bool = False
    deterministic: bool = False
    #: GiB a training step may use on its device; None: 80% of what is free when training starts
    #: (``accum_steps`` rises until a micro-batch fits); 0: no limit
    memory_gb: float | None = None

    def check(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be >= 0, got {self.seed}" if self.seed < 0 else
                             f"seed must be below 2**63, got {self.seed}")
        if self.memory_gb is not None and self.memory_gb < 0:
            raise ValueError(f"memory_gb must be >= 0 (0: no limit) or null, got {self.memory_gb}")


#: Sections that belong to no protocol; each registered protocol adds its own (its ``Config``).
CORE_SECTIONS: dict[str, type] = {"data": DataConfig}
TOP_LEVEL = {"model", "preset", "task", "checkpoint"} | {f.name for f in dataclasses.fields(RunSettings)}
#: Settings that cannot change a number or a weight: when checkpoints are written (a field of any
#: protocol section), how audio is loaded (workers, the feature cache on or off, whether an
#: unreadable clip stops the run).  They key no content cache (features, embeddings, pretrained
#: encoders), no encoder identity (a pretraining's hash, its ``init_id``) and split no table.
BOOKKEEPING_FIELDS = ("checkpoint_every", "checkpoint_min_s", "data.num_workers", "data.cache", "data.strict")
#: Run settings that change where and in which order the same arithmetic runs, never what is
#: computed: like the number of processes and ``accum_steps``, they move the last bits of a
#: result, so they key no encoder (a float32 pretraining on another device or compiled is the
#: same recipe).  Precision is not among them: ``amp`` (bf16) keys the pretraining hash, the
#: encoder's ``init_id`` and the embedding cache, as the precision it gives on the device.
EXECUTION_FIELDS = ("device", "compile", "deterministic", "memory_gb")
#: What ``ssl-bench run --protocols`` runs by default (every one is registered; see ``ssl-bench plugins``).
DEFAULT_PROTOCOLS = ("pretrain", "finetune", "linear")


def sections(registry: Registry | None = None) -> dict[str, type]:
    """Config section -> dataclass: ``data`` and every registered protocol's ``Config``."""
    registry = registry or get_registry()
    out = dict(CORE_SECTIONS)
    for name in registry.names("protocol"):
        cls = getattr(registry.get("protocol", name).factory, "Config", None)
        if cls is not None and dataclasses.is_dataclass(cls):
            out[name] = cls
    return out


def slots(registry: Registry | None = None) -> dict[str, str]:
    """Slot path -> component kind: the model's slots, then those protocols declare
    (``finetune.masker``), in build order."""
    registry = registry or get_registry()
    out = dict(MODEL_SLOTS)
    for name in registry.names("protocol"):
        # what the registry lists of the protocol (no import: results tables need this too)
        for field_name, kind in (registry.get("protocol", name).listing.get("slots") or {}).items():
            out[f"{name}.{field_name}"] = kind
    return out


# --------------------------------------------------------------------------- parsing helpers
def parse_value(text: str) -> Any:
    """``"0.8"`` -> 0.8, ``"true"`` -> True, ``"[1, 2]"`` -> [1, 2], ``"null"`` -> None."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "4e-3" as a string: numbers stay numbers
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _split_top_commas(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse_overrides(items: list[str] | None) -> list[dict[str, Any]]:
    """``["masker.ratio=0.7,0.8", "encoder.depth=2"]`` -> one dict per run (cartesian product)."""
    axes: list[list[tuple[str, Any]]] = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. encoder.depth=6)")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        values = [parse_value(v.strip()) for v in _split_top_commas(raw)]
        axes.append([(key, v) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def flatten(tree: dict[str, Any], prefix: str = "", registry: Registry | None = None) -> dict[str, Any]:
    """Nested dict -> dotted keys.  A slot given as a dict yields its ``name`` under the slot key."""
    slot_paths, section_names = slots(registry), sections(registry)
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and (path in slot_paths or path in section_names):
            value = dict(value)
            if path in slot_paths and "name" in value:
                out[path] = value.pop("name")
            out.update(flatten(value, path + ".", registry))
        else:
            out[path] = value
    return out


def load_yaml(path: str | Path, registry: Registry | None = None) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not text (byte {exc.start} is not UTF-8); give a YAML file") \
            from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return flatten(data, registry=registry)


# --------------------------------------------------------------------------- component configs
def config_class(factory: Any) -> type:
    cfg = getattr(factory, "Config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"component factory {factory!r} has no Config dataclass")
    return cfg


def component_defaults(registry: Registry, kind: str, name: str) -> dict[str, Any]:
    entry = registry.get(kind, name)
    return {"name": name, **_asdict(config_class(entry.factory)())}


def _asdict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def instantiate_config(registry: Registry, kind: str, slot: dict[str, Any]) -> Any:
    """A slot dict -> the component's ``Config`` instance (tuples restored)."""
    entry = registry.get(kind, slot["name"])
    cls = config_class(entry.factory)
    values = {k: v for k, v in slot.items() if k != "name"}
    for f in dataclasses.fields(cls):
        if f.name in values and isinstance(values[f.name], list) and "tuple" in str(f.type):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


# --------------------------------------------------------------------------- validation
def validate(config: dict[str, Any], protocols: Sequence[str] | None = None,
             registry: Registry | None = None) -> dict[str, Any]:
    """Check every value of a resolved ``config`` in place, before any data work; returns it.

    One pass over the run settings, ``data``, every protocol section and every component's
    settings: each value must have its field's type (read from the dataclass annotations; a
    whole number written ``1e1`` becomes 10, ``1`` for a list becomes ``[1]``), numbers must be
    finite, and each section's ``check()`` (or ``__post_init__``) states its ranges.  The
    ranges of protocol sections are checked for ``protocols`` (default: every section).  A
    failure is one :class:`ConfigError` naming the key (``pretrain.epochs must be >= 1, got
    0``).  Component settings that only a built component can judge (a head count that does
    not divide the width, a mask ratio) are :func:`ssl_bench.model.check_config`'s, which
    calls this first.
    """
    registry = registry or get_registry()
    SLOTS, SECTIONS = slots(registry), sections(registry)
    _check_section(config, RunSettings, "", set(SECTIONS) | set(SLOTS) | {"model", "preset", "task", "checkpoint"})
    for name, cls in SECTIONS.items():
        node = config.get(name)
        if not isinstance(node, dict):
            continue
        inner = {k for k in node if f"{name}.{k}" in SLOTS}  # a protocol's slot (finetune.masker)
        ranges = protocols is None or name in CORE_SECTIONS or name in protocols
        _check_section(node, cls, f"{name}.", inner, ranges=ranges)
    for slot, kind in SLOTS.items():
        node: Any = config
        for part in slot.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or "name" not in node:
            continue
        try:
            cls = config_class(registry.get(kind, node["name"]).factory)
        except RegistryError as exc:
            raise ConfigError(f"{slot}={node['name']}: {exc}") from None
        _check_section(node, cls, f"{slot}.", {"name"}, ranges=False)  # the component checks its own ranges
    return config


def _check_section(node: dict[str, Any], cls: type, prefix: str, skip: set[str], ranges: bool = True) -> None:
    """Coerce and check the values of ``node`` against dataclass ``cls``; then its ``check()``."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in node and f.name not in skip:
            node[f.name] = _typed(f"{prefix}{f.name}", node[f.name], hints.get(f.name, Any))
    if not ranges:
        return
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in node:
            value = node[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) and _is_tuple(hints.get(f.name)) else value
    try:
        section = cls(**values)  # a __post_init__ that checks runs here
        if callable(getattr(section, "check", None)):
            section.check()
    except (TypeError, ValueError) as exc:  # check() names the field first: "epochs must be >= 1, got 0"
        message = str(exc)
        raise ConfigError(message if message.startswith(prefix) else f"{prefix}{message}") from None


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> annotation of dataclass ``cls`` (those that cannot be evaluated are left out)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation naming what is not importable here: check the rest
        import sys

        module = vars(sys.modules.get(cls.__module__, object()))
        out = {}
        for f in dataclasses.fields(cls):
            try:
                out[f.name] = eval(f.type, module) if isinstance(f.type, str) else f.type  # an annotation's text
            except Exception:  # noqa: BLE001 - this field stays unchecked
                continue
        return out


def _is_tuple(tp: Any) -> bool:
    return tp is tuple or typing.get_origin(tp) is tuple or any(_is_tuple(a) for a in _union_args(tp))


def _union_args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()


def _number(key: str, value: Any, whole: bool) -> int | float:
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key}: expected {kind}, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected {kind}, got {value!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if whole:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return int(value)
    return float(value)


def _typed(key: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (see :func:`validate`), or a :class:`ConfigError` naming ``key``."""
    if tp is Any or tp is None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return value
    args = _union_args(tp)
    if args:
        if value is None and type(None) in args:
            return None
        first: ConfigError | None = None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _typed(key, value, arg)
            except ConfigError as exc:
                first = first or exc
        if value is None:
            raise ConfigError(f"{key}: expected a value, got null")
        raise first if first is not None else ConfigError(f"{key}: unexpected value {value!r}")
    origin = typing.get_origin(tp) or tp
    if value is None:
        raise ConfigError(f"{key}: expected a value, got null")
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if origin is int:
        return _number(key, value, whole=True)
    if origin is float:
        return _number(key, value, whole=False)
    if origin is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads a name such as 12 as a number
        raise ConfigError(f"{key}: expected text, got {value!r}")
    if origin in (list, tuple, Sequence):
        items = list(value) if isinstance(value, (list, tuple)) else [value]  # a grid of one: C=1 means [1]
        inner = typing.get_args(tp)
        if origin is tuple and inner and inner[-1] is not Ellipsis:
            if len(items) != len(inner):
                raise ConfigError(f"{key}: expected {len(inner)} values, got {value!r}")
            return [_typed(key, v, t) for v, t in zip(items, inner)]
        return [_typed(key, v, inner[0] if inner else Any) for v in items]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, typing.get_args(tp)))}, got {value!r}")
        return value
    return value


# --------------------------------------------------------------------------- resolution
@dataclass
class Layer:
    """One source of settings: dotted keys, and whether unknown keys are errors."""

    values: dict[str, Any]
    source: str
    strict: bool = True


def resolve(
    model: str,
    preset: str | None = None,
    task: str | None = None,
    files: list[str | Path] | None = None,
    overrides: dict[str, Any] | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Build the fully resolved configuration of one run (see module docstring)."""
    registry = registry or get_registry()
    spec = registry.get("model", model).factory
    presets = getattr(spec, "presets", {}) or {}
    if preset is None:
        preset = getattr(spec, "default_preset", None)
    if preset is not None and preset not in presets:
        known = ", ".join(sorted(presets)) or "none"
        raise ConfigError(f"unknown preset {preset!r} for model {model!r}; available: {known}")

    SLOTS, SECTIONS = slots(registry), sections(registry)
    layers = [Layer({k: v for k, v in spec.components.items()}, f"model {model}", strict=False)]
    layers.append(Layer(dict(getattr(spec, "settings", {}) or {}), f"model {model} settings", strict=False))
    recipes = getattr(spec, "recipes", {}) or {}
    if task is not None and task in recipes:
        layers.append(Layer(dict(recipes[task]), f"model {model} recipe for {task}", strict=False))
    if preset is not None:
        layers.append(Layer(dict(presets[preset]), f"preset {preset}", strict=False))
    for f in files or []:
        layers.append(Layer(load_yaml(f, registry), f"file {f}"))
    if overrides:
        fixed = sorted(k for k in overrides if k in ("model", "preset", "task"))
        if fixed:
            raise ConfigError(f"--set {fixed[0]}=...: the {fixed[0]} is chosen with --{fixed[0]}, not --set")
        layers.append(Layer(dict(overrides), "--set"))

    # 1. settle which component fills each slot
    choice: dict[str, str | None] = {slot: None for slot in SLOTS}
    for layer in layers:
        for key, value in layer.values.items():
            if key in SLOTS:
                choice[key] = None if value in (None, "none", "null", "") else str(value)
    tree: dict[str, Any] = {"model": model, "preset": preset, "task": task, "checkpoint": None}
    tree.update(_asdict(RunSettings()))
    for name, cls in SECTIONS.items():
        tree[name] = _asdict(cls())
    for slot, name in choice.items():
        kind = SLOTS[slot]
        value = None
        if name is not None:
            try:
                value = component_defaults(registry, kind, name)
            except RegistryError as exc:
                raise ConfigError(f"{slot}={name}: {exc}") from None
        _set(tree, slot, value)

    # 2. apply values, in layer order
    for layer in layers:
        for key, value in layer.values.items():
            if key in SLOTS:
                continue
            _apply(tree, key, value, layer, SLOTS, SECTIONS)
    # With a task, an input length no layer chose follows the task's clips (the runner sizes
    # it): a component's stand-alone default (10 s) would pad a 2 s clip to five times its length.
    frontend = tree.get("frontend")
    if (task is not None and isinstance(frontend, dict) and "num_frames" in frontend
            and not any("frontend.num_frames" in layer.values for layer in layers)):
        frontend["num_frames"] = None
    # What the model derives from the settings chosen (a HEAR module's own sample rate), where
    # no layer chose: a value given anywhere wins, and a wrong one is the component's to refuse.
    derive = getattr(spec, "derived_settings", None)
    if derive is not None:
        for key, value in (derive(tree) or {}).items():
            if not any(key in layer.values for layer in layers):
                _apply(tree, key, value, Layer({key: value}, f"model {model} (derived)"), SLOTS, SECTIONS)
    return tree


def _get(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _apply(tree: dict[str, Any], key: str, value: Any, layer: Layer, SLOTS: dict[str, str],
           SECTIONS: dict[str, type]) -> None:
    parts = key.split(".")
    if len(parts) == 1:
        if key in TOP_LEVEL:
            tree[key] = value
            return
        if layer.strict and (key in SECTIONS or key in SLOTS):  # `pretrain: 5`: a section given a value
            what = "a section of settings" if key in SECTIONS else "a component"
            raise ConfigError(f"{layer.source}: {key!r} is {what}, not a value (got {value!r}); set its keys "
                              f"({key}.NAME: VALUE, or a mapping under {key}:)"
                              + (f", or choose one with {key}=NAME" if key in SLOTS else ""))
        return _unknown(key, sorted(TOP_LEVEL | set(SECTIONS) | set(SLOTS)), layer)
    # the longest slot or section that prefixes the key owns it
    for n in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:n])
        leaf = ".".join(parts[n:])
        if owner in SLOTS or owner in SECTIONS:
            node = _get(tree, owner)
            if node is None:
                if layer.strict:
                    raise ConfigError(f"{layer.source}: {key}: {owner} is not set for this model; choose one with {owner}=NAME")
                return
            if leaf not in node or leaf == "name" or (owner in SECTIONS and owner + "." + leaf in SLOTS):
                valid = sorted(k for k in node if k != "name" and f"{owner}.{k}" not in SLOTS)
                return _unknown(key, [f"{owner}.{k}" for k in valid], layer)
            if isinstance(node[leaf], (list, tuple)) and value is not None and not isinstance(value, (list, tuple)):
                value = [value]  # a grid given one point: `--set linear.C=1` means C in [1]
            node[leaf] = list(value) if isinstance(value, tuple) else value
            return
    return _unknown(key, sorted(TOP_LEVEL | set(SECTIONS) | set(SLOTS)), layer)


def _unknown(key: str, valid: list[str], layer: Layer) -> None:
    if layer.strict:
        raise ConfigError(f"{layer.source}: unknown key {key!r}; valid keys: {', '.join(valid)}")


def config_hash(tree: dict[str, Any], keys: list[str] | None = None) -> str:
    """A short, stable hash of (part of) a resolved config."""
    data = tree if keys is None else {k: _get(tree, k) for k in keys}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def dump_yaml(tree: dict[str, Any]) -> str:
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=None)


def flat_config(tree: dict[str, Any], registry: Registry | None = None) -> dict[str, Any]:
    """Every leaf of a resolved config as ``dotted.key -> value`` (slot names under the slot key)."""
    SLOTS = slots(registry)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                path = f"{prefix}.{k}" if prefix else k
                if k == "name" and prefix in SLOTS:
                    out[prefix] = v
                else:
                    walk(v, path)
        elif isinstance(node, (list, tuple)):
            out[prefix] = json.dumps(list(node))
        else:
            out[prefix] = node

    walk(tree, "")
    return out
