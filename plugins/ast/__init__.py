"""AST: the Audio Spectrogram Transformer baseline (Gong, Chung & Glass, Interspeech 2021).

Registers encoder ``ast`` (:class:`.encoder.ASTEncoder`) and model ``ast``
(:data:`.model.AST_SPEC`): the ``kaldi-fbank`` frontend, 16x16 patches with stride 10 in both
axes (overlapping; frequency-major tokens), cls + distillation tokens, a learned position
table, DeiT blocks, and ``(token0 + token1) / 2`` into a LayerNorm + Linear head.  It is a
supervised baseline: by default there is no pretraining stage (``pretrain.enabled: false``).

Presets: ``tiny`` (64 dims, 2 blocks: CPU seconds), ``small`` (DeiT-S), ``base`` (DeiT-B, the
default), ``base-imagenet`` (DeiT-B initialised from the ImageNet DeiT-B/384 release, as the
paper: ``encoder.init=imagenet``, :mod:`.imagenet`).  Recipes (the original's) for ``esc50``,
``speechcommands`` and ``audioset``.

Usage::

    ssl-bench run --model ast --task esc50                              # supervised, random init
    ssl-bench run --model ast --task esc50 --preset base-imagenet       # from ImageNet DeiT, as the paper
    ssl-bench run --model ast --task esc50 --checkpoint audioset_10_10_0.4593.pth
    ssl-bench run --model ast --task esc50 --checkpoint ./ast-finetuned-audioset-10-10-0.4593/

``--checkpoint`` takes the official AST ``.pth`` files (``module.v.*``), Hugging Face
``ASTModel`` / ``ASTForAudioClassification`` weights (``.bin``, ``.safetensors``, or a model
directory whose ``config.json`` sets sizes, strides, input length and LayerNorm epsilon),
SSAST files and ssl-bench checkpoints; the position table is centre-cropped or interpolated to
the run's input length as the original does.  In Python::

    model = ssl_bench.create_model("ast", checkpoint="path/to/hf-model-dir")
    # or, into a model you built, with a report of loaded / missing / unexpected keys:
    print(ssl_bench.model.load_checkpoint(model, "audioset_10_10_0.4593.pth"))

Masked pretraining with AST (an SSAST-like variant, MAE-style: the encoder sees only the
visible patches, a decoder fills in the rest) needs no new code, only components chosen by
name::

    ssl-bench run --model ast --task esc50 \\
        --set masker=random --set decoder=global --set objective=masked-mse \\
        --set pretrain.enabled=true

The ``global`` decoder (from the AudioMAE plugin) sizes itself from the encoder (width,
12 x t patch grid, frequency-major layout, 256 values per patch, two prefix tokens); any other
registered masker (``time``, ``frequency``, ``time-frequency``) or decoder works the same way.
The reconstruction targets are the 16x16 values each overlapping patch sees
(``ASTEncoder.patchify``).
"""

from __future__ import annotations

from ssl_bench import hookimpl

from .checkpoints import checkpoint_overrides, load_checkpoint
from .encoder import ASTEncoder, adapt_pos_embed
from .model import AST_SPEC

__all__ = ["ASTEncoder", "AST_SPEC", "adapt_pos_embed", "checkpoint_overrides", "load_checkpoint"]


@hookimpl
def register_encoders(register):
    """Encoder ``ast``."""
    register("ast", ASTEncoder)


@hookimpl
def register_models(register):
    """Model ``ast``: the supervised AST baseline with the original's recipes."""
    register("ast", AST_SPEC)
