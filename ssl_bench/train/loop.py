"""The one training loop every protocol uses.

:func:`fit` trains a model on a map-style dataset with a protocol-supplied loss function::

    result = fit(model, dataset, loss_fn, TrainConfig(epochs=10, batch_size=64, blr=1e-3),
                 device=device, checkpoint_dir=ckpt_dir, hooks=FitHooks(on_epoch_end=validate))

``fit`` reads as its steps, each a method of a private ``_Run``: plan the epochs, open the
checkpoint (a finished one returns its record), prepare the step (a probe step, the unused
parameters frozen, the micro-batch fitted to memory), build the optimiser, resume, build the
step and the loader, then per epoch train, record, checkpoint; finish.

What it does, so the protocols do not have to:

* AdamW with parameter groups: no weight decay for 1-D parameters, biases and position/class
  tokens; optional layer-wise lr decay (``lr_scale = decay ** (num_layers - layer_id)``);
  ``lr = blr * batch_size / 256`` unless ``lr`` is given; per-step linear warm-up, then a
  half-cycle cosine to ``min_lr`` (the MAE schedule);
* gradient accumulation (``batch_size`` is the global batch of one optimiser step), raised
  before the first step when a micro-batch would not fit in memory (:mod:`.memory`);
* parameters the loss never reaches (found by a probe step) frozen for the call and reported
  (``freeze_unused``, ``FitResult.frozen_parameters``);
* torchrun/DDP: each global batch is split over ranks and accumulation steps the same way
  whatever the world size, so 1 process and N processes see the same examples per step;
* fused AdamW (:func:`.optim.adamw`);
* bf16 autocast on CUDA and on CPUs with bf16 matrix instructions (``amp``);
* on CUDA: TF32 matmuls, pinned memory with non-blocking copies, and no host-device
  synchronisation inside a step except logging every ``log_every`` steps;
* ``compile=True`` wraps the step in ``torch.compile``;
* checkpoints every ``checkpoint_every`` epochs but no sooner than ``checkpoint_min_s``
  seconds after the previous one, at the end, and on SIGTERM/SIGINT at the next step
  boundary, written atomically with model, optimiser, schedule, grad scaler, epoch/step (the
  sampler position), the protocol's own state and every RNG state, so a resumed run continues
  exactly where the last complete checkpoint left it (bit for bit on CPU).

The loss function is called as ``loss_fn(model, batch, step)`` with the batch already on the
device and a :class:`StepContext` that says which part of which global batch it is; it
returns a scalar loss (mean over its micro-batch).  What a protocol adds (validation after an
epoch, an EMA update after a step, its own checkpointed state, its logs) comes in
:class:`FitHooks`; class-balanced sampling in :class:`Sampling`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import resource
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import distributed as D
from ..checkpoint import CheckpointError
from ..errors import DivergedError
from ..files import CacheWarning
from ..nn import to_device as tensor_to_device
from .memory import FREE_SHARE, StepMemory, available_bytes, fit_accum_steps, saved_bytes, size, step_memory
from .optim import TrainConfig, TrainConfigError, WarmupCosine, adamw, param_groups
from .sampler import ShardedBatchSampler
from .signals import STOP, GracefulStop, TrainingInterrupted
from .state import (
    CHECKPOINT_NAME,
    Stateful,
    load_train_checkpoint,
    restore_train_state,
    save_train_checkpoint,
    seed_everything,
)

#: Under torchrun, how often (in steps) the ranks agree on whether a SIGTERM/SIGINT arrived.
STOP_CHECK_STEPS = 5

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
    def __call__(self, model: nn.Module, batch: Any, step: StepContext) -> torch.Tensor: ...


class _StepModule(nn.Module):
    """Puts the loss function behind ``forward`` so DDP and ``torch.compile`` can wrap it."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any, step: StepContext) -> torch.Tensor:
        return self.loss_fn(self.model, batch, step)


# --------------------------------------------------------------------------- results
@dataclass
class FitResult:
    """What :func:`fit` did.  ``history``: one record per epoch (all epochs, resumed or not);
    ``step_losses``: the global mean loss of every optimiser step; ``wall_s``, ``train_s`` and
    ``samples_per_s`` cover the whole training, the parts before a resume included (saved in
    the checkpoint); memory is this call's.  ``frozen_parameters``: the names of the
    parameters this call froze because the loss never reached them (``freeze_unused``; none
    when a finished checkpoint returned at once)."""

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
    accum_steps: int = 1  # as trained: raised from the config's when a micro-batch did not fit in memory
    checkpoint: Path | None = None
    frozen_parameters: list[str] = field(default_factory=list)

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


def cpu_bf16_supported() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16).

    oneDNN runs bf16 matrix products on them at about twice the float32 rate; without them
    bf16 is emulated, tens of times slower than float32 (measured on AVX2).
    """
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def precision(device: torch.device | str | None, enabled: bool = True) -> str:
    """``"bf16"`` or ``"float32"``: the arithmetic :func:`autocast` gives on ``device`` (``None``
    or ``"auto"``: CUDA when available, else the CPU) with ``amp`` set to ``enabled``.  A bf16 and
    a float32 encoder of one recipe are different encoders: this keys their identity."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16_supported())):
        return "bf16"
    return "float32"


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and on CPUs with bf16 matrix instructions (:func:`cpu_bf16_supported`),
    where it is faster; float32 on other CPUs (:func:`precision` says which).  ``enabled`` is the
    ``amp`` setting."""
    device = torch.device(device)
    if precision(device, enabled) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- what a protocol brings
@dataclass(frozen=True)
class FitHooks:
    """What a protocol plugs into :func:`fit`; every field is optional.

    ``on_epoch_end(epoch, model)`` runs after every epoch on every rank (validation) and may
    return metrics for the epoch record.  ``on_step_end(global_step, model)`` runs after every
    optimiser step (an EMA teacher update; ``global_step`` counts steps done, from 1), before any
    checkpoint of that step is written.  ``state`` (anything with ``state_dict`` and
    ``load_state_dict``, e.g. a best-epoch tracker) is saved in checkpoints and restored on
    resume.  ``log_metrics(record)`` receives each epoch record on rank 0, a resumed run's
    earlier ones first.  ``log(line)``: where the lines a user should see go (a resumed run's
    starting point, a micro-batch cut to fit memory, after the first steps an estimate of the
    whole when it will take :data:`LONG_RUN_S` or more); default stderr when ``progress``.
    """

    on_epoch_end: Callable[[int, nn.Module], dict[str, Any] | None] | None = None
    on_step_end: Callable[[int, nn.Module], None] | None = None
    state: Stateful | None = None
    log_metrics: Callable[[dict[str, Any]], None] | None = None
    log: Callable[[str], None] | None = None


@dataclass(frozen=True)
class Sampling:
    """Which examples an epoch draws.  By default a shuffle of the whole dataset; with
    ``weights`` or ``epoch_size``, ``epoch_size`` examples (default: as many as the dataset
    has) drawn with replacement, proportionally to ``weights`` (default: uniform), as
    class-balanced sampling does (:class:`.sampler.ShardedBatchSampler`)."""

    weights: Sequence[float] | None = None
    epoch_size: int | None = None


# --------------------------------------------------------------------------- the loop
def fit(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: LossFn,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    # the data
    collate_fn: Callable | None = None,
    sampling: Sampling | None = None,
    # what trains
    groups: list[dict[str, Any]] | None = None,
    freeze_unused: bool = True,
    # checkpoints
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    # the protocol's callbacks and state
    hooks: FitHooks | None = None,
    # stopping and what the user sees
    stop: GracefulStop | None = None,
    progress: bool = True,
    desc: str = "train",
    section: str | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs over ``dataset`` (see the module docstring).

    The data: ``collate_fn`` builds a batch from examples; ``sampling`` (:class:`Sampling`)
    chooses the examples of an epoch (default: a shuffle of all of them).

    What trains: ``groups``, the optimiser's parameter groups (default :func:`param_groups` with
    ``cfg.weight_decay`` and ``cfg.layer_decay``).  Before the first step a probe step (forward
    and backward on a few examples, every RNG forked so the run is unchanged) shows which
    parameters the loss never reaches (a pretraining model's classifier, a fine-tuned model's
    decoder).  With ``freeze_unused`` (the default) they are frozen (``requires_grad`` off) for
    the whole call, so they stay out of the parameter groups and DDP needs no
    ``find_unused_parameters`` graph walk every step; their names are
    ``FitResult.frozen_parameters`` and they get ``requires_grad`` back when :func:`fit`
    returns or raises.  A parameter that only some steps reach (a branch the probe step did
    not take) would stay frozen: for such a model pass ``freeze_unused=False`` (AdamW skips a
    parameter without a gradient; under torchrun DDP then looks for unused parameters).

    Checkpoints: with ``checkpoint_dir``, ``<dir>/last.pt`` is (re)written atomically every
    ``cfg.checkpoint_every`` epochs (once ``cfg.checkpoint_min_s`` seconds have passed since the
    last write), at the end, and at the step boundary after SIGTERM/SIGINT (``stop``, default
    :data:`.signals.STOP`); with ``resume`` an existing one is loaded first, and a finished one
    returns its record at once.

    ``hooks`` (:class:`FitHooks`): the protocol's callbacks, its own checkpointed state and its
    logs.  ``progress``: a progress bar (rank 0); ``desc`` names this training in it and in
    messages; ``section``: the config section ``cfg`` came from (``pretrain``), so errors name
    the key.
    """
    cfg.check()
    run = _Run(model, dataset, loss_fn, cfg, device=torch.device(device), collate_fn=collate_fn,
               sampling=sampling or Sampling(), hooks=hooks or FitHooks(), stop=stop or STOP,
               progress=progress, desc=desc, section=section)
    configure_backends(run.device, cfg.deterministic)
    run.plan_epochs()
    model.to(run.device)
    saved = run.open_checkpoint(checkpoint_dir, resume)
    seed_everything(cfg.seed + run.info.rank)
    if saved is not None and saved.get("finished"):  # nothing left to train: the finished run's record
        return run.finished_result(saved)
    try:
        run.prepare_step(freeze_unused)
        run.build_optimizer(groups)
        run.resume(saved)
        run.build_step()
        run.build_loader()
        run.start_clocks()
        with run.stop.installed(), run.stop.deferred(), run.stop.training(run.desc, run.doing_now):
            if saved is not None:
                run.stop.resume_from = run.checkpoint_label(run.start_epoch, run.start_step)
            for epoch in range(run.start_epoch, run.cfg.epochs):
                trained = run.train_epoch(epoch)
                run.epoch_record(epoch, trained)
                run.maybe_checkpoint(epoch)
        return run.finish()
    finally:
        run.unfreeze()  # the caller gets its model back as it was


class _Epoch(NamedTuple):
    """What :meth:`_Run.train_epoch` reports for the epoch record."""

    lr: float  # of its last step
    seconds: float
    examples: int  # trained in this call (a resumed epoch's remaining steps)


class _Run:
    """One call of :func:`fit`: what it was given and what it builds, one method per step of
    :func:`fit`, in the order :func:`fit` calls them."""

    # built by the steps of fit
    sampler: ShardedBatchSampler
    steps_per_epoch: int
    ckpt_path: Path | None
    prior: dict[str, float]  # compute spent before this call (a resumed run's earlier parts)
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    scaler: torch.amp.GradScaler
    result: FitResult
    start_epoch: int
    start_step: int
    epoch_losses: torch.Tensor  # this epoch's step losses (this rank's), float64 on the device
    step_module: nn.Module  # the loss behind forward, in DDP under torchrun
    runner: Callable[[Any, StepContext], torch.Tensor]  # step_module, compiled or not
    loader_gen: torch.Generator
    loader: DataLoader
    estimate: _Estimate
    t_saved: float
    t_train: float
    samples_run: int

    def __init__(self, model: nn.Module, dataset: Dataset, loss_fn: LossFn, cfg: TrainConfig, *,
                 device: torch.device, collate_fn: Callable | None, sampling: Sampling, hooks: FitHooks,
                 stop: GracefulStop, progress: bool, desc: str, section: str | None):
        self.t_start = time.perf_counter()
        self.model, self.dataset, self.loss_fn, self.cfg = model, dataset, loss_fn, cfg
        self.device, self.collate_fn, self.sampling, self.hooks = device, collate_fn, sampling, hooks
        self.stop, self.progress, self.desc, self.section = stop, progress, desc, section
        self.info = D.current()
        # A stop request is a local flag; under torchrun the ranks must agree on the step they stop
        # at, which costs a (tiny) all-reduce and a host sync: every few steps, not every step.
        # torchrun gives its workers 30 s after forwarding SIGTERM, so "a few" stays small.
        self.checks_stop_every = 1 if not self.info.enabled else max(1, min(cfg.log_every, STOP_CHECK_STEPS))
        self.frozen: list[tuple[str, nn.Parameter]] = []  # (name, parameter) frozen for this call
        self.unused: list[nn.Parameter] = []  # parameters without a gradient left trainable

    # ----------------------------------------------------------------------- helpers
    def say(self, message: str) -> None:
        """A line for the user (rank 0): to ``hooks.log``, else stderr when ``progress``."""
        if not self.info.is_main:
            return
        if self.hooks.log is not None:
            self.hooks.log(message)
        elif self.progress:
            print(message, file=sys.stderr, flush=True)

    def _sampler(self, accum_steps: int) -> ShardedBatchSampler:
        return ShardedBatchSampler(len(self.dataset), self.cfg.batch_size, accum_steps, self.info.rank,
                                   self.info.world_size, self.cfg.seed, weights=self.sampling.weights,
                                   num_samples=self.sampling.epoch_size)

    def spent(self) -> dict[str, float]:
        """Compute so far, the parts before a resume included (saved in checkpoints)."""
        return {"wall_s": self.prior["wall_s"] + time.perf_counter() - self.t_start, "train_s": self.t_train,
                "samples": self.samples_run}

    def _save(self, epoch: int, step: int, finished: bool) -> Path | None:
        path = save_train_checkpoint(self.ckpt_path, self.model, self.optimizer, self.schedule, self.scaler, epoch,
                                     step, self.result.history, self.result.step_losses, self.epoch_losses,
                                     self.hooks.state, finished=finished, compute=self.spent())
        if path is not None:
            self.stop.resume_from = self.checkpoint_label(epoch, step)
        return path

    def checkpoint_label(self, epoch: int, step: int) -> str:
        """The training checkpoint at (``epoch``, ``step``), as a stop message names it."""
        where = (f"after epoch {epoch} of {self.cfg.epochs}" if step == 0
                 else f"epoch {epoch + 1} of {self.cfg.epochs}, step {step} of {self.steps_per_epoch}")
        return f"{self.ckpt_path} ({where})"

    def doing_now(self) -> str:
        """What the loop is doing, for the message a stop request gets at once: the step it
        finishes before it can stop, and about how long that takes."""
        from ..progress import duration

        estimate, total = self.estimate, self.cfg.epochs * self.steps_per_epoch
        first = self.start_epoch * self.steps_per_epoch + self.start_step
        step = min(first + estimate.steps + 1, total)
        now = time.perf_counter()
        running = now - estimate.t_step
        if estimate.steps:
            per_step = (estimate.t_step - estimate.t_loop) / estimate.steps
            left = f"about {duration(max(per_step - running, 1.0))}"
        else:
            left = f"running for {duration(running)}, no step timed yet"
        more = (f" and at most {self.checks_stop_every - 1} more (the processes agree where to stop)"
                if self.checks_stop_every > 1 else "")
        return f"{self.desc}: finishing step {step} of {total}{more} ({left})"

    # ----------------------------------------------------------------------- before training
    def plan_epochs(self) -> None:
        """The sampler and the steps of an epoch; an epoch without one step is the user's error."""
        cfg, info, section = self.cfg, self.info, self.section
        self.sampler = self._sampler(cfg.accum_steps)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        if self.steps_per_epoch:
            return
        key = f"{section}.batch_size" if section else "batch_size"
        unit = cfg.accum_steps * info.world_size
        fits = self.sampler.num_samples // unit * unit
        hint = (f"set {key}={fits} or lower" if fits else
                f"{self.sampler.num_samples} examples cannot fill {cfg.accum_steps} accumulation step(s) x "
                f"{info.world_size} process(es); lower {section + '.' if section else ''}accum_steps")
        raise TrainConfigError(
            f"{self.desc}: {key} {cfg.batch_size} is larger than the {self.sampler.num_samples} training examples "
            f"of an epoch; {hint}"
        )

    def open_checkpoint(self, checkpoint_dir: str | Path | None, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from, if any (a damaged one is set aside: training starts
        again rather than failing every rerun), and the compute it had spent."""
        info = self.info
        path = self.ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
        saved = None
        if resume and path is not None and path.is_file():
            try:
                saved = load_train_checkpoint(path)
            except CheckpointError as exc:
                if info.is_main:
                    warnings.warn(f"{exc}; training starts from the beginning", CacheWarning, stacklevel=3)
                    path.replace(path.with_name(path.name + ".damaged"))
                D.barrier()
        before = dict((saved or {}).get("compute") or {})
        self.prior = {"wall_s": float(before.get("wall_s", 0.0)), "train_s": float(before.get("train_s", 0.0)),
                      "samples": int(before.get("samples", 0))}
        if saved is not None and saved.get("world_size", 1) != info.world_size:
            warnings.warn(f"{path}: written with {saved.get('world_size')} processes, resuming with "
                          f"{info.world_size}; per-rank RNG streams are re-seeded", stacklevel=3)
        return saved

    def finished_result(self, saved: dict[str, Any]) -> FitResult:
        """A finished checkpoint's model, state and record, its epochs logged again for this run's log."""
        restore_train_state(saved, self.model, self.hooks.state)
        history = list(saved["history"])
        losses = [float(x) for x in saved["step_losses"]]
        if self.hooks.log_metrics is not None and self.info.is_main:
            for record in history:
                self.hooks.log_metrics(dict(record))
        prior_train = self.prior["train_s"]
        return FitResult(history=history, step_losses=losses, epochs=len(history), steps=len(losses),
                         wall_s=self.prior["wall_s"] + time.perf_counter() - self.t_start, train_s=prior_train,
                         samples_per_s=self.prior["samples"] / prior_train if prior_train > 0 else 0.0,
                         world_size=self.info.world_size, device=str(self.device),
                         resumed_from=(int(saved["epoch"]), int(saved["step"])), checkpoint=self.ckpt_path)

    def prepare_step(self, freeze_unused: bool) -> None:
        """The probe step (:func:`_probe_step`), done for any world size so parameter groups and
        checkpoints do not depend on it; then the parameters without a gradient frozen (with
        ``freeze_unused``), and ``accum_steps`` raised until a micro-batch fits in memory."""
        unused, memory = _probe_step(self.model, self.dataset, self.loss_fn, self.sampler.micro, self.collate_fn,
                                     self.device, self.cfg)
        if freeze_unused:
            names = {id(p): name for name, p in self.model.named_parameters()}
            for p in unused:
                p.requires_grad_(False)
                self.frozen.append((names[id(p)], p))
        else:
            self.unused = unused
        accum = _fit_memory(memory, self.cfg, self.device, self.info, self.desc, self.section, self.say)
        if accum != self.cfg.accum_steps:
            self.cfg = dataclasses.replace(self.cfg, accum_steps=accum)
            self.sampler = self._sampler(accum)

    def unfreeze(self) -> None:
        for _, p in self.frozen:
            p.requires_grad_(True)

    def build_optimizer(self, groups: list[dict[str, Any]] | None) -> None:
        """AdamW over ``groups`` (default :func:`param_groups`), its schedule and grad scaler."""
        cfg = self.cfg
        groups = groups if groups is not None else param_groups(self.model, cfg.weight_decay, cfg.layer_decay)
        self.optimizer = adamw(groups, self.device, lr=cfg.peak_lr, betas=tuple(cfg.betas))
        self.schedule = WarmupCosine(self.optimizer, cfg.peak_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs,
                                     self.steps_per_epoch)
        # bf16 needs no loss scaling; the scaler stays (disabled) so checkpoints have one format
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)

    def resume(self, saved: dict[str, Any] | None) -> None:
        """Where training starts: the beginning, or the checkpoint's epoch and step with its
        model, optimiser, schedule, state, RNG streams and history (logged again, so the log is whole)."""
        self.result = FitResult(world_size=self.info.world_size, device=str(self.device), checkpoint=self.ckpt_path,
                                accum_steps=self.cfg.accum_steps)
        self.start_epoch, self.start_step = 0, 0
        self.epoch_losses = torch.zeros(self.steps_per_epoch, dtype=torch.float64, device=self.device)
        if saved is None:
            return
        restore_train_state(saved, self.model, self.hooks.state, self.optimizer, self.schedule, self.scaler)
        self.start_epoch, self.start_step = int(saved["epoch"]), int(saved["step"])
        self.say(f"{self.desc}: resuming from epoch {self.start_epoch + 1}/{self.cfg.epochs}, step "
                 f"{self.start_step}/{self.steps_per_epoch} ({self.ckpt_path})")
        self.result.history = list(saved["history"])
        self.result.step_losses = [float(x) for x in saved["step_losses"]]
        self.result.resumed_from = (self.start_epoch, self.start_step)
        if self.start_step:
            self.epoch_losses[:self.start_step] = saved["epoch_losses"][:self.start_step].to(self.device)
        if self.hooks.log_metrics is not None and self.info.is_main:
            for record in self.result.history:
                self.hooks.log_metrics(dict(record))

    def build_step(self) -> None:
        """The loss behind ``forward`` (:class:`_StepModule`), in DDP under torchrun, compiled
        with ``cfg.compile``."""
        step_module: nn.Module = _StepModule(self.model, self.loss_fn)
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=ids,
                                                              find_unused_parameters=bool(self.unused))
        self.step_module = step_module
        self.runner = torch.compile(step_module) if self.cfg.compile else step_module

    def build_loader(self) -> None:
        # The loader draws its worker seed from its own generator, reseeded every epoch: the global
        # RNG is not touched, and worker randomness (random crops) depends only on (seed, epoch).
        # Workers are not persistent for the same reason.  Bit-identical resumes inside an epoch
        # need num_workers=0 (then dataset randomness comes from the restored global RNG).
        self.loader_gen = torch.Generator()
        self.loader = DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=self.collate_fn, num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda", generator=self.loader_gen,
        )

    def start_clocks(self) -> None:
        """Training time, samples, the estimate of the whole and peak memory count from here."""
        cfg = self.cfg
        self.t_train, self.samples_run = self.prior["train_s"], int(self.prior["samples"])
        total = cfg.epochs * self.steps_per_epoch - (self.start_epoch * self.steps_per_epoch + self.start_step)
        self.estimate = _Estimate(self.say, self.desc, total, cfg.epochs)
        self.t_saved = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    # ----------------------------------------------------------------------- each epoch
    def train_epoch(self, epoch: int) -> _Epoch:
        """The optimiser steps of ``epoch`` (of a resumed epoch, those after the checkpoint);
        at a step boundary after a stop request, a checkpoint and :class:`TrainingInterrupted`."""
        cfg, steps = self.cfg, self.steps_per_epoch
        first = self.start_step if epoch == self.start_epoch else 0
        if first == 0:
            self.epoch_losses.zero_()
        self.sampler.set_epoch(epoch, first)
        self.model.train()
        t_epoch = time.perf_counter()
        bar = _progress(steps, first, f"{self.desc} {epoch + 1}/{cfg.epochs}", self.progress and self.info.is_main)
        self.loader_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
        batches = iter(self.loader)
        lr = self.schedule.lr_at(self.schedule.step_num)
        for index in range(first, steps):
            lr = self._optimizer_step(epoch, index, batches)
            done = index + 1
            if done % cfg.log_every == 0 or done == steps:
                bar.set_postfix(loss=f"{self._mean_loss(epoch, first, done):.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if done < steps and done % self.checks_stop_every == 0 and D.any_rank(self.stop.signum is not None):
                bar.close()
                path = self._save(epoch, done, finished=False)
                raise TrainingInterrupted(self.stop.signum or signal.SIGTERM, path, self.stop.resume_from, self.desc)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t_epoch
        examples = (steps - first) * cfg.batch_size
        self.t_train += seconds
        self.samples_run += examples
        return _Epoch(lr, seconds, examples)

    def _optimizer_step(self, epoch: int, index: int, batches: Iterator[Any]) -> float:
        """Step ``index`` of ``epoch``: ``accum_steps`` micro-batches forward and backward, then
        the optimiser, the schedule and ``on_step_end``.  Returns the step's (unscaled) lr."""
        cfg, schedule, scaler = self.cfg, self.schedule, self.scaler
        lr = schedule.apply()
        self.estimate.t_step = time.perf_counter()
        step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for m in range(cfg.accum_steps):
            batch = to_device(next(batches), self.device)
            step = StepContext(epoch, index, schedule.step_num, m, self.sampler.offset(m), cfg.batch_size, cfg.seed)
            sync = (self.step_module.no_sync() if self.info.enabled and m < cfg.accum_steps - 1
                    else contextlib.nullcontext())
            with sync:
                with autocast(self.device, cfg.amp):
                    loss = self.runner(batch, step)
                scaler.scale(loss / cfg.accum_steps).backward()
            step_loss += loss.detach().double() / cfg.accum_steps
            self.estimate.after_micro((m + 1) / cfg.accum_steps)  # a slow step is explained before it ends
        if cfg.clip_grad:
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if self.hooks.on_step_end is not None:
            self.hooks.on_step_end(schedule.step_num, self.model)
        self.epoch_losses[index] = step_loss
        self.estimate.steps += 1
        return lr

    def _mean_loss(self, epoch: int, first: int, done: int) -> float:
        """The mean loss of this epoch's steps so far over every rank (a host sync, so only every
        ``log_every`` steps); a loss that is not finite stops the training."""
        mean = float(D.all_reduce_mean(self.epoch_losses[first:done].mean()).item())
        if not math.isfinite(mean):
            raise DivergedError(
                f"{self.desc}: loss became {mean} by epoch {epoch + 1} step {done}; "
                "lower the learning rate or set clip_grad"
            )
        return mean

    def epoch_record(self, epoch: int, trained: _Epoch) -> None:
        """The epoch's losses and record (with ``on_epoch_end``'s metrics), to ``log_metrics``."""
        losses = D.all_reduce_mean(self.epoch_losses).cpu().tolist()
        self.result.step_losses.extend(losses)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": trained.lr,
            "epoch_time_s": round(trained.seconds, 4),
            "samples_per_s": round(trained.examples / max(trained.seconds, 1e-9), 3),
        }
        if self.hooks.on_epoch_end is not None:
            extra = self.hooks.on_epoch_end(epoch, self.model)
            if extra:
                record.update(extra)
        self.result.history.append(record)
        if self.hooks.log_metrics is not None and self.info.is_main:
            self.hooks.log_metrics(dict(record))

    def maybe_checkpoint(self, epoch: int) -> None:
        """A checkpoint after the last epoch, after a stop request (then :class:`TrainingInterrupted`),
        and every ``checkpoint_every`` epochs once ``checkpoint_min_s`` have passed since the last."""
        cfg = self.cfg
        last = epoch + 1 == cfg.epochs
        stopping = not last and D.any_rank(self.stop.signum is not None)
        due = ((epoch + 1) % cfg.checkpoint_every == 0
               and time.perf_counter() - self.t_saved >= cfg.checkpoint_min_s)
        if self.ckpt_path is not None and (last or stopping or due):
            self._save(epoch + 1, 0, finished=last)
            self.t_saved = time.perf_counter()
        if stopping:
            raise TrainingInterrupted(self.stop.signum or signal.SIGTERM, self.ckpt_path, self.stop.resume_from,
                                      self.desc)

    # ----------------------------------------------------------------------- after training
    def finish(self) -> FitResult:
        result = self.result
        result.epochs = len(result.history)
        result.steps = len(result.step_losses)
        result.train_s = self.t_train
        result.samples_per_s = self.samples_run / self.t_train if self.t_train > 0 else 0.0
        result.peak_memory_mb = peak_memory_mb(self.device)
        result.wall_s = self.prior["wall_s"] + time.perf_counter() - self.t_start
        result.frozen_parameters = [name for name, _ in self.frozen]
        return result


#: A training whose estimate reaches this many seconds says so after its first steps.
LONG_RUN_S = 600.0
#: Steps timed (after the first, which pays for warm-up) before that estimate.
ESTIMATE_STEPS = 3
#: When the first micro-batches take this many seconds, the estimate comes at once, from them.
SLOW_STEP_S = 10.0


class _Estimate:
    """The one estimate of how long a training takes, said when that is :data:`LONG_RUN_S` or more.

    After the first step (which pays for warm-up), time :data:`ESTIMATE_STEPS` more; but when
    :data:`SLOW_STEP_S` have passed before the first step ends, use what ran (warm-up included):
    waiting longer would leave minutes unexplained.  ``steps`` counts the steps this call ran.
    """

    def __init__(self, say: Callable[[str], None], desc: str, total: int, epochs: int):
        self.say, self.desc, self.total, self.epochs = say, desc, total, epochs
        self.steps = 0
        self.t_loop = self.t_step = time.perf_counter()  # t_step: when the current step began
        self.t_first: float | None = None  # when the first step ended
        self.done = False

    def after_micro(self, fraction: float) -> None:
        """Called after each micro-batch, ``fraction`` of the way through the current step."""
        if self.done:
            return
        done = self.steps + fraction
        now = time.perf_counter()
        if self.t_first is None:
            if now - self.t_loop >= SLOW_STEP_S:  # slow: the estimate now, from the micro-batches so far
                per_step = (now - self.t_loop) / done
            elif done >= 1:
                self.done, self.t_first = done >= self.total, now
                return
            else:
                return
        else:
            timed = done - 1
            if timed < ESTIMATE_STEPS and done < self.total:
                return
            per_step = (now - self.t_first) / max(timed, 1)
        self.done = True
        whole = per_step * self.total
        if whole >= LONG_RUN_S:
            from ..progress import duration

            self.say(f"{self.desc}: {per_step:.1f} s per step; its {self.total} steps ({self.epochs} epochs) will "
                     f"take about {duration(whole)} on this machine")


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from ..progress import bar

    return bar(total, desc, enabled, initial=initial, unit="steps")


#: The larger of the two batches :func:`_probe_step` measures (the other is half of it).
PROBE_BATCH = 4


def _probe_step(model: nn.Module, dataset: Dataset, loss_fn: LossFn, micro: int, collate_fn: Callable | None,
                device: torch.device, cfg: TrainConfig) -> tuple[list[nn.Parameter], StepMemory | None]:
    """Before training: the memory a step needs and the parameters the loss never reaches.

    Forwards on batches of ``PROBE_BATCH`` and half as many examples count the bytes autograd
    saves (:mod:`.memory`), which sizes the micro-batch; the larger one's backward shows which
    trainable parameters get no gradient (e.g. a classifier norm during pretraining), which
    :func:`fit` freezes (``freeze_unused``).  Every RNG is forked and every gradient cleared,
    so nothing downstream changes.  Returns ``(unused, memory)``; memory, which counts the
    optimiser state of the parameters that do get a gradient, is ``None`` when the data has
    fewer than two examples.
    """
    large = max(min(len(dataset), micro, PROBE_BATCH), 1)
    small = large // 2
    devices = [device] if device.type == "cuda" else []

    def loss_on(n: int) -> torch.Tensor:
        items = [dataset[i] for i in range(n)]
        batch = to_device(collate_fn(items) if collate_fn else torch.utils.data.default_collate(items), device)
        with autocast(device, cfg.amp):
            return loss_fn(model, batch, StepContext(0, 0, 0, 0, 0, n, cfg.seed))

    with torch.random.fork_rng(devices=devices):
        if small:
            _, saved_small = saved_bytes(lambda: loss_on(small))
        loss, saved_large = saved_bytes(lambda: loss_on(large))
        loss.backward()
    unused = []
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            unused.append(p)
        p.grad = None
    if not small:
        return unused, None
    unused_ids = {id(p) for p in unused}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in unused_ids)
    return unused, step_memory(small, large, saved_small, saved_large, trainable)


def _fit_memory(memory: StepMemory | None, cfg: TrainConfig, device: torch.device, info: D.DistInfo, desc: str,
                section: str | None, say: Callable[[str], None]) -> int:
    """The ``accum_steps`` to train with: the config's, raised until one micro-batch's step fits
    the memory it may use (``cfg.memory_gb``, else :data:`FREE_SHARE` of what is free now);
    every rank takes the same.  A step that cannot fit even one example is an error."""
    if memory is None or cfg.memory_gb == 0:
        return cfg.accum_steps
    free = available_bytes(device) if cfg.memory_gb is None else None
    budget = cfg.memory_gb * 2**30 if cfg.memory_gb is not None else (free * FREE_SHARE if free else None)
    if budget is None:
        return cfg.accum_steps
    largest = memory.largest_micro(budget)
    if info.enabled:
        largest = min(D.all_gather_object(largest))
    micro = cfg.batch_size // (cfg.accum_steps * info.world_size)
    if micro <= largest:
        return cfg.accum_steps
    key = f"{section}." if section else ""
    limit = (f"memory_gb={cfg.memory_gb:g}" if cfg.memory_gb is not None
             else f"{FREE_SHARE:.0%} of the {size(free)} free")
    accum = fit_accum_steps(cfg.batch_size, cfg.accum_steps, info.world_size, largest)
    if not accum:
        raise TrainConfigError(
            f"{desc}: one training example needs about {size(memory.need(1))} with the optimiser state, more "
            f"than the step may use ({limit}); choose a smaller model or shorter inputs (frontend.num_frames), "
            f"or raise memory_gb")
    new_micro = cfg.batch_size // (accum * info.world_size)
    say(f"{desc}: a micro-batch of {micro} would need about {size(memory.need(micro))}, more than the step may "
        f"use ({limit}); accumulating gradients over {accum} micro-batches of {new_micro} "
        f"({key}accum_steps={accum}: the same global batch of {cfg.batch_size}; memory_gb sets the limit)")
    return accum


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
    from ..progress import iterate

    for batch in iterate(loader, desc=desc, enabled=progress and info.is_main):
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
