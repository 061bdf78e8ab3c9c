"""AudioMAE (Huang et al., NeurIPS 2022), faithful to the paper and to the released checkpoints.

Registers the pretraining method ``mae``, the encoder ``vit``, the decoders ``global``, ``shifted-window`` and ``hybrid``
(usable with any encoder that fills the build context), and the model ``audiomae`` with the
paper's recipes, size presets (``tiny``, ``small``, ``base``, ``large``, ``base-mask0.3``) and
per-task recipes.  Its checkpoint importer reads the official ``pretrained.pth`` and
``finetuned.pth`` as well as ssl-bench checkpoints.
"""

from __future__ import annotations

from ssl_bench import hookimpl
from ssl_bench.model import ModelSpec

from .checkpoints import checkpoint_overrides, load_checkpoint
from .commands import BenchCommand, ReconstructCommand
from .decoders import GlobalDecoder, HybridDecoder, ShiftedWindowDecoder
from .encoder import ViTEncoder
from .method import MaskedAutoencoder
from .presets import COMPONENTS, DESCRIPTION, NOTES, PRESETS, RECIPES, SETTINGS

__all__ = ["AUDIOMAE", "GlobalDecoder", "HybridDecoder", "MaskedAutoencoder", "ShiftedWindowDecoder", "ViTEncoder", "load_checkpoint"]

AUDIOMAE = ModelSpec(
    components=dict(COMPONENTS),
    settings=dict(SETTINGS),
    presets={name: dict(values) for name, values in PRESETS.items()},
    default_preset="base",
    recipes={name: dict(values) for name, values in RECIPES.items()},
    load_checkpoint=load_checkpoint,
    checkpoint_overrides=checkpoint_overrides,
    description=DESCRIPTION,
    notes=dict(NOTES),
)


@hookimpl
def register_methods(register):
    register("mae", MaskedAutoencoder)


@hookimpl
def register_encoders(register):
    register("vit", ViTEncoder)


@hookimpl
def register_decoders(register):
    register("global", GlobalDecoder)
    register("shifted-window", ShiftedWindowDecoder)
    register("hybrid", HybridDecoder)


@hookimpl
def register_models(register):
    register("audiomae", AUDIOMAE)


@hookimpl
def register_commands(register):
    register("bench", BenchCommand())
    register("reconstruct", ReconstructCommand())
