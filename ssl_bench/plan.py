"""What a run will do and about how long it will take, said before any audio is read.

``ssl-bench run`` prints a :class:`RunPlan` per resolved config before its data work (and
``--dry-run`` prints it and stops): the model and its preset (and whether the preset is the
model's default), the device, the task's splits and their sizes, and per requested protocol
the work of every split with an estimate of the time, then the whole run's.

Sizes come from the task's splits when its data is here (metadata only: no audio is read,
nothing is downloaded or generated: :func:`ssl_bench.download.no_fetching`), else from the
published sizes the task declares (``nominal_splits``), else they are unknown and so is the
time.  A validation set carved from the training clips takes ``data.valid_fraction`` of them.

The estimate: each protocol's :class:`~ssl_bench.protocols.base.Workload` (examples through
the method's loss, through the encoder and a head, or through the encoder alone), times the
seconds one example takes on this device for each, measured now on random clips of the
task's length in batches that grow until a pass is long enough to time
(:func:`per_example_seconds`: training steps at their micro-batch, forward passes in
growing batches; a large model on a CPU is timed by one forward pass of one example, a step
counted as three, which errs high, training's batches running faster per example).  A frozen protocol also scores
the random-init encoder when the run evaluates a trained one; frozen protocols that read one
embedding cache share its pass.  One pretraining serves every split with
``pretrain.corpus``, none runs with ``--checkpoint``.  Not counted: reading audio into the
feature cache, fitting probes, and a pretraining already in the cache (whether it is depends
on the audio's content, read later), so the figure is rough; a busy machine takes longer.

A model of more than :data:`CPU_SIZED_PARAMETERS` parameters on a device without CUDA gets a
warning naming the model's smallest preset and its estimate on the same machine; nothing is
changed (the run goes on as asked).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, data_settings, resolve
from .download import no_fetching
from .errors import UserError
from .progress import duration
from .protocols.base import SplitSizes, Workload, section_config
from .splitdata import folder_clips, size_frontend

#: No larger batch is timed once a pass lasts this long; a first pass this long is the measure.
LONG_PASS_S = 3.0
SLOW_PASS_S = 2.0
#: Timed passes per batch (the best is kept).
TIMED_PASSES = 2
#: A larger batch is timed while the last one cost under this share of the one before, per example.
SHARED_COST = 0.7
#: A training step (forward and backward) costs about this many forward passes.
STEP_FORWARDS = 3
#: The largest batch a per-example time is measured on.
LARGEST_BATCH = 64
#: Above this many parameters a model is not CPU-sized (ViT-S has 22 M, ViT-B 86 M).
CPU_SIZED_PARAMETERS = 50_000_000


@dataclass
class ProtocolPlan:
    """One requested protocol over every split: what it does, and its seconds (``None``: no
    estimate)."""

    name: str
    work: str
    seconds: float | None


@dataclass
class RunPlan:
    """What one resolved config will run (see the module docstring)."""

    model: str
    preset: str | None
    preset_default: bool
    task: str
    device: str
    parameters: int
    splits: list[str]
    sizes: str  # the splits' sizes in words, and where they come from
    protocols: list[ProtocolPlan] = field(default_factory=list)
    per_example: dict[str, tuple[float, int]] = field(default_factory=dict)  # kind: (seconds, batch timed)
    warning: str | None = None

    @property
    def seconds(self) -> float | None:
        """The whole run's estimate (``None`` when some protocol has none)."""
        parts = [p.seconds for p in self.protocols]
        return None if not parts or any(s is None for s in parts) else float(sum(parts))

    def lines(self) -> list[str]:
        preset = f"preset {self.preset}" + (" (the model's default; -p chooses another)" if self.preset_default
                                            else "") if self.preset else "no preset"
        out = [f"plan: {self.model}, {preset}, {self.parameters / 1e6:,.1f} M parameters, task {self.task}, "
               f"device {self.device}",
               f"  {len(self.splits)} split(s): {self.sizes}"]
        width = max([len(p.name) for p in self.protocols] + [8])
        for p in self.protocols:
            when = f"about {duration(p.seconds)}" if p.seconds is not None else "no estimate"
            out.append(f"  {p.name:<{width}}  {p.work:<58} {when}")
        total = self.seconds
        timed = ", ".join(f"{k} {v * 1e3:,.1f} ms" + (f" (batch {b})" if b > 1 else " (one at a time)")
                          for k, (v, b) in self.per_example.items())
        if total is not None:
            out.append(f"  whole run: about {duration(total)} on this machine (rough: per example {timed}, timed "
                       "just now; reading audio, validation choices and fitting probes not counted; load on the "
                       "machine changes it)")
        else:
            missing = ", ".join(p.name for p in self.protocols if p.seconds is None)
            out.append(f"  whole run: no estimate ({missing or 'no protocol'}: the size or the cost is not known "
                       "before the run)")
        if self.warning:
            out.append(f"  warning: {self.warning}")
        return out


# --------------------------------------------------------------------------- sizes
def split_sizes(config: dict[str, Any], task: Any, split_names: list[str] | None
                ) -> tuple[dict[str, SplitSizes] | None, str]:
    """``({split: sizes}, how they are known)``, or ``(None, why not)``, of ``task`` read
    without touching any audio (see the module docstring)."""
    fraction = float(data_settings(config).valid_fraction)
    found: dict[str, tuple[int, int | None, int]] = {}
    try:
        with no_fetching():
            for split in task.splits():
                found[split.name] = (len(split.train), None if split.valid is None else len(split.valid),
                                     len(split.test))
        source = "from the task's metadata"
    except Exception as exc:  # noqa: BLE001 - not here yet (downloaded or built when the run starts), not found,
        # or a task plugin that cannot list its splits before it is prepared: the run itself says what is wrong
        if not isinstance(exc, UserError):
            return None, f"not known before the run (reading the task's splits failed: {type(exc).__name__})"
        nominal = getattr(task, "nominal_splits", None) or {}
        if not nominal:
            return None, "not known until the task's data is here"
        for name, counts in nominal.items():
            train, valid, test = (counts[0], None, counts[1]) if len(counts) == 2 else tuple(counts)
            found[name] = (int(train), None if valid is None else int(valid), int(test))
        source = "as published (the data is not here yet)"
    if split_names:
        missing = [n for n in split_names if n not in found]
        if missing:
            raise ConfigError(f"task {config['task']!r} has no split {', '.join(missing)}; splits: {', '.join(found)}")
        found = {n: found[n] for n in split_names}
    corpus = _corpus_size(config, task)
    sizes = {}
    for name, (train, valid, test) in found.items():
        if valid is None:  # carved from the training clips, as the run will
            valid = int(round(train * fraction))
            train -= valid
        sizes[name] = SplitSizes(train=train, valid=valid, test=test,
                                 unlabeled=corpus if corpus is not None else train + valid)
    return sizes, source


def _corpus_size(config: dict[str, Any], task: Any) -> int | None:
    corpus = (config.get("pretrain") or {}).get("corpus")
    if not corpus:
        return None
    if corpus == "task":
        try:
            with no_fetching():
                return len(task.unlabeled())
        except (UserError, AttributeError):
            return getattr(task, "nominal_unlabeled", None)
    return len(folder_clips(corpus))


def _describe_sizes(sizes: dict[str, SplitSizes], source: str) -> str:
    shapes = sorted({(s.train, s.valid, s.test) for s in sizes.values()})
    each = "; ".join(f"train {a:,}, valid {b:,}, test {c:,}" for a, b, c in shapes[:3])
    return f"{'each ' if len(shapes) == 1 and len(sizes) > 1 else ''}{each}{' ...' if len(shapes) > 3 else ''} " \
           f"clips, {source}"


# --------------------------------------------------------------------------- per-example cost
def _seconds_per_example(fn: Any, make: Any, device: torch.device, largest: int,
                         grow: bool = True) -> tuple[float, int]:
    """``(seconds per example, batch)`` of ``fn(make(batch))``: batches of 1, 4, 16, ... up to
    ``largest``, each run once untimed and :data:`TIMED_PASSES` times timed (the best kept: a
    burst of other work only slows a pass), for as long as a larger batch is much cheaper per
    example (per-call costs, which a busy machine makes large, are shared out by training's
    batches too) and a pass lasts under :data:`LONG_PASS_S`.  When the untimed pass takes
    :data:`SLOW_PASS_S` or more (a large model on a CPU), one timed pass is the measure.
    ``grow=False``: only the batch ``largest`` (a training step at its micro-batch)."""
    batch, best, previous = (1 if grow else largest), None, None
    while True:
        x = make(batch)
        slow = _timed(fn, x, device) >= SLOW_PASS_S  # untimed: the first call at a shape pays for set-up
        seconds = min(_timed(fn, x, device) for _ in range(1 if slow else TIMED_PASSES))
        per = seconds / batch
        if best is None or per < best[0]:
            best = (per, batch)
        cheaper = previous is None or per < SHARED_COST * previous
        if slow or not cheaper or seconds >= LONG_PASS_S or batch >= largest:
            return best
        previous, batch = per, min(batch * 4, largest)


def _timed(fn: Any, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _timed_once(config: dict[str, Any], registry: Any, device: torch.device, pretrain: bool,
                timings: dict[str, Any] | None) -> tuple[dict[str, tuple[float, int]], int]:
    """:func:`per_example_seconds`, once per config (its seed aside), device and ``pretrain``
    among the plans that share ``timings`` (the runs of one sweep)."""
    if timings is None:
        return per_example_seconds(config, registry, device, pretrain=pretrain)
    key = json.dumps([{k: v for k, v in config.items() if k != "seed"}, str(device), pretrain], sort_keys=True,
                     default=str)
    if key not in timings:
        timings[key] = per_example_seconds(config, registry, device, pretrain=pretrain)
    return timings[key]


def per_example_seconds(config: dict[str, Any], registry: Any, device: torch.device, pretrain: bool = True
                        ) -> tuple[dict[str, tuple[float, int]], int]:
    """``({kind: (seconds per example, batch timed)}, encoder parameters)`` of the config's
    model on ``device``, every RNG left as it was: ``pretrain``, a pretraining step (the
    method's loss, its backward pass and an AdamW step; absent for a model without a method, or
    without ``pretrain``: when the run pretrains nothing), ``train``, a fine-tuning step (the
    encoder, a backward pass, an AdamW step), each at its section's micro-batch (at most
    :data:`LARGEST_BATCH`), so a small model's per-step costs are counted as training pays
    them; and ``forward``, the encoder without gradients (:func:`_seconds_per_example`).  When
    one forward pass alone takes :data:`SLOW_PASS_S` or more (a large model on a CPU), the
    steps are not run: a step is counted as :data:`STEP_FORWARDS` forward passes (a backward
    pass costs about two), which keeps the plan to seconds instead of minutes."""
    from .encoders import pretrain_loss
    from .model import build_model
    from .protocols.data import normalize
    from .train import StepContext, autocast

    amp = bool(config.get("amp", True))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = build_model(config, registry)
        if getattr(model.frontend, "stats_key", None) is not None and getattr(model.frontend, "norm_stats", None) \
                is None:
            model.frontend.set_norm_stats(0.0, 1.0)
        model.to(device)
        frames = int(config["frontend"].get("num_frames") or model.build.num_frames)  # sized by the caller
        parameters = sum(p.numel() for p in model.encoder.parameters())
        trainable = [p for p in model.parameters() if p.requires_grad]
        # a frozen import (a HEAR module) has nothing to train: its steps are forward passes
        optimizer = torch.optim.AdamW(trainable, lr=0.0) if trainable else None

        def make(batch: int) -> torch.Tensor:
            return torch.randn(batch, frames, int(model.build.num_bins), device=device)

        def pretrain_loss_of(x: torch.Tensor) -> torch.Tensor:
            with autocast(device, amp):
                return pretrain_loss(model, {"spec": x}, StepContext(0, 0, 0, 0, 0, x.shape[0], 0))

        def embed(x: torch.Tensor) -> torch.Tensor:
            with autocast(device, amp):
                return model.embed(normalize(model, x))

        def step(loss_of: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], None]:
            def run(x: torch.Tensor) -> None:
                loss_of(x).float().sum().backward()
                optimizer.step()  # lr 0: the weights stay as built
                optimizer.zero_grad(set_to_none=True)
            return run

        def forward(x: torch.Tensor) -> None:
            with torch.no_grad():
                embed(x)

        out = {}
        model.eval()
        out["forward"] = _seconds_per_example(forward, make, device, LARGEST_BATCH)
        large = out["forward"][0] * out["forward"][1] >= SLOW_PASS_S or optimizer is None
        kinds = {"train": (embed, "finetune")}
        if pretrain and getattr(model, "method", None) is not None:
            kinds["pretrain"] = (pretrain_loss_of, "pretrain")
        for kind, (loss_of, section) in kinds.items():
            model.train()
            if large:  # a training step of this model would take minutes here: counted as forward passes
                with torch.no_grad():
                    seconds, batch = _seconds_per_example(loss_of, make, device, 1)
                out[kind] = (STEP_FORWARDS * seconds, batch)
            else:  # at the micro-batch, or fewer examples where a step would last longer than a timed pass should
                fits = max(1, int(LONG_PASS_S / (STEP_FORWARDS * out["forward"][0])))
                out[kind] = _seconds_per_example(step(loss_of), make, device, min(_batch(config, section), fits),
                                                 grow=False)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
    return out, parameters


def _batch(config: dict[str, Any], section: str) -> int:
    """The largest batch worth timing for ``section``: its micro-batch, at most :data:`LARGEST_BATCH`."""
    node = config.get(section) or {}
    micro = int(node.get("batch_size") or LARGEST_BATCH) // max(int(node.get("accum_steps") or 1), 1)
    return max(1, min(micro, LARGEST_BATCH))


# --------------------------------------------------------------------------- the plan
def _protocols(registry: Any, config: dict[str, Any], names: list[str]) -> list[tuple[str, Any, Any]]:
    """``(name, protocol, section)`` of the requested protocols that are enabled."""
    out = []
    for name in names:
        factory = registry.get("protocol", name).factory
        proto = factory(name) if isinstance(factory, type) else factory
        section = section_config(proto, config.get(name))
        if getattr(section, "enabled", True):
            out.append((name, proto, section))
    return out


def estimate(config: dict[str, Any], registry: Any, protocols: list[str], sizes: dict[str, SplitSizes] | None,
             per_example: dict[str, float], checkpoint: bool) -> list[ProtocolPlan]:
    """Each requested protocol's work over every split and its seconds (see the module
    docstring); ``per_example``: seconds per example of ``pretrain`` (absent for a model
    without a method), ``train`` and ``forward``."""
    chosen = _protocols(registry, config, protocols)
    pretrains = "pretrain" in per_example and not checkpoint and any(p.stage == "pretrain" for _, p, _ in chosen)
    trained = pretrains or checkpoint  # else the evaluated encoder is the random one: no second baseline
    corpus = bool((config.get("pretrain") or {}).get("corpus"))
    if sizes is None:
        return [ProtocolPlan(name, "sizes unknown", None) for name, _, _ in chosen]
    plans = []
    shared_seen: set[str] = set()
    for name, proto, section in chosen:
        if proto.stage == "pretrain" and not pretrains:
            why = "replaced by --checkpoint" if checkpoint else "the model has no pretraining method"
            plans.append(ProtocolPlan(name, f"skipped: {why}", 0.0))
            continue
        works: list[Workload] = []
        for split in sizes.values():
            work = proto.workload(section, split)
            if work is None:
                works = []
                break
            works.append(work)
        if not works:
            plans.append(ProtocolPlan(name, "its cost is not known before it runs", None))
            continue
        encoders = 2 if proto.frozen and trained else 1
        if proto.stage == "pretrain" and corpus:  # one encoder for every split
            works = works[:1]
        seconds, forward = 0.0, 0
        for work in works:
            seconds += work.pretrain * per_example.get("pretrain", 0.0) + work.train * per_example.get("train", 0.0)
            if work.shared is None or work.shared not in shared_seen:
                forward += work.forward
        if works[0].shared is not None:
            shared_seen.add(works[0].shared)
        seconds += encoders * forward * per_example.get("forward", 0.0)
        times = "1 encoder on a corpus" if proto.stage == "pretrain" and corpus else f"{len(works)} split(s)"
        baseline = " x 2 encoders (trained, random init)" if encoders == 2 else ""
        shared = " (embeddings shared)" if forward == 0 and works[0].forward else ""
        plans.append(ProtocolPlan(name, f"{times}{baseline} x {works[0].note}{shared}", seconds))
    return plans


def plan_run(config: dict[str, Any], registry: Any, protocols: list[str], *, data_dir: str | Path | None = None,
             splits: list[str] | None = None, checkpoint: bool = False, preset_given: bool = True,
             alternative: bool = True, timings: dict[str, Any] | None = None) -> RunPlan:
    """The :class:`RunPlan` of one resolved config (see the module docstring).  ``timings``: a
    dict shared by the plans of one sweep, so runs that differ only in their seed are timed once."""
    from . import distributed as D

    device = D.resolve_device(config.get("device"))
    task = registry.get("task", config["task"]).factory(data_dir=data_dir)
    sizes, source = split_sizes(config, task, splits)
    sized = copy.deepcopy(config)  # the model's input length follows the task's clips, as in the run
    size_frontend(sized, registry, float(task.clip_seconds))
    pretrains = not checkpoint and any(proto.stage == "pretrain" for _, proto, _ in _protocols(registry, config,
                                                                                                  protocols))
    timed, parameters = _timed_once(sized, registry, device, pretrains, timings)
    world = D.env_world_size()
    # data-parallel: the examples are shared out
    per_example = {k: v / max(world, 1) for k, (v, _) in timed.items()}
    where = f"{device}" + (f" x {world} processes" if world > 1 else "") + (
        f" ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})" if device.type == "cpu"
        else "")
    plan = RunPlan(model=str(config.get("model")), preset=config.get("preset"), preset_default=not preset_given,
                   task=str(config["task"]), device=where, parameters=parameters,
                   splits=list(sizes) if sizes else [], sizes=_describe_sizes(sizes, source) if sizes else source,
                   per_example=timed)
    plan.protocols = estimate(config, registry, protocols, sizes, per_example, checkpoint)
    if device.type != "cuda" and parameters > CPU_SIZED_PARAMETERS and alternative:
        plan.warning = _cpu_warning(plan, config, registry, protocols, data_dir, splits, checkpoint)
    return plan


def _cpu_warning(plan: RunPlan, config: dict[str, Any], registry: Any, protocols: list[str],
                 data_dir: str | Path | None, splits: list[str] | None, checkpoint: bool) -> str:
    """The warning of a model larger than a CPU handles, naming the model's smallest preset."""
    total = f": about {duration(plan.seconds)} here" if plan.seconds is not None else ""
    text = (f"preset {plan.preset} ({plan.parameters / 1e6:,.1f} M parameters) is sized for a GPU and this run is on "
            f"the CPU{total}")
    smaller = _smallest_preset(config, registry)
    if smaller is not None and smaller != config.get("preset"):
        try:
            small = resolve(str(config["model"]), preset=smaller, task=config["task"], registry=registry,
                            overrides={k: config[k] for k in ("seed", "device") if k in config})
            alt = plan_run(small, registry, protocols, data_dir=data_dir, splits=splits, checkpoint=checkpoint,
                           alternative=False)
            when = f"about {duration(alt.seconds)} here" if alt.seconds is not None else "no estimate"
            text += f". Preset {smaller} ({alt.parameters / 1e6:,.1f} M) is CPU-sized: {when} (-p {smaller})"
        except UserError:
            text += f". Preset {smaller} is CPU-sized (-p {smaller})"
    return text + f". Nothing is changed: the run goes on with preset {plan.preset}"


def _smallest_preset(config: dict[str, Any], registry: Any) -> str | None:
    """The preset of the config's model with the fewest parameters (counted on a dry build)."""
    from .model import build_model

    spec = registry.get("model", str(config["model"])).factory
    best: tuple[int, str] | None = None
    for name in getattr(spec, "presets", {}) or {}:
        try:
            cfg = resolve(str(config["model"]), preset=name, task=config["task"], registry=registry)
            n = sum(p.numel() for p in build_model(cfg, registry, dry_run=True).encoder.parameters())
        except UserError:
            continue
        if best is None or n < best[0]:
            best = (n, name)
    return best[1] if best else None


def format_plans(plans: list[RunPlan]) -> str:
    """The plans of a run command, and the total of a sweep."""
    lines = [line for p in plans for line in p.lines()]
    if len(plans) > 1:
        totals = [p.seconds for p in plans]
        known = sum(t for t in totals if t is not None)
        unknown = sum(t is None for t in totals)
        lines.append(f"all {len(plans)} runs: about {duration(known)}"
                     + (f" and {unknown} without an estimate" if unknown else ""))
    return "\n".join(lines)


__all__ = ["CPU_SIZED_PARAMETERS", "ProtocolPlan", "RunPlan", "estimate", "format_plans", "per_example_seconds",
           "plan_run", "split_sizes"]
