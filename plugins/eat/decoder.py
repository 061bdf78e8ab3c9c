"""EAT's light CNN decoder: the student's tokens back on the patch grid, then 2-D convolutions.

The encoder's visible patch tokens are put back at their grid positions, the hidden positions
get a learned mask token, and a stack of ``depth`` blocks -- grouped ``kernel x kernel``
convolution over (time, frequency), LayerNorm over channels (no affine), GELU, with a residual
connection around every block whose input and output widths match -- turns them into one
feature per patch; a linear layer projects it to the teacher's target width (the encoder's).
The paper's decoder: 6 blocks, 768 channels, 3 x 3 kernels in 16 groups (the release's
``decoder_layers``, ``decoder_dim``, ``decoder_kernel``, ``decoder_groups``).  Unlike a
transformer decoder it costs little and sees only local context, which is why EAT's targets
(contextualised teacher features) and not raw patches are what it predicts.

Registered as decoder ``eat-cnn``; it works with any encoder that fills the build context
(``encoder_dim``, ``grid``, ``layout``) and either token order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.components import FREQ_MAJOR, BuildContext, Component, EncoderOutput


class ConvBlock(nn.Module):
    """Grouped 2-D convolution, channel LayerNorm (no affine), GELU on ``[B, C, n_time, n_freq]``."""

    def __init__(self, in_dim: int, dim: int, kernel: int, groups: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.eps = eps
        self.residual = in_dim == dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), eps=self.eps).permute(0, 3, 1, 2)
        y = F.gelu(y)
        return x + y if self.residual else y


class CNNDecoder(Component):
    """Visible tokens + mask tokens on the patch grid -> ``depth`` conv blocks -> ``[B, L, encoder_dim]``."""

    @dataclass
    class Config:
        dim: int = 768  # channels of the conv blocks
        depth: int = 6
        kernel: int = 3  # odd: the grid keeps its size
        groups: int = 16  # grouped convolutions (the encoder width and dim must be multiples)
        eps: float = 1e-5

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg, build = self.cfg, self.build
        if build.encoder_dim is None or build.grid is None:
            raise ValueError("decoder eat-cnn: the encoder did not fill encoder_dim and grid in the build context; "
                             "build the encoder before the decoder")
        enc_dim = int(build.encoder_dim)
        if cfg.depth < 1 or cfg.dim < 1:
            raise ValueError(f"decoder eat-cnn: depth and dim must be >= 1, got depth={cfg.depth}, dim={cfg.dim}")
        if cfg.kernel < 1 or cfg.kernel % 2 == 0:
            raise ValueError(f"decoder eat-cnn: kernel must be odd (the grid keeps its size), got {cfg.kernel}")
        if cfg.groups < 1 or cfg.dim % cfg.groups or enc_dim % cfg.groups:
            raise ValueError(f"decoder eat-cnn: groups {cfg.groups} must divide decoder.dim {cfg.dim} and the "
                             f"encoder width {enc_dim}; set decoder.groups")
        self.layout = build.layout
        self.mask_token = nn.Parameter(torch.zeros(1, 1, enc_dim))
        self.blocks = nn.ModuleList(
            ConvBlock(enc_dim if i == 0 else cfg.dim, cfg.dim, cfg.kernel, cfg.groups, cfg.eps) for i in range(cfg.depth)
        )
        self.proj = nn.Linear(cfg.dim, enc_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, out: EncoderOutput, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``out.tokens`` ``[B, P + L_kept, D]`` -> predictions ``[B, L, D]`` in the encoder's token order."""
        n_time, n_freq = int(grid[0]), int(grid[1])
        L = n_time * n_freq
        visible = out.tokens[:, out.num_prefix_tokens:]
        B, D = visible.shape[0], visible.shape[-1]
        if mask.shape != (B, L):
            raise ValueError(f"decoder eat-cnn: mask has shape {tuple(mask.shape)}, expected {(B, L)} for grid {grid}")
        if out.ids_keep is None:
            if visible.shape[1] != L:
                raise ValueError(f"decoder eat-cnn: {visible.shape[1]} tokens without ids_keep for a grid of {L}")
            full = torch.where(mask.to(visible.device)[..., None], self.mask_token.to(visible.dtype), visible)
        else:
            full = self.mask_token.to(visible.dtype).expand(B, L, D).clone()
            full = full.scatter(1, out.ids_keep.to(visible.device)[..., None].expand(-1, -1, D), visible)
        # token order -> [B, D, n_time, n_freq]
        if self.layout == FREQ_MAJOR:
            x = full.view(B, n_freq, n_time, D).permute(0, 3, 2, 1)
        else:
            x = full.view(B, n_time, n_freq, D).permute(0, 3, 1, 2)
        for block in self.blocks:
            x = block(x)
        # back to token order, [B, L, dim]
        x = x.permute(0, 3, 2, 1) if self.layout == FREQ_MAJOR else x.permute(0, 2, 3, 1)
        return self.proj(x.reshape(B, L, x.shape[-1]))
