"""Self-supervised pretraining as a protocol: the model's *method* on unlabeled spectrograms.

``pretrain`` (stage ``pretrain``) trains the split's model in place on the audio the runner
gives it (``ctx.unlabeled``: the split's training audio, or ``pretrain.corpus``) and reports
the encoder it made (:class:`~ssl_bench.protocols.base.Pretrained`); the machinery (the
content-keyed cache under ``<cache>/pretrain/<hash>/``, resume, the loss of a method) lives in
:mod:`ssl_bench.encoders`, which ``ssl-bench pretrain`` shares.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError
from ..encoders import made_by, pretrain_encoder
from ..events import SHAPES
from ..train import OptimConfig
from .base import Protocol, ProtocolContext, ProtocolResult


@dataclass
class PretrainConfig(OptimConfig):
    """Self-supervised pretraining (MAE recipe defaults; model presets refine them)."""

    enabled: bool = True  # False: no pretraining, the encoder stays randomly initialised
    epochs: int = 32
    batch_size: int = 512  # global batch (per step, after accumulation)
    blr: float = 1.5e-4  # lr = blr * batch_size / 256
    warmup_epochs: float = 3.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    corpus: str | None = None  # unlabeled audio to pretrain on instead of the split's training audio:
    # a folder, or "task" for the task's own unlabeled corpus (synthetic ships one)


class PretrainProtocol(Protocol):
    """``pretrain``: the model's method on the split's training audio (or a corpus)."""

    Config = PretrainConfig
    stage = "pretrain"
    trains_on = "unlabeled"
    shapes = SHAPES  # labels unused: any task's audio
    help = "only pretrain (checkpoints are cached and reused by config hash)"

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        if ctx.unlabeled is None:
            raise ConfigError(f"protocol {self.name!r} pretrains, and was given no audio to pretrain on")
        meta = pretrain_encoder(
            ctx.model, ctx.unlabeled, num_frames=ctx.data.num_frames, config=ctx.config, device=ctx.device,
            cache_dir=ctx.cache_dir, resume=ctx.resume, progress=ctx.progress, log=ctx.log,
            log_metrics=(lambda r: ctx.log_metrics({"split": ctx.split, **r})) if ctx.log_metrics else None)
        extra = {**meta["compute"], "reused": meta["reused"], "pretrain_hash": meta["hash"],
                 "n_pretrain": meta["n_clips"], "encoder_sha256": meta["weights_sha256"]}
        return [ProtocolResult({"loss": meta["loss"]}, extra, pretrained=made_by(meta))]
