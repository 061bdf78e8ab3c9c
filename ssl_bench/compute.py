"""What a row says: its compute columns, and the columns every row of a run carries.

Compute columns (:func:`compute_columns`) say what a number cost: parameters, analytic FLOPs
per example, throughput, wall time, CPU-hours, GPU-hours, peak memory, processes and the
device.  A protocol that trains reports its own (from its :class:`~ssl_bench.train.FitResult`);
for the others the runner measures them around the protocol (:class:`Meter`).

:class:`RowStamp` is what every row of one run shares (task, seed, code, data, the job that
computed it, a suite's name and version), and :meth:`RowStamp.rows` turns one protocol result
into one row per metric, named by its split and its encoder (``init``, ``init_id``,
``pretrained_by``).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .train import FitResult, peak_memory_mb

#: Examples :func:`flops_per_sample` counts on: more than one, so a BatchNorm layer in training
#: mode (a method's projector) can run; the count is divided by it.
FLOP_EXAMPLES = 2


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of ``module`` (only those that train, with ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def flops_per_sample(fn: Callable[[torch.Tensor], Any], spec: torch.Tensor) -> float | None:
    """Analytic FLOPs of ``fn(batch)`` per example (``torch.utils.flop_counter``: matmuls,
    convolutions and attention), or None when nothing was counted.

    The contract: ``fn`` runs once, without gradients, in whatever mode (train or eval) the
    caller left the model, on :data:`FLOP_EXAMPLES` copies of ``spec``'s first example (a batch
    of one would break BatchNorm in training mode); the count is divided by that number, which
    is exact for layers whose cost is linear in the batch."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = spec[:1].expand(FLOP_EXAMPLES, *spec.shape[1:])
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(batch)
    total = counter.get_total_flops()
    return float(total) / FLOP_EXAMPLES if total else None


def spec_probe(num_frames: int, num_bins: int, device: torch.device) -> torch.Tensor:
    """A silent example ``[1, num_frames, num_bins]`` for :func:`flops_per_sample`."""
    return torch.zeros(1, num_frames, num_bins, device=device)


def compute_columns(*, parameters: int, flops: float | None, fit: FitResult | None, wall_s: float,
                    device: torch.device, world_size: int, samples_per_s: float | None = None,
                    peak_mb: float | None = None, cpu_s: float | None = None) -> dict[str, Any]:
    """The compute columns of a result row (``cpu_hours`` when ``cpu_s`` was measured)."""
    gpu = device.type == "cuda"
    extra = {"cpu_hours": round(float(cpu_s) / 3600.0, 6)} if cpu_s is not None else {}
    return {**extra,
        "parameters": int(parameters),
        "flops_per_sample": flops,
        "samples_per_s": round(float(samples_per_s if samples_per_s is not None
                                     else (fit.samples_per_s if fit else 0.0)), 3),
        "wall_s": round(float(wall_s), 3),
        "gpu_hours": round(wall_s * world_size / 3600.0, 6) if gpu else 0.0,
        "peak_memory_mb": round(float(peak_mb if peak_mb is not None else peak_memory_mb(device)), 1),
        "world_size": int(world_size),
        "accum_steps": int(fit.accum_steps) if fit else None,  # as trained (raised when memory required it)
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
    }


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of the child processes it has waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_mb() -> float:
    """The process's peak resident memory since it started or since :func:`_reset_peak_rss`."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _reset_peak_rss() -> bool:
    """Start the peak resident memory afresh (Linux: ``clear_refs`` 5); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Meter:
    """What a block of work cost this process: wall time, CPU-hours (every thread, and child
    processes waited for), GPU-hours (wall x processes on a CUDA device, by device name) and
    peak memory (resident, and allocated on the GPU).  Peak resident memory is the block's own
    where Linux lets it be reset, else the process's peak so far (``peak_rss_since_start``)."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.own_peak = _reset_peak_rss()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0, self.cpu0 = time.time(), cpu_seconds()

    def read(self, world_size: int = 1) -> dict[str, Any]:
        wall = time.time() - self.t0
        gpu = self.device is not None and self.device.type == "cuda"
        return {
            "wall_s": round(wall, 3), "cpu_hours": round((cpu_seconds() - self.cpu0) / 3600.0, 6),
            "gpu_hours": round(wall * world_size / 3600.0, 6) if gpu else 0.0,
            "device": torch.cuda.get_device_name(self.device) if gpu else "cpu",
            "peak_rss_mb": round(_peak_rss_mb(), 1), "peak_rss_since_start": not self.own_peak,
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1) if gpu else 0.0,
            "pid": os.getpid(),
        }


@dataclass(frozen=True)
class RowStamp:
    """What every row of one run says about the task, the code and the data that produced it."""

    task: str
    seed: int
    primary_metric: str
    code_version: str
    data_sha256: str  # the audio's content digest, shortened
    #: the job that computed the rows (:func:`ssl_bench.provenance.job_record`) and extra columns
    #: every row carries (a suite's ``suite`` and ``suite_version``)
    job: Mapping[str, Any] = field(default_factory=dict)
    columns: Mapping[str, Any] = field(default_factory=dict)

    def rows(self, *, split: str, split_columns: Mapping[str, Any], protocol: str, init: str, init_id: str,
             pretrained_by: str, metrics: Mapping[str, float], extra: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One row per metric: the split, the encoder that produced it (``init`` name, content
        ``init_id``, how it was pretrained), the code and data, the job, the split's sizes and
        the protocol's own columns."""
        who = {"init": init, "init_id": init_id, "pretrained_by": pretrained_by,
               "primary_metric": self.primary_metric, "code_version": self.code_version,
               "data_sha256": self.data_sha256, **self.columns, **self.job}
        return [dict(task=self.task, protocol=protocol, split=split, seed=self.seed, metric=metric,
                     value=float(value), **who, **split_columns, **extra)
                for metric, value in metrics.items()]
