"""``events_finetune``: sound event detection with the encoder trained, a frame-level head on top.

The encoder and a new head (LayerNorm + Linear, as fine-tuning's, applied to every time column
of :meth:`SSLModel.frames <ssl_bench.model.SSLModel.frames>`) are trained together with
:func:`ssl_bench.train.fit` (AdamW, warm-up and cosine, layer-wise lr decay, checkpoints and
resume, gradient accumulation, DDP) on whole clips, binary cross-entropy per class per frame
against the frame targets of the clip's events at the encoder's columns (frames centred past
the end of a clip are left out of the loss).  After every epoch the validation clips are
post-processed into events with every setting of the grid, as the ``events`` protocol does
(:class:`~ssl_bench.protocols.events.EventScorer`); the epoch whose best setting scores highest
is kept (ties: the lower validation loss, then the earlier epoch) with that setting, and only
it is scored on the test part, once.  Its test events become the run's predictions file.

The head starts (``head_init``) as a frame-wise linear probe of the frozen encoder (``probe``,
LP-FT as the ``finetune`` protocol's small presets do: L2-regularised logistic regression per
class on the standardised frames, ``C`` chosen on validation by the same event score, the
standardisation folded into the Linear), or (``prior``) with zero weights and each class's
bias at the log-odds of its share of active training frames; either way the first epochs are
not spent learning that events are rare.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .. import distributed as D
from ..config import ConfigError
from ..events import EVENTS
from ..frames import NATIVE
from ..metrics import evaluate_events
from ..train import FitHooks, OptimConfig, StepContext, TrainConfig, fit, predict, seed_everything
from .base import Predictions, Protocol, ProtocolContext, ProtocolResult
from .data import fit_frames, normalize
from .embeddings import FrameEmbeddings
from .events import EventScorer, PostProcessing, clip_targets, post_processing_grid
from .finetune import PROBE_C, BestEpoch, _fit_linear_head, prepare_model
from .selection import VALID, choose_on_validation, lower_loss, require_single

#: How the frame-level head starts (see the module docstring).
HEAD_INITS = ("probe", "prior")


@dataclass
class EventsFinetuneConfig(OptimConfig):
    """Encoder + frame-level head trained for events; the epoch and post-processing chosen on validation."""

    enabled: bool = True
    epochs: int = 30
    batch_size: int = 16
    blr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    layer_decay: float | None = 0.75
    drop_path: float = 0.0
    head_init: str = "probe"  # "probe": a linear probe of the frozen frames (LP-FT); "prior": the classes' priors
    median_filter_ms: list[float] = field(default_factory=lambda: [0.0, 250.0])
    min_duration_ms: list[float] = field(default_factory=lambda: [0.0, 125.0, 250.0])
    threshold: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])

    def __post_init__(self) -> None:  # checked when the section is read, before any data work
        post_processing_grid(self, "events_finetune")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"events_finetune.head_init: expected one of {', '.join(HEAD_INITS)}, got "
                              f"{self.head_init!r}")


class FrameTargetDataset(Dataset):
    """Whole clips (``spec`` zero-padded to the model's length) with their frame targets
    ``[frames, classes]`` and the mask of frames inside the clip."""

    def __init__(self, features: Any, indices: np.ndarray, num_frames: int, targets: np.ndarray, mask: np.ndarray):
        self.features, self.indices, self.num_frames = features, np.asarray(indices), int(num_frames)
        self.targets, self.mask = targets, mask

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"spec": fit_frames(self.features[int(self.indices[i])], self.num_frames),
                "target": torch.from_numpy(self.targets[i]), "mask": torch.from_numpy(self.mask[i]), "index": i}


def frame_logits(model: Any, spec: torch.Tensor) -> torch.Tensor:
    """``[B, frames, classes]``: the head on every time column of normalised ``spec``."""
    return model.head(model.frames(spec).embeddings)


class EventsFinetuneProtocol(Protocol):
    """``events_finetune``: encoder + frame-level head trained on the split's events, epoch and
    post-processing chosen on validation (see the module docstring)."""

    Config = EventsFinetuneConfig
    trains_on = "train"
    shapes = (EVENTS,)
    help = "only fine-tune for sound event detection: encoder + frame-level head, events post-processed"

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        from ..compute import compute_columns, count_parameters, flops_per_sample, spec_probe

        data, section = ctx.data, ctx.section
        cfg = TrainConfig.from_sections(section, run=ctx.config, num_workers=(ctx.config.get("data") or {}).get(
            "num_workers", 0))
        classes = [str(c) for c in data.classes]
        posts = post_processing_grid(section, "events_finetune")
        has_valid = len(data.valid) > 0
        require_single(posts, has_valid, owner="events_finetune", what=f"among {len(posts)} post-processing settings",
                       instead="give one median_filter_ms, min_duration_ms and threshold")
        longest = max(int(data.features[int(i)].shape[0]) for i in np.concatenate([data.train, data.valid, data.test]))
        if longest > data.num_frames:
            raise ConfigError(f"events_finetune trains on whole clips, but the model takes {data.num_frames} frames and "
                              f"the clips have up to {longest}: leave frontend.num_frames unset (it follows the clips)")
        m = copy.deepcopy(ctx.model)
        seed_everything(cfg.seed)
        prepare_model(m, len(classes), float(section.drop_path or 0.0))
        m.to(ctx.device)
        with torch.no_grad():  # the columns' timestamps in a window of the model's length
            m.eval()
            grid = m.frames(normalize(m, spec_probe(data.num_frames, m.build.num_bins, ctx.device)))
            m.train()
        times, hop = grid.timestamps.numpy(), grid.hop_s
        inside = times < (data.clip_seconds if data.clip_seconds is not None else np.inf)
        inside[0] = True

        def part(name: str) -> tuple[FrameTargetDataset, FrameEmbeddings]:
            idx = data.indices(name)
            targets = np.stack([clip_targets(ev, times, hop, len(classes)) for ev in data.events(name)]) if len(idx) \
                else np.zeros((0, len(times), len(classes)), np.float32)
            mask = np.repeat(inside[None], len(idx), axis=0)
            kept = int(inside.sum())
            layout = FrameEmbeddings(np.zeros((kept * len(idx), 0), np.float32), np.tile(times[:kept], len(idx)),
                                     np.arange(len(idx) + 1, dtype=np.int64) * kept, NATIVE, hop)
            return FrameTargetDataset(data.features, idx, data.num_frames, targets, mask), layout

        sets = {name: part(name) for name in ("train", "valid", "test")}
        scorers = {name: EventScorer(sets[name][1], data.keys(name), data.events(name), classes, data.metrics, posts,
                                     data.clip_seconds) for name in ("valid", "test")}
        eval_bs = max(1, cfg.batch_size // max(cfg.accum_steps, 1))
        keep = torch.as_tensor(inside)
        targets = {name: torch.as_tensor(sets[name][0].targets)[:, keep].reshape(-1, len(classes)).double()
                   for name in ("train", "valid")}
        head_C = None
        if section.head_init == "prior":
            with torch.no_grad():
                prior = targets["train"].mean(0).clamp(1e-4, 1 - 1e-4)
                m.head[1].weight.zero_()
                m.head[1].bias.copy_(torch.log(prior / (1 - prior)).to(m.head[1].bias))
        else:
            head_C = self.probe_head(m, sets, keep, targets, scorers["valid"] if has_valid else None, eval_bs, cfg,
                                     ctx.device)

        def probabilities(model: Any, name: str) -> tuple[np.ndarray, float]:
            was = model.training
            model.eval()
            try:
                logits = predict(lambda b: frame_logits(model, normalize(model, b["spec"])), sets[name][0],
                                 batch_size=eval_bs, device=ctx.device, amp=cfg.amp, num_workers=cfg.num_workers)
            finally:
                model.train(was)
            target = torch.as_tensor(sets[name][0].targets)[:, keep]
            logits = logits[:, keep]
            loss = float(F.binary_cross_entropy_with_logits(logits, target)) if len(logits) else float("nan")
            return torch.sigmoid(logits.double()).reshape(-1, len(classes)).numpy(), loss

        def loss_fn(model: Any, batch: dict[str, Any], step: StepContext) -> torch.Tensor:
            logits = frame_logits(model, normalize(model, batch["spec"])).float()
            loss = F.binary_cross_entropy_with_logits(logits, batch["target"].float(), reduction="none").mean(-1)
            mask = batch["mask"].float()
            return (loss * mask).sum() / mask.sum().clamp_min(1.0)

        tracker = BestEpoch("rank", ctx.state_dir / "best")

        def on_epoch_end(epoch: int, model: Any) -> dict[str, Any]:
            if not has_valid:
                return {}
            probs, loss = probabilities(model, "valid")
            post, value = scorers["valid"].best(probs)
            metrics = {"rank": scorers["valid"].rank(value), data.metrics[0]: value, "loss": loss,
                       **{k: float(v) for k, v in post.columns().items()}}
            improved = tracker.update(epoch + 1, metrics, model)
            return {f"valid_{data.metrics[0]}": value, "valid_loss": loss, **post.columns(),
                    "best_epoch": tracker.best_epoch, "improved": improved}

        result = fit(m, sets["train"][0], loss_fn, cfg, device=ctx.device, checkpoint_dir=ctx.state_dir,
                     resume=ctx.resume,
                     hooks=FitHooks(on_epoch_end=on_epoch_end, state=tracker,
                                    log_metrics=lambda r: ctx.metrics({"split": ctx.split, **r}),
                                    log=(lambda line: ctx.log(f"[{ctx.split}] {line}")) if ctx.progress else None),
                     progress=ctx.progress, desc="events_finetune", section="events_finetune")
        if has_valid:
            weights = tracker.best_weights()
            if weights is None:
                raise RuntimeError("events_finetune finished without a scored validation epoch")
            tracker.prune()
            m.load_state_dict(weights)
            best = tracker.valid
            post = PostProcessing(best["median_filter_ms"], best["min_duration_ms"], best["threshold"])
            epoch, selection = int(tracker.best_epoch), VALID
            valid = scorers["valid"].score(probabilities(m, "valid")[0], post)
        else:
            post, epoch, selection, valid = posts[0], cfg.epochs, "last", {}
        if not D.current().is_main:
            return []
        test_events = scorers["test"].events(probabilities(m, "test")[0], post)
        test = evaluate_events(data.metrics, test_events, scorers["test"].reference, classes)
        m.eval()
        flops = flops_per_sample(lambda s: frame_logits(m, normalize(m, s)),
                                 spec_probe(data.num_frames, m.build.num_bins, ctx.device))
        extra = {
            **compute_columns(parameters=count_parameters(m, trainable_only=True), flops=flops, fit=result,
                              wall_s=result.wall_s, device=ctx.device, world_size=D.current().world_size),
            "best_epoch": epoch, "selection": selection, **post.columns(), "lr": cfg.peak_lr,
            "head_init": section.head_init, "head_C": head_C,
            "final_train_loss": float(result.final_loss), "frame_hop_ms": round(hop * 1000.0, 6),
            "frame_method": NATIVE, **{f"valid_{k}": v for k, v in valid.items()},
        }
        ctx.log(f"[{ctx.split}] events_finetune ({ctx.init}): best epoch {epoch}, median {post.median_filter_ms:g} ms, "
                f"min {post.min_duration_ms:g} ms, threshold {post.threshold:g}; test "
                + ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k in data.metrics))
        return [ProtocolResult(test, extra, predictions=Predictions(events=test_events))]

    @staticmethod
    @torch.no_grad()
    def probe_head(model: Any, sets: dict[str, Any], keep: torch.Tensor, targets: dict[str, torch.Tensor],
                   scorer: EventScorer | None, batch_size: int, cfg: TrainConfig, device: Any) -> float:
        """Set the head's Linear to a frame-wise linear probe of the frozen encoder (see the module
        docstring); returns the ``C`` chosen on validation (``1`` without validation data)."""
        was = model.training
        model.eval()
        try:
            feats = {name: predict(lambda b: model.head[0](model.frames(normalize(model, b["spec"])).embeddings),
                                   sets[name][0], batch_size=batch_size, device=device, amp=cfg.amp,
                                   num_workers=cfg.num_workers)[:, keep].reshape(-1, model.head[1].in_features)
                     .double() for name in targets if len(sets[name][0])}
        finally:
            model.train(was)
        mu = feats["train"].mean(0)
        sd = feats["train"].std(0, unbiased=False).clamp_min(1e-6)
        Z = {name: (f - mu) / sd for name, f in feats.items()}
        classes = targets["train"].shape[1]

        def trial(C: float) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
            with torch.enable_grad():
                W, b = _fit_linear_head(Z["train"], targets["train"], classes, True, C)
            if scorer is None:
                return {}, (W, b)
            logits = Z["valid"] @ W.T + b
            _, value = scorer.best(torch.sigmoid(logits).numpy())
            return {"rank": scorer.rank(value), "loss": float(F.binary_cross_entropy_with_logits(
                logits, targets["valid"]))}, (W, b)

        choice = choose_on_validation(PROBE_C if scorer is not None else (1.0,), trial, "rank", tiebreak=lower_loss)
        W, b = choice.kept
        linear = model.head[1]
        linear.weight.copy_((W / sd).to(linear.weight))
        linear.bias.copy_((b - (W * (mu / sd)).sum(1)).to(linear.bias))
        return float(choice.candidate)
