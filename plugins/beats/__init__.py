"""BEATs (Chen et al., ICML 2023, arXiv 2212.09058): audio pre-training with acoustic tokenizers,
as an encoder plugin that evaluates the released checkpoints.

Registers the frontend ``beats-fbank`` (:mod:`.frontend`: the release's fbank and fixed
normalisation), the encoder ``beats`` (:mod:`.encoder`: post-LN with deep norm, a gated
bucketed relative position bias, a convolutional position embedding) and the model ``beats``
(presets ``tiny`` and ``base``, :mod:`.presets`).

Usage::

    ssl-bench run --model beats --task esc50 --checkpoint BEATs_iter3.pt --protocols linear,layers,finetune
    model = ssl_bench.create_model("beats", checkpoint="BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt1.pt")
    probs = torch.sigmoid(model.classify(model.frontend(waveform, 16000)))  # the release's output

Pretraining (the tokenizer/student iterations) is not implemented: ``pretrain.enabled`` is
false and the model has no method.  :func:`extract_features` mirrors the release's
``extract_features`` (waveform and padding mask in, features and token padding out).
"""

from __future__ import annotations

import torch

from ssl_bench import hookimpl
from ssl_bench.model import ModelSpec

from .checkpoints import PredictorHead, checkpoint_overrides, load_checkpoint
from .encoder import BEATsEncoder, downsample_padding_mask, relative_buckets
from .frontend import BEATsFbank
from .presets import COMPONENTS, DESCRIPTION, NOTES, PAPER_RESULTS, PRESETS, SETTINGS

__all__ = ["BEATS_MODEL", "BEATsEncoder", "BEATsFbank", "PAPER_RESULTS", "PredictorHead", "downsample_padding_mask",
           "extract_features", "relative_buckets"]

BEATS_MODEL = ModelSpec(
    components=dict(COMPONENTS),
    settings=dict(SETTINGS),
    presets={name: dict(values) for name, values in PRESETS.items()},
    default_preset="base",
    load_checkpoint=load_checkpoint,
    checkpoint_overrides=checkpoint_overrides,
    description=DESCRIPTION,
    notes=dict(NOTES),
)


def extract_features(model, waveform: torch.Tensor, padding_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The release's ``extract_features``: 16 kHz ``waveform [B, N]`` (and sample padding mask,
    True = padding) -> ``(features [B, L, D], token padding [B, L] or None)``."""
    frontend, encoder = model.frontend, model.encoder
    spec = frontend.normalize(frontend.compute(waveform))
    frames = None
    if padding_mask is not None:
        frames = downsample_padding_mask(padding_mask.bool(), spec.shape[1])
    out = encoder(spec, padding_mask=frames)
    tokens = None if frames is None else encoder.token_padding(frames, out.tokens.shape[1])
    return out.tokens, tokens


@hookimpl
def register_frontends(register):
    register("beats-fbank", BEATsFbank)


@hookimpl
def register_encoders(register):
    register("beats", BEATsEncoder)


@hookimpl
def register_models(register):
    register("beats", BEATS_MODEL)
