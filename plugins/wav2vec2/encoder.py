"""wav2vec2, HuBERT and WavLM encoders on ``torchaudio.models`` (no transformer of our own).

The encoder builds torchaudio's model with :func:`torchaudio.models.wav2vec2_model` (wav2vec2
and HuBERT share it: HuBERT differs in its pretraining, not its forward) or
:func:`torchaudio.models.wavlm_model`, and keeps its two parts as its own children, so the
encoder's parameter names are torchaudio's ``Wav2Vec2Model`` names (``feature_extractor.*``,
``encoder.feature_projection.*``, ``encoder.transformer.*``) and a state dict of a torchaudio
bundle or of ``model.state_dict()`` loads one to one.

Input: the ``waveform`` frontend's ``[B, N, 1]`` samples (any ``[B, N]`` works too).
Output tokens: one per convolutional frame (20 ms at 16 kHz with the standard stack), the
output of torchaudio's ``Wav2Vec2Model.forward``; ``hidden_states``: the transformer's input
(after the convolutional position embedding) and every layer's output, which is what
s3prl's per-layer probes read.  ``lengths`` (valid samples per clip) become torchaudio's
attention mask and the output's ``padding_mask``; :meth:`pool` is the mean of the valid frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ssl_bench.components import TIME_MAJOR, BuildContext, Component, EncoderOutput
from ssl_bench.config import ConfigError

#: torchaudio's default convolutional feature extractor (fairseq's conv_feature_layers).
STANDARD_CONV = [[512, 10, 5], [512, 3, 2], [512, 3, 2], [512, 3, 2], [512, 3, 2], [512, 2, 2], [512, 2, 2]]


def conv_frames(num_samples: int, conv_layers: list[list[int]]) -> int:
    """Frames the convolutional stack makes of ``num_samples`` samples (0 when too short)."""
    n = int(num_samples)
    for _, kernel, stride in conv_layers:
        n = (n - kernel) // stride + 1
        if n <= 0:
            return 0
    return n


class Wav2Vec2Encoder(Component):
    """A torchaudio wav2vec2-family model as an ssl-bench encoder; registered as ``wav2vec2``
    and, with HuBERT's defaults, ``hubert``.  Fields are the builder's arguments."""

    builder = "wav2vec2_model"
    key_padding_mask = False  # padding reaches the attention as torchaudio's additive mask

    @dataclass
    class Config:
        extractor_mode: str = "group_norm"  # "layer_norm" for the large LV-60k / XLS-R models
        conv_layers: list = field(default_factory=lambda: [list(c) for c in STANDARD_CONV])  # (channels, kernel, stride)
        conv_bias: bool = False
        dim: int = 768
        depth: int = 12
        heads: int = 12
        ff_dim: int = 3072
        pos_conv_kernel: int = 128
        pos_conv_groups: int = 16
        layer_norm_first: bool = False
        projection_dropout: float = 0.1
        attention_dropout: float = 0.1
        ff_dropout: float = 0.0
        dropout: float = 0.1
        layer_drop: float = 0.05

    layout = TIME_MAJOR
    num_prefix_tokens = 0

    def __init__(self, cfg=None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg, build = self.cfg, self.build
        for name in ("dim", "depth", "heads", "ff_dim", "pos_conv_kernel", "pos_conv_groups"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"encoder.{name} must be positive, got {getattr(cfg, name)}")
        if cfg.dim % cfg.heads:
            raise ValueError(f"encoder.dim {cfg.dim} is not divisible by encoder.heads {cfg.heads}")
        if cfg.dim % cfg.pos_conv_groups:
            raise ValueError(f"encoder.dim {cfg.dim} is not divisible by encoder.pos_conv_groups {cfg.pos_conv_groups}")
        if cfg.extractor_mode not in ("group_norm", "layer_norm"):
            raise ValueError(f"encoder.extractor_mode must be group_norm or layer_norm, got {cfg.extractor_mode!r}")
        layers = [list(c) for c in cfg.conv_layers]
        if not layers or any(len(c) != 3 or min(c) <= 0 for c in layers):
            raise ValueError(f"encoder.conv_layers must be a list of [channels, kernel, stride], got {cfg.conv_layers}")
        self.conv_layers = layers
        if build.num_bins != 1:
            raise ValueError(f"encoder {type(self).__name__} reads a waveform (frontend 'waveform', 1 value per "
                             f"frame), but the frontend gives {build.num_bins} bins per frame")
        model = self._build()
        # torchaudio's parts as our own children: our parameter names are torchaudio's
        self.feature_extractor = model.feature_extractor
        self.encoder = model.encoder
        self.dim, self.depth = cfg.dim, cfg.depth
        build.encoder_dim = cfg.dim
        build.grid = self.grid_for(build.num_frames, 1)
        build.layout = TIME_MAJOR
        build.num_prefix_tokens = 0

    def builder_arguments(self) -> dict:
        """The keyword arguments of torchaudio's builder for this config."""
        c = self.cfg
        return dict(
            extractor_mode=c.extractor_mode, extractor_conv_layer_config=[tuple(x) for x in self.conv_layers],
            extractor_conv_bias=c.conv_bias, encoder_embed_dim=c.dim, encoder_projection_dropout=c.projection_dropout,
            encoder_pos_conv_kernel=c.pos_conv_kernel, encoder_pos_conv_groups=c.pos_conv_groups,
            encoder_num_layers=c.depth, encoder_num_heads=c.heads, encoder_attention_dropout=c.attention_dropout,
            encoder_ff_interm_features=c.ff_dim, encoder_ff_interm_dropout=c.ff_dropout, encoder_dropout=c.dropout,
            encoder_layer_norm_first=c.layer_norm_first, encoder_layer_drop=c.layer_drop, aux_num_out=None)

    def _build(self) -> nn.Module:
        import torchaudio.models

        return torchaudio.models.wav2vec2_model(**self.builder_arguments())

    def extra_repr(self) -> str:
        return f"torchaudio.models.{self.builder}, conv={self.conv_layers}"

    # ------------------------------------------------------------------ geometry
    def grid_for(self, num_frames: int, num_bins: int) -> tuple[int, int]:
        """``(frames, 1)``: the conv stack's output frames for ``num_frames`` samples."""
        n = conv_frames(num_frames, self.conv_layers)
        if n <= 0:
            raise ValueError(f"{num_frames} samples are fewer than one frame of the convolutional feature extractor "
                             f"(needs {self.min_samples()})")
        return n, 1

    def min_samples(self) -> int:
        """The fewest samples that give one output frame."""
        n = 1
        for _, kernel, stride in reversed(self.conv_layers):
            n = (n - 1) * stride + kernel
        return n

    def column_centres(self, num_frames: int) -> torch.Tensor:
        """The sample at the centre of each output frame's receptive field (HEAR timestamps)."""
        stride = 1
        for _, _, s in self.conv_layers:
            stride *= s
        n = self.grid_for(num_frames, 1)[0]
        return torch.arange(n, dtype=torch.float64) * stride + (self.min_samples() - 1) / 2

    def patchify(self, spec: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"encoder {type(self).__name__} has no reconstruction targets: masked-prediction "
                          "pretraining (mae, eat) does not apply to it; evaluate it with --checkpoint or random weights")

    # ------------------------------------------------------------------ forward
    def forward(self, spec: torch.Tensor, mask: torch.Tensor | None = None, hidden_states: bool = False,
                lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Encode waveforms ``[B, N, 1]`` (or ``[B, N]``); ``lengths``: valid samples per clip."""
        if mask is not None:
            raise ConfigError(f"encoder {type(self).__name__} takes no token mask (no masked pretraining, no "
                              "fine-tuning masker); set finetune.masker=none")
        wave = spec[..., 0] if spec.ndim == 3 else spec
        if wave.ndim != 2:
            raise ValueError(f"{type(self).__name__} expects waveforms [B, N, 1] or [B, N], got {tuple(spec.shape)}")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=wave.device).long().clamp(max=wave.shape[1])
        features, frames = self.feature_extractor(wave, lengths)
        x, attn_mask = self.encoder._preprocess(features, frames)
        transformer = self.encoder.transformer
        x = transformer._preprocess(x)
        states = [x] if hidden_states else None
        position_bias = None
        padding = None
        if frames is not None:
            padding = torch.arange(x.shape[1], device=x.device)[None, :] >= frames[:, None]
        # WavLM's attention takes padding as a key mask (torchaudio asserts it gets no attention mask)
        if self.key_padding_mask:
            additive = None if padding is None else torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(
                padding, float("-inf"))
            masks = {"key_padding_mask": additive}
        else:
            masks = {"attention_mask": attn_mask}
        for layer in transformer.layers:
            # torchaudio's LayerDrop: skip a layer at random while training
            if not (self.training and transformer.layer_drop > 0 and torch.rand(1).item() <= transformer.layer_drop):
                x, position_bias = layer(x, position_bias=position_bias, **masks)
            if states is not None:
                states.append(x)
        if not transformer.layer_norm_first:
            x = transformer.layer_norm(x)
        return EncoderOutput(x, None, 0, tuple(states) if states is not None else None, padding)

    def pool(self, out: EncoderOutput) -> torch.Tensor:
        """The mean of the frames that are not padding."""
        if out.padding_mask is None:
            return out.tokens.mean(dim=1)
        keep = (~out.padding_mask).to(out.tokens.dtype).unsqueeze(-1)
        return (out.tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)

    def layer_id(self, name: str) -> int:
        """0 for the conv stack, projection and position embedding; ``i + 1`` for layer ``i``;
        ``depth + 1`` for the final LayerNorm."""
        if "transformer.layers." in name:
            return int(name.split("transformer.layers.")[1].split(".")[0]) + 1
        if "transformer.layer_norm" in name:  # torchaudio applies it after the layers unless layer_norm_first
            return 0 if self.cfg.layer_norm_first else self.depth + 1
        return 0


class HuBERTEncoder(Wav2Vec2Encoder):
    """HuBERT (Hsu et al. 2021): wav2vec2's architecture; torchaudio's ``hubert_base`` defaults."""

    @dataclass
    class Config(Wav2Vec2Encoder.Config):
        ff_dropout: float = 0.0
        layer_drop: float = 0.05


class WavLMEncoder(Wav2Vec2Encoder):
    """WavLM (Chen et al. 2022): gated relative position bias; ``torchaudio.models.wavlm_model``."""

    builder = "wavlm_model"
    key_padding_mask = True

    @dataclass
    class Config(Wav2Vec2Encoder.Config):
        num_buckets: int = 320
        max_distance: int = 800
        ff_dropout: float = 0.1
        layer_drop: float = 0.1

    def builder_arguments(self) -> dict:
        args = super().builder_arguments()
        args.update(encoder_num_buckets=self.cfg.num_buckets, encoder_max_distance=self.cfg.max_distance)
        return args

    def _build(self) -> nn.Module:
        import torchaudio.models

        return torchaudio.models.wavlm_model(**self.builder_arguments())
