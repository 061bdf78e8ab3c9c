"""Evaluation metrics, registered by name like any plugin (the ``register_metrics`` hook).

Two entry points, so every protocol scores predictions the same way::

    evaluate(["accuracy", "mAP"], scores, targets)          # -> {"accuracy": 0.9, "mAP": 0.81}
    evaluate_events(["event_onset_200ms_fms"], predicted, reference, labels)
    # -> {"event_onset_200ms_fms": F, "event_onset_200ms_fms_precision": P, ..._recall: R}

A metric is a :class:`Metric`: a function and the kind of input it scores.

* ``clip``: ``fn(scores [N, C], targets) -> float``; ``targets`` are ``[N]`` class ids or
  ``[N, C]`` multi-hot (:mod:`ssl_bench.metrics.clip`: accuracy, mAP, AUC, d_prime, d_prime_mean_auc,
  pitch_acc, chroma_acc).
* ``events``: ``fn(predicted, reference, labels) -> {part: value}``; ``predicted`` and
  ``reference`` map a file to its events (:class:`~ssl_bench.events.Event` or HEAR's
  ``{"label", "start", "end"}`` dicts in ms), ``labels`` are the class names
  (:mod:`ssl_bench.metrics.sed`: event-based onset and onset-offset F-measure, segment-based
  error rate, named as hear-eval-kit names them).

A function may return several values (F, precision, recall): the first is the metric's value,
the others are reported beside it as ``<name>_<part>``, as hear-eval-kit logs them.
``greater_is_better`` says which way the value improves (an error rate does not); choices on
validation maximise a task's first metric, so that metric must be one that grows.

A plugin adds one in a few lines, and tasks name it in their ``metrics``::

    from ssl_bench import hookimpl
    from ssl_bench.metrics import Metric

    @hookimpl
    def register_metrics(register):
        register("top3", Metric(top3_accuracy))          # clip scores
        register("onset_1s_fms", Metric(my_fn, input="events"))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from .clip import (
    AUC_EPS,
    accuracy,
    average_precision_per_class,
    check_scores,
    d_prime,
    d_prime_from_auc,
    d_prime_mean_auc,
    macro_auc,
    mean_average_precision,
    mean_d_prime,
    roc_auc_per_class,
    to_multi_hot,
)

__all__ = [
    "CLIP", "EVENTS", "INPUTS", "Metric", "UnknownMetricError", "get_metric", "metric_names", "evaluate",
    "evaluate_events", "AUC_EPS", "accuracy", "average_precision_per_class", "mean_average_precision",
    "roc_auc_per_class", "macro_auc", "d_prime", "d_prime_mean_auc", "d_prime_from_auc", "mean_d_prime",
    "to_multi_hot",
]

#: A metric of clip scores ``[N, C]`` against clip targets.
CLIP = "clip"
#: A metric of predicted events against reference events, per file.
EVENTS = "events"
INPUTS = (CLIP, EVENTS)


class UnknownMetricError(UserError, KeyError):
    """A metric name nobody registered; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``fn``, the ``input`` it scores (:data:`CLIP` or :data:`EVENTS`, see
    the module docstring), whether a ``greater`` value is better, and a line of ``help``."""

    fn: Callable[..., Any]
    input: str = CLIP
    greater_is_better: bool = True
    help: str = ""

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"Metric input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if not callable(self.fn):
            raise ValueError(f"Metric fn must be callable, got {self.fn!r}")


def _registry(registry: Any = None) -> Any:
    if registry is not None:
        return registry
    from ..registry import get_registry

    return get_registry()


def metric_names(input: str | None = None, registry: Any = None) -> list[str]:
    """Registered metric names, built-ins first (registration order); only those of one
    ``input`` kind when given."""
    reg = _registry(registry)
    names = list(reg.entries["metric"])
    if input is None:
        return names
    return [n for n in names if get_metric(n, reg).input == input]


def get_metric(name: str, registry: Any = None) -> Metric:
    """The metric registered as ``name`` (a plain function registered is a clip metric).
    An unknown name raises :class:`UnknownMetricError` listing the registered ones."""
    reg = _registry(registry)
    if name not in reg.entries["metric"]:
        raise UnknownMetricError(f"unknown metric {name!r}; available: {', '.join(metric_names(registry=reg))}")
    factory = reg.get("metric", name).factory
    return factory if isinstance(factory, Metric) else Metric(factory)


def _named(name: str, value: Any) -> dict[str, float]:
    """A metric's return value as result columns: ``{name: first}`` plus ``name_<part>``."""
    if isinstance(value, Mapping):
        items = list(value.items())
        if not items:
            raise ValueError(f"metric {name!r} returned no value")
        out = {name: float(items[0][1])}
        out.update({f"{name}_{part}": float(v) for part, v in items[1:]})
        return out
    return {name: float(value)}


def _resolve(names: Sequence[str], input: str, registry: Any) -> list[tuple[str, Metric]]:
    metrics = [(n, get_metric(n, registry)) for n in names]
    wrong = [n for n, m in metrics if m.input != input]
    if wrong:
        other = "evaluate_events" if input == CLIP else "evaluate"
        raise ValueError(f"metric {wrong[0]!r} scores {get_metric(wrong[0], registry).input}, not {input} "
                         f"(use {other})")
    return metrics


def evaluate(names: Sequence[str], scores, targets, registry: Any = None) -> dict[str, float]:
    """Compute each named clip metric of ``scores`` ``[N, C]`` against ``targets``.

    ``targets``: ``[N]`` integer class ids or ``[N, C]`` multi-hot.  Returns ``{name: value}``
    in the order of ``names`` (a metric with several values adds ``name_<part>`` after it).
    """
    metrics = _resolve(names, CLIP, registry)
    scores, targets = check_scores(scores, targets)
    out: dict[str, float] = {}
    auc = None
    for name, metric in metrics:
        if metric.fn in (macro_auc, d_prime, d_prime_mean_auc):
            if auc is None:  # the per-class AUCs are the slow part: compute them once
                auc = roc_auc_per_class(scores, targets)
            defined = auc[~np.isnan(auc)]
            mean = float(defined.mean()) if defined.size else math.nan
            out[name] = (mean if metric.fn is macro_auc else mean_d_prime(auc) if metric.fn is d_prime
                         else d_prime_from_auc(mean))
        else:
            out.update(_named(name, metric.fn(scores, targets)))
    return out


def evaluate_events(names: Sequence[str], predicted: Mapping[str, Sequence[Any]],
                    reference: Mapping[str, Sequence[Any]], labels: Sequence[str],
                    registry: Any = None) -> dict[str, float]:
    """Compute each named event metric of ``predicted`` against ``reference`` (``{file:
    [events]}``, see the module docstring), ``labels`` the class names.  Returns the metric's
    value under its name and its other parts as ``name_<part>``, in the order of ``names``."""
    out: dict[str, float] = {}
    for name, metric in _resolve(names, EVENTS, registry):
        out.update(_named(name, metric.fn(predicted, reference, list(labels))))
    return out
