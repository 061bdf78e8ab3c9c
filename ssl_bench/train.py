"""The one training loop every protocol uses.

:func:`fit` trains a model on a map-style dataset with a protocol-supplied loss function::

    result = fit(model, dataset, loss_fn, TrainConfig(epochs=10, batch_size=64, blr=1e-3),
                 device=device, checkpoint_dir=ckpt_dir, on_epoch_end=validate)

What it does, so the protocols do not have to:

* AdamW with parameter groups: no weight decay for 1-D parameters, biases and position/class
  tokens; optional layer-wise lr decay (``lr_scale = decay ** (num_layers - layer_id)``);
  ``lr = blr * batch_size / 256`` unless ``lr`` is given; per-step linear warm-up, then a
  half-cycle cosine to ``min_lr`` (the MAE schedule);
* gradient accumulation (``batch_size`` is the global batch of one optimiser step);
* torchrun/DDP: each global batch is split over ranks and accumulation steps the same way
  whatever the world size, so 1 process and N processes see the same examples per step;
* on CUDA: bf16 autocast, TF32 matmuls, fused AdamW, pinned memory with non-blocking copies,
  and no host-device synchronisation inside a step except logging every ``log_every`` steps;
  ``compile=True`` wraps the step in ``torch.compile``;
* checkpoints every ``checkpoint_every`` epochs (and on SIGTERM/SIGINT at the next step
  boundary), written atomically with model, optimiser, schedule, grad scaler, epoch/step (the
  sampler position), the protocol's own state and every RNG state, so a resumed run continues
  exactly where the last complete checkpoint left it (bit for bit on CPU).

The loss function is called as ``loss_fn(model, batch, ctx)`` with the batch already on the
device and a :class:`StepContext` that says which part of which global batch it is; it
returns a scalar loss (mean over its micro-batch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import random
import resource
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import distributed as D
from .checkpoint import CheckpointError, atomic_save, safe_load
from .nn import to_device as tensor_to_device

CHECKPOINT_FORMAT = "ssl-bench-train"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "last.pt"

#: Under torchrun, how often (in steps) the ranks agree on whether a SIGTERM/SIGINT arrived.
STOP_CHECK_STEPS = 5

#: Parameter-name endings that never get weight decay (besides 1-D tensors and biases).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")


class TrainConfigError(ValueError):
    """Training settings that cannot work; the message says which and why."""


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by SIGTERM/SIGINT; ``checkpoint`` is where it can resume from (or None).

    A ``KeyboardInterrupt`` so that generic ``except Exception`` handlers do not swallow it.
    """

    def __init__(self, signum: int, checkpoint: Path | None = None):
        self.signum = signum
        self.checkpoint = checkpoint
        where = f"; checkpoint saved to {checkpoint}" if checkpoint else ""
        super().__init__(f"stopped by {signal.Signals(signum).name}{where}")

    @property
    def exit_code(self) -> int:
        """The shell convention for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum)


# --------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Everything :func:`fit` needs; the protocol sections of the config map onto it."""

    epochs: int = 1
    batch_size: int = 32  # global batch per optimiser step (all ranks, all accumulation steps)
    accum_steps: int = 1
    blr: float = 1e-3
    lr: float | None = None  # absolute peak lr; overrides blr
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None
    layer_decay: float | None = None
    checkpoint_every: int = 1  # epochs; the last epoch is always checkpointed
    log_every: int = 20  # steps between loss read-backs (the only host syncs in the loop)
    num_workers: int = 0
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False
    deterministic: bool = False

    @property
    def peak_lr(self) -> float:
        return float(self.lr) if self.lr is not None else self.blr * self.batch_size / 256

    @classmethod
    def from_sections(cls, section: dict[str, Any], run: dict[str, Any] | None = None, **extra: Any) -> "TrainConfig":
        """Pick the fields this class knows from a protocol section and the run settings."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for source in (run or {}, section, extra):
            values.update({k: v for k, v in source.items() if k in types})
        for key, value in values.items():
            values[key] = _coerce(key, value, str(types[key]))
        if values.get("betas") is not None:
            values["betas"] = tuple(_coerce("betas", b, "float") for b in values["betas"])
        return cls(**values)

    def check(self) -> None:
        if self.epochs < 1:
            raise TrainConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.accum_steps < 1:
            raise TrainConfigError(
                f"batch_size and accum_steps must be >= 1, got {self.batch_size}, {self.accum_steps}")
        if self.peak_lr <= 0 or self.min_lr < 0:
            raise TrainConfigError(f"lr must be > 0 and min_lr >= 0, got lr={self.peak_lr}, min_lr={self.min_lr}")
        if self.warmup_epochs < 0:
            raise TrainConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise TrainConfigError(f"layer_decay must be in (0, 1], got {self.layer_decay}")


def _coerce(key: str, value: Any, kind: str) -> Any:
    """Numbers given as text (YAML reads ``4e-3`` as a string) become numbers; else a clear error."""
    if value is None or not isinstance(value, str):
        return value
    target = int if kind.startswith("int") else float if kind.startswith("float") else None
    if target is None:
        return value
    try:
        return target(float(value)) if target is int and float(value).is_integer() else target(value)
    except ValueError:
        raise TrainConfigError(f"{key}: expected a number, got {value!r}") from None


# --------------------------------------------------------------------------- parameter groups
def layer_decay_fn(model: nn.Module) -> tuple[Callable[[str], int], int]:
    """``(layer_of, num_layers)`` for a model with an ``.encoder`` that has ``layer_id``/``depth``.

    Encoder parameters get ``encoder.layer_id(name without "encoder.")``; everything else
    (the head, the fine-tuning norm) sits after the last block, at ``depth + 1``.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer_id") or not hasattr(encoder, "depth"):
        raise TrainConfigError(f"{type(model).__name__} has no encoder with layer_id()/depth for layer-wise lr decay")
    top = int(encoder.depth) + 1

    def layer_of(name: str) -> int:
        if name.startswith("encoder."):
            return int(encoder.layer_id(name[len("encoder."):]))
        return top

    return layer_of, top


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    *,
    layer_of: Callable[[str], int] | None = None,
    num_layers: int | None = None,
    no_decay: Sequence[str] = NO_DECAY_NAMES,
) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters of ``model``.

    No weight decay for 1-D tensors (norms), biases, and names ending in ``no_decay`` (position
    and class tokens) or listed by a submodule's ``no_weight_decay()``.  With ``layer_decay``,
    parameters are grouped by ``layer_of(name)`` (default: :func:`layer_decay_fn`) and each
    group gets ``lr_scale = layer_decay ** (num_layers - layer_id)``.  Every group carries
    ``lr_scale``, ``layer_id`` and ``param_names``.
    """
    skip = set()
    for mod_name, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            prefix = f"{mod_name}." if mod_name else ""
            skip.update(prefix + n for n in fn())
    if layer_decay is not None and layer_of is None:
        layer_of, num_layers = layer_decay_fn(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith(".bias") or name in skip
                     or name.rsplit(".", 1)[-1] in no_decay)
        layer = int(layer_of(name)) if layer_decay is not None else 0
        scale = float(layer_decay) ** (int(num_layers) - layer) if layer_decay is not None else 1.0
        group = groups.setdefault((layer, decay), {
            "params": [], "param_names": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": scale, "layer_id": layer,
        })
        group["params"].append(p)
        group["param_names"].append(name)
    if not groups:
        raise TrainConfigError(f"{type(model).__name__} has no trainable parameters")
    return [groups[k] for k in sorted(groups)]


# --------------------------------------------------------------------------- schedule
class WarmupCosine:
    """Per-step lr: linear warm-up from 0, then a half-cycle cosine to ``min_lr`` (MAE).

    Positions are in (fractional) epochs, ``step / steps_per_epoch``, like MAE's
    ``adjust_learning_rate``.  Each parameter group gets ``lr * group["lr_scale"]``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, min_lr: float,
                 warmup_epochs: float, epochs: int, steps_per_epoch: int):
        self.optimizer = optimizer
        self.peak_lr, self.min_lr = float(peak_lr), float(min_lr)
        self.warmup_epochs, self.epochs = float(warmup_epochs), int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.step_num = 0

    def lr_at(self, step: int) -> float:
        e = step / self.steps_per_epoch
        if e < self.warmup_epochs:
            return self.peak_lr * e / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-12)
        progress = min((e - self.warmup_epochs) / span, 1.0)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self) -> float:
        """Set every group's lr for the current step; returns the unscaled lr."""
        lr = self.lr_at(self.step_num)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def step(self) -> None:
        self.step_num += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step_num": self.step_num, "peak_lr": self.peak_lr, "min_lr": self.min_lr,
                "warmup_epochs": self.warmup_epochs, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_num = int(state["step_num"])


# --------------------------------------------------------------------------- sampling
class ShardedBatchSampler:
    """Yields this rank's micro-batches of index lists; a resumable ``DistributedSampler``.

    Epoch ``e`` shuffles ``range(n)`` with a generator seeded by ``(seed, e)`` and cuts it into
    ``n // batch_size`` global batches (the tail is dropped, as in MAE).  With ``weights`` (or
    ``num_samples``), an epoch instead draws ``num_samples`` (default ``n``) indices with
    replacement, with probability proportional to ``weights`` (AudioMAE's class-balanced
    ``WeightedRandomSampler`` for AudioSet-2M).  Global batch ``s`` is cut into
    ``accum_steps`` chunks and each chunk into ``world_size`` equal micro-batches, so the set of
    examples in a step, and the position (``offset``) of each example in it, do not depend on
    how many processes run.  ``set_epoch(e, start_step)`` resumes inside an epoch.
    """

    def __init__(self, n: int, batch_size: int, accum_steps: int = 1, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, weights: Sequence[float] | None = None,
                 num_samples: int | None = None):
        if batch_size % (accum_steps * world_size):
            raise TrainConfigError(
                f"batch_size {batch_size} is not divisible by accum_steps x world size = "
                f"{accum_steps} x {world_size}; choose a batch size that is"
            )
        self.n, self.batch_size, self.accum_steps = n, batch_size, accum_steps
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.micro = batch_size // (accum_steps * world_size)
        self.epoch, self.start_step = 0, 0
        self.weights = None
        if weights is not None or num_samples is not None:
            w = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (n,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise TrainConfigError(f"sampling weights must be {n} finite non-negative numbers, not all zero")
            self.weights = w
        self.num_samples = int(num_samples) if num_samples is not None else n

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=g)

    def offset(self, micro_index: int) -> int:
        """Position of this rank's ``micro_index``-th micro-batch inside its global batch."""
        chunk = self.batch_size // self.accum_steps
        return micro_index * chunk + self.rank * self.micro

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.order(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            batch = perm[step * self.batch_size:(step + 1) * self.batch_size]
            for m in range(self.accum_steps):
                start = self.offset(m)
                yield batch[start:start + self.micro].tolist()

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start_step, 0) * self.accum_steps


@dataclass
class StepContext:
    """Where a micro-batch sits: ``offset`` of its first example inside the global batch of
    ``global_batch`` examples at optimiser step ``global_step``.

    :meth:`generator` gives a CPU generator seeded by (seed, step, salt): randomness drawn from
    it for the whole global batch and sliced with ``offset`` is the same for any number of
    processes and across resumes (pretraining masks use it).
    """

    epoch: int
    step: int
    global_step: int
    micro: int
    offset: int
    global_batch: int
    seed: int

    def generator(self, salt: int = 0) -> torch.Generator:
        digest = hashlib.sha256(f"{self.seed}:{self.global_step}:{salt}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class LossFn(Protocol):
    def __call__(self, model: nn.Module, batch: Any, ctx: StepContext) -> torch.Tensor: ...


class _StepModule(nn.Module):
    """Puts the loss function behind ``forward`` so DDP and ``torch.compile`` can wrap it."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any, ctx: StepContext) -> torch.Tensor:
        return self.loss_fn(self.model, batch, ctx)


# --------------------------------------------------------------------------- RNG state
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------- signals
class GracefulStop:
    """SIGTERM/SIGINT handling: inside a training loop, finish the step, checkpoint and stop.

    While ``deferring`` (set by :func:`fit` around its steps) a signal only sets
    :attr:`signum`; the loop checks it at the next step boundary.  Outside, the signal raises
    :class:`TrainingInterrupted` at once (a results directory in progress is then removed by
    its writer).  A second SIGINT always raises immediately.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferring = False
        self._old: dict[int, Any] = {}
        self._depth = 0

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise TrainingInterrupted(signum)
        self.signum = signum
        if not self.deferring:
            raise TrainingInterrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator["GracefulStop"]:
        """Install the handlers (main thread only; elsewhere this is a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        if self._depth == 0:
            self.signum = None
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handler)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                for sig, old in self._old.items():
                    signal.signal(sig, old)
                self._old.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        old, self.deferring = self.deferring, True
        try:
            yield
        finally:
            self.deferring = old


#: The process-wide stop handler (the runner installs it around a whole run).
STOP = GracefulStop()


# --------------------------------------------------------------------------- results
@dataclass
class FitResult:
    """What :func:`fit` did.  ``history``: one record per epoch (all epochs, resumed or not);
    ``step_losses``: the global mean loss of every optimiser step; throughput and memory are for
    the steps this call ran."""

    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    epochs: int = 0
    steps: int = 0
    wall_s: float = 0.0
    train_s: float = 0.0
    samples_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    world_size: int = 1
    device: str = "cpu"
    resumed_from: tuple[int, int] | None = None  # (epoch, step) of the checkpoint resumed
    checkpoint: Path | None = None

    @property
    def final_loss(self) -> float:
        return float(self.history[-1]["loss"]) if self.history else float("nan")


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process's peak resident size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def configure_backends(device: torch.device, deterministic: bool = False) -> None:
    """TF32 matmuls on CUDA; deterministic algorithms when asked (bit-identical reruns)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
        torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch, each without stalling the host (:func:`.nn.to_device`)."""
    if torch.is_tensor(batch):
        return tensor_to_device(batch, device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on CPU (bf16 matmuls there are slower and less exact)."""
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# --------------------------------------------------------------------------- checkpoints
def load_train_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`fit` (safe loading, format checked)."""
    obj = safe_load(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an ssl-bench training checkpoint")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: training checkpoint version {obj.get('version')}, expected {CHECKPOINT_VERSION}")
    return obj


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


# --------------------------------------------------------------------------- the loop
def fit(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: LossFn,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    collate_fn: Callable | None = None,
    groups: list[dict[str, Any]] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    on_epoch_end: Callable[[int, nn.Module], dict[str, Any] | None] | None = None,
    state: _Stateful | None = None,
    log_metrics: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    stop: GracefulStop | None = None,
    sample_weights: Sequence[float] | None = None,
    epoch_size: int | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs over ``dataset`` (see the module docstring).

    ``groups``: parameter groups (default :func:`param_groups` with ``cfg.weight_decay`` and
    ``cfg.layer_decay``).  ``on_epoch_end(epoch, model)`` runs after every epoch on every rank
    (validation) and may return metrics for the epoch record; ``state`` (anything with
    ``state_dict``/``load_state_dict``, e.g. a best-epoch tracker) is saved in checkpoints and
    restored on resume.  ``log_metrics(record)`` receives each epoch record on rank 0.
    ``sample_weights``/``epoch_size``: draw ``epoch_size`` examples per epoch with replacement,
    proportionally to the weights (class-balanced sampling) instead of a shuffle.
    With ``checkpoint_dir``, ``<dir>/last.pt`` is (re)written atomically every
    ``cfg.checkpoint_every`` epochs and at the end; with ``resume`` an existing one is loaded
    first, and a finished one returns at once.
    """
    cfg.check()
    t_start = time.perf_counter()
    device = torch.device(device)
    info = D.current()
    stop = stop or STOP
    configure_backends(device, cfg.deterministic)

    sampler = ShardedBatchSampler(len(dataset), cfg.batch_size, cfg.accum_steps, info.rank, info.world_size, cfg.seed,
                                  weights=sample_weights, num_samples=epoch_size)
    steps_per_epoch = sampler.steps_per_epoch
    if steps_per_epoch == 0:
        raise TrainConfigError(
            f"{desc}: batch_size {cfg.batch_size} is larger than the {sampler.num_samples} training examples "
            "of an epoch; lower the batch size"
        )
    model.to(device)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    saved = load_train_checkpoint(ckpt_path) if (resume and ckpt_path is not None and ckpt_path.is_file()) else None
    if saved is not None and saved.get("world_size", 1) != info.world_size:
        warnings.warn(f"{ckpt_path}: written with {saved.get('world_size')} processes, resuming with "
                      f"{info.world_size}; per-rank RNG streams are re-seeded", stacklevel=2)

    seed_everything(cfg.seed + info.rank)
    if saved is not None:
        _unwrap(model).load_state_dict(saved["model"])
        if saved.get("finished"):  # nothing left to train: hand back the finished run's record
            if state is not None and saved.get("state") is not None:
                state.load_state_dict(saved["state"])
            rngs = saved["rng"]
            set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
            history = list(saved["history"])
            losses = [float(x) for x in saved["step_losses"]]
            return FitResult(history=history, step_losses=losses, epochs=len(history), steps=len(losses),
                             wall_s=time.perf_counter() - t_start, world_size=info.world_size, device=str(device),
                             resumed_from=(int(saved["epoch"]), int(saved["step"])), checkpoint=ckpt_path)
    # done for any world size so parameter groups (and checkpoints) do not depend on it
    frozen = _freeze_unused(model, dataset, loss_fn, sampler, collate_fn, device, cfg)
    try:
        groups = groups if groups is not None else param_groups(model, cfg.weight_decay, cfg.layer_decay)
        fused = device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=tuple(cfg.betas), fused=fused)
        schedule = WarmupCosine(optimizer, cfg.peak_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs, steps_per_epoch)
        # bf16 needs no loss scaling; the scaler stays (disabled) so checkpoints have one format
        scaler = torch.amp.GradScaler(device.type, enabled=False)

        result = FitResult(world_size=info.world_size, device=str(device), checkpoint=ckpt_path)
        start_epoch, start_step = 0, 0
        epoch_losses = torch.zeros(steps_per_epoch, dtype=torch.float64, device=device)
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            start_epoch, start_step = int(saved["epoch"]), int(saved["step"])
            result.history = list(saved["history"])
            result.step_losses = [float(x) for x in saved["step_losses"]]
            result.resumed_from = (start_epoch, start_step)
            if start_step:
                epoch_losses[:start_step] = saved["epoch_losses"][:start_step].to(device)
            if state is not None and saved.get("state") is not None:
                state.load_state_dict(saved["state"])
            rngs = saved["rng"]
            set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])

        step_module: nn.Module = _StepModule(model, loss_fn)
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=ids)
        runner = torch.compile(step_module) if cfg.compile else step_module

        # The loader draws its worker seed from its own generator, reseeded every epoch: the global
        # RNG is not touched, and worker randomness (random crops) depends only on (seed, epoch).
        # Workers are not persistent for the same reason.  Bit-identical resumes inside an epoch
        # need num_workers=0 (then dataset randomness comes from the restored global RNG).
        loader_gen = torch.Generator()
        loader = DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda", generator=loader_gen,
        )
        is_main = info.is_main
        # A stop request is a local flag; under torchrun the ranks must agree on the step they stop
        # at, which costs a (tiny) all-reduce and a host sync: every few steps, not every step.
        # torchrun gives its workers 30 s after forwarding SIGTERM, so "a few" stays small.
        checks_stop_every = 1 if not info.enabled else max(1, min(cfg.log_every, STOP_CHECK_STEPS))
        samples_run, t_train = 0, 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        with stop.installed(), stop.deferred():
            for epoch in range(start_epoch, cfg.epochs):
                step0 = start_step if epoch == start_epoch else 0
                if step0 == 0:
                    epoch_losses.zero_()
                sampler.set_epoch(epoch, step0)
                model.train()
                t_epoch = time.perf_counter()
                bar = _progress(steps_per_epoch, step0, f"{desc} {epoch + 1}/{cfg.epochs}", progress and is_main)
                loader_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
                batches = iter(loader)
                lr = schedule.lr_at(schedule.step_num)
                for step in range(step0, steps_per_epoch):
                    lr = schedule.apply()
                    step_loss = torch.zeros((), dtype=torch.float64, device=device)
                    for m in range(cfg.accum_steps):
                        batch = to_device(next(batches), device)
                        ctx = StepContext(epoch, step, schedule.step_num, m, sampler.offset(m), cfg.batch_size,
                                          cfg.seed)
                        sync = (step_module.no_sync() if info.enabled and m < cfg.accum_steps - 1
                                else contextlib.nullcontext())
                        with sync:
                            with autocast(device, cfg.amp):
                                loss = runner(batch, ctx)
                            scaler.scale(loss / cfg.accum_steps).backward()
                        step_loss += loss.detach().double() / cfg.accum_steps
                    if cfg.clip_grad:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    schedule.step()
                    epoch_losses[step] = step_loss
                    done = step + 1
                    if done % cfg.log_every == 0 or done == steps_per_epoch:
                        mean = float(D.all_reduce_mean(epoch_losses[step0:done].mean()).item())
                        if not math.isfinite(mean):
                            raise FloatingPointError(
                                f"{desc}: loss became {mean} by epoch {epoch + 1} step {done}; "
                                "lower the learning rate or set clip_grad"
                            )
                        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                    if done < steps_per_epoch and done % checks_stop_every == 0 and D.any_rank(stop.signum is not None):
                        bar.close()
                        path = _save(ckpt_path, model, optimizer, schedule, scaler, epoch, done, result,
                                     epoch_losses, state, finished=False)
                        raise TrainingInterrupted(stop.signum or signal.SIGTERM, path)
                bar.close()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                epoch_time = time.perf_counter() - t_epoch
                t_train += epoch_time
                samples_run += (steps_per_epoch - step0) * cfg.batch_size
                losses = D.all_reduce_mean(epoch_losses).cpu().tolist()
                result.step_losses.extend(losses)
                record: dict[str, Any] = {
                    "epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": lr,
                    "epoch_time_s": round(epoch_time, 4),
                    "samples_per_s": round((steps_per_epoch - step0) * cfg.batch_size / max(epoch_time, 1e-9), 3),
                }
                if on_epoch_end is not None:
                    extra = on_epoch_end(epoch, model)
                    if extra:
                        record.update(extra)
                result.history.append(record)
                if log_metrics is not None and is_main:
                    log_metrics(dict(record))
                last = epoch + 1 == cfg.epochs
                stopping = not last and D.any_rank(stop.signum is not None)
                if ckpt_path is not None and (last or stopping or (epoch + 1) % max(cfg.checkpoint_every, 1) == 0):
                    _save(ckpt_path, model, optimizer, schedule, scaler, epoch + 1, 0, result, epoch_losses, state,
                          finished=last)
                if stopping:
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, ckpt_path)

        result.epochs = len(result.history)
        result.steps = len(result.step_losses)
        result.train_s = t_train
        result.samples_per_s = samples_run / t_train if t_train > 0 else 0.0
        result.peak_memory_mb = peak_memory_mb(device)
        result.wall_s = time.perf_counter() - t_start
        return result
    finally:
        for p in frozen:  # the caller gets its model back as it was
            p.requires_grad_(True)


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def _save(path: Path | None, model: nn.Module, optimizer, schedule: WarmupCosine, scaler, epoch: int, step: int,
          result: FitResult, epoch_losses: torch.Tensor, state: _Stateful | None, finished: bool) -> Path | None:
    """Write the training checkpoint on rank 0 (every rank takes part in gathering RNG states)."""
    if path is None:
        return None
    rngs = D.all_gather_object(rng_state())
    info = D.current()
    # mid-epoch: this epoch's first `step` losses (already in step_losses once the epoch ends)
    partial = D.all_reduce_mean(epoch_losses).cpu() if step else torch.zeros(0, dtype=torch.float64)
    if info.is_main:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "finished": finished,
            "history": result.history,
            "step_losses": result.step_losses,
            "epoch_losses": partial,
            "state": state.state_dict() if state is not None else None,
            "rng": rngs,
            "world_size": info.world_size,
        }
        atomic_save(payload, path)
    D.barrier()
    return path


def _freeze_unused(model: nn.Module, dataset: Dataset, loss_fn: LossFn, sampler: ShardedBatchSampler,
                   collate_fn: Callable | None, device: torch.device, cfg: TrainConfig) -> list[nn.Parameter]:
    """Turn off ``requires_grad`` for parameters the loss never touches (e.g. a classifier norm
    during pretraining), so DDP needs no ``find_unused_parameters`` graph walk every step.

    One forward/backward on a small batch with every RNG forked, so nothing downstream
    changes; AdamW skips parameters without gradients anyway, so training is unaffected.
    Returns the parameters it froze (:func:`fit` unfreezes them when it returns).
    """
    n = min(len(dataset), max(sampler.micro, 1))
    items = [dataset[i] for i in range(n)]
    batch = to_device(collate_fn(items) if collate_fn else torch.utils.data.default_collate(items), device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        ctx = StepContext(0, 0, 0, 0, 0, n, cfg.seed)
        with autocast(device, cfg.amp):
            loss = loss_fn(model, batch, ctx)
        loss.backward()
    frozen = []
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            frozen.append(p)
        p.grad = None
    return frozen


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(
    fn: Callable[[Any], torch.Tensor],
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device | str,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = False,
    desc: str = "eval",
) -> torch.Tensor:
    """``fn(batch) -> [b, ...]`` over every example of ``dataset``, in order, as float32 on CPU.

    Under torchrun each rank scores ``rank::world`` (no padded duplicates) and the results
    are gathered back into dataset order on every rank.
    """
    device = torch.device(device)
    info = D.current()
    idx = D.shard(len(dataset), info)
    loader = DataLoader(
        Subset(dataset, idx.tolist()), batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
        num_workers=num_workers, pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
    )
    outs = []
    from tqdm.auto import tqdm

    for batch in tqdm(loader, desc=desc, leave=False, disable=not (progress and info.is_main), dynamic_ncols=True):
        with autocast(device, amp):
            outs.append(fn(to_device(batch, device)).float())
    if outs:
        local = torch.cat(outs)
    else:  # this rank got no examples: learn the row shape from the others
        shapes = [s for s in D.all_gather_object(None) if s is not None]
        local = torch.zeros((0,) + tuple(shapes[0] if shapes else ()), dtype=torch.float32, device=device)
    if info.enabled and outs:
        D.all_gather_object(tuple(local.shape[1:]))
    return D.gather_rows(local, len(dataset))
