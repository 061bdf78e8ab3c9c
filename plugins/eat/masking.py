"""Inverse block masking (EAT, after data2vec 2.0): what stays *visible* is a few blocks.

EAT hides 80% of the patch grid, and instead of hiding blocks (the usual block masking) it
keeps blocks: the visible 20% are contiguous time x frequency regions, so the student must
infer wide masked spans from local islands of context (the paper finds this much better for
audio than unstructured masking at the same ratio).

How a row is drawn here (our construction, exact and vectorised):

1. ``n_keep = max(1, int(L * (1 - ratio)))`` cells stay visible (the count rule of every
   masker in ssl-bench, so every row hides the same number of tokens);
2. block centres are drawn uniformly over the grid *extended* by half a block on every side,
   so each cell is covered by the same number of centre positions (no bias against the
   borders); a block spans ``block_time x block_freq`` patches around its centre, clipped to
   the grid;
3. blocks are laid down one after another; the visible cells are those of the first blocks,
   in order, until ``n_keep`` are covered: the last block is cut to the cells still needed
   (chosen at random) and, if the drawn blocks cover fewer than ``n_keep`` cells, the rest are
   random cells.  Sorting the cells by "index of the first block that covers it + uniform
   noise" and keeping the first ``n_keep`` does exactly this in one ``argsort``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ssl_bench.components import FREQ_MAJOR, TIME_MAJOR, BuildContext, Component


def grid_to_tokens(grid_values: torch.Tensor, layout: str) -> torch.Tensor:
    """``[B, n_time, n_freq]`` -> ``[B, L]`` in the encoder's token order."""
    if layout == FREQ_MAJOR:
        grid_values = grid_values.transpose(1, 2)
    return grid_values.reshape(grid_values.shape[0], -1)


class InverseBlockMasker(Component):
    """Hides ``ratio`` of the patches, keeping the rest as ``block_time x block_freq`` blocks.

    Registered as ``inverse-block``.  The paper's setting is ratio 0.8 with 5 x 5 blocks on
    AudioSet's 64 x 8 grid (the release's ``mask_length: 5``).
    """

    @dataclass
    class Config:
        ratio: float = 0.8
        block_time: int = 5  # block size in patches along time
        block_freq: int = 5  # and along frequency (clipped to the grid)

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        if not 0.0 <= self.cfg.ratio < 1.0:
            raise ValueError(f"masker ratio must be in [0, 1), got {self.cfg.ratio}")
        if self.cfg.block_time < 1 or self.cfg.block_freq < 1:
            raise ValueError(f"masker block_time and block_freq must be >= 1, got "
                             f"{self.cfg.block_time} x {self.cfg.block_freq}")

    def forward(self, batch_size: int, grid: tuple[int, int], layout: str = TIME_MAJOR,
                device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
            raise ValueError(f"masker: grid must be (n_time, n_freq) with positive sizes, got {grid}")
        if layout not in (TIME_MAJOR, FREQ_MAJOR):
            raise ValueError(f"masker: unknown token layout {layout!r}; expected {TIME_MAJOR!r} or {FREQ_MAJOR!r}")
        n_time, n_freq = int(grid[0]), int(grid[1])
        bt, bf = min(self.cfg.block_time, n_time), min(self.cfg.block_freq, n_freq)
        cells = n_time * n_freq
        n_keep = max(1, int(cells * (1.0 - self.cfg.ratio)))
        # Enough blocks to cover n_keep cells with overlaps to spare; any shortfall is filled with
        # random cells (step 3), so the count is exact whatever the draw.
        n_blocks = math.ceil(4 * n_keep / (bt * bf)) + 1
        where = generator.device if generator is not None else "cpu"
        lo_t, lo_f = (bt - 1) // 2, (bf - 1) // 2  # cells before the centre in a block
        hi_t, hi_f = bt // 2, bf // 2  # and after it
        # Centres over the grid extended by the block's reach: every cell is covered by bt (bf)
        # centre positions, border cells included.
        ct = torch.randint(-hi_t, n_time + lo_t, (batch_size, n_blocks), generator=generator, device=where)
        cf = torch.randint(-hi_f, n_freq + lo_f, (batch_size, n_blocks), generator=generator, device=where)
        noise = torch.rand(batch_size, n_time, n_freq, generator=generator, device=where)
        t = torch.arange(n_time, device=where).view(1, 1, n_time)
        f = torch.arange(n_freq, device=where).view(1, 1, n_freq)
        in_t = ((t - ct[..., None]) >= -lo_t) & ((t - ct[..., None]) <= hi_t)  # [B, M, n_time]
        in_f = ((f - cf[..., None]) >= -lo_f) & ((f - cf[..., None]) <= hi_f)  # [B, M, n_freq]
        covered = in_t[:, :, :, None] & in_f[:, :, None, :]  # [B, M, n_time, n_freq]
        first = torch.where(covered.any(dim=1), covered.to(torch.uint8).argmax(dim=1),
                            torch.full((), n_blocks, device=where))
        order = grid_to_tokens(first.to(noise.dtype) + noise, layout)  # [B, L]
        keep_ids = order.argsort(dim=1)[:, :n_keep]
        mask = torch.ones(batch_size, cells, dtype=torch.bool, device=where)
        mask.scatter_(1, keep_ids, False)
        return mask.to(device)
