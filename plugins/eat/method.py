"""EAT's pretraining step (Chen et al., "EAT: Self-Supervised Pre-Training with Efficient Audio
Transformer", IJCAI 2024, arXiv 2401.03497): bootstrap from an EMA teacher, data2vec 2.0 style.

One step on a batch of ``B`` clips:

* **teacher** (an exponential moving average of the student encoder, never trained by the
  loss) encodes every clip *unmasked*; the outputs of its top ``K`` blocks (patch tokens) are
  each instance-normalised (per clip and channel, over the patches), averaged, and
  layer-normalised per patch (the release's ``layer_norm_targets``): the frame targets ``Y``;
* **student** (the model's encoder) sees ``clones`` copies of each clip, each with its own
  inverse block mask (multi-mask: the teacher's cost is shared by ``clones`` students), and
  encodes only the visible patches;
* **frame loss**: the model's decoder (``eat-cnn``) fills the masked positions and predicts
  ``Y`` at every patch; squared error on the masked patches;
* **utterance loss**: the student's CLS token against the mean of ``Y`` over patches;
* ``loss = frame + utterance_weight * utterance`` (the paper's Utterance-Frame Objective,
  lambda = 1).  As in the release (data2vec 2.0's ``loss_scale``), a token's squared error is
  summed over the ``D`` channels and divided by ``sqrt(D)``; both terms are means over their
  tokens / clips.
* after every optimiser step the teacher moves towards the student with a decay ramped
  linearly from ``ema_decay`` to ``ema_end_decay`` over ``ema_anneal_steps`` optimiser
  steps, then held (0.9998 -> 0.99999 over 100k steps in the release's AS-2M config).  The
  ramp is set in steps rather than derived from the run's length so the teacher's schedule
  does not change with the dataset size or an epoch count; presets size it to their runs.

Registered as method ``eat``.  The teacher is module state (``method.teacher.*`` in every
checkpoint), so a resumed run continues bit for bit; ``num_updates`` records the last
optimiser step the teacher followed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.components import BuildContext, Component
from ssl_bench.config import ConfigError
from ssl_bench.nn import to_device


class EATOutput(NamedTuple):
    """``loss`` = ``frame_loss + utterance_weight * utterance_loss``; ``pred``/``target``:
    ``[B * clones, L, D]`` / ``[B, L, D]``; ``mask``: ``[B * clones, L]`` (True = masked)."""

    loss: torch.Tensor
    frame_loss: torch.Tensor
    utterance_loss: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor


def ema_decay_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """The teacher's decay after optimiser step ``step``: linear from ``start`` (step 0) to
    ``end`` (step ``anneal_steps``), then ``end``."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return float(end)
    return float(start + (end - start) * step / anneal_steps)


def instance_norm_tokens(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``[B, L, D]``: every channel of every clip to zero mean, unit variance over the ``L`` tokens."""
    return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)


class EAT(Component):
    """The EAT method (see the module docstring).  Holds the EMA teacher, nothing else."""

    @dataclass
    class Config:
        clones: int = 16  # masked copies of each clip per step (multi-mask)
        top_k: int | None = None  # teacher blocks averaged into the targets; None: all (EAT: 12 of 12)
        utterance_weight: float = 1.0  # lambda of the utterance (CLS) loss
        ema_decay: float = 0.9998  # teacher decay at step 0
        ema_end_decay: float = 0.99999  # reached after ema_anneal_steps optimiser steps
        ema_anneal_steps: int = 100_000
        layer_norm_targets: bool = True  # LayerNorm (no affine) of the averaged targets, per patch

    def __init__(self, cfg: Config | None = None, build: BuildContext | None = None):
        super().__init__(cfg, build)
        cfg = self.cfg
        encoder = self.build.parts.get("encoder")
        if encoder is None:
            raise ConfigError("method eat needs an encoder to copy into its teacher; set encoder=NAME")
        if cfg.clones < 1:
            raise ConfigError(f"method.clones must be >= 1, got {cfg.clones}")
        depth = int(encoder.depth)
        if cfg.top_k is not None and not 1 <= cfg.top_k <= depth:
            raise ConfigError(f"method.top_k must be between 1 and the encoder's depth {depth}, got {cfg.top_k}")
        for name in ("ema_decay", "ema_end_decay"):
            value = getattr(cfg, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"method.{name} must be in [0, 1], got {value}")
        if cfg.utterance_weight < 0:
            raise ConfigError(f"method.utterance_weight must be >= 0, got {cfg.utterance_weight}")
        if cfg.utterance_weight > 0 and int(encoder.num_prefix_tokens) < 1:
            raise ConfigError("method eat: the utterance loss needs an encoder with a cls token; "
                              "use one or set method.utterance_weight=0")
        self.top_k = cfg.top_k if cfg.top_k is not None else depth
        # The shared build context stays shared: copying it would copy every part built so far.
        build = getattr(encoder, "build", None)
        self.teacher = copy.deepcopy(encoder, memo={id(build): build} if build is not None else None)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> EAT:
        super().train(mode)
        self.teacher.eval()  # the teacher never drops paths or tokens
        return self

    # ------------------------------------------------------------------ the step
    @staticmethod
    def _parts(model: nn.Module) -> tuple[Any, Any]:
        if model.masker is None or model.decoder is None:
            raise ConfigError(f"method eat: model {model.name!r} needs a masker and a decoder to pretrain; "
                              "choose them with masker=NAME, decoder=NAME (EAT: inverse-block, eat-cnn)")
        return model.masker, model.decoder

    @torch.no_grad()
    def targets(self, spec: torch.Tensor) -> torch.Tensor:
        """The teacher's frame targets ``[B, L, D]`` for unmasked ``spec`` ``[B, T, F]`` (float32)."""
        out = self.teacher(spec, hidden_states=True)
        if out.hidden_states is None:
            raise ConfigError(f"method eat: encoder {type(self.teacher).__name__} does not return hidden_states")
        P = out.num_prefix_tokens
        layers = [instance_norm_tokens(h[:, P:].float()) for h in out.hidden_states[-self.top_k:]]
        y = torch.stack(layers).mean(dim=0)
        if self.cfg.layer_norm_targets:
            y = F.layer_norm(y, y.shape[-1:])
        return y

    def forward(self, model: nn.Module, spec: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> EATOutput:
        """One EAT step on normalised ``spec`` ``[B, T, F]``.

        ``mask``: ``[B * clones, L]`` (True = masked; rows ``i * clones ... i * clones +
        clones - 1`` are clip ``i``'s), else drawn by the model's masker with ``generator``.
        """
        masker, decoder = self._parts(model)
        encoder = model.encoder
        C = self.cfg.clones
        B = spec.shape[0]
        grid = encoder.grid_for(spec.shape[1], spec.shape[2])
        L = grid[0] * grid[1]
        if mask is None:  # drawn on the CPU: no GPU sync to find the kept tokens
            where = generator.device if generator is not None else "cpu"
            mask = masker(B * C, grid, encoder.layout, where, generator)
        mask = mask.bool()
        if mask.shape != (B * C, L):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(B * C, L)} "
                             f"({B} clips x {C} clones, grid {grid})")

        y = self.targets(spec)  # [B, L, D], no gradient
        out = encoder(spec.repeat_interleave(C, dim=0) if C > 1 else spec, mask)
        mask_dev = to_device(mask, spec.device)
        pred = decoder(out, mask_dev, grid).float()  # [B*C, L, D]
        D = pred.shape[-1]
        y_rep = y.repeat_interleave(C, dim=0) if C > 1 else y
        per_token = (pred - y_rep).pow(2).sum(dim=-1) / math.sqrt(D)  # [B*C, L]
        m = mask_dev.to(per_token.dtype)
        frame = (per_token * m).sum() / m.sum().clamp_min(1.0)
        if self.cfg.utterance_weight > 0:
            cls = out.tokens[:, 0].float()  # the student's CLS token (after the final norm)
            utt_target = y.mean(dim=1)
            utt_target = utt_target.repeat_interleave(C, dim=0) if C > 1 else utt_target
            utterance = (cls - utt_target).pow(2).sum(dim=-1).mean() / math.sqrt(D)
            loss = frame + self.cfg.utterance_weight * utterance
        else:
            utterance = frame.new_zeros(())
            loss = frame
        return EATOutput(loss, frame, utterance, pred, y, mask_dev)

    def loss(self, model: nn.Module, spec: torch.Tensor, step: Any) -> torch.Tensor:
        """One micro-batch: the masks of the whole global batch (``clones`` per clip) come from
        ``step.generator()`` and this micro-batch takes its clips' rows, so any split of the
        batch masks alike."""
        masker, _ = self._parts(model)
        C = self.cfg.clones
        grid = model.encoder.grid_for(spec.shape[1], spec.shape[2])
        full = masker(step.global_batch * C, grid, model.encoder.layout, "cpu", step.generator())
        rows = full[step.offset * C:(step.offset + spec.shape[0]) * C]
        return self(model, spec, rows).loss

    # ------------------------------------------------------------------ after each step
    def decay_at(self, step: int) -> float:
        cfg = self.cfg
        return ema_decay_at(step, cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_steps)

    @torch.no_grad()
    def after_step(self, model: nn.Module, global_step: int) -> None:
        """Move the teacher towards the student: ``t <- decay * t + (1 - decay) * s`` (every
        parameter, the patch embedding included, as the release's ``ema_local_encoder``)."""
        weight = 1.0 - self.decay_at(global_step)
        student = dict(model.encoder.named_parameters())
        for name, t in self.teacher.named_parameters():
            s = student.get(name)
            if s is None or s.shape != t.shape:
                raise RuntimeError(f"method eat: teacher parameter {name!r} has no match in the student encoder")
            if weight > 0:
                t.lerp_(s.detach().to(t.dtype), weight)  # exact when equal: lerp(a, a, w) == a
        student_buffers = dict(model.encoder.named_buffers())
        for name, b in self.teacher.named_buffers():
            b.copy_(student_buffers[name])
        self.num_updates.fill_(global_step)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """The teacher's current decay, for the epoch record."""
        return {"ema_decay": self.decay_at(int(self.num_updates))}
