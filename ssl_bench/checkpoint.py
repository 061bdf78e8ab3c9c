"""Checkpoint files: safe loading, atomic saving, and load reports.

* :func:`safe_load` reads ``.pt``/``.pth``/``.bin`` with ``torch.load(weights_only=True)``
  plus an allow-list of harmless globals (``argparse.Namespace``, which the official AudioMAE
  files carry), and ``.safetensors`` with safetensors; it never unpickles arbitrary code.
* :func:`atomic_save` writes to a temporary file in the same directory and renames it, so a
  crash never leaves half a checkpoint.
* :class:`CheckpointReport` says what was loaded, missing and unexpected.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .files import atomic_write, file_stamp

FORMAT = "ssl-bench"
FORMAT_VERSION = 1
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


@dataclass
class CheckpointReport:
    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def short(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = [f"{self.path}: {self.format} checkpoint, {len(self.loaded)} tensors loaded"]
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {short(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)}: {short(self.unexpected)}")
        return "; ".join(parts)


def safe_load(path: str | Path) -> Any:
    """Load a checkpoint file without executing pickled code."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file; give the weights file in it "
                              "(a Hugging Face model directory is read only by the model that imports it)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors is a dependency
            raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package") from None
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or unsafe pickles all end here
        text = str(exc)
        blocked = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
        if blocked or "Weights only load failed" in text:
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            what = (f"names the global {blocked.group(1)}" if blocked else
                    f"uses what the safe loader does not run ({detail.group(1).strip() if detail else 'unknown'})")
            raise CheckpointError(
                f"{path}: refused: its pickle {what}; loading a checkpoint never runs pickled code (it could do "
                "anything), only tensors and plain containers are read. Re-save the weights as a state dict "
                "(torch.save(model.state_dict(), ...)) or as .safetensors") from None
        msg = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({msg})") from None


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    return atomic_write(path, "wb", lambda fh: torch.save(obj, fh))


def model_description(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint needs to rebuild ``model`` with no other setting: the model's name and
    preset, its resolved config (every component's choice and settings) with the frontend's
    normalisation statistics written in (a runner sets them after building, so the config
    alone would lack them), and those statistics on their own (``norm_stats``)."""
    import copy

    config = copy.deepcopy(getattr(model, "config", None))
    stats = getattr(getattr(model, "frontend", None), "norm_stats", None)
    stats = [float(v) for v in stats] if stats is not None else None
    if isinstance(config, dict) and stats is not None and isinstance(config.get("frontend"), dict):
        node = config["frontend"]
        if "mean" in node and "std" in node:
            node["mean"], node["std"] = stats
    return {
        "model_name": config.get("model") if isinstance(config, dict) else None,
        "preset": config.get("preset") if isinstance(config, dict) else None,
        "config": config,
        "norm_stats": stats,
    }


def save_model(model: nn.Module, path: str | Path, **extra: Any) -> Path:
    """Save an :class:`~ssl_bench.model.SSLModel` in the ssl-bench format: weights plus
    :func:`model_description` (name, preset, resolved config, normalisation statistics)."""
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **model_description(model),
        "model": model.state_dict(),
        **extra,
    }
    return atomic_save(payload, path)


def saved_description(path: str | Path) -> dict[str, Any] | None:
    """The :func:`model_description` an ssl-bench checkpoint carries (``None`` for other files:
    official releases, bare state dicts, Hugging Face directories)."""
    path = Path(path)
    if not path.is_file():
        return None
    key = (str(path.resolve()), file_stamp(path.stat()))  # a file rewritten in place is read again
    if key not in _DESCRIPTIONS:  # one read per file, however many callers ask
        obj = safe_load(path)
        found = None
        if is_ssl_bench(obj) and isinstance(obj.get("config"), dict):
            config = obj["config"]
            found = {"model_name": obj.get("model_name") or config.get("model"),
                     "preset": obj.get("preset", config.get("preset")), "config": config,
                     "norm_stats": obj.get("norm_stats")}
        _DESCRIPTIONS.clear()
        _DESCRIPTIONS[key] = found
    return _DESCRIPTIONS[key]


_DESCRIPTIONS: dict[tuple, dict[str, Any] | None] = {}


def is_ssl_bench(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, fmt: str,
               strict: bool = False) -> CheckpointReport:
    """``load_state_dict`` with shape checks that name the file and the keys."""
    own = model.state_dict()
    bad = [
        f"{k} {tuple(v.shape)} (model expects {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(f"{path}: shapes do not fit: " + "; ".join(bad[:6]) + (" ..." if len(bad) > 6 else ""))
    result = model.load_state_dict(state, strict=False)
    report = CheckpointReport(
        str(path), fmt,
        loaded=[k for k in state if k in own],
        missing=list(result.missing_keys),
        unexpected=list(result.unexpected_keys),
    )
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(str(report))
    return report


def load_into(model: nn.Module, path: str | Path, strict: bool = False) -> CheckpointReport:
    """Load an ssl-bench checkpoint (or a bare state dict with our key names) into ``model``."""
    obj = safe_load(path)
    if is_ssl_bench(obj):
        state, fmt = obj["model"], FORMAT
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, fmt = obj, "state-dict"
    else:
        raise CheckpointError(f"{path}: not an ssl-bench checkpoint or state dict")
    if getattr(model, "head", 1) is None and any(k.startswith("head.") for k in state):
        # a fine-tuned checkpoint: make room for its head before loading
        n = state["head.1.weight"].shape[0]
        model.set_head(n)
    return load_state(model, state, path, fmt, strict=strict)
