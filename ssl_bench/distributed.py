"""Process groups for ``torchrun``: one process per device, one code path for 1 or N.

``torchrun --nproc-per-node N -m ssl_bench run ...`` starts N copies of the command with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` set; :func:`init`
joins them into one process group through the ``env://`` rendezvous (NCCL on GPUs, gloo on
CPUs).  Without those variables everything here degrades to a single process, so the
training loop and the protocols never branch on "distributed or not" beyond asking
:func:`current` for the rank and world size.

Rules the rest of the harness follows:

* every rank runs the same code; only rank 0 writes results, checkpoints and caches
  (:func:`main_first` lets rank 0 fill a cache before the others read it);
* training shards each global batch over the ranks (see ``train.ShardedBatchSampler``);
* evaluation shards the examples ``rank::world`` with no padding and :func:`gather_rows`
  puts them back in their original order, so every example is scored exactly once.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``local_rank`` and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(name: str | None = "auto", info: DistInfo | None = None) -> torch.device:
    """``"auto"`` -> ``cuda:<local rank>`` when CUDA is present, else ``cpu``.

    Under torchrun a plain ``"cuda"`` also becomes the process's own GPU.
    """
    info = info or current()
    name = (name or "auto").strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} was asked for but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return device


def init(device: str | None = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; idempotent.

    The backend is NCCL when the run uses CUDA and gloo otherwise.  Returns the
    :class:`DistInfo` that :func:`current` will report from now on.
    """
    global _INFO
    world = env_world_size()
    if world <= 1:
        return _INFO
    if dist.is_available() and dist.is_initialized():
        return _INFO
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun "
            "(torchrun --nproc-per-node N -m ssl_bench run ...)"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    wants_cuda = (device or "auto") != "cpu" and torch.cuda.is_available() and not str(device).startswith("cpu")
    backend = "nccl" if wants_cuda else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s), **kwargs,
    )
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)
    return _INFO


def current() -> DistInfo:
    """This process's :class:`DistInfo` (rank 0 of 1 unless :func:`init` joined a group)."""
    return _INFO


def shutdown() -> None:
    """Leave the process group (end of a torchrun command)."""
    global _INFO
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _INFO = DistInfo()


def _set_info(info: DistInfo) -> None:
    """Install ``info`` as the current process's placement (tests that build groups by hand)."""
    global _INFO
    _INFO = info


def barrier() -> None:
    if current().enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling a cache), then the others run it (reading it)."""
    info = current()
    if info.enabled and not info.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if info.enabled and info.is_main:
            dist.barrier()


def _comm_device(info: DistInfo) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (returns ``t`` unchanged in a single process)."""
    info = current()
    if not info.enabled:
        return t
    x = t.detach().to(_comm_device(info), torch.float64).clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return (x / info.world_size).to(t.device, t.dtype)


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is True on any rank (one small all-reduce)."""
    info = current()
    if not info.enabled:
        return flag
    x = torch.tensor([1.0 if flag else 0.0], device=_comm_device(info))
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return bool(x.item() > 0)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    info = current()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    info = current()
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int, info: DistInfo | None = None) -> np.ndarray:
    """The evaluation indices this rank handles: ``rank, rank + world, ...`` (no padding)."""
    info = info or current()
    return np.arange(info.rank, n, info.world_size, dtype=np.int64)


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble per-rank results of :func:`shard` into ``[n, ...]`` in the original order.

    ``local`` holds this rank's rows for ``shard(n)``.  Ranks send equal-size tensors (padded
    to the largest shard), but the padding is cut off again, so every example appears
    exactly once.  Returns a CPU tensor on every rank.
    """
    info = current()
    if not info.enabled:
        return local.detach().cpu()
    dev = _comm_device(info)
    per_rank = [len(range(r, n, info.world_size)) for r in range(info.world_size)]
    biggest = max(per_rank)
    pad = torch.zeros((biggest - local.shape[0],) + tuple(local.shape[1:]), dtype=local.dtype, device=dev)
    send = torch.cat([local.detach().to(dev), pad]) if pad.shape[0] else local.detach().to(dev).contiguous()
    bufs = [torch.empty_like(send) for _ in range(info.world_size)]
    dist.all_gather(bufs, send)
    out = torch.empty((n,) + tuple(local.shape[1:]), dtype=local.dtype)
    for r, (buf, count) in enumerate(zip(bufs, per_rank)):
        out[r::info.world_size] = buf[:count].cpu()
    return out
