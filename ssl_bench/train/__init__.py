"""Training: the one loop every protocol uses, split by concept.

* :mod:`.loop` -- :func:`fit` (AMP, DDP, accumulation, progress) with what a protocol plugs in
  (:class:`FitHooks`) and how an epoch samples (:class:`Sampling`), and :func:`predict`;
* :mod:`.optim` -- :class:`TrainConfig` (the shared optimiser settings), parameter groups with
  layer-wise lr decay, the warm-up + cosine schedule;
* :mod:`.sampler` -- :class:`ShardedBatchSampler`, the same examples per step for any world size;
* :mod:`.state` -- training checkpoints, RNG streams and resume;
* :mod:`.signals` -- SIGTERM/SIGINT: finish the step, checkpoint, exit with the signal's code.
"""

from __future__ import annotations

from .loop import (
    STOP_CHECK_STEPS,
    FitHooks,
    FitResult,
    LossFn,
    Sampling,
    StepContext,
    autocast,
    configure_backends,
    fit,
    peak_memory_mb,
    precision,
    predict,
    to_device,
)
from .optim import (
    NO_DECAY_NAMES,
    OptimConfig,
    TrainConfig,
    TrainConfigError,
    WarmupCosine,
    adamw,
    layer_decay_fn,
    param_groups,
)
from .sampler import ShardedBatchSampler
from .signals import STOP, GracefulStop, TrainingInterrupted
from .state import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    load_train_checkpoint,
    restore_train_state,
    rng_state,
    save_train_checkpoint,
    seed_everything,
    set_rng_state,
)

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "CHECKPOINT_VERSION", "NO_DECAY_NAMES", "STOP", "STOP_CHECK_STEPS",
    "FitHooks", "FitResult", "GracefulStop", "LossFn", "OptimConfig", "Sampling", "ShardedBatchSampler",
    "StepContext", "TrainConfig", "TrainConfigError", "TrainingInterrupted", "WarmupCosine", "adamw", "autocast",
    "configure_backends", "fit", "layer_decay_fn", "load_train_checkpoint", "param_groups", "peak_memory_mb",
    "precision", "predict", "restore_train_state", "rng_state", "save_train_checkpoint", "seed_everything", "set_rng_state",
    "to_device",
]
