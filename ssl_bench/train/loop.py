"""The one training loop every protocol uses.

:func:`fit` trains a model on a map-style dataset with a protocol-supplied loss function::

    result = fit(model, dataset, loss_fn, TrainConfig(epochs=10, batch_size=64, blr=1e-3),
                 device=device, checkpoint_dir=ckpt_dir, on_epoch_end=validate)

What it does, so the protocols do not have to:

* AdamW with parameter groups: no weight decay for 1-D parameters, biases and position/class
  tokens; optional layer-wise lr decay (``lr_scale = decay ** (num_layers - layer_id)``);
  ``lr = blr * batch_size / 256`` unless ``lr`` is given; per-step linear warm-up, then a
  half-cycle cosine to ``min_lr`` (the MAE schedule);
* gradient accumulation (``batch_size`` is the global batch of one optimiser step), raised
  before the first step when a micro-batch would not fit in memory (:mod:`.memory`);
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
returns a scalar loss (mean over its micro-batch).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
    the checkpoint); memory is this call's."""

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


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and on CPUs with bf16 matrix instructions (:func:`cpu_bf16_supported`),
    where it is faster; float32 on other CPUs.  ``enabled`` is the ``amp`` setting."""
    device = torch.device(device)
    if enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_bf16_supported())):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    on_step_end: Callable[[int, nn.Module], None] | None = None,
    state: Stateful | None = None,
    log_metrics: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    stop: GracefulStop | None = None,
    sample_weights: Sequence[float] | None = None,
    epoch_size: int | None = None,
    section: str | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs over ``dataset`` (see the module docstring).

    ``groups``: parameter groups (default :func:`param_groups` with ``cfg.weight_decay`` and
    ``cfg.layer_decay``).  ``on_epoch_end(epoch, model)`` runs after every epoch on every rank
    (validation) and may return metrics for the epoch record; ``on_step_end(global_step, model)``
    runs after every optimiser step (an EMA teacher update; ``global_step`` counts steps done,
    from 1), before any checkpoint of that step is written; ``state`` (anything with
    ``state_dict``/``load_state_dict``, e.g. a best-epoch tracker) is saved in checkpoints and
    restored on resume.  ``log_metrics(record)`` receives each epoch record on rank 0.
    ``sample_weights``/``epoch_size``: draw ``epoch_size`` examples per epoch with replacement,
    proportionally to the weights (class-balanced sampling) instead of a shuffle.
    ``section``: the config section ``cfg`` came from (``pretrain``), so errors name the key.
    ``log``: where the lines a user should see go (a resumed run's starting point; after the
    first steps, an estimate of the whole when it will take :data:`LONG_RUN_S` or more);
    default stderr when ``progress``.
    With ``checkpoint_dir``, ``<dir>/last.pt`` is (re)written atomically every
    ``cfg.checkpoint_every`` epochs (once ``cfg.checkpoint_min_s`` seconds have passed since
    the last write) and at the end; with ``resume`` an existing one is loaded
    first, and a finished one returns at once.
    """
    cfg.check()
    t_start = time.perf_counter()
    device = torch.device(device)
    info = D.current()
    stop = stop or STOP
    configure_backends(device, cfg.deterministic)

    def sampler_for(accum_steps: int) -> ShardedBatchSampler:
        return ShardedBatchSampler(len(dataset), cfg.batch_size, accum_steps, info.rank, info.world_size, cfg.seed,
                                   weights=sample_weights, num_samples=epoch_size)

    sampler = sampler_for(cfg.accum_steps)
    steps_per_epoch = sampler.steps_per_epoch
    if steps_per_epoch == 0:
        key = f"{section}.batch_size" if section else "batch_size"
        unit = cfg.accum_steps * info.world_size
        fits = sampler.num_samples // unit * unit
        hint = (f"set {key}={fits} or lower" if fits else
                f"{sampler.num_samples} examples cannot fill {cfg.accum_steps} accumulation step(s) x "
                f"{info.world_size} process(es); lower {section + '.' if section else ''}accum_steps")
        raise TrainConfigError(
            f"{desc}: {key} {cfg.batch_size} is larger than the {sampler.num_samples} training examples "
            f"of an epoch; {hint}"
        )
    model.to(device)

    def say(message: str) -> None:
        if not info.is_main:
            return
        if log is not None:
            log(message)
        elif progress:
            print(message, file=sys.stderr, flush=True)

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    saved = None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        try:
            saved = load_train_checkpoint(ckpt_path)
        except CheckpointError as exc:  # truncated or foreign: start again rather than fail every rerun
            if info.is_main:
                warnings.warn(f"{exc}; training starts from the beginning", CacheWarning, stacklevel=2)
                ckpt_path.replace(ckpt_path.with_name(ckpt_path.name + ".damaged"))
            D.barrier()
    # compute spent before this call (a resumed run's earlier parts), so the totals cover the whole run
    before = dict((saved or {}).get("compute") or {})
    prior_wall = float(before.get("wall_s", 0.0))
    prior_train = float(before.get("train_s", 0.0))
    prior_samples = int(before.get("samples", 0))
    if saved is not None and saved.get("world_size", 1) != info.world_size:
        warnings.warn(f"{ckpt_path}: written with {saved.get('world_size')} processes, resuming with "
                      f"{info.world_size}; per-rank RNG streams are re-seeded", stacklevel=2)

    seed_everything(cfg.seed + info.rank)
    if saved is not None and saved.get("finished"):  # nothing left to train: the finished run's record
        restore_train_state(saved, model, state)
        history = list(saved["history"])
        losses = [float(x) for x in saved["step_losses"]]
        if log_metrics is not None and info.is_main:
            for record in history:  # the records of the run that finished, for this run's log
                log_metrics(dict(record))
        return FitResult(history=history, step_losses=losses, epochs=len(history), steps=len(losses),
                         wall_s=prior_wall + time.perf_counter() - t_start, train_s=prior_train,
                         samples_per_s=prior_samples / prior_train if prior_train > 0 else 0.0,
                         world_size=info.world_size, device=str(device),
                         resumed_from=(int(saved["epoch"]), int(saved["step"])), checkpoint=ckpt_path)
    # done for any world size so parameter groups (and checkpoints) do not depend on it
    frozen, memory = _probe_step(model, dataset, loss_fn, sampler.micro, collate_fn, device, cfg)
    try:
        accum = _fit_memory(memory, cfg, device, info, desc, section, say)
        if accum != cfg.accum_steps:
            cfg = dataclasses.replace(cfg, accum_steps=accum)
            sampler = sampler_for(accum)
        groups = groups if groups is not None else param_groups(model, cfg.weight_decay, cfg.layer_decay)
        optimizer = adamw(groups, device, lr=cfg.peak_lr, betas=tuple(cfg.betas))
        schedule = WarmupCosine(optimizer, cfg.peak_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs, steps_per_epoch)
        # bf16 needs no loss scaling; the scaler stays (disabled) so checkpoints have one format
        scaler = torch.amp.GradScaler(device.type, enabled=False)

        result = FitResult(world_size=info.world_size, device=str(device), checkpoint=ckpt_path,
                           accum_steps=cfg.accum_steps)
        start_epoch, start_step = 0, 0
        epoch_losses = torch.zeros(steps_per_epoch, dtype=torch.float64, device=device)
        if saved is not None:
            restore_train_state(saved, model, state, optimizer, schedule, scaler)
            start_epoch, start_step = int(saved["epoch"]), int(saved["step"])
            say(f"{desc}: resuming from epoch {start_epoch + 1}/{cfg.epochs}, step {start_step}/{steps_per_epoch} "
                f"({ckpt_path})")
            result.history = list(saved["history"])
            result.step_losses = [float(x) for x in saved["step_losses"]]
            result.resumed_from = (start_epoch, start_step)
            if start_step:
                epoch_losses[:start_step] = saved["epoch_losses"][:start_step].to(device)
            if log_metrics is not None and info.is_main:
                for record in result.history:  # the epochs before the interruption, so the log is whole
                    log_metrics(dict(record))

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
        samples_run, t_train = prior_samples, prior_train

        def spent() -> dict[str, float]:  # compute so far, saved in checkpoints
            return {"wall_s": prior_wall + time.perf_counter() - t_start, "train_s": t_train, "samples": samples_run}

        steps_here, t_first, estimated = 0, None, False  # for the one estimate of the whole
        t_loop = t_saved = time.perf_counter()
        total_steps = cfg.epochs * steps_per_epoch - (start_epoch * steps_per_epoch + start_step)
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
                for index in range(step0, steps_per_epoch):
                    lr = schedule.apply()
                    step_loss = torch.zeros((), dtype=torch.float64, device=device)
                    for m in range(cfg.accum_steps):
                        batch = to_device(next(batches), device)
                        step = StepContext(epoch, index, schedule.step_num, m, sampler.offset(m), cfg.batch_size,
                                           cfg.seed)
                        sync = (step_module.no_sync() if info.enabled and m < cfg.accum_steps - 1
                                else contextlib.nullcontext())
                        with sync:
                            with autocast(device, cfg.amp):
                                loss = runner(batch, step)
                            scaler.scale(loss / cfg.accum_steps).backward()
                        step_loss += loss.detach().double() / cfg.accum_steps
                        if not estimated:  # per micro-batch: a slow step is explained before it ends
                            estimated, t_first = _estimate(say, desc, steps_here + (m + 1) / cfg.accum_steps,
                                                           t_first, total_steps, cfg.epochs, t_loop)
                    if cfg.clip_grad:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    schedule.step()
                    if on_step_end is not None:
                        on_step_end(schedule.step_num, model)
                    epoch_losses[index] = step_loss
                    done = index + 1
                    steps_here += 1
                    if done % cfg.log_every == 0 or done == steps_per_epoch:
                        mean = float(D.all_reduce_mean(epoch_losses[step0:done].mean()).item())
                        if not math.isfinite(mean):
                            raise DivergedError(
                                f"{desc}: loss became {mean} by epoch {epoch + 1} step {done}; "
                                "lower the learning rate or set clip_grad"
                            )
                        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                    if done < steps_per_epoch and done % checks_stop_every == 0 and D.any_rank(stop.signum is not None):
                        bar.close()
                        path = save_train_checkpoint(ckpt_path, model, optimizer, schedule, scaler, epoch, done,
                                                     result.history, result.step_losses, epoch_losses, state,
                                                     finished=False, compute=spent())
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
                due = ((epoch + 1) % cfg.checkpoint_every == 0
                       and time.perf_counter() - t_saved >= cfg.checkpoint_min_s)
                if ckpt_path is not None and (last or stopping or due):
                    save_train_checkpoint(ckpt_path, model, optimizer, schedule, scaler, epoch + 1, 0, result.history,
                                          result.step_losses, epoch_losses, state, finished=last,
                                          compute=spent())
                    t_saved = time.perf_counter()
                if stopping:
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, ckpt_path)

        result.epochs = len(result.history)
        result.steps = len(result.step_losses)
        result.train_s = t_train
        result.samples_per_s = samples_run / t_train if t_train > 0 else 0.0
        result.peak_memory_mb = peak_memory_mb(device)
        result.wall_s = prior_wall + time.perf_counter() - t_start
        return result
    finally:
        for p in frozen:  # the caller gets its model back as it was
            p.requires_grad_(True)


#: A training whose estimate reaches this many seconds says so after its first steps.
LONG_RUN_S = 600.0
#: Steps timed (after the first, which pays for warm-up) before that estimate.
ESTIMATE_STEPS = 3
#: When the first micro-batches take this many seconds, the estimate comes at once, from them.
SLOW_STEP_S = 10.0


def _estimate(say: Callable[[str], None], desc: str, done: float, t_first: float | None, total: int,
              epochs: int, t_loop: float) -> tuple[bool, float | None]:
    """Called after each micro-batch with ``done`` steps (fractions of one when gradients are
    accumulated) until it returns ``True``: after the first step, time :data:`ESTIMATE_STEPS`
    more; but when :data:`SLOW_STEP_S` have passed before the first step ends, use what ran
    (warm-up included): waiting longer would leave minutes unexplained.  Then say how long the
    ``total`` steps of this training take when that is :data:`LONG_RUN_S` or more.
    Returns ``(done, t_first)``."""
    now = time.perf_counter()
    if t_first is None:
        if now - t_loop >= SLOW_STEP_S:  # slow: the estimate now, from the micro-batches so far
            per_step = (now - t_loop) / done
        elif done >= 1:
            return done >= total, now
        else:
            return False, None
    else:
        timed = done - 1
        if timed < ESTIMATE_STEPS and done < total:
            return False, t_first
        per_step = (now - t_first) / max(timed, 1)
    whole = per_step * total
    if whole >= LONG_RUN_S:
        from ..progress import duration

        say(f"{desc}: {per_step:.1f} s per step; its {total} steps ({epochs} epochs) will take about "
            f"{duration(whole)} on this machine")
    return True, t_first


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from ..progress import bar

    return bar(total, desc, enabled, initial=initial, unit="steps")



#: The larger of the two batches :func:`_probe_step` measures (the other is half of it).
PROBE_BATCH = 4


def _probe_step(model: nn.Module, dataset: Dataset, loss_fn: LossFn, micro: int, collate_fn: Callable | None,
                device: torch.device, cfg: TrainConfig) -> tuple[list[nn.Parameter], StepMemory | None]:
    """Before training: the memory a step needs and the parameters the loss never touches.

    Forwards on batches of ``PROBE_BATCH`` and half as many examples count the bytes autograd
    saves (:mod:`.memory`), which sizes the micro-batch; the larger one's backward shows which
    parameters get no gradient (e.g. a classifier norm during pretraining): they are frozen, so
    DDP needs no ``find_unused_parameters`` graph walk every step (AdamW skips them anyway).
    Every RNG is forked, so nothing downstream changes.  Returns ``(frozen, memory)``; memory
    is ``None`` when the data has fewer than two examples.  :func:`fit` unfreezes on return.
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
    frozen = []
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            frozen.append(p)
        p.grad = None
    if not small:
        return frozen, None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return frozen, step_memory(small, large, saved_small, saved_large, trainable)


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
