"""MAE decoders: visible tokens plus mask tokens back to per-patch predictions.

Three are registered:

* ``global`` (official ``decoder_mode=0``): pre-norm ViT blocks with global attention over the
  prefix and all patch tokens (8 by default);
* ``shifted-window`` (official ``decoder_mode=1``, the released checkpoint): 16 post-norm
  SwinV2-CR-style blocks with scaled cosine attention in 4 x 4 windows on the time x frequency
  grid, shifted by (2, 0) on every other block, and a continuous log-spaced relative position
  bias from a small MLP;
* ``hybrid`` (described in the paper, not in the release): window blocks, then global blocks
  of the same kind on top.

All share the MAE plumbing: ``embed`` (encoder dim -> decoder dim), a learnable
``mask_token`` put back at the hidden positions in the original token order, a fixed sin-cos
``pos_embed`` (zero rows for prefix tokens), the blocks, ``norm`` and ``pred`` (-> patch
values).  They size themselves from the :class:`~ssl_bench.components.BuildContext` the
encoder filled (``encoder_dim``, ``grid``, ``layout``, ``num_prefix_tokens``, ``patch_dim``),
so any encoder works: AudioMAE's (time-major, one cls token) or AST's (freq-major, two prefix
tokens, overlapping patches).  Window decoders view the tokens as a ``(time, freq)`` grid
whatever the layout and pad it to a whole number of windows; padded cells never reach a real
token (their keys are masked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.components import FREQ_MAJOR, TIME_MAJOR, BuildContext, Component, EncoderOutput
from ssl_bench.nn import Block, DropPath, Mlp, attention, init_vit_weights, set_drop_path

from .encoder import keep_indices
from .positions import check_mode, position_table

#: Additive logit for keys in another region of a shifted window, as in the release (not -inf:
#: the released weights were trained with this value).
SHIFT_MASK_VALUE = -100.0


def _require_build(build: BuildContext, what: str) -> tuple[int, tuple[int, int], int]:
    missing = [n for n in ("encoder_dim", "grid", "patch_dim") if getattr(build, n) is None]
    if missing:
        raise ValueError(f"{what}: the encoder did not fill {', '.join(missing)} in the build context; "
                         "build the encoder before the decoder")
    return int(build.encoder_dim), (int(build.grid[0]), int(build.grid[1])), int(build.patch_dim)


class MaskedDecoder(Component):
    """Shared plumbing of the MAE decoders (subclasses define ``blocks`` and ``run_blocks``)."""

    def _setup(self, dim: int, eps: float, pos_mode: str) -> None:
        build = self.build
        enc_dim, grid, patch_dim = _require_build(build, type(self).__name__)
        if dim % 4:
            raise ValueError(f"decoder.dim must be divisible by 4 for the 2-D sin-cos table, got {dim}")
        if pos_mode == "auto":
            pos_mode = build.extra.get("pos_embed", "true")
        self.pos_mode = check_mode(pos_mode, "decoder.pos_embed")
        self.dim = dim
        self.layout = build.layout
        self.num_prefix = int(build.num_prefix_tokens)
        self.grid = grid
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(
            position_table(dim, grid, self.layout, self.pos_mode, self.num_prefix), requires_grad=False
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pred = nn.Linear(dim, patch_dim)

    def _init(self) -> None:
        init_vit_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)
        set_drop_path(self, getattr(self.cfg, "drop_path", 0.0))

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == tuple(self.grid):
            return self.pos_embed
        table = position_table(self.dim, grid, self.layout, self.pos_mode, self.num_prefix)
        return table.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def forward(self, out: EncoderOutput, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, P + L_kept, D_enc]`` encoder tokens -> ``[B, L, patch_dim]`` in the encoder's order."""
        grid = (int(grid[0]), int(grid[1]))
        L = grid[0] * grid[1]
        P = out.num_prefix_tokens
        x = self.embed(out.tokens)
        B = x.shape[0]
        if mask.shape != (B, L):
            raise ValueError(f"decoder: mask has shape {tuple(mask.shape)}, expected {(B, L)} for grid {grid}")
        if P != self.num_prefix:
            raise ValueError(f"decoder was built for {self.num_prefix} prefix tokens, the encoder gave {P}")
        prefix, visible = x[:, :P], x[:, P:]
        ids_keep = out.ids_keep if out.ids_keep is not None else keep_indices(mask.to(x.device))
        if ids_keep.shape[1] != visible.shape[1]:
            raise ValueError(f"decoder: {visible.shape[1]} encoded tokens but {ids_keep.shape[1]} kept indices")
        # Mask tokens everywhere, then the encoded tokens back at their original positions.
        full = self.mask_token.to(x.dtype).expand(B, L, -1).clone()
        full = full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), visible)
        x = torch.cat([prefix, full], dim=1) + self.position_embedding(grid).to(x.dtype)
        x = self.run_blocks(x, grid)
        return self.pred(self.norm(x))

    def run_blocks(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, P + L, D]`` -> ``[B, L, D]`` (prefix tokens dropped)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- global decoder
class GlobalDecoder(MaskedDecoder):
    """Pre-norm ViT blocks with global attention (official ``decoder_mode=0``).  ``global``.

    The prefix tokens go through the blocks with the patch tokens (as the official cls token
    does) and are dropped after the last one.
    """

    @dataclass
    class Config:
        dim: int = 512
        depth: int = 8
        heads: int = 16
        mlp_ratio: float = 4.0
        qkv_bias: bool = True
        eps: float = 1e-6
        pos_embed: str = "auto"  # "auto": the encoder's table mode; "official" or "true"
        drop_path: float = 0.0

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg = self.cfg
        self._setup(cfg.dim, cfg.eps, cfg.pos_embed)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, eps=cfg.eps) for _ in range(cfg.depth)
        )
        self._init()

    def run_blocks(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x[:, self.num_prefix :]


# --------------------------------------------------------------------------- window attention
class MetaMlp(nn.Module):
    """The continuous position-bias MLP: 2 -> hidden -> heads, ReLU, dropout after each layer."""

    def __init__(self, hidden: int, heads: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def log_relative_coordinates(window: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """``[N*N, 2]`` log-spaced offsets ``sign(d) * log(1 + |d|)`` between the cells of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window[0], device=device),
                                        torch.arange(window[1], device=device), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).reshape(-1, 2).float()
    return torch.sign(rel) * torch.log1p(rel.abs())


class WindowAttention(nn.Module):
    """Scaled cosine attention in windows with a learned continuous relative position bias.

    ``logits = cos(q, k) / max(tau, 0.01) + bias(meta_mlp(log offsets)) + mask``, with one
    ``tau`` per head (init 1).  Computed with :func:`ssl_bench.nn.attention`: the per-head
    temperature is folded into the normalised queries and the bias (plus any window mask) is
    passed as the additive ``attn_mask``, for all windows of the batch at once.
    """

    def __init__(self, dim: int, heads: int, meta_hidden: int = 384, meta_dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"decoder.dim {dim} is not divisible by decoder.heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.meta_mlp = MetaMlp(meta_hidden, heads, meta_dropout)
        self.tau = nn.Parameter(torch.ones(heads))

    def position_bias(self, window: tuple[int, int], device: torch.device) -> torch.Tensor:
        n = window[0] * window[1]
        coords = log_relative_coordinates(window, device).to(self.tau.dtype)
        return self.meta_mlp(coords).transpose(0, 1).reshape(self.heads, n, n)

    def forward(self, x: torch.Tensor, window: tuple[int, int], mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[B, nW, N, C]`` windows of ``N`` cells; ``mask``: ``[nW, N, N]`` additive or None.

        Every (window, head) pair is one attention "head" of ``scaled_dot_product_attention``:
        the bias (position bias plus window mask), ``[nW * h, N, N]``, is then the same for
        every clip and broadcasts over the batch instead of being copied ``B`` times.
        """
        B, nW, N, C = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(B, nW, N, 3, h, C // h).permute(3, 0, 1, 4, 2, 5)
        q, k, v = (t.reshape(B, nW * h, N, C // h) for t in qkv.unbind(0))  # [B, nW*h, N, hd]
        inv_tau = 1.0 / self.tau.clamp(min=0.01)
        q = F.normalize(q, dim=-1, eps=1e-6) * inv_tau.repeat(nW).view(1, nW * h, 1, 1).to(q.dtype)
        k = F.normalize(k, dim=-1, eps=1e-6)
        bias = self.position_bias(window, x.device).unsqueeze(0)  # [1, h, N, N]
        bias = bias + mask.unsqueeze(1) if mask is not None else bias.expand(nW, -1, -1, -1)
        bias = bias.reshape(1, nW * h, N, N).to(q.dtype)
        out = attention(q, k, v, attn_mask=bias, scale=1.0)
        out = out.reshape(B, nW, h, N, C // h).transpose(2, 3).reshape(B, nW, N, C)
        return self.proj(out)


class WindowBlock(nn.Module):
    """Post-norm SwinV2-CR block: ``x + norm1(attn(x))``, ``x + norm2(mlp(x))`` on a grid.

    ``window`` and ``shift`` are targets: along an axis no longer than the window the window
    shrinks to the axis and the shift is dropped (as the release does); ``window=None`` makes
    the block global (one window over the whole grid).
    """

    def __init__(self, dim: int, heads: int, window: tuple[int, int] | None, shift: tuple[int, int],
                 mlp_ratio: float = 4.0, eps: float = 1e-6, meta_hidden: int = 384,
                 meta_dropout: float = 0.1, drop_path: float = 0.0):
        super().__init__()
        self.window = None if window is None else (int(window[0]), int(window[1]))
        self.shift = (int(shift[0]), int(shift[1]))
        self.attn = WindowAttention(dim, heads, meta_hidden, meta_dropout)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.drop_path = DropPath(drop_path)
        self._masks: dict[tuple, torch.Tensor | None] = {}

    def plan(self, grid: tuple[int, int], padded: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Effective ``(window, shift)`` for a real ``grid`` stored as a ``padded`` grid."""
        if self.window is None:
            return padded, (0, 0)
        window = tuple(min(w, g) for w, g in zip(self.window, grid))
        shift = tuple(0 if g <= w else s % w for g, w, s in zip(grid, window, self.shift))
        return window, shift

    def _mask(self, grid, padded, window, shift, device) -> torch.Tensor | None:
        key = (grid, padded, window, shift, str(device))
        if key not in self._masks:
            self._masks[key] = window_mask(grid, padded, window, shift, device)
        return self._masks[key]

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``x``: ``[B, Hp, Wp, C]`` (time x freq, padded to whole windows); ``grid``: real size."""
        Hp, Wp = x.shape[1], x.shape[2]
        window, shift = self.plan(grid, (Hp, Wp))
        y = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if any(shift) else x
        y = partition(y, window)
        y = self.attn(y, window, self._mask(grid, (Hp, Wp), window, shift, x.device))
        y = merge(y, window, (Hp, Wp))
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=(1, 2))
        x = x + self.drop_path(self.norm1(y))
        return x + self.drop_path(self.norm2(self.mlp(x)))


def partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B, nW, wh*ww, C]``, windows in row-major order."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // wh) * (W // ww), wh * ww, C)


def merge(x: torch.Tensor, window: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`partition`."""
    B, _, _, C = x.shape
    (wh, ww), (H, W) = window, size
    x = x.reshape(B, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def window_mask(grid: tuple[int, int], padded: tuple[int, int], window: tuple[int, int],
                shift: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Additive ``[nW, N, N]`` mask for one block, or ``None`` when nothing needs masking.

    * Shifted windows: after the cyclic roll, cells that were not neighbours (the wrapped-around
      strip) get ``SHIFT_MASK_VALUE`` between them, as in the release.
    * Padding: a real cell never attends to a padded one (``-inf``); padded cells, whose outputs
      are discarded, attend freely so no row is empty.
    """
    Hp, Wp = padded
    H, W = grid
    if not any(shift) and (Hp, Wp) == (H, W):
        return None
    # Region labels in the rolled frame: along each shifted axis three strips (rest, the
    # window-sized strip before the wrapped part, the wrapped part), as the release labels them.
    labels = torch.zeros(Hp, Wp)
    ids = []
    for size, w, s in ((Hp, window[0], shift[0]), (Wp, window[1], shift[1])):
        lab = torch.zeros(size)
        if s:
            lab[size - w : size - s] = 1
            lab[size - s :] = 2
        ids.append(lab)
    labels = ids[0][:, None] * 3 + ids[1][None, :]
    # Which rolled cells are padding: roll the "is padding" map like the tokens.
    pad = torch.zeros(Hp, Wp, dtype=torch.bool)
    pad[H:, :] = True
    pad[:, W:] = True
    if any(shift):
        pad = torch.roll(pad, shifts=(-shift[0], -shift[1]), dims=(0, 1))
    lab_w = partition(labels[None, :, :, None], window)[0, :, :, 0]  # [nW, N]
    pad_w = partition(pad[None, :, :, None].float(), window)[0, :, :, 0].bool()
    mask = torch.zeros(lab_w.shape[0], lab_w.shape[1], lab_w.shape[1])
    mask.masked_fill_(lab_w[:, :, None] != lab_w[:, None, :], SHIFT_MASK_VALUE)
    mask.masked_fill_(~pad_w[:, :, None] & pad_w[:, None, :], float("-inf"))
    return mask.to(device)


class WindowDecoder(MaskedDecoder):
    """Window blocks (and optionally global ones) on the time x frequency grid."""

    def _build_blocks(self, cfg, num_global: int) -> None:
        if cfg.depth < 1:
            raise ValueError(f"decoder.depth must be at least 1, got {cfg.depth}")
        window = (int(cfg.window[0]), int(cfg.window[1]))
        shift = (int(cfg.shift[0]), int(cfg.shift[1]))
        if min(window) < 1:
            raise ValueError(f"decoder.window must be positive, got {cfg.window}")
        self.window = window
        blocks = []
        for i in range(cfg.depth):
            is_global = i >= cfg.depth - num_global
            blocks.append(WindowBlock(
                cfg.dim, cfg.heads, None if is_global else window,
                (0, 0) if (i % 2 == 0 or is_global) else shift,
                cfg.mlp_ratio, cfg.eps, cfg.meta_hidden, cfg.meta_dropout,
            ))
        self.blocks = nn.ModuleList(blocks)

    def padded_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return tuple(g if g <= w else math.ceil(g / w) * w for g, w in zip(grid, self.window))

    def run_blocks(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B, _, C = x.shape
        n_time, n_freq = grid
        x = x[:, self.num_prefix :]  # the release drops the cls token before the window blocks
        if self.layout == FREQ_MAJOR:
            x = x.reshape(B, n_freq, n_time, C).transpose(1, 2)
        else:
            x = x.reshape(B, n_time, n_freq, C)
        Hp, Wp = self.padded_grid(grid)
        if (Hp, Wp) != (n_time, n_freq):
            x = F.pad(x, (0, 0, 0, Wp - n_freq, 0, Hp - n_time))
        for blk in self.blocks:
            x = blk(x, grid)
        x = x[:, :n_time, :n_freq]
        if self.layout == FREQ_MAJOR:
            x = x.transpose(1, 2)
        return x.reshape(B, n_time * n_freq, C)


class ShiftedWindowDecoder(WindowDecoder):
    """The released AudioMAE decoder (``decoder_mode=1``).  ``shifted-window``.

    16 post-norm blocks, 512 wide, 16 heads, 4 x 4 windows on the (time, freq) grid; even
    blocks unshifted, odd blocks shifted by (2, 0), i.e. half a window along time only (modern
    timm's SwinV2-CR would silently turn that into (2, 2)).  Scaled cosine attention with
    per-head ``tau`` clamped at 0.01, continuous relative position bias from
    ``meta_mlp`` (2 -> 384 -> heads, ReLU, dropout 0.1 while training).  Parameter names match
    the release (``attn.tau``, ``attn.qkv``, ``attn.proj``, ``attn.meta_mlp.fc1/fc2``, ``norm1``,
    ``mlp.fc1/fc2``, ``norm2``).
    """

    @dataclass
    class Config:
        dim: int = 512
        depth: int = 16
        heads: int = 16
        mlp_ratio: float = 4.0
        eps: float = 1e-6
        window: tuple[int, int] = (4, 4)  # (time, freq) patches
        shift: tuple[int, int] = (2, 0)  # on odd blocks
        meta_hidden: int = 384
        meta_dropout: float = 0.1
        pos_embed: str = "auto"
        drop_path: float = 0.0

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        self._setup(self.cfg.dim, self.cfg.eps, self.cfg.pos_embed)
        self._build_blocks(self.cfg, num_global=0)
        self._init()


class HybridDecoder(WindowDecoder):
    """Local window blocks, then ``global_depth`` global blocks on top (the paper's hybrid).  ``hybrid``.

    The release has no hybrid decoder and the number of global layers the paper used is not
    known here; the default (2 of 16) is ours.  Global blocks are the same post-norm
    cosine-attention blocks with one window spanning the whole grid.
    """

    @dataclass
    class Config(ShiftedWindowDecoder.Config):
        global_depth: int = 2  # the last blocks attend globally (paper value unknown)

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        if not 0 <= self.cfg.global_depth <= self.cfg.depth:
            raise ValueError(f"decoder.global_depth must be in 0..{self.cfg.depth}, got {self.cfg.global_depth}")
        self._setup(self.cfg.dim, self.cfg.eps, self.cfg.pos_embed)
        self._build_blocks(self.cfg, num_global=self.cfg.global_depth)
        self._init()


#: Decoder kind by name, used by the checkpoint importer to refuse mismatched weights.
WINDOW_DECODERS = ("shifted-window", "hybrid")
DECODERS = {"global": GlobalDecoder, "shifted-window": ShiftedWindowDecoder, "hybrid": HybridDecoder}

__all__ = [
    "FREQ_MAJOR",
    "TIME_MAJOR",
    "GlobalDecoder",
    "HybridDecoder",
    "ShiftedWindowDecoder",
    "WindowAttention",
    "WindowBlock",
    "window_mask",
]
