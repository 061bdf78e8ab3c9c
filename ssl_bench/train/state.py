"""Training checkpoints and resume: model, optimiser, schedule, sampler position, RNG streams.

One writer (:func:`save_train_checkpoint`, atomic, rank 0) and one reader
(:func:`restore_train_state`) for every protocol that trains, so a resumed run continues
exactly where the last complete checkpoint left it (bit for bit on CPU), the protocol's own
state (a best-epoch tracker) and any state the model keeps between steps (an EMA teacher is
part of the model's state dict) included.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .. import distributed as D
from ..checkpoint import CheckpointError, atomic_save, safe_load

CHECKPOINT_FORMAT = "ssl-bench-train"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "last.pt"


class Stateful(Protocol):
    """Anything a checkpoint can hold: a best-epoch tracker, a protocol's own state."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def load_train_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`fit` (safe loading, format checked)."""
    obj = safe_load(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an ssl-bench training checkpoint")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: training checkpoint version {obj.get('version')}, expected {CHECKPOINT_VERSION}")
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model)."""
    return getattr(model, "module", model)


def save_train_checkpoint(path: Path | None, model: nn.Module, optimizer: Any, schedule: Any, scaler: Any,
                          epoch: int, step: int, history: list[dict[str, Any]], step_losses: list[float],
                          epoch_losses: torch.Tensor, state: Stateful | None, finished: bool,
                          compute: dict[str, float] | None = None) -> Path | None:
    """Write the training checkpoint on rank 0 (every rank takes part in gathering RNG states).

    ``epoch``/``step``: where training continues (``step`` > 0: inside ``epoch``, whose first
    ``step`` losses are ``epoch_losses[:step]``).  ``compute``: wall and training seconds and
    samples so far (``wall_s``, ``train_s``, ``samples``), which a resumed run adds to.
    """
    if path is None:
        return None
    rngs = D.all_gather_object(rng_state())
    info = D.current()
    # mid-epoch: this epoch's first `step` losses (already in step_losses once the epoch ends)
    partial = D.all_reduce_mean(epoch_losses).cpu() if step else torch.zeros(0, dtype=torch.float64)
    if info.is_main:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "finished": finished,
            "history": history,
            "step_losses": step_losses,
            "epoch_losses": partial,
            "state": state.state_dict() if state is not None else None,
            "rng": rngs,
            "world_size": info.world_size,
            "compute": {k: float(v) for k, v in (compute or {}).items()},
            **_description(model),
        }
        atomic_save(payload, path)
    D.barrier()
    return path


def restore_train_state(saved: dict[str, Any], model: nn.Module, state: Stateful | None,
                        optimizer: Any = None, schedule: Any = None, scaler: Any = None) -> None:
    """Load what a checkpoint holds back into the objects that train: the model always, the
    protocol's ``state`` and this rank's RNG streams, and the optimiser, schedule and scaler
    when given (a finished checkpoint needs none of those)."""
    unwrap(model).load_state_dict(saved["model"])
    for obj, key in ((optimizer, "optimizer"), (schedule, "scheduler"), (scaler, "scaler")):
        if obj is not None:
            obj.load_state_dict(saved[key])
    if state is not None and saved.get("state") is not None:
        state.load_state_dict(saved["state"])
    info = D.current()
    rngs = saved["rng"]
    set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])


def _description(model: nn.Module) -> dict[str, Any]:
    """The model's name, preset, config and statistics (:func:`ssl_bench.checkpoint.model_description`)
    for a model that has a config; nothing for a bare module."""
    from ..checkpoint import model_description

    module = unwrap(model)
    return model_description(module) if isinstance(getattr(module, "config", None), dict) else {}
