"""Maskers: which patch tokens to hide (pretraining) or drop (fine-tuning).

Every masker returns a bool ``[B, L]`` mask, True = masked, with the same number of True in
every row (the encoder runs a dense ``[B, L_kept, D]`` batch), and honours the encoder's token
layout: a time masker hides whole time rows whether tokens are ordered time-major
(``t * n_freq + f``, AudioMAE) or freq-major (``f * n_time + t``, AST).

Counts follow MAE: a ratio ``r`` over ``n`` items keeps ``int(n * (1 - r))`` of them, but at
least one, so every grid works (a 1-column grid under a frequency ratio keeps its column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.components import FREQ_MAJOR, TIME_MAJOR, BuildContext, Component


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"masker {name} must be in [0, 1), got {value}")


def _check_grid(grid: tuple[int, int], layout: str) -> tuple[int, int]:
    if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
        raise ValueError(f"masker: grid must be (n_time, n_freq) with positive sizes, got {grid}")
    if layout not in (TIME_MAJOR, FREQ_MAJOR):
        raise ValueError(f"masker: unknown token layout {layout!r}; expected {TIME_MAJOR!r} or {FREQ_MAJOR!r}")
    return int(grid[0]), int(grid[1])


def _kept(n: int, ratio: float) -> int:
    # At least one: the encoder needs a token, and small grids must not crash mid-training.
    return max(1, int(n * (1.0 - ratio)))


def _uniform(shape: tuple[int, ...], device: torch.device | str, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform noise drawn on the generator's device (a CPU generator works for CUDA masks)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _keep_random(batch: int, n: int, keep: int, device, generator) -> torch.Tensor:
    """Bool ``[batch, n]``: True for ``keep`` random items per row (MAE's noise + argsort)."""
    ids = _uniform((batch, n), device, generator).argsort(dim=1)
    kept = torch.zeros(batch, n, dtype=torch.bool, device=device)
    kept.scatter_(1, ids[:, :keep], True)
    return kept


def grid_to_tokens(mask2d: torch.Tensor, layout: str) -> torch.Tensor:
    """``[B, n_time, n_freq]`` -> ``[B, L]`` in the encoder's token order."""
    if layout == FREQ_MAJOR:
        mask2d = mask2d.transpose(1, 2)
    return mask2d.reshape(mask2d.shape[0], -1)


class _RatioMasker(Component):
    """Shared by the maskers tuned by one ``ratio``: its Config and its range check."""

    @dataclass
    class Config:
        ratio: float = 0.8

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        _check_ratio("ratio", self.cfg.ratio)


class RandomMasker(_RatioMasker):
    """Unstructured masking (MAE, AudioMAE pretraining): each row hides a random ``ratio``."""

    def forward(self, batch_size: int, grid: tuple[int, int], layout: str = TIME_MAJOR,
                device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        n_time, n_freq = _check_grid(grid, layout)
        n = n_time * n_freq
        keep = _kept(n, self.cfg.ratio)
        # Layout is irrelevant: every position is equally likely.
        return ~_keep_random(batch_size, n, keep, device, generator)


class TimeMasker(_RatioMasker):
    """Hides whole time rows (all frequency patches of ``ratio`` of the time steps)."""

    def forward(self, batch_size: int, grid: tuple[int, int], layout: str = TIME_MAJOR,
                device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        n_time, n_freq = _check_grid(grid, layout)
        rows = _keep_random(batch_size, n_time, _kept(n_time, self.cfg.ratio), device, generator)
        return grid_to_tokens(~rows[:, :, None].expand(-1, -1, n_freq), layout)


class FrequencyMasker(_RatioMasker):
    """Hides whole frequency columns (all time patches of ``ratio`` of the frequency bands)."""

    def forward(self, batch_size: int, grid: tuple[int, int], layout: str = TIME_MAJOR,
                device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        n_time, n_freq = _check_grid(grid, layout)
        cols = _keep_random(batch_size, n_freq, _kept(n_freq, self.cfg.ratio),
                            device, generator)
        return grid_to_tokens(~cols[:, None, :].expand(-1, n_time, -1), layout)


class TimeFrequencyMasker(Component):
    """AudioMAE's 2-D masking: hides the union of random time rows and frequency columns.

    It keeps ``int(T * (1 - time_ratio))`` rows times ``int(F * (1 - freq_ratio))`` columns,
    so as fine-tuning token dropping with 0.2 / 0.2 on AudioSet's 64 x 8 grid it keeps
    51 x 6 = 306 tokens.
    """

    @dataclass
    class Config:
        time_ratio: float = 0.2
        freq_ratio: float = 0.2

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        _check_ratio("time_ratio", self.cfg.time_ratio)
        _check_ratio("freq_ratio", self.cfg.freq_ratio)

    def forward(self, batch_size: int, grid: tuple[int, int], layout: str = TIME_MAJOR,
                device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        n_time, n_freq = _check_grid(grid, layout)
        keep_t = _kept(n_time, self.cfg.time_ratio)
        keep_f = _kept(n_freq, self.cfg.freq_ratio)
        rows = _keep_random(batch_size, n_time, keep_t, device, generator)
        cols = _keep_random(batch_size, n_freq, keep_f, device, generator)
        kept = rows[:, :, None] & cols[:, None, :]
        return grid_to_tokens(~kept, layout)
