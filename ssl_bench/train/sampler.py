"""Which examples each rank trains on, step by step; resumable inside an epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .optim import TrainConfigError


class ShardedBatchSampler:
    """Yields this rank's micro-batches of index lists; a resumable ``DistributedSampler``.

    Epoch ``e`` shuffles ``range(n)`` with a generator seeded by ``(seed, e)`` and cuts it into
    ``n // batch_size`` global batches (the tail is dropped, as in MAE).  With ``weights`` (or
    ``num_samples``), an epoch instead draws ``num_samples`` (default ``n``) indices with
    replacement, with probability proportional to ``weights`` (AudioMAE's class-balanced
    ``WeightedRandomSampler`` for AudioSet-2M).  Global batch ``s`` is cut into
    ``accum_steps`` chunks and each chunk into ``world_size`` equal micro-batches, so the set of
    examples in a step, and the position (``offset``) of each example in it, do not depend on
    how many processes run.  ``set_epoch(e, start_step)`` resumes inside an epoch.
    """

    def __init__(self, n: int, batch_size: int, accum_steps: int = 1, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, weights: Sequence[float] | None = None,
                 num_samples: int | None = None):
        if batch_size % (accum_steps * world_size):
            raise TrainConfigError(
                f"batch_size {batch_size} is not divisible by accum_steps x world size = "
                f"{accum_steps} x {world_size}; choose a batch size that is"
            )
        self.n, self.batch_size, self.accum_steps = n, batch_size, accum_steps
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.micro = batch_size // (accum_steps * world_size)
        self.epoch, self.start_step = 0, 0
        self.weights = None
        if weights is not None or num_samples is not None:
            w = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (n,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise TrainConfigError(f"sampling weights must be {n} finite non-negative numbers, not all zero")
            self.weights = w
        self.num_samples = int(num_samples) if num_samples is not None else n

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=g)

    def offset(self, micro_index: int) -> int:
        """Position of this rank's ``micro_index``-th micro-batch inside its global batch."""
        chunk = self.batch_size // self.accum_steps
        return micro_index * chunk + self.rank * self.micro

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.order(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            batch = perm[step * self.batch_size:(step + 1) * self.batch_size]
            for m in range(self.accum_steps):
                start = self.offset(m)
                yield batch[start:start + self.micro].tolist()

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start_step, 0) * self.accum_steps

