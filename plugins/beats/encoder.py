"""The BEATs encoder (Chen et al., 2022, arXiv 2212.09058), written from the paper and the
released checkpoints' layout.

Structure (parameter names are the release's, so its ``model`` state dict maps one to one):

* ``spec [B, T, 128]`` viewed as ``(B, 1, T, 128)`` (height = time); ``patch_embedding``: a
  16 x 16 conv with stride 16 into ``embed_dim`` (512) channels, frames past the last whole
  patch dropped; tokens **time-major** (``t * 8 + f``), no CLS token, no absolute positions;
* ``layer_norm`` over the 512 channels, then ``post_extract_proj`` to the model width (768);
* ``encoder``: padded tokens zeroed, a convolutional position embedding added
  (``pos_conv``: grouped Conv1d, kernel 128, weight-normalised over the kernel axis, last step
  dropped, GELU), ``encoder.layer_norm``, then post-LN layers:
  ``x = LN(alpha * x + SelfAttn(x)); x = LN(alpha * x + fc2(GELU(fc1(x))))`` with the deep-norm
  ``alpha = (2 * depth) ** 0.25``;
* self-attention with a T5-style bucketed relative position bias (one table shared by every
  layer, bidirectional, ``num_buckets`` / ``max_distance``), gated per layer, head and query
  by a GRU-like gate computed from the query (``grep_linear``, ``grep_a``), as in WavLM;
* no final norm: the output is the last layer's ``final_layer_norm``.

A padding mask (True = padding) at frame level follows the release's rule to tokens
(:func:`downsample_padding_mask`): padded tokens are zeroed at the input and ignored as keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.components import TIME_MAJOR, BuildContext, Component, EncoderOutput
from ssl_bench.nn import attention


def downsample_padding_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """The release's rule from a finer padding mask ``[B, N]`` to ``[B, length]``: drop the last
    ``N mod length`` entries, split the rest into ``length`` equal chunks, and mark a position as
    padding only when its whole chunk is."""
    extra = mask.shape[1] % length
    if extra:
        mask = mask[:, :-extra]
    return mask.reshape(mask.shape[0], length, -1).all(-1)


def relative_buckets(num_queries: int, num_keys: int, num_buckets: int, max_distance: int,
                     device: torch.device | None = None) -> torch.Tensor:
    """``[Tq, Tk]`` bucket of each ``key - query`` distance: half the buckets per direction,
    exact below ``num_buckets / 4``, logarithmic up to ``max_distance``."""
    rel = torch.arange(num_keys, device=device)[None, :] - torch.arange(num_queries, device=device)[:, None]
    half = num_buckets // 2
    exact = half // 2
    buckets = (rel > 0).long() * half
    n = rel.abs()
    # float32 as the release computes it: a bucket boundary must fall where the release's does
    scaled = torch.log(n.float() / exact) / math.log(max_distance / exact) * (half - exact)
    large = torch.clamp(exact + scaled.to(torch.long), max=half - 1)
    return buckets + torch.where(n < exact, n, large)


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is ``weight_v * weight_g / ||weight_v||``, the norm taken over every
    axis but the kernel axis (``weight_norm(dim=2)``), with the release's parameter names."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, mean=0.0, std=math.sqrt(4.0 / (kernel * channels)))
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with the (optionally gated) relative position bias."""

    def __init__(self, dim: int, heads: int, gated: bool, bias_table: nn.Embedding | None):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gated = gated
        if gated:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
        # the same module in every layer (its state-dict key repeats per layer, as the release's)
        self.relative_attention_bias = bias_table

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None,
                key_padding: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        H, Dh = self.heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, Dh).transpose(1, 2)  # [B, H, T, Dh], unscaled, with bias
        k = self.k_proj(x).view(B, T, H, Dh).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, Dh).transpose(1, 2)
        bias = None
        if position_bias is not None:
            bias = position_bias[None]  # [1, H, T, T]
            if self.gated:
                a, b = torch.sigmoid(self.grep_linear(q).view(B, H, T, 2, 4).sum(-1)).chunk(2, dim=-1)
                bias = (a * (b * self.grep_a - 1.0) + 2.0) * bias  # [B, H, T, T]
        if key_padding is not None:
            pad = torch.zeros(B, 1, 1, T, dtype=q.dtype, device=q.device).masked_fill(
                key_padding[:, None, None, :], float("-inf"))
            bias = pad if bias is None else bias + pad
        out = attention(q, k, v, attn_mask=bias.to(q.dtype) if bias is not None else None)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class EncoderLayer(nn.Module):
    """One post-LN layer with deep-norm residual scaling."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, alpha: float, gated: bool,
                 bias_table: nn.Embedding | None):
        super().__init__()
        self.alpha = alpha
        self.self_attn = RelativeSelfAttention(dim, heads, gated, bias_table)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None,
                key_padding: torch.Tensor | None) -> torch.Tensor:
        x = self.self_attn_layer_norm(self.alpha * x + self.self_attn(x, position_bias, key_padding))
        h = F.gelu(self.fc1(x).float()).to(x.dtype)  # exact (erf) GELU in float32, as the release
        return self.final_layer_norm(self.alpha * x + self.fc2(h))


class TransformerEncoder(nn.Module):
    """Position conv, ``layer_norm``, then the layers (the release's ``encoder.*``)."""

    def __init__(self, dim: int, depth: int, heads: int, ffn_dim: int, conv_pos: int, conv_pos_groups: int,
                 deep_norm: bool, relative_position: bool, gated: bool, num_buckets: int, max_distance: int):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, conv_pos, conv_pos_groups))
        self._even_kernel = conv_pos % 2 == 0
        self.layer_norm = nn.LayerNorm(dim)
        table = nn.Embedding(num_buckets, heads) if relative_position else None
        alpha = (2.0 * depth) ** 0.25 if deep_norm else 1.0
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, alpha, gated and relative_position, table)
                                    for _ in range(depth))
        self.relative_position = relative_position

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor | None:
        """``[H, T, T]`` ungated bias, the same for every layer (one shared table)."""
        if not self.relative_position:
            return None
        buckets = relative_buckets(length, length, self.num_buckets, self.max_distance, device)
        return self.layers[0].self_attn.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None, hidden_states: bool
                ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        if padding is not None:
            x = x.masked_fill(padding[..., None], 0.0)
        y = self.pos_conv(x.transpose(1, 2))
        if self._even_kernel:
            y = y[:, :, :-1]
        x = self.layer_norm(x + F.gelu(y).transpose(1, 2))
        bias = self.position_bias(x.shape[1], x.device)
        states = [x] if hidden_states else None
        for layer in self.layers:
            x = layer(x, bias, padding)
            if states is not None:
                states.append(x)
        return x, states


class BEATsEncoder(Component):
    """BEATs encoder; see the module docstring.  Registered as encoder ``beats``."""

    @dataclass
    class Config:
        dim: int = 768  # encoder_embed_dim
        depth: int = 12  # encoder_layers
        heads: int = 12  # encoder_attention_heads
        ffn_dim: int = 3072  # encoder_ffn_embed_dim
        embed_dim: int = 512  # patch embedding channels
        patch_size: int = 16  # input_patch_size
        conv_bias: bool = False
        conv_pos: int = 128
        conv_pos_groups: int = 16
        deep_norm: bool = True
        relative_position_embedding: bool = True
        gru_rel_pos: bool = True
        num_buckets: int = 320
        max_distance: int = 800
        pool: str = "mean"  # "mean": the mean of every (unpadded) token, as the release's classifier

    layout = TIME_MAJOR
    num_prefix_tokens = 0

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg, build = self.cfg, self.build
        for name in ("dim", "depth", "heads", "ffn_dim", "embed_dim", "patch_size", "conv_pos", "conv_pos_groups",
                     "num_buckets", "max_distance"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"encoder.{name} must be positive, got {getattr(cfg, name)}")
        if cfg.dim % cfg.heads:
            raise ValueError(f"encoder.dim {cfg.dim} is not divisible by encoder.heads {cfg.heads}")
        if cfg.dim % cfg.conv_pos_groups:
            raise ValueError(f"encoder.dim {cfg.dim} is not divisible by encoder.conv_pos_groups {cfg.conv_pos_groups}")
        if cfg.relative_position_embedding and cfg.max_distance <= cfg.num_buckets // 4:
            raise ValueError(f"encoder.max_distance {cfg.max_distance} must exceed num_buckets / 4 "
                             f"({cfg.num_buckets // 4}), the last exact distance")
        if cfg.pool != "mean":
            raise ValueError(f"encoder.pool must be 'mean', got {cfg.pool!r}")
        self.dim, self.depth = cfg.dim, cfg.depth
        self.patch_size = cfg.patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = nn.Linear(cfg.embed_dim, cfg.dim) if cfg.embed_dim != cfg.dim else None
        self.encoder = TransformerEncoder(cfg.dim, cfg.depth, cfg.heads, cfg.ffn_dim, cfg.conv_pos,
                                          cfg.conv_pos_groups, cfg.deep_norm, cfg.relative_position_embedding,
                                          cfg.gru_rel_pos, cfg.num_buckets, cfg.max_distance)
        self._init_weights()
        self.grid = self.grid_for(build.num_frames, build.num_bins)
        build.encoder_dim = cfg.dim
        build.grid = self.grid
        build.layout = TIME_MAJOR
        build.patch_dim = cfg.patch_size * cfg.patch_size
        build.num_prefix_tokens = 0

    def _init_weights(self) -> None:
        # The release's init: xavier-uniform projections and zero biases; under deep norm the
        # v/out/fc1/fc2 weights get gain (8 * depth) ** -0.25 and q/k gain 1, otherwise q/k/v
        # get 1/sqrt(2).  It matters only for training from scratch.
        deep = self.cfg.deep_norm
        beta = (8.0 * self.depth) ** -0.25 if deep else 1.0
        half = 1.0 if deep else 1 / math.sqrt(2)
        for layer in self.encoder.layers:
            attn = layer.self_attn
            for lin, gain in ((attn.q_proj, half), (attn.k_proj, half), (attn.v_proj, beta if deep else half),
                              (attn.out_proj, beta), (layer.fc1, beta), (layer.fc2, beta)):
                nn.init.xavier_uniform_(lin.weight, gain=gain)
                nn.init.zeros_(lin.bias)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"patch={c.patch_size}, deep_norm={c.deep_norm}, relative_position={c.relative_position_embedding}, "
                f"gated={c.gru_rel_pos}, buckets={c.num_buckets}, max_distance={c.max_distance}")

    # ------------------------------------------------------------------ geometry
    def grid_for(self, num_frames: int, num_bins: int) -> tuple[int, int]:
        """``(n_time, n_freq)``: whole 16 x 16 patches; leftover frames and bins are dropped."""
        p = self.cfg.patch_size
        if num_frames < p or num_bins < p:
            raise ValueError(f"BEATs needs at least {p} frames and {p} mel bins for one patch, "
                             f"got {num_frames} frames x {num_bins} bins")
        return num_frames // p, num_bins // p

    def column_centres(self, num_frames: int) -> torch.Tensor:
        """Centre of each time column in input frames: column ``t`` covers frames ``p t .. p t + p - 1``."""
        p = self.cfg.patch_size
        n_time = self.grid_for(num_frames, p)[0]
        return torch.arange(n_time, dtype=torch.float64) * p + (p - 1) / 2

    def patchify(self, spec: torch.Tensor) -> torch.Tensor:
        """``spec [B, T, F]`` -> ``[B, L, p*p]`` non-overlapping patches in token (time-major)
        order; within a patch, time-row-major (the conv kernel's order)."""
        p = self.cfg.patch_size
        n_t, n_f = self.grid_for(spec.shape[1], spec.shape[2])
        x = spec[:, :n_t * p, :n_f * p].reshape(spec.shape[0], n_t, p, n_f, p)
        return x.permute(0, 1, 3, 2, 4).reshape(spec.shape[0], n_t * n_f, p * p)

    # ------------------------------------------------------------------ forward
    def token_padding(self, frame_padding: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Frame padding ``[B, T]`` -> token padding ``[B, L]`` by the release's rule."""
        return downsample_padding_mask(frame_padding.bool(), num_tokens)

    def forward(self, spec: torch.Tensor, mask: torch.Tensor | None = None, hidden_states: bool = False,
                padding_mask: torch.Tensor | None = None) -> EncoderOutput:
        """Encode normalised ``spec [B, T, F]``; every token is encoded (BEATs drops none).

        ``padding_mask``: ``[B, T]`` frames or ``[B, L]`` tokens, True = padding (the release's
        rule maps frames to tokens).  ``mask`` (token dropping) is refused: BEATs' released
        models encode every token, and no masked pretraining is implemented here.
        """
        if mask is not None:
            raise ValueError("encoder 'beats' encodes every token: token masks (a masker, finetune.masker) are not "
                             "supported; set masker and finetune.masker to null")
        if spec.ndim != 3:
            raise ValueError(f"BEATs expects a spectrogram [B, T, F], got shape {tuple(spec.shape)}")
        x = self.patch_embedding(spec.unsqueeze(1))  # [B, C, n_t, n_f]
        x = x.flatten(2).transpose(1, 2)  # time-major tokens
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        padding = None
        if padding_mask is not None:
            padding = padding_mask.bool()
            if padding.shape[1] != x.shape[1]:
                padding = self.token_padding(padding, x.shape[1])
        x, states = self.encoder(x, padding, hidden_states)
        return EncoderOutput(x, None, 0, tuple(states) if states is not None else None)

    def pool(self, out: EncoderOutput, padding: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the tokens, over the unpadded ones when ``padding`` ``[B, L]`` is given."""
        if padding is None:
            return out.tokens.mean(dim=1)
        keep = (~padding).to(out.tokens.dtype)[..., None]
        return (out.tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def layer_id(self, name: str) -> int:
        """0 for the patch embedding, its norm and projection, the position conv and
        ``encoder.layer_norm``; ``i + 1`` for layer ``i``; ``depth + 1`` otherwise."""
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2]) + 1
        if name.startswith(("patch_embedding.", "layer_norm.", "post_extract_proj.", "encoder.pos_conv.",
                            "encoder.layer_norm.")):
            return 0
        return self.depth + 1
