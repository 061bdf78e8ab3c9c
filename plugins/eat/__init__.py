"""EAT (Chen et al., IJCAI 2024, arXiv 2401.03497): an Efficient Audio Transformer pretrained by
bootstrapping from an EMA teacher, with a second SSL family's parts as a plugin.

Registers the method ``eat`` (:mod:`.method`), the masker ``inverse-block`` (:mod:`.masking`),
the decoder ``eat-cnn`` (:mod:`.decoder`) and the model ``eat`` (presets ``tiny`` and ``base``,
:mod:`.presets`).  The frontend (``kaldi-fbank``), the encoder (``vit``) and the fine-tuning
masker (``time-frequency``) are other plugins' components, chosen by name.
"""

from __future__ import annotations

from ssl_bench import hookimpl
from ssl_bench.model import ModelSpec

from .decoder import CNNDecoder
from .masking import InverseBlockMasker
from .method import EAT, EATOutput, ema_decay_at
from .presets import COMPONENTS, DESCRIPTION, NOTES, PAPER_RESULTS, PRESETS, RECIPES, SETTINGS

__all__ = ["EAT", "EAT_MODEL", "PAPER_RESULTS", "CNNDecoder", "EATOutput", "InverseBlockMasker", "ema_decay_at"]

EAT_MODEL = ModelSpec(
    components=dict(COMPONENTS),
    settings=dict(SETTINGS),
    presets={name: dict(values) for name, values in PRESETS.items()},
    default_preset="base",
    recipes={name: dict(values) for name, values in RECIPES.items()},
    description=DESCRIPTION,
    notes=dict(NOTES),
)


@hookimpl
def register_methods(register):
    register("eat", EAT)


@hookimpl
def register_maskers(register):
    register("inverse-block", InverseBlockMasker)


@hookimpl
def register_decoders(register):
    register("eat-cnn", CNNDecoder)


@hookimpl
def register_models(register):
    register("eat", EAT_MODEL)
