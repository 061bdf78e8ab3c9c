"""MAE, the pretraining method of AudioMAE (and of SSAST-style variants, by choice of parts).

One step: the model's masker hides patch tokens, the encoder embeds only the visible ones,
the decoder fills in mask tokens and predicts every patch, and the objective scores the
masked patches against the encoder's own patchified input.  Which masker, decoder and
objective are the model's slots (``--set masker=time``, ``--set decoder=global``,
``--set objective.norm_pix=false``), so MAE variants are settings, not code.

Registered as method ``mae``.  It holds no weights: the decoder's are saved under
``decoder.``, as the released checkpoints have them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ssl_bench.components import BuildContext, Component, PretrainOutput
from ssl_bench.config import ConfigError
from ssl_bench.nn import to_device


class MaskedAutoencoder(Component):
    """Mask -> encode the visible patches -> decode -> objective on the masked patches."""

    @dataclass
    class Config:
        """MAE has no settings of its own: its parts (masker, decoder, objective) have them."""

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)

    @staticmethod
    def _parts(model: nn.Module) -> tuple[Any, Any, Any]:
        masker, decoder, objective = model.masker, model.decoder, model.objective
        if masker is None or decoder is None or objective is None:
            raise ConfigError(
                f"method mae: model {model.name!r} needs a masker, a decoder and an objective to pretrain; "
                "choose them with masker=NAME, decoder=NAME, objective=NAME"
            )
        return masker, decoder, objective

    def forward(self, model: nn.Module, spec: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> PretrainOutput:
        """Mask, encode the visible patches, decode, and score the masked patches.

        ``spec``: normalised ``[B, T, F]``; ``mask``: optional ``[B, L]`` (1/True = masked)
        to fix the mask, else drawn by the model's masker (with ``generator``).
        """
        masker, decoder, objective = self._parts(model)
        encoder = model.encoder
        grid = encoder.grid_for(spec.shape[1], spec.shape[2])
        if mask is None:  # drawn on the CPU (with a CPU or no generator): no GPU sync to find the kept tokens
            where = generator.device if generator is not None else "cpu"
            mask = model.draw_mask("masker", spec.shape[0], grid, where, generator, need_hidden=True)
        mask = mask.bool()
        if mask.shape != (spec.shape[0], grid[0] * grid[1]):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(spec.shape[0], grid[0] * grid[1])}")
        out = encoder(spec, mask)  # the encoder reads the mask where it is (kept indices)
        mask = to_device(mask, spec.device)
        pred = decoder(out, mask, grid)
        target = encoder.patchify(spec)
        loss = objective(pred.float(), target.float(), mask)
        return PretrainOutput(loss, pred, mask.to(pred.dtype))

    def loss(self, model: nn.Module, spec: torch.Tensor, step: Any) -> torch.Tensor:
        """One micro-batch: the masks of the whole global batch come from ``step.generator()``
        and this micro-batch takes its slice, so any split of the batch masks alike."""
        self._parts(model)
        grid = model.encoder.grid_for(spec.shape[1], spec.shape[2])
        full = model.draw_mask("masker", step.global_batch, grid, "cpu", step.generator(), need_hidden=True)
        return self(model, spec, full[step.offset:step.offset + spec.shape[0]]).loss
