"""How much memory a training step needs, measured before training, and the micro-batch that fits.

A ViT-B AudioMAE step at the paper's batch of 512 needs about 35 GB of activations on a CPU:
asked for on a laptop it is killed by the OOM killer after minutes of silence.  :func:`fit`
therefore measures, before its first step, the bytes autograd saves for backward on two small
batches (``saved_tensors_hooks``: exact, any device, no allocator statistics needed), splits
them into a per-example part and a fixed part, and raises ``accum_steps`` until one
micro-batch fits the memory the step may use.  Gradient accumulation changes the order of
floating-point sums, not what is trained: same examples, same masks, same global batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Activations saved for backward are the bulk of a step's memory; this covers the rest that
#: grows with the batch (the gradients of activations flowing back through one block, attention
#: scores, the loss's temporaries).  Measured on CPU with AudioMAE pretraining steps (peak
#: resident memory between batches of 4 and 12-16): each example added 1.05x (`base`, bf16)
#: to 1.45x (`small`, bf16 and float32) its saved bytes.
ACTIVATION_OVERHEAD = 1.6
#: Bytes per trainable parameter a step adds to the weights: gradients and AdamW's two moments (fp32).
STATE_BYTES_PER_PARAMETER = 12
#: The share of the memory free at the start that a step may use when no limit is set.
FREE_SHARE = 0.8


@dataclass
class StepMemory:
    """Bytes a step needs: ``fixed`` (optimiser state, cast weights) + ``per_example`` x micro-batch."""

    per_example: float
    fixed: float

    def need(self, micro: int) -> float:
        return self.fixed + ACTIVATION_OVERHEAD * self.per_example * micro

    def largest_micro(self, budget: float) -> int:
        """The largest micro-batch whose step fits ``budget`` bytes (0: not even one example)."""
        room = budget - self.fixed
        if room <= 0:
            return 0
        if self.per_example <= 0:  # nothing grows with the batch
            return 1 << 30
        return int(room // (ACTIVATION_OVERHEAD * self.per_example))


def saved_bytes(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``run()``'s result and the bytes of the distinct storages autograd saved for its backward."""
    seen: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse, nested)
            seen[(str(t.device), id(t))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, sum(seen.values())


def step_memory(small: int, large: int, saved_small: int, saved_large: int, trainable: int) -> StepMemory:
    """A line through the saved bytes of two batch sizes, plus the optimiser state to come."""
    per_example = max(saved_large - saved_small, 0) / max(large - small, 1)
    fixed = max(saved_small - per_example * small, 0) + STATE_BYTES_PER_PARAMETER * trainable
    return StepMemory(per_example=per_example, fixed=fixed)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this process's step: CUDA's free memory plus what torch holds cached;
    on CPU, ``MemAvailable`` shared among the processes of this host (``LOCAL_WORLD_SIZE``).
    ``None`` when it cannot be known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        free = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return free // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


def size(n: float) -> str:
    """``n`` bytes for a person: ``3.2 GiB``, ``740 MiB``, ``12 KiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


def fit_accum_steps(batch_size: int, accum_steps: int, world_size: int, largest_micro: int) -> int:
    """The smallest ``accum_steps`` (from the given one up) whose micro-batch
    ``batch_size / (accum_steps x world_size)`` is whole and at most ``largest_micro``;
    the given one when it already fits, 0 when no split of the batch fits."""
    for accum in range(max(accum_steps, 1), batch_size // max(world_size, 1) + 1):
        unit = accum * world_size
        if batch_size % unit == 0 and batch_size // unit <= largest_micro:
            return accum
    return 0
