"""Model presets and the assembled model.

A *model* is a :class:`ModelSpec`: which registered component fills each slot, the default
settings, size presets and per-task recipes.  :func:`build_model` turns a resolved config
into an :class:`SSLModel`, an ``nn.Module`` with one attribute per slot (``.frontend``,
``.encoder``, ``.masker``, ``.decoder``, ``.objective``, ``.method``; ``None`` when the model
has none; a protocol's slot ``finetune.masker`` is ``.finetune_masker``) and, once a task
sets it, ``.head``.  Downstream it gives a pooled clip embedding (:meth:`SSLModel.embed`) and
frame-level embeddings with timestamps (:meth:`SSLModel.frames`).  Pretraining is the method's business (:meth:`SSLModel.forward_pretrain`
calls it); downstream use needs only the encoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .components import BuildContext, EncoderOutput
from .config import ConfigError, instantiate_config, resolve, slots, validate
from .errors import UserError
from .frames import NATIVE, Frames, frame_timing, window_frames
from .registry import Registry, get_registry


@dataclass
class ModelSpec:
    """What a model plugin registers with ``register_models``.

    ``components``: slot -> component name, e.g. ``{"frontend": "kaldi-fbank", "encoder":
    "vit", "masker": "random", "decoder": "shifted-window", "objective": "masked-mse"}``.
    ``settings``: dotted defaults for components and protocols (``"pretrain.blr": 2e-4``).
    ``presets``: size presets, each dotted overrides (``{"tiny": {"encoder.dim": 64}}``).
    ``recipes``: task name -> dotted overrides (the paper's fine-tuning recipe per dataset).
    ``load_checkpoint(model, path) -> CheckpointReport``: imports foreign checkpoint formats.
    ``notes``: free text shown by ``ssl-bench plugins`` (provenance, unknown paper values).
    ``checkpoint_overrides(path) -> dict``: optional; dotted settings a checkpoint dictates
    (sizes, strides, input length read from it), applied before the model is built.
    ``initial_checkpoint(config) -> Path | None``: optional; the weights a resolved config
    starts from when no checkpoint is given (AST's ``encoder.init=imagenet``).  It is loaded
    exactly as that checkpoint would be (``load_checkpoint``), so rows record its identity,
    and like any checkpoint it replaces pretraining.
    ``derived_settings(config) -> dict``: optional; dotted settings that follow from the others
    once they are resolved (the HEAR model reads its module's sample rate), applied where no
    layer set the key, so a value the user gives still wins.
    """

    components: dict[str, str | None]
    settings: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_preset: str | None = None
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_checkpoint: Callable[..., Any] | None = None
    description: str = ""
    notes: dict[str, str] = field(default_factory=dict)
    checkpoint_overrides: Callable[[Path], dict[str, Any]] | None = None
    initial_checkpoint: Callable[[dict[str, Any]], Path | None] | None = None
    derived_settings: Callable[[dict[str, Any]], dict[str, Any]] | None = None


class ClassifierHead(nn.Sequential):
    """LayerNorm + Linear on the pooled embedding (AudioMAE ``fc_norm``/``head``, AST ``mlp_head``)."""

    def __init__(self, dim: int, num_classes: int, eps: float = 1e-6):
        super().__init__(nn.LayerNorm(dim, eps=eps), nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(self[1].weight, std=2e-5)
        nn.init.zeros_(self[1].bias)


class SSLModel(nn.Module):
    """The parts of a model, one attribute per slot, and what the protocols call.

    ``build``: the :class:`BuildContext` its parts were built with (input size, patch grid, and
    every part by slot in ``build.parts``)."""

    def __init__(self, config: dict[str, Any], parts: dict[str, nn.Module | None], build: BuildContext):
        super().__init__()
        self.config = config
        self.build = build
        for slot, part in parts.items():
            setattr(self, slot.replace(".", "_"), part)
        for slot in ("frontend", "masker", "decoder", "objective", "method"):
            if slot not in parts:
                setattr(self, slot, None)
        self.head: ClassifierHead | None = None
        #: slot -> "kind 'name' (plugin 'p')", for messages that must say whose part misbehaved
        self.origins: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.config["model"]

    # ------------------------------------------------------------------ pretraining
    def grid(self, spec: torch.Tensor) -> tuple[int, int]:
        return self.encoder.grid_for(spec.shape[1], spec.shape[2])

    def forward_pretrain(self, spec: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The pretraining method's forward on normalised ``spec`` ``[B, T, F]`` (for MAE:
        ``(loss, pred, mask)``; arguments are the method's)."""
        if self.method is None:
            raise ConfigError(f"model {self.name!r} has no pretraining method; choose one with method=NAME")
        return self.method(self, spec, *args, **kwargs)

    # ------------------------------------------------------------------ downstream
    def encode(self, spec: torch.Tensor, mask: torch.Tensor | None = None,
               hidden_states: bool = False) -> EncoderOutput:
        return self.encoder(spec, mask, hidden_states=hidden_states) if hidden_states else self.encoder(spec, mask)

    def embed(self, spec: torch.Tensor, layers: bool = False, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled clip embedding ``[B, D]`` that probes use.

        ``layers``: ``[B, K, D]`` from one forward pass: the encoder's pooling applied to the
        input of the first block and to every block's output, then the embedding itself
        (``K = depth + 2``).  ``lengths``: ``[B]`` valid input frames of zero-padded clips, for
        an encoder that takes them (its ``padding_mask`` keeps the padding out of the pooling).
        """
        extra = {} if lengths is None else {"lengths": lengths}
        if not layers:
            return self.encoder.pool(self.encoder(spec, **extra))
        out = self.encoder(spec, hidden_states=True, **extra)
        if out.hidden_states is None:
            raise ConfigError(f"encoder {type(self.encoder).__name__} does not return hidden_states")
        pooled = [self.encoder.pool(out._replace(tokens=h, hidden_states=None)) for h in out.hidden_states]
        return torch.stack(pooled + [self.encoder.pool(out)], dim=1)

    def frames(self, spec: torch.Tensor, layers: bool = False) -> Frames:
        """Frame-level embeddings of normalised windows ``spec`` ``[B, T, F]``, timm's
        ``forward_features`` before the pooling: the encoder's time columns ``[B, n_time, D]``
        (prefix tokens dropped, patch tokens averaged over frequency; ``layers``: ``[B, depth +
        2, n_time, D]``, every layer as :meth:`embed` orders them, one forward pass) and their
        timestamps ``[n_time]``, the centre of each column's span in seconds from the start of
        ``spec``.  Whole clips of any length and hops finer than a column:
        :func:`ssl_bench.frames.clip_frames`."""
        columns, centres = window_frames(self, spec, layers)
        timing = frame_timing(self.frontend)
        step = float(centres[1] - centres[0]) if len(centres) > 1 else float(spec.shape[1])
        return Frames(columns, timing.seconds(centres), NATIVE, step * timing.hop_s)

    def draw_mask(self, slot: str, batch_size: int, grid: tuple[int, int], device: Any = "cpu",
                  generator: torch.Generator | None = None, need_hidden: bool = False) -> torch.Tensor:
        """The mask the masker in ``slot`` draws, checked: ``[batch_size, n_time * n_freq]``, the
        same number of hidden tokens in every row, some hidden and some visible.  A masker that
        breaks this is named with its plugin."""
        masker = getattr(self, slot.replace(".", "_"))
        mask = masker(batch_size, grid, self.encoder.layout, device, generator)
        who = self.origins.get(slot, f"{slot} {type(masker).__name__}")
        length = grid[0] * grid[1]
        if not torch.is_tensor(mask) or tuple(mask.shape) != (batch_size, length):
            shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            raise ConfigError(f"{who} returned a mask of shape {shape}; expected {(batch_size, length)} "
                              f"(batch, patch tokens of the {grid[0]}x{grid[1]} grid)")
        counts = mask.bool().sum(dim=1)
        if batch_size and bool((counts != counts[0]).any()):
            raise ConfigError(f"{who} hides a different number of tokens per row ({sorted(set(counts.tolist()))}); "
                              "every row must hide the same number")
        if batch_size and int(counts[0]) >= length:
            raise ConfigError(f"{who} hides every one of the {length} tokens; lower its ratio")
        if need_hidden and batch_size and int(counts[0]) == 0:
            raise ConfigError(f"{who} hides no token, so there is nothing to predict; raise its ratio above 0")
        return mask

    def set_head(self, num_classes: int) -> ClassifierHead:
        """Attach a new classification head (LayerNorm + Linear) for ``num_classes``."""
        self.head = ClassifierHead(self.encoder.dim, num_classes)
        return self.head

    def classify(self, spec: torch.Tensor, drop_tokens: bool = False) -> torch.Tensor:
        """Logits ``[B, classes]``.  ``drop_tokens``: apply the fine-tuning masker (training)."""
        if self.head is None:
            raise RuntimeError("call set_head(num_classes) first")
        mask = None
        if drop_tokens and getattr(self, "finetune_masker", None) is not None:
            mask = self.draw_mask("finetune.masker", spec.shape[0], self.grid(spec))  # on the CPU: no GPU sync
        return self.head(self.encoder.pool(self.encoder(spec, mask)))


class _ValuesUnset(TorchFunctionMode):
    """``torch.nn.init``'s functions as no-ops, for a build on the meta device: meta tensors hold
    no values, and initialising them goes through torch's Python reference kernels, whose first
    call imports ``torch._dynamo`` (about a second of every command's start).  A torch function
    mode, so it holds in this thread only, for as long as the build."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def build_model(config: dict[str, Any], registry: Registry | None = None, dry_run: bool = False) -> SSLModel:
    """Instantiate every slot of a resolved config, in order, sharing a :class:`BuildContext`.

    ``dry_run``: build the weights on the meta device, to check every setting the components
    check and to count parameters before any data work, without allocating them.
    """
    registry = registry or get_registry()
    build = BuildContext()
    parts: dict[str, nn.Module | None] = {}
    origins: dict[str, str] = {}
    for slot, kind in slots(registry).items():
        node: Any = config
        for key in slot.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            parts[slot] = None
            continue
        entry = registry.get(kind, node["name"])
        cfg = instantiate_config(registry, kind, node)
        # a dry run builds weights on the meta device (no memory); the frontend's tables are data
        where = torch.device("meta") if dry_run and slot != "frontend" else contextlib.nullcontext()
        try:
            with where, (_ValuesUnset() if dry_run and slot != "frontend" else contextlib.nullcontext()):
                parts[slot] = entry.factory(cfg, build)
        except UserError:
            raise
        except (TypeError, ValueError) as exc:  # a component refusing its settings is the user's to fix
            raise ConfigError(f"{slot} {node['name']!r} (plugin {entry.plugin!r}) could not be built from "
                              f"{node}: {exc}") from exc
        except Exception as exc:  # a bug: keep the traceback, and say whose
            exc.add_note(f"raised by plugin {entry.plugin!r} while building {slot} {node['name']!r}")
            raise
        build.parts[slot] = parts[slot]
        origins[slot] = f"{kind} {node['name']!r} (plugin {entry.plugin!r})"
    if parts.get("encoder") is None:
        raise ConfigError(f"model {config['model']!r} has no encoder")
    model = SSLModel(config, parts, build)
    model.origins = origins
    return model


def blame(model: nn.Module, exc: BaseException) -> str | None:
    """``raised in masker 'x' (plugin 'y')``: the component whose code raised ``exc``, found by
    walking its traceback from the innermost frame out to the first frame in a component's
    module; None when no component's code is on it."""
    import sys

    origins = getattr(model, "origins", None) or {}
    parts = getattr(getattr(model, "build", None), "parts", {}) or {}
    files: dict[str, str] = {}
    for slot, origin in origins.items():
        part = parts.get(slot)
        for cls in type(part).__mro__ if part is not None else ():
            module = sys.modules.get(cls.__module__)
            path = getattr(module, "__file__", None)
            if path and not cls.__module__.startswith(("torch", "ssl_bench.components", "builtins")):
                files.setdefault(str(Path(path).resolve()), origin)
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    for filename in reversed(frames):
        try:
            origin = files.get(str(Path(filename).resolve()))
        except OSError:
            origin = None
        if origin is not None:
            return f"raised in {origin}"
    return None


def create_model(
    name: str | None = None,
    preset: str | None = None,
    checkpoint: str | Path | None = None,
    task: str | None = None,
    registry: Registry | None = None,
    **overrides: Any,
) -> SSLModel:
    """Build a registered model by name.

    ``overrides`` use the dotted keys of ``--set``; pass them with ``**{"encoder.depth": 2}``
    or, for component choices, as keywords (``decoder="NAME"``).  ``checkpoint``: anything
    :func:`ssl_bench.sources.resolve_checkpoint` resolves (a file the model's importer
    understands, a Hugging Face directory, ``torchaudio:BUNDLE``, an encoder id).  An
    ssl-bench checkpoint describes its model (name, preset, every component's settings and
    the normalisation statistics), so ``create_model(checkpoint=path)`` needs nothing else.
    """
    registry = registry or get_registry()
    if checkpoint is not None:
        from .sources import resolve_checkpoint

        checkpoint = resolve_checkpoint(checkpoint)  # a file, HF directory, torchaudio:BUNDLE or encoder id
        name, preset = checkpoint_model(checkpoint, name, preset)
    if name is None:
        raise ConfigError("create_model: name the model (only an ssl-bench checkpoint names its own)")
    if checkpoint is not None:
        overrides = merge_checkpoint_settings(checkpoint_settings(name, checkpoint, task, registry), overrides)
    config = resolve(name, preset=preset, task=task, overrides=overrides, registry=registry)
    if checkpoint is None:
        checkpoint = initial_checkpoint(config, registry)
    model = build_model(config, registry)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, registry)
        model.config["checkpoint"] = str(checkpoint)
    return model


def checkpoint_model(checkpoint: str | Path, name: str | None = None,
                     preset: str | None = None) -> tuple[str | None, str | None]:
    """``(model name, preset)`` for ``checkpoint``: the ones given, else those an ssl-bench
    checkpoint records (its preset only when it holds the same model)."""
    from .checkpoint import saved_description

    saved = saved_description(checkpoint) if Path(checkpoint).is_file() else None
    if saved is None:
        return name, preset
    name = name or saved["model_name"]
    if preset is None and saved["model_name"] == name:
        preset = saved["preset"]
    return name, preset


def merge_checkpoint_settings(found: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The user's ``overrides`` over a checkpoint's settings; a slot the user fills with another
    component drops the checkpoint's settings of that slot (they belong to the old one)."""
    from .config import MODEL_SLOTS

    chosen = [s for s in MODEL_SLOTS if s in overrides and overrides[s] != found.get(s, overrides[s])]
    kept = {k: v for k, v in found.items() if not any(k == s or k.startswith(s + ".") for s in chosen)}
    return {**kept, **overrides}


def checkpoint_settings(name: str, checkpoint: str | Path, task: str | None = None,
                        registry: Registry | None = None) -> dict[str, Any]:
    """Dotted settings that ``checkpoint`` dictates for model ``name``, for the ``--set`` layer
    under the user's own overrides: an ssl-bench checkpoint of the same model gives every
    component's choice and settings as saved (and its normalisation statistics), then the
    spec's ``checkpoint_overrides`` hook adds what it reads from the weights.

    Keys the model's recipe for ``task`` sets are left to the recipe (an AudioSet checkpoint's
    1024 frames do not override the ESC-50 recipe's 512; the importer adapts the weights), and
    with a task the input length and the normalisation are the task's (the runner's: its
    recipe, its clip length, its statistics); without one the model adopts the checkpoint's
    length, so its position table is used as stored.
    """
    from .checkpoint import saved_description
    from .config import MODEL_SLOTS

    registry = registry or get_registry()
    spec = registry.get("model", name).factory
    found: dict[str, Any] = {}
    saved = saved_description(checkpoint) if Path(checkpoint).is_file() else None
    if saved is not None and saved["model_name"] == name:
        for slot in MODEL_SLOTS:
            if slot not in saved["config"]:
                continue
            node = saved["config"][slot]
            if not isinstance(node, dict):
                found[slot] = None
                continue
            found[slot] = node.get("name")
            found.update({f"{slot}.{k}": v for k, v in node.items() if k != "name"})
    hook = getattr(spec, "checkpoint_overrides", None)
    if hook is not None:
        found.update(hook(Path(checkpoint)))
    recipe = (getattr(spec, "recipes", None) or {}).get(task, {}) if task else {}
    task_owned = set(recipe) | ({"frontend.num_frames", "frontend.mean", "frontend.std"} if task else set())
    return {k: v for k, v in found.items() if k not in task_owned}


def initial_checkpoint(config: dict[str, Any], registry: Registry | None = None) -> Path | None:
    """The checkpoint a resolved ``config`` starts from without ``--checkpoint`` (its model
    spec's ``initial_checkpoint`` hook; fetched if need be), or ``None``: random init."""
    registry = registry or get_registry()
    hook = getattr(registry.get("model", config["model"]).factory, "initial_checkpoint", None)
    found = hook(config) if hook is not None else None
    return Path(found) if found is not None else None


def load_checkpoint(model: SSLModel, path: str | Path, registry: Registry | None = None) -> Any:
    """Load ``path`` into ``model`` with the model's importer (or the ssl-bench format)."""
    from .checkpoint import load_into

    registry = registry or get_registry()
    spec = registry.get("model", model.name).factory
    if spec.load_checkpoint is not None:
        return spec.load_checkpoint(model, Path(path))
    return load_into(model, Path(path))


#: Bytes per parameter of a training step in float32: weights, gradients and AdamW's two moments.
TRAIN_BYTES_PER_PARAMETER = 16


def check_config(config: dict[str, Any], registry: Registry | None = None,
                 memory_bytes: int | None = None, protocols: Sequence[str] | None = None) -> int:
    """Every check of a resolved ``config`` that needs no data, in one pass before any data work:
    the values (:func:`ssl_bench.config.validate`: types, finite numbers, the ranges of the run
    settings, ``data`` and the sections of ``protocols``, default all), then the model built
    without allocating it (a dry run), so every component checks its settings, a mask drawn,
    and a model refused whose weights and optimiser state alone need more memory than there is
    (``memory_bytes``, default: this machine's RAM for a CPU run).  Returns the parameter count."""
    validate(config, protocols, registry)
    model = build_model(config, registry, dry_run=True)
    grid = getattr(model.build, "grid", None)
    pretraining = bool((config.get("pretrain") or {}).get("enabled", True))
    for slot in ("masker", "finetune.masker"):  # a mask drawn now: a ratio of 0 or 1 is refused before data work
        if grid and getattr(model, slot.replace(".", "_"), None) is not None:
            try:
                model.draw_mask(slot, 2, tuple(grid), need_hidden=slot == "masker" and pretraining)
            except UserError:
                raise
            except Exception:  # noqa: BLE001 - a masker that cannot draw on the meta build is checked in training
                pass
    n = sum(p.numel() for p in model.parameters())
    if memory_bytes is None and str(config.get("device", "auto")).startswith(("cpu", "auto")):
        memory_bytes = _physical_memory()
    need = n * TRAIN_BYTES_PER_PARAMETER
    if memory_bytes and need > memory_bytes:
        raise ConfigError(
            f"model {config['model']!r} has {n / 1e6:,.1f} M parameters: training it needs at least "
            f"{need / 2**30:,.1f} GiB for weights, gradients and optimiser state, more than the "
            f"{memory_bytes / 2**30:,.1f} GiB of this machine; lower encoder.dim/encoder.depth or choose a smaller preset"
        )
    return n


def _physical_memory() -> int | None:
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
