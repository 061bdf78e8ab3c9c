"""Fixed 2-D sin-cos position tables for patch tokens, and how to crop them.

Two modes:

* ``"official"``: the table the released AudioMAE checkpoints carry.  The official code builds
  it for a ``(n_freq, n_time)`` grid in row-major order (``(8, 64)`` for 1024 x 128) while its
  tokens are laid out time-major over ``(n_time, n_freq)``, so token ``i = t * n_freq + f``
  gets the sin-cos coordinates ``(i mod n_time, i // n_time)`` instead of ``(t, f)``
  (reference notes, section 1.3).  Positions are still unique, and a checkpoint is only
  compatible with exactly this table.  For any layout, row ``i`` of the table goes to token ``i``.
* ``"true"``: every token gets its real ``(t, f)``: the first half of the channels encodes the
  frequency index, the second half the time index (MAE's column/row convention), whatever the
  token layout.

Both tables have ``num_prefix`` zero rows in front (cls / distillation tokens).
"""

from __future__ import annotations

import numpy as np
import torch

from ssl_bench.components import FREQ_MAJOR, TIME_MAJOR
from ssl_bench.nn import sincos_2d

MODES = ("official", "true")


def check_mode(mode: str, what: str = "pos_embed") -> str:
    if mode not in MODES:
        raise ValueError(f"{what} must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _table_shape(grid: tuple[int, int], layout: str, mode: str) -> tuple[int, int, int]:
    """``(rows, cols, time_axis)``: how the table was generated in token order.

    Cropping time then means keeping the first ``n_time`` entries along ``time_axis``.
    """
    n_time, n_freq = grid
    if mode == "official" or layout == FREQ_MAJOR:
        return n_freq, n_time, 1
    return n_time, n_freq, 0


def patch_table(dim: int, grid: tuple[int, int], layout: str = TIME_MAJOR, mode: str = "official") -> np.ndarray:
    """``[n_time * n_freq, dim]`` sin-cos table in the token order of ``layout``."""
    check_mode(mode)
    if layout not in (TIME_MAJOR, FREQ_MAJOR):
        raise ValueError(f"unknown token layout {layout!r}")
    n_time, n_freq = grid
    if mode == "official":
        # The release's grid is (n_freq, n_time), row-major, assigned to tokens as they come.
        return sincos_2d(dim, n_freq, n_time)
    table = sincos_2d(dim, n_time, n_freq)  # time-major: row t*n_freq+f encodes (col f, row t)
    if layout == FREQ_MAJOR:
        table = table.reshape(n_time, n_freq, dim).transpose(1, 0, 2).reshape(n_time * n_freq, dim)
    return table


def position_table(dim: int, grid: tuple[int, int], layout: str = TIME_MAJOR, mode: str = "official",
                   num_prefix: int = 0) -> torch.Tensor:
    """``[1, num_prefix + L, dim]`` float32 table with zero rows for the prefix tokens."""
    table = patch_table(dim, grid, layout, mode)
    full = np.concatenate([np.zeros((num_prefix, dim)), table], axis=0)
    return torch.from_numpy(full).float().unsqueeze(0)


def crop_table(table: torch.Tensor, grid: tuple[int, int], layout: str, mode: str,
               num_prefix: int) -> torch.Tensor | None:
    """Crop a stored table (e.g. the 1024-frame one of a checkpoint) to ``grid``.

    The stored table must have the same number of frequency patches; its time length is
    inferred.  Cropping follows the way the table was generated, so for the official table of
    64 x 8 cropped to 32 x 8 the result equals the official rule applied to a 512-frame input
    (grid ``(8, 32)``), which is also what the official ``interpolate_pos_embed_audio`` would
    give.  Returns ``None`` when the stored table is shorter than ``grid`` needs (the caller
    keeps its own, identical-by-formula table).  Raises ``ValueError`` when it cannot fit.
    """
    n_time, n_freq = grid
    dim = table.shape[-1]
    body = table[0, num_prefix:]
    if body.shape[0] % n_freq:
        raise ValueError(f"{body.shape[0]} position rows are not a whole number of {n_freq}-patch frequency columns")
    src_time = body.shape[0] // n_freq
    if src_time < n_time:
        return None
    rows, cols, time_axis = _table_shape((src_time, n_freq), layout, mode)
    body = body.reshape(rows, cols, dim)
    body = body[:n_time] if time_axis == 0 else body[:, :n_time]
    return torch.cat([table[0, :num_prefix], body.reshape(-1, dim)], dim=0).unsqueeze(0)
