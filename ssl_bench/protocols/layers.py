"""``layers``: a linear probe on every encoder layer, and SUPERB's learned weighted sum.

SSL encoders often carry their most linearly usable features below the top layer, so this
protocol probes them all from one extraction (``ctx.embeddings(layers=True)``: one forward
pass per clip, every layer's pooled tokens cached).  Rows carry a ``layer`` column:

* ``"0"``: the pooled input of the first block (patch embedding + positions);
* ``"i"``: the pooled output of block ``i`` (zero-padded to one width: ``"01"`` .. ``"12"``
  for a 12-block encoder, so that tables sort layers in depth order);
* ``"final"``: the encoder's pooled output (after its final norm): what ``linear`` probes;
* ``"weighted"``: SUPERB's learned softmax-weighted sum of all of the above, each layer
  standardised with training statistics, the weights and a linear head trained jointly by
  L-BFGS on the linear probe's objective; ``C`` (and with it the weights) is chosen on
  validation, and the chosen weights are recorded in ``layer_weights``.

Each per-layer probe is the ``linear`` protocol's (same solver choice and ``C`` grid, from the
``layers`` section, which has the ``linear`` section's fields).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import distributed as D
from .base import Predictions, Protocol, ProtocolContext, ProtocolResult
from .linear import LinearConfig, probe_embeddings
from .torch_linear import fit_layer_mixture


@dataclass
class LayersConfig(LinearConfig):
    """Per-layer linear probes (``linear``'s settings) plus the learned weighted sum of layers."""

    weighted: bool = True  # also fit SUPERB's softmax-weighted sum of the layers


def layer_names(count: int) -> list[str]:
    """``["0", "1", ..., "final"]`` for ``count`` entries of a per-layer embedding; indices are
    zero-padded to one width (``"00"``..``"12"`` for a 12-block encoder) so tables sort them in
    depth order."""
    width = len(str(count - 2))
    return [str(i).zfill(width) for i in range(count - 1)] + ["final"]


class LayersProtocol(Protocol):
    """``layers``: a linear probe per encoder layer plus a learned weighted sum (one extraction)."""

    Config = LayersConfig
    frozen = True
    help = "only the per-layer linear probes and the learned weighted sum of layers"

    def run(self, ctx: ProtocolContext) -> list[ProtocolResult]:
        E = ctx.embeddings(layers=True)  # {"train": [N, K, D], ...}
        if not D.current().is_main:
            return []
        y, data, cfg = ctx.targets(), ctx.data, ctx.section
        cached = ctx.embeddings_cached(layers=True)
        names = layer_names(E["train"].shape[1])
        out = []
        for k, name in enumerate(names):
            X = {p: np.ascontiguousarray(e[:, k]) for p, e in E.items()}
            result, solver = probe_embeddings(X, y, data, cfg, ctx.seed, ctx.device)
            ctx.metrics({"split": ctx.split, "layer": name, "C": result.C, "solver": solver,
                         "valid_by_C": {str(c): v for c, v in result.valid_by_C.items()}})
            out.append(ProtocolResult(result.test, {
                "layer": name, "C": result.C, "solver": solver, "selection": result.selection,
                "embeddings_cached": cached, **{f"valid_{m}": v for m, v in result.valid.items()}},
                predictions=Predictions(scores=result.test_scores)))
        if cfg.weighted:
            result, weights = fit_layer_mixture(
                {p: np.asarray(e) for p, e in E.items()}, y, num_classes=data.num_classes,
                multilabel=data.multilabel, metrics=data.metrics, Cs=list(cfg.C) or [1.0],
                max_iter=int(cfg.max_iter), device=ctx.device)
            rounded = [round(w, 6) for w in weights]
            ctx.metrics({"split": ctx.split, "layer": "weighted", "C": result.C, "layer_weights": rounded,
                         "valid_by_C": {str(c): v for c, v in result.valid_by_C.items()}})
            out.append(ProtocolResult(result.test, {
                "layer": "weighted", "C": result.C, "solver": "torch", "selection": result.selection,
                "layer_weights": rounded, "embeddings_cached": cached,
                **{f"valid_{m}": v for m, v in result.valid.items()}},
                predictions=Predictions(scores=result.test_scores)))
        ctx.log(f"[{ctx.split}] layers ({ctx.init}): test {data.metrics[0]} by layer " + ", ".join(
            f"{r.extra['layer']} {r.metrics[data.metrics[0]]:.4f}" for r in out))
        return out
