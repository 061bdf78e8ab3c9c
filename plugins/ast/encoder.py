"""The Audio Spectrogram Transformer encoder (Gong et al., 2021), as published.

Structure (DeiT-B/384 *distilled* backbone, see the AST paper and ``YuanGongND/ast``):

* input ``spec [B, T, F]`` (normalised log-mel from the ``kaldi-fbank`` frontend), viewed as
  an image ``(B, 1, F, T)``: frequency is the height, time the width;
* a 16x16 convolution with stride 10 in both axes: *overlapping* patches, a grid of
  ``f_dim = (F - 16) // 10 + 1`` by ``t_dim = (T - 16) // 10 + 1`` (12 x 101 for 128 x 1024);
  tokens come out **frequency-major** (index ``f * t_dim + t``), as the conv output is
  flattened over ``(f, t)``;
* a cls and a distillation token in front, a learned position embedding
  ``[1, 2 + f_dim * t_dim, D]`` added to all tokens, pre-norm ViT blocks, a final LayerNorm;
* the clip embedding is ``(token0 + token1) / 2``; the classifier (``SSLModel.head``) is
  LayerNorm + Linear, AST's ``mlp_head``.

Parameter names are the official ones without the ``module.v.`` prefix (``cls_token``,
``dist_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.*``, ``norm``), so the official
checkpoints map one to one (:mod:`.checkpoints`).

Beyond the original, the encoder takes a token mask (True = drop) and then encodes only the
visible patches, so any registered masker / decoder / objective can pretrain it (an SSAST-like,
MAE-style variant); and it adapts its position table on the fly to an input whose length
differs from the one it was built for, with the original's crop-or-interpolate rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.components import FREQ_MAJOR, BuildContext, Component, EncoderOutput
from ssl_bench.nn import Block, to_device

#: cls + distillation token.
NUM_PREFIX_TOKENS = 2


def patch_grid(num_frames: int, num_bins: int, patch_size: int, time_stride: int, freq_stride: int) -> tuple[int, int]:
    """``(n_time, n_freq)`` patches of a ``num_frames x num_bins`` spectrogram (conv arithmetic)."""
    if num_frames < patch_size or num_bins < patch_size:
        raise ValueError(
            f"AST needs at least {patch_size} frames and {patch_size} mel bins for one patch, "
            f"got {num_frames} frames x {num_bins} bins"
        )
    return (num_frames - patch_size) // time_stride + 1, (num_bins - patch_size) // freq_stride + 1


def adapt_pos_embed(
    pos_embed: torch.Tensor,
    src_grid: tuple[int, int],
    dst_grid: tuple[int, int],
    num_prefix_tokens: int = NUM_PREFIX_TOKENS,
) -> torch.Tensor:
    """Fit a frequency-major position table to another patch grid, as the original AST does.

    ``pos_embed``: ``[1, P + n_freq * n_time, D]`` (P prefix rows, then frequency-major patch
    rows); grids are ``(n_time, n_freq)``.  Time axis first: centre-crop when the new grid is
    not longer (start ``src // 2 - dst // 2``, i.e. ``50 - t/2`` from AudioSet's 101 columns),
    else bilinear interpolation (``align_corners=False``); then the frequency axis the same way.
    The prefix (cls, distillation) rows are kept unchanged.  Differentiable.
    """
    (src_t, src_f), (dst_t, dst_f) = src_grid, dst_grid
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"position table must be [1, N, D], got {tuple(pos_embed.shape)}")
    n_patch = pos_embed.shape[1] - num_prefix_tokens
    if n_patch != src_t * src_f:
        raise ValueError(
            f"position table has {n_patch} patch rows, which is not the {src_f} x {src_t} grid given"
        )
    if (src_t, src_f) == (dst_t, dst_f):
        return pos_embed
    dim = pos_embed.shape[2]
    prefix = pos_embed[:, :num_prefix_tokens]
    grid = pos_embed[:, num_prefix_tokens:].transpose(1, 2).reshape(1, dim, src_f, src_t)
    dtype = grid.dtype
    grid = grid.float()  # interpolation in the table's precision would lose bf16 detail
    if dst_t <= src_t:
        start = src_t // 2 - dst_t // 2
        grid = grid[:, :, :, start:start + dst_t]
    else:
        grid = F.interpolate(grid, size=(src_f, dst_t), mode="bilinear", align_corners=False)
    if dst_f <= src_f:
        start = src_f // 2 - dst_f // 2
        grid = grid[:, :, start:start + dst_f, :]
    else:
        grid = F.interpolate(grid, size=(dst_f, dst_t), mode="bilinear", align_corners=False)
    grid = grid.to(dtype).reshape(1, dim, dst_f * dst_t).transpose(1, 2)
    return torch.cat([prefix, grid], dim=1)


class PatchEmbed(nn.Module):
    """``spec [B, T, F]`` -> ``[B, n_freq * n_time, D]`` through a strided conv over ``(B, 1, F, T)``."""

    def __init__(self, dim: int, patch_size: int, freq_stride: int, time_stride: int):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch_size, stride=(freq_stride, time_stride))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.proj(spec.transpose(1, 2).unsqueeze(1))  # (B, D, n_freq, n_time)
        return x.flatten(2).transpose(1, 2)  # frequency-major tokens


class ASTEncoder(Component):
    """AST encoder; see the module docstring.  Registered as encoder ``ast``."""

    @dataclass
    class Config:
        dim: int = 768
        depth: int = 12
        heads: int = 12
        mlp_ratio: float = 4.0
        qkv_bias: bool = True
        patch_size: int = 16
        freq_stride: int = 10
        time_stride: int = 10
        eps: float = 1e-6  # LayerNorm epsilon: 1e-6 in the original (DeiT), 1e-12 in Hugging Face
        drop_path: float = 0.0  # stochastic depth, linear over depth (fine-tuning sets its own)
        # what the weights start from without --checkpoint: "random" (trunc-normal 0.02) or
        # "imagenet" (the AST paper's DeiT init, :mod:`.imagenet`; the model's initial_checkpoint)
        init: str = "random"
        init_file: str | None = None  # a local ViT/DeiT file in timm's layout instead of the DeiT download
        init_channels: str = "sum"  # RGB patch kernel -> one channel: "sum" (the release) or "mean" (the paper's text)

    layout = FREQ_MAJOR
    num_prefix_tokens = NUM_PREFIX_TOKENS

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg, build = self.cfg, self.build
        for name in ("dim", "depth", "heads", "patch_size", "freq_stride", "time_stride"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"encoder.{name} must be positive, got {getattr(cfg, name)}")
        if cfg.dim % cfg.heads:
            raise ValueError(f"encoder.dim {cfg.dim} is not divisible by encoder.heads {cfg.heads}")
        if cfg.init not in ("random", "imagenet"):
            raise ValueError(f"encoder.init must be 'random' or 'imagenet', got {cfg.init!r}")
        if cfg.init_channels not in ("sum", "mean"):
            raise ValueError(f"encoder.init_channels must be 'sum' or 'mean', got {cfg.init_channels!r}")
        self.dim, self.depth = cfg.dim, cfg.depth
        self.patch_size = cfg.patch_size
        self.num_frames, self.num_bins = build.num_frames, build.num_bins
        #: the grid the position table is stored for, ``(n_time, n_freq)``
        self.grid = self.grid_for(build.num_frames, build.num_bins)
        n_time, n_freq = self.grid

        self.patch_embed = PatchEmbed(cfg.dim, cfg.patch_size, cfg.freq_stride, cfg.time_stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PREFIX_TOKENS + n_time * n_freq, cfg.dim))
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias, drop_path=r, eps=cfg.eps) for r in rates
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self._init_weights()

        build.encoder_dim = cfg.dim
        build.grid = self.grid
        build.layout = FREQ_MAJOR
        build.patch_dim = cfg.patch_size * cfg.patch_size
        build.num_prefix_tokens = NUM_PREFIX_TOKENS

    def _init_weights(self) -> None:
        # From-scratch AST (imagenet_pretrain=False) is timm's DeiT init: trunc-normal(0.02)
        # tokens, position table and Linear weights, zero biases, unit LayerNorms; the conv
        # keeps PyTorch's default.
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"grid(t, f)={self.grid}, patch={c.patch_size}, stride(f, t)=({c.freq_stride}, {c.time_stride}), "
                f"eps={c.eps}")

    # ------------------------------------------------------------------ geometry
    def grid_for(self, num_frames: int, num_bins: int) -> tuple[int, int]:
        """``(n_time, n_freq)`` for a ``num_frames x num_bins`` input."""
        c = self.cfg
        return patch_grid(num_frames, num_bins, c.patch_size, c.time_stride, c.freq_stride)

    def column_centres(self, num_frames: int) -> torch.Tensor:
        """Centre of each time column in input frames: column ``t`` covers frames
        ``stride t .. stride t + patch - 1`` (overlapping columns, 10 frames apart by default)."""
        c = self.cfg
        n_time = patch_grid(num_frames, c.patch_size, c.patch_size, c.time_stride, c.freq_stride)[0]
        return torch.arange(n_time, dtype=torch.float64) * c.time_stride + (c.patch_size - 1) / 2

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position table for ``grid``: the stored one, or adapted as the original does."""
        return adapt_pos_embed(self.pos_embed, self.grid, grid)

    def patchify(self, spec: torch.Tensor) -> torch.Tensor:
        """``spec [B, T, F]`` -> ``[B, L, patch_size**2]``: the values each (overlapping) patch
        sees, in token order; within a patch, frequency-row-major (``kf * p + kt``), the order
        of the conv kernel ``patch_embed.proj.weight[:, 0]``."""
        c = self.cfg
        image = spec.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        return F.unfold(image, kernel_size=c.patch_size, stride=(c.freq_stride, c.time_stride)).transpose(1, 2)

    def unpatchify(self, patches: torch.Tensor, num_frames: int, num_bins: int) -> torch.Tensor:
        """Inverse of :meth:`patchify` for plots: overlapping values are averaged; cells no
        patch covers (the last few frames/bins when the stride does not fit) are zero."""
        c = self.cfg
        size = (num_bins, num_frames)
        kwargs = dict(output_size=size, kernel_size=c.patch_size, stride=(c.freq_stride, c.time_stride))
        total = F.fold(patches.transpose(1, 2), **kwargs)
        count = F.fold(torch.ones_like(patches).transpose(1, 2), **kwargs)
        return (total / count.clamp_min(1)).squeeze(1).transpose(1, 2)

    # ------------------------------------------------------------------ forward
    def forward(self, spec: torch.Tensor, mask: torch.Tensor | None = None,
                hidden_states: bool = False) -> EncoderOutput:
        """Encode ``spec [B, T, F]``; with ``mask [B, L]`` (True = drop) only the visible patches.

        ``hidden_states``: also return the input of the first block and every block's output.
        """
        if spec.ndim != 3:
            raise ValueError(f"AST expects a spectrogram [B, T, F], got shape {tuple(spec.shape)}")
        B, T, Fb = spec.shape
        grid = self.grid_for(T, Fb)
        pos = self.pos_embed_for(grid)
        x = self.patch_embed(spec) + pos[:, NUM_PREFIX_TOKENS:]
        ids_keep = None
        if mask is not None:
            ids_keep = to_device(self._keep_indices(mask, B, x.shape[1]), x.device)  # a CPU mask: no GPU sync
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        prefix = torch.cat([self.cls_token, self.dist_token], dim=1) + pos[:, :NUM_PREFIX_TOKENS]
        x = torch.cat([prefix.expand(B, -1, -1), x], dim=1)
        states = [x] if hidden_states else None
        for block in self.blocks:
            x = block(x)
            if states is not None:
                states.append(x)
        return EncoderOutput(self.norm(x), ids_keep, NUM_PREFIX_TOKENS, tuple(states) if states is not None else None)

    @staticmethod
    def _keep_indices(mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
        """Indices of the visible tokens, ascending, ``[B, L_kept]``."""
        if mask.shape != (batch, length):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(batch, length)} (batch, patch tokens)")
        mask = mask.to(torch.bool)
        counts = mask.sum(dim=1).cpu()
        if bool((counts != counts[0]).any()):
            raise ValueError(f"every mask row must drop the same number of tokens, got {sorted(set(counts.tolist()))}")
        keep = length - int(counts[0])
        if keep == 0:
            raise ValueError("the mask drops every patch token")
        # stable sort puts visible (0) tokens first, in their original order
        return torch.argsort(mask.to(torch.uint8), dim=1, stable=True)[:, :keep]

    def pool(self, out: EncoderOutput) -> torch.Tensor:
        """AST's clip embedding: the mean of the cls and distillation tokens."""
        return (out.tokens[:, 0] + out.tokens[:, 1]) / 2

    def layer_id(self, name: str) -> int:
        """0 for the embeddings, ``i + 1`` for block ``i``, ``depth + 1`` for the final norm."""
        name = name.removeprefix("encoder.")
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name in ("cls_token", "dist_token", "pos_embed") or name.startswith("patch_embed."):
            return 0
        return self.depth + 1
