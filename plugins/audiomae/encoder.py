"""The AudioMAE encoder: a ViT over 16 x 16 spectrogram patches, run on the visible ones only.

Faithful to ``MaskedAutoencoderViT`` (pretraining) and ``models_vit.VisionTransformer``
(fine-tuning) of the official release, with the same parameter names so checkpoints map one to
one (see :mod:`.checkpoints`):

* ``patch_embed.proj``: ``Conv2d(1, dim, 16, stride 16)`` on ``[B, 1, T, F]`` (time is the
  height axis), giving ``n_time x n_freq`` tokens in **time-major** order (``t * n_freq + f``);
* ``pos_embed``: fixed (non-trainable but saved) sin-cos table with a zero row for the cls
  token, by default the release's quirky one (:mod:`.positions`);
* ``cls_token``: prepended **after** masking, with its (zero) position row added;
* ``blocks``: pre-norm ViT blocks (LayerNorm eps 1e-6, fused qkv with bias, GELU MLP);
* ``norm``: the final LayerNorm of the pretraining model (the fine-tuned release has none).

Unlike the official code nothing is hard-coded to 1024 x 128: the grid follows the input, and a
model built for one length accepts others (the fixed table is recomputed by its formula).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.components import TIME_MAJOR, BuildContext, Component, EncoderOutput
from ssl_bench.nn import Block, init_vit_weights, set_drop_path, to_device

from .positions import check_mode, position_table

POOLS = ("mean", "cls")


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches of a one-channel spectrogram, projected to ``dim``."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        # [B, T, F] -> [B, 1, T, F] -> [B, D, n_time, n_freq] -> [B, n_time * n_freq, D] (time-major)
        return self.proj(spec.unsqueeze(1)).flatten(2).transpose(1, 2)


def keep_indices(mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool mask (True = dropped) -> ``[B, L_kept]`` ascending indices of kept tokens.

    Raises ``ValueError`` when rows drop different numbers of tokens (the batch must stay dense).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be [batch, tokens], got shape {tuple(mask.shape)}")
    mask = mask.bool()
    counts = mask.sum(dim=1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise ValueError(f"every row of the mask must hide the same number of tokens, got {counts.tolist()}")
    num_keep = mask.shape[1] - int(counts[0]) if counts.numel() else mask.shape[1]
    # A stable sort of 0 (kept) before 1 (dropped) lists kept tokens in their original order.
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :num_keep]


class ViTEncoder(Component):
    """AudioMAE's ViT encoder (see module docstring).  Registered as ``vit``."""

    layout = TIME_MAJOR
    num_prefix_tokens = 1

    @dataclass
    class Config:
        patch_size: int = 16
        dim: int = 768
        depth: int = 12
        heads: int = 12
        mlp_ratio: float = 4.0
        qkv_bias: bool = True
        eps: float = 1e-6
        pos_embed: str = "official"  # "official": the release's (8, T/16) table; "true": real (t, f)
        final_norm: bool = True  # the pretraining model's last LayerNorm (the fine-tuned release drops it)
        pool: str = "mean"  # clip embedding: "mean" of the patch tokens (AudioMAE) or the "cls" token
        drop_path: float = 0.0  # stochastic depth, linear over the blocks (fine-tuning sets it)

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg = self.cfg
        check_mode(cfg.pos_embed, "encoder.pos_embed")
        if cfg.pool not in POOLS:
            raise ValueError(f"encoder.pool must be one of {', '.join(POOLS)}, got {cfg.pool!r}")
        for name in ("patch_size", "dim", "depth", "heads"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
                raise ValueError(f"encoder.{name} must be a positive whole number, got {getattr(cfg, name)!r}")
        if cfg.dim % cfg.heads:
            raise ValueError(f"encoder.dim {cfg.dim} is not divisible by encoder.heads {cfg.heads}")
        if cfg.dim % 4:
            raise ValueError(f"encoder.dim must be divisible by 4 for the 2-D sin-cos table, got {cfg.dim}")
        self.dim = cfg.dim
        self.depth = cfg.depth
        self.patch_size = cfg.patch_size
        self.grid = self.grid_for(self.build.num_frames, self.build.num_bins)

        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        # Fixed but saved in the state dict, as in the release (requires_grad=False).
        self.pos_embed = nn.Parameter(
            position_table(cfg.dim, self.grid, self.layout, cfg.pos_embed, self.num_prefix_tokens),
            requires_grad=False,
        )
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, eps=cfg.eps) for _ in range(cfg.depth)
        )
        self.norm: nn.Module = nn.LayerNorm(cfg.dim, eps=cfg.eps) if cfg.final_norm else nn.Identity()
        self._init_weights()
        set_drop_path(self, cfg.drop_path)

        build = self.build
        build.encoder_dim = cfg.dim
        build.grid = self.grid
        build.layout = self.layout
        build.patch_dim = cfg.patch_size * cfg.patch_size
        build.num_prefix_tokens = self.num_prefix_tokens
        build.extra["pos_embed"] = cfg.pos_embed
        build.extra["patch_size"] = cfg.patch_size

    def _init_weights(self) -> None:
        init_vit_weights(self)
        # MAE initialises the patch projection like a Linear layer (xavier on [dim, p*p]).
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    # ------------------------------------------------------------------ geometry
    def grid_for(self, num_frames: int, num_bins: int) -> tuple[int, int]:
        """``(n_time, n_freq)`` patches for a ``num_frames x num_bins`` spectrogram."""
        p = self.cfg.patch_size
        if num_frames < p or num_bins < p:
            raise ValueError(
                f"encoder: a {num_frames}-frame x {num_bins}-bin spectrogram is smaller than one "
                f"{p}x{p} patch; use clips of at least {p} frames ({p * 10 + 15} ms at a 10 ms hop) "
                f"and at least {p} mel bins"
            )
        return num_frames // p, num_bins // p

    def column_centres(self, num_frames: int) -> torch.Tensor:
        """Centre of each time column in input frames: column ``t`` covers frames ``p t .. p t + p - 1``."""
        p = self.cfg.patch_size
        n_time = self.grid_for(num_frames, p)[0]
        return torch.arange(n_time, dtype=torch.float64) * p + (p - 1) / 2

    def patchify(self, spec: torch.Tensor) -> torch.Tensor:
        """``[B, T, F]`` -> ``[B, L, p*p]`` in token order; values row-major (time, freq) within a patch.

        Frames or bins beyond the last whole patch are ignored, as the patch embedding does.
        """
        spec = self._check_spec(spec)
        B = spec.shape[0]
        n_time, n_freq = self.grid_for(spec.shape[1], spec.shape[2])
        p = self.cfg.patch_size
        x = spec[:, : n_time * p, : n_freq * p].reshape(B, n_time, p, n_freq, p)
        return x.permute(0, 1, 3, 2, 4).reshape(B, n_time * n_freq, p * p)

    def unpatchify(self, patches: torch.Tensor, num_frames: int, num_bins: int) -> torch.Tensor:
        """Inverse of :meth:`patchify`: ``[B, L, p*p]`` -> ``[B, n_time*p, n_freq*p]``."""
        n_time, n_freq = self.grid_for(num_frames, num_bins)
        p = self.cfg.patch_size
        B, L, P = patches.shape
        if L != n_time * n_freq or P != p * p:
            raise ValueError(
                f"unpatchify: got {L} patches of {P} values, expected {n_time * n_freq} of {p * p} "
                f"for {num_frames} x {num_bins}"
            )
        x = patches.reshape(B, n_time, n_freq, p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(B, n_time * p, n_freq * p)

    def _check_spec(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.ndim != 3:
            raise ValueError(f"encoder expects a [batch, frames, bins] spectrogram, got shape {tuple(spec.shape)}")
        return spec

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The fixed table for ``grid``: the stored one for the built grid, else the formula's."""
        if tuple(grid) == tuple(self.grid):
            return self.pos_embed
        table = position_table(self.dim, grid, self.layout, self.cfg.pos_embed, self.num_prefix_tokens)
        return table.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, spec: torch.Tensor, mask: torch.Tensor | None = None,
                hidden_states: bool = False) -> EncoderOutput:
        """Encode ``spec`` ``[B, T, F]``; with ``mask`` ``[B, L]`` (True = drop) only the kept tokens.

        ``hidden_states``: also return the input of the first block and every block's output.
        """
        spec = self._check_spec(spec)
        grid = self.grid_for(spec.shape[1], spec.shape[2])
        pos = self.position_embedding(grid)
        P = self.num_prefix_tokens
        ids_keep = None
        if mask is None:
            x = self.patch_embed(spec) + pos[:, P:]
        else:
            B, L = spec.shape[0], grid[0] * grid[1]
            if mask.shape != (B, L):
                raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(B, L)} for grid {grid}")
            # Indices where the mask lives: from a CPU mask (as training passes) the GPU never
            # waits for the host.
            ids_keep = to_device(keep_indices(mask), spec.device)
            # Only the visible patches are embedded: the p x p projection is a linear map of a
            # patch's values (row-major time, freq, as patchify orders them).
            patches = self.patchify(spec)
            patches = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            proj = self.patch_embed.proj
            x = F.linear(patches, proj.weight.flatten(1), proj.bias)
            x = x + pos[0, P:][ids_keep]
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        states = [x] if hidden_states else None
        for blk in self.blocks:
            x = blk(x)
            if states is not None:
                states.append(x)
        return EncoderOutput(self.norm(x), ids_keep, self.num_prefix_tokens,
                             tuple(states) if states is not None else None)

    def pool(self, out: EncoderOutput) -> torch.Tensor:
        """Clip embedding ``[B, D]``: mean of the patch tokens (default) or the cls token."""
        if self.cfg.pool == "cls":
            return out.tokens[:, 0]
        return out.tokens[:, out.num_prefix_tokens :].mean(dim=1)

    # ------------------------------------------------------------------ fine-tuning helpers
    def layer_id(self, name: str) -> int:
        """Layer index for layer-wise lr decay (BEiT/MAE ``param_groups_lrd`` convention)."""
        name = name.removeprefix("encoder.")
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
            return 0
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            return int(m.group(1)) + 1
        return self.depth + 1

    def no_weight_decay(self) -> set[str]:
        """Parameters the release excludes from weight decay (besides all 1-D ones)."""
        return {"pos_embed", "cls_token"}

    def remove_final_norm(self) -> None:
        """Drop ``norm`` as the fine-tuned release does (``global_pool=True`` deletes it)."""
        self.norm = nn.Identity()
        self.cfg.final_norm = False
