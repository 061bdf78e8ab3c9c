"""Shared transformer building blocks.

Parameter names follow the ViT convention the official AudioMAE and AST checkpoints use
(``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), so importers map
keys one to one.  Attention always goes through :func:`attention`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device`` without stalling the host: a CPU tensor bound for a GPU goes
    through pinned memory with a non-blocking copy (a copy from pageable memory waits)."""
    device = torch.device(device)
    if tensor.device == device or (device.type == tensor.device.type and device.index is None):
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class DropPath(nn.Module):
    """Stochastic depth per sample; ``p`` may be changed after construction (fine-tuning)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


def set_drop_path(module: nn.Module, rate: float) -> None:
    """Set stochastic depth on every :class:`DropPath` in ``module``, linearly over depth."""
    paths = [m for m in module.modules() if isinstance(m, DropPath)]
    for i, m in enumerate(paths):
        m.p = rate * i / max(len(paths) - 1, 1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """``scaled_dot_product_attention``, in float32 on CPU whatever autocast says.

    PyTorch's CPU kernel for bf16 attention is slower than its float32 one: forward plus
    backward 3.5x at AudioMAE tiny's shapes (16 clips, 4 heads of 16, 82 tokens), 2x at
    ViT-S's (6 heads of 64, 100 tokens), about equal at ViT-B's (measured on AVX512-BF16,
    2 threads, torch 2.11), so under CPU autocast a small model's step spent most of its time
    there.  Float32 attention is also the more exact; the result comes back in the inputs'
    dtype.  CUDA keeps bf16 (flash attention).
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.float()
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask, scale=scale)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (rows ordered q, k, v)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block (timm ``Block``): ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_vit_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- sin-cos tables
def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE 1-D sin-cos embedding: ``[sin(p*w) | cos(p*w)]``, ``w_k = 1 / 10000^(2k/dim)``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, rows: int, cols: int) -> np.ndarray:
    """MAE 2-D table for a ``rows x cols`` grid in row-major order, ``[rows*cols, dim]``.

    The first half of the channels encodes the column index, the second half the row index
    (MAE's ``meshgrid(w, h)`` convention).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.concatenate([sincos_1d(dim // 2, c), sincos_1d(dim // 2, r)], axis=1)
