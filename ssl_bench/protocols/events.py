"""``events``: sound event detection with frame-wise heads on frozen frame embeddings.

What HEAR 2021 does with timestamp embeddings (hear-eval-kit's event tasks), on ssl-bench's
frame-level output (:mod:`ssl_bench.frames`):

1. **Frames, once.**  Every clip's frame embeddings come from the shared cache
   (:meth:`ProtocolContext.frame_embeddings`): the encoder's time columns, or a finer hop
   (``events.hop_ms``, made by ``events.hop_method``), stored as ``events.frame_dtype``.  One
   extraction serves every head and every post-processing choice below.
2. **Frame targets** at the frames' hop: frame ``k`` centred at ``t_k`` spans ``[t_k - hop/2,
   t_k + hop/2)`` and is active for a class when an event of that class overlaps it
   (:func:`ssl_bench.events.frame_targets`).
3. **Heads**: frame-wise ``linear`` (one Linear) and ``mlp`` (Linear, ReLU, dropout, Linear) on
   embeddings standardised with the training frames' statistics, trained with Adam on
   minibatches of frames, binary cross-entropy per class per frame.  Every ``check_every``
   epochs the validation clips are scored: their frame probabilities are post-processed with
   every setting of the grid (below) into events, the best setting's primary metric is the
   epoch's score; training stops after ``patience`` checks without a better one, and the best
   check's weights and post-processing are kept.
4. **Post-processing** (:func:`frames_to_events`): a median filter over
   ``median_filter_ms`` (``round(ms / hop)`` frames, made odd so it is centred; 0 = off) of each
   class's probabilities, ``threshold``, then each run of active frames is an event from the
   start of its first frame to the end of its last (clipped to the clip), kept when it lasts at
   least ``min_duration_ms``.  hear-eval-kit chooses median filter and minimum duration on
   validation at a fixed threshold of 0.5; here the threshold is chosen the same way.
5. **Choice** (:mod:`ssl_bench.protocols.selection`): each (head, hidden size, lr) of the grid
   is trained as in 3; the one whose best check scores highest on validation is kept (ties keep
   the earlier), with its epoch and post-processing; the test part is scored once, by it.

Rows carry the task's event metrics (``event_onset_200ms_fms`` with its precision and recall,
``segment_1s_er`` with its parts, ...) and the choices; the test part's predicted events are
handed over as :class:`~ssl_bench.protocols.base.Predictions`, which the runner writes in
HEAR's layout beside the rows, so any outside scorer (sed_eval, hear-eval-kit) can check the
number.  The protocol is frozen: it also scores the random-init encoder.  ``events_finetune``
(:mod:`.events_finetune`) trains the encoder with a frame-level head instead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as D
from ..config import ConfigError
from ..events import EVENTS, Event, frame_targets
from ..frames import HOP_METHODS
from ..metrics import evaluate_events, get_metric
from .base import Predictions, Protocol, ProtocolContext, ProtocolResult
from .embeddings import FRAME_DTYPES, FrameEmbeddings
from .selection import VALID, Best, choose_on_validation, require_single
from .torch_linear import standardise

#: The frame-wise heads the protocol trains.
HEADS = ("linear", "mlp")


@dataclass
class EventsConfig:
    """Frame-wise heads on frozen frame embeddings, post-processing chosen on validation."""

    enabled: bool = True
    heads: list[str] = field(default_factory=lambda: ["linear", "mlp"])
    hidden: list[int] = field(default_factory=lambda: [256])  # mlp hidden sizes
    lr: list[float] = field(default_factory=lambda: [1e-3])  # Adam learning rates (every head)
    dropout: float = 0.1
    weight_decay: float = 0.0
    max_epochs: int = 100
    check_every: int = 2  # epochs between validation checks (each check post-processes the whole grid)
    patience: int = 10  # validation checks without a better score before stopping
    train_batch_size: int = 512  # frames per Adam step
    batch_size: int = 16  # clips per forward pass when extracting frame embeddings
    hop_ms: float | None = None  # frames this far apart (None: the encoder's time columns)
    hop_method: str = "interpolate"  # how finer frames are made: interpolate or overlap (ssl_bench.frames)
    frame_dtype: str = "float16"  # storage of the cached frame embeddings: float16 or float32
    median_filter_ms: list[float] = field(default_factory=lambda: [0.0, 250.0])
    min_duration_ms: list[float] = field(default_factory=lambda: [0.0, 125.0, 250.0])
    threshold: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])

    def __post_init__(self) -> None:  # every setting checked when the section is read, before any data work
        head_grid(self)
        post_processing_grid(self)
        frame_settings(self)
        for key in ("max_epochs", "check_every", "patience", "train_batch_size", "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"events.{key} must be a positive whole number, got {getattr(self, key)!r}")


# --------------------------------------------------------------------------- post-processing
@dataclass(frozen=True)
class PostProcessing:
    """How frame probabilities become events (see the module docstring)."""

    median_filter_ms: float
    min_duration_ms: float
    threshold: float

    def columns(self) -> dict[str, float]:
        return {"median_filter_ms": self.median_filter_ms, "min_duration_ms": self.min_duration_ms,
                "threshold": self.threshold}


def post_processing_grid(cfg: Any, section: str = "events") -> list[PostProcessing]:
    """Every setting of the grid, in the order tried: median filter, then threshold, then
    minimum duration (ties keep the earlier: no filter, the lower threshold, no minimum)."""
    def values(key: str, low: float, high: float | None = None) -> list[float]:
        raw = getattr(cfg, key)
        raw = raw if isinstance(raw, (list, tuple)) else [raw]
        try:
            out = [float(v) for v in raw]
        except (TypeError, ValueError):
            raise ConfigError(f"{section}.{key}: expected numbers, got {raw!r}") from None
        if not out or any(not math.isfinite(v) or v < low or (high is not None and v > high) for v in out):
            bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise ConfigError(f"{section}.{key}: give one or more numbers {bound}, got {raw!r}")
        return out

    medians = values("median_filter_ms", 0.0)
    thresholds = values("threshold", 0.0, 1.0)
    durations = values("min_duration_ms", 0.0)
    return [PostProcessing(m, d, t) for m in medians for t in thresholds for d in durations]


def median_width(median_filter_ms: float, hop_s: float) -> int:
    """Frames of a median filter of ``median_filter_ms`` at ``hop_s``: ``round(ms / hop)``, made
    odd (a centred window); 1 (no filter) for 0."""
    width = round(median_filter_ms / 1000.0 / hop_s) if median_filter_ms > 0 else 1
    return max(1, width if width % 2 else width + 1)


def smooth(probs: np.ndarray, width: int) -> np.ndarray:
    """Each class's probabilities ``[frames, classes]`` through a median filter of ``width`` frames."""
    if width <= 1 or len(probs) == 0:
        return probs
    from scipy.ndimage import median_filter

    return median_filter(probs, size=(width, 1), mode="reflect")


def frames_to_events(probs: np.ndarray, timestamps: np.ndarray, hop_s: float, *, threshold: float,
                     min_duration_s: float, clip_seconds: float | None = None) -> list[Event]:
    """Events of one clip from (smoothed) frame probabilities ``[frames, classes]`` at
    ``timestamps`` (frame centres, seconds): each run of consecutive frames above ``threshold``
    is one event from ``t_first - hop/2`` to ``t_last + hop/2`` (clipped to ``[0,
    clip_seconds]``, to the microsecond), kept when it lasts ``min_duration_s`` or more; sorted
    by onset."""
    active = probs > threshold
    out = []
    end = float(clip_seconds) if clip_seconds is not None else math.inf
    half = hop_s / 2
    for c in range(active.shape[1]):
        column = active[:, c].astype(np.int8)
        edges = np.diff(np.concatenate([[0], column, [0]]))
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1):
            # to the microsecond: the written milliseconds stay short and exact
            onset = round(max(0.0, float(timestamps[a]) - half), 6)
            offset = round(min(end, float(timestamps[b]) + half), 6)
            if offset > onset and offset - onset >= min_duration_s - 1e-9:
                out.append(Event(c, onset, offset))
    out.sort(key=lambda e: (e.onset, e.label))
    return out


def clip_targets(events: Sequence[Event], timestamps: np.ndarray, hop_s: float, num_classes: int) -> np.ndarray:
    """``[frames, classes]`` targets of one clip at its frames' ``timestamps`` (centres): frame
    ``k`` spans ``[t_k - hop/2, t_k + hop/2)``.  Frames are taken in runs of even spacing
    (windows of a long clip may leave a gap), each run by :func:`frame_targets`."""
    n = len(timestamps)
    out = np.zeros((n, num_classes), dtype=np.float32)
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and abs(timestamps[stop] - timestamps[stop - 1] - hop_s) <= 1e-6:
            stop += 1
        out[start:stop] = frame_targets(events, stop - start, hop_s, num_classes,
                                        offset_s=float(timestamps[start]) - hop_s / 2)
        start = stop
    return out


# --------------------------------------------------------------------------- scoring
class EventScorer:
    """Scores frame probabilities of one part as events: the post-processing grid, the task's
    metrics, the reference.  ``best(probs)`` returns the best grid setting's primary score (the
    selection rule of :mod:`.selection`), ``score(probs, post)`` every metric at one setting."""

    def __init__(self, frames: FrameEmbeddings, keys: Sequence[str], reference: Sequence[Sequence[Event]],
                 classes: Sequence[str], metrics: Sequence[str], grid: Sequence[PostProcessing],
                 clip_seconds: float | None):
        self.frames, self.keys, self.classes, self.metrics = frames, list(keys), list(classes), list(metrics)
        self.reference = {k: list(ev) for k, ev in zip(self.keys, reference)}
        self.grid, self.clip_seconds = list(grid), clip_seconds
        self.primary = self.metrics[0]
        self.sign = 1.0 if get_metric(self.primary).greater_is_better else -1.0

    def rank(self, value: float) -> float:
        """The primary metric as a score to maximise (a NaN, e.g. F without any event, ranks last)."""
        return -math.inf if not math.isfinite(value) else self.sign * value

    def events(self, probs: np.ndarray, post: PostProcessing,
               smoothed: dict[float, np.ndarray] | None = None) -> dict[str, list[Event]]:
        """``{clip key: [Event]}`` of the part's frame probabilities ``[frames, classes]``."""
        hop = self.frames.hop_s
        if smoothed is None or post.median_filter_ms not in smoothed:
            width = median_width(post.median_filter_ms, hop)
            filtered = np.concatenate([smooth(probs[self._span(i)], width) for i in range(len(self.keys))]) \
                if len(probs) else probs
            if smoothed is not None:
                smoothed[post.median_filter_ms] = filtered
        else:
            filtered = smoothed[post.median_filter_ms]
        out = {}
        for i, key in enumerate(self.keys):
            span = self._span(i)
            out[key] = frames_to_events(filtered[span], self.frames.timestamps[span], hop, threshold=post.threshold,
                                        min_duration_s=post.min_duration_ms / 1000.0, clip_seconds=self.clip_seconds)
        return out

    def _span(self, i: int) -> slice:
        return slice(int(self.frames.offsets[i]), int(self.frames.offsets[i + 1]))

    def score(self, probs: np.ndarray, post: PostProcessing, names: Sequence[str] | None = None) -> dict[str, float]:
        return evaluate_events(names or self.metrics, self.events(probs, post), self.reference, self.classes)

    def best(self, probs: np.ndarray) -> tuple[PostProcessing, float]:
        """The grid setting whose events score best on the primary metric, and that score."""
        smoothed: dict[float, np.ndarray] = {}

        def trial(post: PostProcessing) -> tuple[dict[str, float], None]:
            value = evaluate_events([self.primary], self.events(probs, post, smoothed), self.reference,
                                    self.classes)[self.primary]
            return {"rank": self.rank(value), self.primary: value}, None

        choice = choose_on_validation(self.grid, trial, "rank")
        return choice.candidate, choice.valid[self.primary]


# --------------------------------------------------------------------------- heads
class FrameHead(nn.Module):
    """A frame-wise head: ``linear`` (one Linear) or ``mlp`` (Linear, ReLU, dropout, Linear)."""

    def __init__(self, kind: str, dim: int, classes: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        if kind == "linear":
            self.net: nn.Module = nn.Linear(dim, classes)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))
        else:
            raise ConfigError(f"events.heads: unknown head {kind!r}; choose from {', '.join(HEADS)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def head_grid(cfg: Any) -> list[tuple[str, int, float]]:
    """The ``(head, hidden, lr)`` candidates in the order tried: the heads as listed; an mlp per
    hidden size (ascending); every lr as listed."""
    heads = [cfg.heads] if isinstance(cfg.heads, str) else list(cfg.heads)
    unknown = [h for h in heads if h not in HEADS]
    if unknown or not heads:
        raise ConfigError(f"events.heads: {unknown or heads!r}; choose one or more of {', '.join(HEADS)}")
    lrs = [float(v) for v in (cfg.lr if isinstance(cfg.lr, (list, tuple)) else [cfg.lr])]
    hidden = sorted(int(h) for h in (cfg.hidden if isinstance(cfg.hidden, (list, tuple)) else [cfg.hidden]))
    if not lrs or any(not v > 0 for v in lrs) or ("mlp" in heads and (not hidden or min(hidden) < 1)):
        raise ConfigError("events.lr must list positive numbers and events.hidden positive sizes")
    out = []
    for head in heads:
        for h in (hidden if head == "mlp" else [0]):
            out += [(head, h, lr) for lr in lrs]
    return out


@torch.no_grad()
def _probs(model: nn.Module, z: torch.Tensor, chunk: int = 65536) -> np.ndarray:
    model.eval()
    out = torch.cat([torch.sigmoid(model(z[i:i + chunk]).double()) for i in range(0, len(z), chunk)]) if len(z) \
        else torch.zeros(0, dtype=torch.float64)
    model.train()
    return out.cpu().numpy()


@dataclass
class HeadResult:
    """One trained head: its weights at the best check, that check's epoch, post-processing and
    validation score (``valid`` empty without validation data)."""

    model: nn.Module
    epoch: int
    post: PostProcessing
    valid: dict[str, float]


def train_head(candidate: tuple[str, int, float], Z: Mapping[str, torch.Tensor], Y: torch.Tensor, *,
               num_classes: int, cfg: Any, seed: int, scorer: EventScorer | None) -> HeadResult:
    """Train one head on the training frames ``Z["train"]`` / ``Y`` (see the module docstring);
    ``scorer`` scores the validation frames ``Z["valid"]`` (None: no validation data, the last
    epoch and the grid's only setting are kept)."""
    kind, hidden, lr = candidate
    device = Z["train"].device
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # initialisation and dropout draw from the global RNG: seed it, leave it as found
        model = FrameHead(kind, Z["train"].shape[1], num_classes, hidden, float(cfg.dropout)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=float(cfg.weight_decay))
        n = Z["train"].shape[0]
        best: Best[int] = Best("rank")
        best_state = best_post = None
        stale = 0
        for epoch in range(1, int(cfg.max_epochs) + 1):
            for batch in torch.randperm(n, generator=gen).to(device).split(int(cfg.train_batch_size)):
                loss = F.binary_cross_entropy_with_logits(model(Z["train"][batch]), Y[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if scorer is None or (epoch % int(cfg.check_every) and epoch != int(cfg.max_epochs)):
                continue
            post, value = scorer.best(_probs(model, Z["valid"]))
            if best.offer(epoch, {"rank": scorer.rank(value)}):
                best_state, best_post, stale = copy.deepcopy(model.state_dict()), post, 0
            else:
                stale += 1
                if stale >= int(cfg.patience):
                    break
    if scorer is None:
        return HeadResult(model, int(cfg.max_epochs), post_processing_grid(cfg)[0], {})
    model.load_state_dict(best_state)
    valid = scorer.score(_probs(model, Z["valid"]), best_post)
    return HeadResult(model, int(best.candidate), best_post, valid)


@dataclass
class EventsResult:
    """What :func:`fit_event_heads` chose and scored: ``test`` metrics, the test part's
    ``events`` by clip key, the chosen head and post-processing and the row columns."""

    test: dict[str, float]
    events: dict[str, list[Event]]
    columns: dict[str, Any]


def fit_event_heads(frames: Mapping[str, FrameEmbeddings], events: Mapping[str, Sequence[Sequence[Event]]],
                    keys: Mapping[str, Sequence[str]], *, classes: Sequence[str], metrics: Sequence[str], cfg: Any,
                    seed: int = 0, device: torch.device | str = "cpu", clip_seconds: float | None = None,
                    log_choice: Callable[[dict[str, Any]], None] | None = None) -> EventsResult:
    """Train every head of the grid on the train part's frames, choose head, epoch and
    post-processing on valid, score test once (see the module docstring).  ``frames``, ``events``
    and ``keys`` map ``train``/``valid``/``test`` to each part's frame embeddings, clips' events
    and clip keys."""
    if not metrics:
        raise ConfigError("the events protocol needs the task's event metrics (task.metrics is empty)")
    grid = head_grid(cfg)
    posts = post_processing_grid(cfg)
    has_valid = len(keys["valid"]) > 0
    require_single(grid, has_valid, owner="events", what=f"among {len(grid)} heads (heads x hidden x lr)",
                   instead="give one head, hidden size and lr")
    require_single(posts, has_valid, owner="events", what=f"among {len(posts)} post-processing settings",
                   instead="give one median_filter_ms, min_duration_ms and threshold")
    if int(cfg.max_epochs) < 1 or int(cfg.patience) < 1 or int(cfg.check_every) < 1 or int(cfg.train_batch_size) < 1:
        raise ConfigError("events.max_epochs, patience, check_every and train_batch_size must be positive")
    num_classes = len(classes)
    hop = frames["train"].hop_s
    Z = standardise({p: np.asarray(f.values) for p, f in frames.items()}, torch.device(device))
    Y = torch.as_tensor(np.concatenate([
        clip_targets(ev, frames["train"].clip(i)[1], hop, num_classes) for i, ev in enumerate(events["train"])]
        or [np.zeros((0, num_classes), np.float32)]), device=Z["train"].device)
    scorers = {p: EventScorer(frames[p], keys[p], events[p], classes, metrics, posts, clip_seconds)
               for p in ("valid", "test")}

    def trial(candidate: tuple[str, int, float]) -> tuple[dict[str, float], HeadResult]:
        result = train_head(candidate, Z, Y, num_classes=num_classes, cfg=cfg, seed=seed,
                            scorer=scorers["valid"] if has_valid else None)
        valid = {"rank": scorers["valid"].rank(result.valid[metrics[0]]), **result.valid} if has_valid else {}
        if log_choice is not None:
            log_choice({"head": candidate[0], "hidden": candidate[1], "lr": candidate[2], "best_epoch": result.epoch,
                        **result.post.columns(), **{f"valid_{k}": v for k, v in result.valid.items()}})
        return valid, result

    choice = choose_on_validation(grid, trial, "rank")  # ties keep the earlier candidate
    (head, hidden, lr), kept = choice.candidate, choice.kept
    test_events = scorers["test"].events(_probs(kept.model, Z["test"]), kept.post)
    test = evaluate_events(metrics, test_events, scorers["test"].reference, classes)
    columns = {"head": head, "hidden": hidden or None, "lr": lr, "best_epoch": kept.epoch, **kept.post.columns(),
               "selection": VALID if has_valid else "max epochs", "grid_size": len(grid) * len(posts),
               "frame_hop_ms": round(hop * 1000.0, 6), "frame_method": frames["train"].method,
               **{f"valid_{k}": v for k, v in kept.valid.items()}}
    return EventsResult(test, test_events, columns)


def frame_settings(cfg: Any) -> dict[str, Any]:
    """The frame-embedding settings of a section (``hop_ms``, ``hop_method``, ``frame_dtype``) as
    :meth:`ProtocolContext.frame_embeddings` arguments, checked."""
    if cfg.hop_method not in HOP_METHODS:
        raise ConfigError(f"events.hop_method {cfg.hop_method!r}: choose one of {', '.join(HOP_METHODS)}")
    if cfg.frame_dtype not in FRAME_DTYPES:
        raise ConfigError(f"events.frame_dtype {cfg.frame_dtype!r}: choose one of {', '.join(FRAME_DTYPES)}")
    if cfg.hop_ms is not None and not float(cfg.hop_ms) > 0:
        raise ConfigError(f"events.hop_ms must be positive (or null: the encoder's time columns), got {cfg.hop_ms}")
    return {"hop_s": None if cfg.hop_ms is None else float(cfg.hop_ms) / 1000.0, "method": cfg.hop_method,
            "dtype": cfg.frame_dtype}


class EventsProtocol(Protocol):
    """``events``: frame-wise linear and MLP heads on frozen frame embeddings, post-processing
    chosen on validation, event metrics on test (see the module docstring)."""

    Config = EventsConfig
    frozen = True
    shapes = (EVENTS,)
    help = "only sound event detection: frame-wise heads on frozen frame embeddings (HEAR's event tasks)"

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        cfg = ctx.section
        frames = ctx.frame_embeddings(**frame_settings(cfg))
        if not D.current().is_main:
            return []
        data = ctx.data
        parts = ("train", "valid", "test")

        def log_choice(record: dict[str, Any]) -> None:
            ctx.metrics({"split": ctx.split, **record})

        result = fit_event_heads(frames, {p: data.events(p) for p in parts}, {p: data.keys(p) for p in parts},
                                 classes=[str(c) for c in data.classes], metrics=data.metrics, cfg=cfg, seed=ctx.seed,
                                 device=ctx.device, clip_seconds=data.clip_seconds, log_choice=log_choice)
        extra = {**result.columns, "frame_dtype": cfg.frame_dtype,
                 "embeddings_cached": bool(frames["train"].from_cache)}
        c = result.columns
        ctx.log(f"[{ctx.split}] events ({ctx.init}): {c['head']}"
                + (f" {c['hidden']}" if c["hidden"] else "") + f", lr {c['lr']:g}, epoch {c['best_epoch']}, "
                f"median {c['median_filter_ms']:g} ms, min {c['min_duration_ms']:g} ms, threshold {c['threshold']:g}; "
                "test " + ", ".join(f"{k} {v:.4f}" for k, v in result.test.items() if k in data.metrics))
        return [ProtocolResult(result.test, extra, predictions=Predictions(events=result.events))]
