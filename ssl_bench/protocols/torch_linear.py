"""The torch linear probe: all classes in one matrix product, full-batch L-BFGS, on any device.

scikit-learn's probe fits one logistic regression per class for a multi-label task (527 of them
for AudioSet), each step a matrix-vector product bound by memory bandwidth.  Here every step
of every class is one matrix product over all classes, on the GPU when there is one.

It solves the same problems as :func:`~ssl_bench.protocols.linear.fit_linear`, so the two agree
up to convergence:

* single-label: multinomial softmax cross-entropy (a binary logistic regression on one logit
  when the training part has two classes, as scikit-learn does), one joint model fitted with
  ``torch.optim.LBFGS`` (strong-Wolfe line search);
* multi-label: one-vs-rest binary cross-entropy; the classes are independent problems, so each
  keeps its own L-BFGS history, step and stopping test (:class:`PerClassLBFGS`), batched;
* the objective is scikit-learn's divided by ``C * n``:
  ``mean_i loss_i + ||W||^2 / (2 C n)`` (biases unpenalised), and L-BFGS stops when every
  gradient entry (of a class, for multi-label) is below ``1e-4``: scikit-learn's ``tol`` on
  that same scaled objective;
* features standardised with the training part's mean and (population) std; ``C`` chosen on
  ``valid`` by the first metric, ties keep the smaller ``C``; ``test`` scored once.

The ``C`` grid is walked from the strongest regularisation to the weakest, each fit starting
from the previous solution (warm start).  The fit runs in float32 with TF32 matmuls off (the
agreement tests pass in float32).  :func:`fit_layer_mixture` reuses the same machinery for
SUPERB's learned weighted sum of layers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import evaluate
from .selection import VALID, choose_on_validation, require_single

#: L-BFGS stops when the largest gradient entry of the scaled objective is below this
#: (scikit-learn's LogisticRegression ``tol``, applied the same way).
GRAD_TOL = 1e-4
HISTORY = 20
#: a multi-label fit on a CPU keeps all of torch's threads only when they evaluate this much faster
MANY_THREADS_MARGIN = 1.25
PARTS = ("train", "valid", "test")


@dataclass
class ProbeResult:
    """A linear probe's result (either solver): ``C`` chosen on validation by ``metric``, the
    chosen fit's ``valid`` and ``test`` metrics, each ``C``'s validation score (``valid_by_C``),
    and ``selection`` (``valid``, or ``single C`` without validation data)."""

    C: float
    metric: str
    valid: dict[str, float]
    test: dict[str, float]
    valid_by_C: dict[float, float] = field(default_factory=dict)
    embed_dim: int = 0
    from_cache: bool = False
    selection: str = VALID
    test_scores: np.ndarray | None = None  # [n_test, classes]: the chosen fit's scores, clip by clip


@contextlib.contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    """No TF32 matmuls while fitting: L-BFGS needs gradients good to 1e-4."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


class _Targets:
    """The loss and the scores of one kind of target (multi-label, binary or multinomial)."""

    def __init__(self, y_train: np.ndarray, num_classes: int, multilabel: bool, device: torch.device):
        self.num_classes, self.multilabel = num_classes, multilabel
        if multilabel:
            self.classes = np.arange(num_classes)
            self.target = torch.as_tensor(np.asarray(y_train, dtype=np.float32), device=device)
            self.outputs = num_classes
            return
        y = np.asarray(y_train).astype(np.int64)
        self.classes = np.unique(y)  # classes absent from training score 0, as in scikit-learn
        if len(self.classes) < 2:
            raise ValueError("linear probe: the training part has fewer than two classes")
        local = np.searchsorted(self.classes, y)
        self.binary = len(self.classes) == 2
        self.outputs = 1 if self.binary else len(self.classes)
        self.target = torch.as_tensor(local.astype(np.float32) if self.binary else local, device=device)
        if self.binary:
            self.target = self.target[:, None]

    def prior_logits(self) -> torch.Tensor:
        """The biases of the best model with zero weights: each class's training log-odds
        (multi-label, binary) or log-frequency (multinomial).  Fits start there: the optimum
        is the same as from zeros, a few iterations closer."""
        n = self.target.shape[0]
        if self.multilabel or self.binary:
            p = self.target.float().mean(0).clamp(1.0 / n, 1.0 - 1.0 / n)
            return torch.log(p / (1 - p))
        counts = torch.bincount(self.target, minlength=self.outputs).float()
        return torch.log(counts / n)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean over examples of the loss (summed over classes for multi-label)."""
        n = logits.shape[0]
        if self.multilabel or self.binary:
            return F.binary_cross_entropy_with_logits(logits, self.target, reduction="sum") / n
        return F.cross_entropy(logits, self.target, reduction="sum") / n

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """``[N, num_classes]`` probabilities (float64)."""
        logits = logits.double()
        if self.multilabel:
            return torch.sigmoid(logits).cpu().numpy()
        if self.binary:
            p = torch.sigmoid(logits[:, 0])
            proba = torch.stack([1 - p, p], dim=1)
        else:
            proba = torch.softmax(logits, dim=1)
        out = np.zeros((logits.shape[0], self.num_classes), dtype=np.float64)
        out[:, self.classes] = proba.cpu().numpy()
        return out


def standardise(X: dict[str, np.ndarray], device: torch.device, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Each part as float32 on ``device``, standardised with the training part's statistics
    over the first axis (scikit-learn's ``StandardScaler``: population std, a constant feature
    keeps scale 1); works for ``[N, D]`` and per-layer ``[N, K, D]`` embeddings alike.  The
    statistics are accumulated in float64, two passes of ``chunk`` rows, so no float64 copy of
    the embeddings is ever made."""
    train = X["train"]
    n = len(train)

    def chunks(a: np.ndarray):
        for i in range(0, len(a), chunk):
            yield torch.as_tensor(np.asarray(a[i:i + chunk]), device=device)

    total = torch.zeros(train.shape[1:], dtype=torch.float64, device=device)
    for t in chunks(train):
        total += t.double().sum(dim=0)
    mean = total / n
    total.zero_()
    for t in chunks(train):
        total += (t.double() - mean).pow(2).sum(dim=0)
    std = (total / n).sqrt()
    std = torch.where(std < 10 * torch.finfo(torch.float64).eps, torch.ones_like(std), std)
    out = {}
    for part, x in X.items():
        z = torch.empty(x.shape, dtype=torch.float32, device=device)
        for i, t in enumerate(chunks(x)):
            z[i * chunk:(i + 1) * chunk] = ((t.double() - mean) / std).float()
        out[part] = z
    return out


class LinearHead(nn.Module):
    """``x @ W.T + b``; ``W`` is the penalised weight (zeros at the start, as scikit-learn's)."""

    def __init__(self, dim: int, outputs: int):
        super().__init__()
        self.linear = nn.Linear(dim, outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def penalised(self) -> list[torch.Tensor]:
        return [self.linear.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class LayerMixture(nn.Module):
    """SUPERB's weighted sum: ``softmax(w) . x[:, k]`` over the layers, then a linear head.

    The weighted sum is standardised again with its training-part statistics (recomputed in
    every full-batch training forward, kept for evaluation), so the head's L2 penalty sees
    features of the same scale whatever the weights: without it, a mixture of weakly correlated
    layers has a smaller norm than any single layer, and the penalty alone would push the
    weights to one layer.  The layer weights start equal and are not penalised.
    """

    def __init__(self, layers: int, dim: int, outputs: int):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(layers))
        self.head = LinearHead(dim, outputs)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def penalised(self) -> list[torch.Tensor]:
        return self.head.penalised()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, K, D]
        z = torch.einsum("k,nkd->nd", self.weights(), x)
        if self.training:  # the full training part: its statistics, differentiated through
            mean, std = z.mean(dim=0), z.std(dim=0, unbiased=False).clamp_min(1e-6)
            self.mean.copy_(mean.detach())
            self.std.copy_(std.detach())
        else:
            mean, std = self.mean, self.std
        return self.head((z - mean) / std)


def lbfgs_fit(model: nn.Module, x: torch.Tensor, targets: _Targets, C: float, max_iter: int) -> int:
    """Minimise ``mean loss + ||penalised||^2 / (2 C n)`` over ``model``'s parameters from where
    they are (warm start), full batch, L-BFGS with a strong-Wolfe line search; returns the
    number of iterations."""
    n = x.shape[0]
    strength = 0.5 / (float(C) * n)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=int(max_iter), max_eval=int(max_iter) * 5 // 4,
                            tolerance_grad=GRAD_TOL, tolerance_change=1e-12, history_size=HISTORY,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        loss = targets.loss(model(x)) + strength * sum(p.pow(2).sum() for p in model.penalised())
        loss.backward()
        return loss

    model.train()
    opt.step(closure)
    if any(True for _ in model.buffers()):  # statistics of the accepted point, not the last line-search trial
        with torch.no_grad():
            model(x)
    model.eval()
    state = opt.state[next(iter(model.parameters()))]
    return int(state.get("n_iter", 0))


class _ThreadChoice:
    """On a CPU: one thread or torch's thread count, whichever evaluates faster here and now.

    The first evaluation runs on one thread, the second on all of torch's, each timed per
    class row; the rest of the fit (and the later fits of the grid) use the faster.  On a
    machine whose cores are busy with other work, OpenMP threads wait for each other at every
    operation (a descheduled thread holds up the rest for a time slice), and one thread is
    2-3x faster than two on a loaded 2-core machine; on idle cores the matrix products gain
    from all of them.  The timed evaluations are mostly matrix products, which threads help
    most; the small operations between them (the two-loop recursion) gain less and lose more
    to waiting, so all threads are kept only when they evaluate ``MANY_THREADS_MARGIN`` times
    faster.  The count is only a speed choice: the fit solves the same problem.
    """

    def __init__(self) -> None:
        self.many = torch.get_num_threads()
        self.chosen: int | None = self.many if self.many == 1 else None
        self.seconds_per_row: dict[int, float] = {}

    @contextlib.contextmanager
    def evaluation(self, rows: int) -> Iterator[None]:
        count = self.chosen or (self.many if 1 in self.seconds_per_row else 1)
        torch.set_num_threads(count)
        start = time.perf_counter()
        yield
        if self.chosen is None:
            self.seconds_per_row[count] = (time.perf_counter() - start) / max(rows, 1)
            if len(self.seconds_per_row) == 2:
                faster = self.seconds_per_row[self.many] * MANY_THREADS_MARGIN < self.seconds_per_row[1]
                self.chosen = self.many if faster else 1
                torch.set_num_threads(self.chosen)


class PerClassLBFGS:
    """Multi-label: minimise each class's ``mean BCE + ||w_k||^2 / (2 C n)`` with its own L-BFGS
    (history, step length, stopping), all classes' products in one matrix product per step.

    The classes of a multi-label probe are independent problems (scikit-learn's one-vs-rest),
    and one L-BFGS over all of them shares a single step length and curvature history between
    classes whose curvatures differ by orders of magnitude (rare and common labels): it needs
    several times the iterations of per-class fits.  Here each class keeps its own two-loop
    recursion and Armijo backtracking step and stops when its own largest gradient entry is
    below ``GRAD_TOL`` (scikit-learn's per-class criterion), so only the classes still moving
    are evaluated.  The objective is convex, so every accepted step has positive curvature.

    Each evaluation is two matrix products and two elementwise passes over ``[classes, N]``:
    with ``b_k = X^T y_k / n`` computed once, ``mean BCE_k = mean softplus(z_k) - theta_k . b_k``
    and its gradient is ``X^T sigmoid(z_k) / n - b_k`` (the targets never enter a step).  The
    curvature pairs of the classes still moving are kept compact (gathered again only when a
    class stops), so the two-loop recursion touches no rows of finished classes.  On a CPU the
    thread count is chosen by timing the first two evaluations (:class:`_ThreadChoice`).

    Called once per ``C`` of the grid (the same training data), it keeps each class's
    curvature pairs: only the penalty's share of ``y = grad(theta + s) - grad(theta)`` depends
    on ``C``, so the pairs are corrected exactly (``y += (lam' - lam) s`` on the weights) and the
    next ``C`` starts with a good Hessian model as well as from the previous solution.
    A call returns the number of iterations of the slowest class.
    """

    def __init__(self) -> None:
        # every class's pairs (s, y, 1/s.y), oldest first; zero rows: that class made no step
        self.history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.lam: float | None = None
        self.x: torch.Tensor | None = None
        self.targets: _Targets | None = None
        self.x1: torch.Tensor | None = None  # [n, D + 1]: the bias is the last, unpenalised, column
        self.xty: torch.Tensor | None = None  # [K, D + 1]: X^T y_k / n of each class
        self.threads: _ThreadChoice | None = None

    def __call__(self, model: LinearHead, x: torch.Tensor, targets: _Targets, C: float, max_iter: int) -> int:
        if x.device.type != "cpu":
            return self._fit(model, x, targets, C, max_iter, contextlib.nullcontext)
        if self.threads is None:
            self.threads = _ThreadChoice()
        threads = torch.get_num_threads()
        try:
            return self._fit(model, x, targets, C, max_iter, self.threads.evaluation)
        finally:
            torch.set_num_threads(threads)

    @torch.no_grad()
    def _fit(self, model: LinearHead, x: torch.Tensor, targets: _Targets, C: float, max_iter: int,
             evaluation: Callable[[int], contextlib.AbstractContextManager]) -> int:
        n = x.shape[0]
        lam = 1.0 / (float(C) * n)
        if self.x is not x or self.targets is not targets:
            self.history = []
            self.x1 = torch.cat([x, x.new_ones(n, 1)], dim=1)
            self.xty = (targets.target.T @ self.x1) / n
        elif self.lam is not None and lam != self.lam:
            self.history = [self._pair(s_, y_ + (lam - self.lam) * _weights_only(s_)) for s_, y_, _ in self.history]
        self.x, self.targets, self.lam = x, targets, lam
        x1, xty, history = self.x1, self.xty, self.history
        xt = x1.T
        lin = model.linear
        theta = torch.cat([lin.weight, lin.bias[:, None]], dim=1).clone()  # [K, D + 1]
        K = theta.shape[0]

        def value(th: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Each row's objective and logits ``[k, n]``."""
            z = th @ xt
            f = F.softplus(z).sum(1) / n - torch.linalg.vecdot(th, b) + 0.5 * lam * th[:, :-1].pow(2).sum(1)
            return f, z

        def grad(z: torch.Tensor, th: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            g = torch.sigmoid(z) @ x1
            g.div_(n).sub_(b)
            g[:, :-1] += lam * th[:, :-1]
            return g

        with evaluation(K):
            f, z = value(theta, xty)
            g = grad(z, theta, xty)
        del z
        active = g.abs().amax(dim=1) > GRAD_TOL
        a = active.nonzero().squeeze(1)
        work = [tuple(t[a] for t in pair) for pair in history]  # the pairs of the active classes
        it = 0
        while it < max_iter and len(a):
            it += 1
            ga = g[a]
            d = self._direction(ga, work)
            d.neg_()
            slope = (ga * d).sum(1)
            theta_a, f_a = theta[a], f[a]
            b_a = xty if len(a) == K else xty[a]
            # Armijo backtracking, per class: only the classes not yet accepted are evaluated again
            new_theta, new_f, new_g = theta_a.clone(), f_a.clone(), ga.clone()
            step = torch.ones(len(a), device=x.device, dtype=theta.dtype)
            pending = torch.arange(len(a), device=x.device)
            for _ in range(40):
                all_pending = len(pending) == len(a)
                trial = theta_a + d if all_pending else theta_a[pending] + step[pending, None] * d[pending]
                b = b_a if all_pending else b_a[pending]
                with evaluation(len(pending)):
                    f_t, z = value(trial, b)
                    ok = f_t <= f_a[pending] + 1e-4 * step[pending] * slope[pending]
                    done = pending[ok]
                    if bool(ok.all()):  # the gradient only where the step is accepted
                        new_theta[done], new_f[done], new_g[done] = trial, f_t, grad(z, trial, b)
                    else:
                        new_theta[done], new_f[done] = trial[ok], f_t[ok]
                        new_g[done] = grad(z[ok], trial[ok], b[ok])
                del z
                pending = pending[~ok]
                if len(pending) == 0:
                    break
                step[pending] *= 0.5
            pair = self._pair(new_theta - theta_a, new_g - ga)
            work.append(pair)
            full = tuple(torch.zeros((K, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in pair)
            for t_full, t in zip(full, pair):
                t_full[a] = t
            history.append(full)
            if len(history) > HISTORY:
                history.pop(0)
                work.pop(0)
            theta[a], f[a], g[a] = new_theta, new_f, new_g
            still = new_g.abs().amax(dim=1) > GRAD_TOL
            if len(pending):  # no decrease found along the direction: float32 resolution reached
                still[pending] = False
            if not bool(still.all()):  # some classes stopped: keep only the others' pairs
                active[a] = still
                a = a[still]
                work = [tuple(t[still] for t in pair) for pair in work]
        lin.weight.copy_(theta[:, :-1])
        lin.bias.copy_(theta[:, -1])
        return it

    @staticmethod
    def _pair(s: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sy = (s * y).sum(1)
        return s, y, torch.where(sy > 1e-12, 1.0 / sy.clamp_min(1e-12), torch.zeros_like(sy))

    @staticmethod
    def _direction(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The L-BFGS two-loop recursion over ``pairs`` (rows: the same classes as ``g``): ``H^-1 g``."""
        q = g.clone()
        alphas = []
        for s_, y_, r_ in reversed(pairs):
            alpha = r_ * torch.linalg.vecdot(s_, q)
            q.addcmul_(y_, alpha[:, None], value=-1)
            alphas.append(alpha)
        # initial Hessian: s.y / y.y of each class's newest pair; a class without any pair
        # (its first step) takes at most a unit step in l1, as torch.optim.LBFGS does
        scale = (1.0 / g.abs().sum(1).clamp_min(1e-30)).clamp(max=1.0)
        unset = torch.ones_like(scale, dtype=torch.bool)
        for s_, y_, r_ in reversed(pairs):
            has = unset & (r_ > 0)
            if bool(has.any()):
                yy = torch.linalg.vecdot(y_, y_).clamp_min(1e-30)
                scale = torch.where(has, 1.0 / (r_ * yy).clamp_min(1e-30), scale)  # 1 / (r y.y) = s.y / y.y
                unset &= ~has
            if not bool(unset.any()):
                break
        q *= scale[:, None]
        for (s_, y_, r_), alpha in zip(pairs, reversed(alphas)):
            beta = r_ * torch.linalg.vecdot(y_, q)
            q.addcmul_(s_, (alpha - beta)[:, None])
        return q


def _weights_only(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its last (bias) column zeroed: the part of a step the penalty sees."""
    out = t.clone()
    out[:, -1] = 0
    return out


def fit_path(
    model: nn.Module,
    Z: dict[str, torch.Tensor],
    y: dict[str, np.ndarray],
    targets: _Targets,
    *,
    metrics: list[str],
    Cs: Sequence[float],
    max_iter: int,
    fit: Callable[[Any, torch.Tensor, _Targets, float, int], int] = lbfgs_fit,
) -> tuple[ProbeResult, dict[str, Any]]:
    """Fit ``model`` for each ``C`` (ascending, warm-started) with ``fit``, choose ``C`` on
    ``valid`` by the first metric (ties keep the smaller ``C``), score ``test`` with the chosen fit.

    Returns the result and ``{"state": chosen state dict, "iterations": {C: n}}``.
    """
    Cs = sorted(float(c) for c in Cs)
    if not Cs:
        raise ValueError("linear.C is empty: give at least one regularisation value")
    has_valid = len(y["valid"]) > 0
    require_single(Cs, has_valid, owner="linear probe", what=f"C from {Cs}", instead="give one C", error=ValueError)
    metric = metrics[0]
    iterations: dict[float, int] = {}

    def trial(C: float) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        iterations[C] = fit(model, Z["train"], targets, C, max_iter)  # warm-started from the previous C
        if not has_valid:
            return {}, _snapshot(model)
        with torch.no_grad():  # the selection metric only (per-class AP/AUC of 527 classes cost seconds)
            score = evaluate([metric], targets.scores(model(Z["valid"])), y["valid"])[metric]
        return {metric: score}, _snapshot(model)

    choice = choose_on_validation(Cs, trial, metric)  # ascending Cs: ties keep the smaller C
    C, valid, state = choice.candidate, choice.valid, choice.kept
    model.load_state_dict(state)
    with torch.no_grad():
        if has_valid and list(metrics) != [metric]:  # the selection metric alone is already there
            valid = evaluate(metrics, targets.scores(model(Z["valid"])), y["valid"])
        test_scores = targets.scores(model(Z["test"]))
        test = evaluate(metrics, test_scores, y["test"])
    result = ProbeResult(C=C, metric=metric, valid=valid, test=test, valid_by_C=choice.scores,
                         embed_dim=int(Z["train"].shape[-1]), selection=VALID if has_valid else "single C",
                         test_scores=test_scores)
    return result, {"state": state, "iterations": iterations}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_linear_torch(
    X: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    *,
    num_classes: int,
    multilabel: bool,
    metrics: list[str],
    Cs: Sequence[float],
    max_iter: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ProbeResult:
    """The contract of :func:`~ssl_bench.protocols.linear.fit_linear`, all classes in one torch
    model (see the module docstring).  ``seed`` is accepted for the same signature: the
    fit starts from zeros and is full batch, so it has nothing random."""
    device = torch.device(device)
    with _full_float32(device):
        targets = _Targets(y["train"], num_classes, multilabel, device)
        Z = standardise(X, device)
        model = LinearHead(Z["train"].shape[1], targets.outputs).to(device)
        model.linear.bias.data.copy_(targets.prior_logits())
        result, _ = fit_path(model, Z, y, targets, metrics=metrics, Cs=Cs, max_iter=max_iter,
                             fit=PerClassLBFGS() if multilabel else lbfgs_fit)
    return result


def fit_layer_mixture(
    X: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    *,
    num_classes: int,
    multilabel: bool,
    metrics: list[str],
    Cs: Sequence[float],
    max_iter: int = 1000,
    device: torch.device | str = "cpu",
) -> tuple[ProbeResult, list[float]]:
    """SUPERB's learned weighted sum of layers on per-layer embeddings ``[N, K, D]``: each layer
    standardised with training statistics, softmax weights over the ``K`` layers and a linear
    head trained jointly (L-BFGS, the linear probe's objective; the weights are unpenalised),
    ``C`` and with it the weights chosen on ``valid``.  Returns the result and the chosen fit's
    layer weights."""
    device = torch.device(device)
    with _full_float32(device):
        targets = _Targets(y["train"], num_classes, multilabel, device)
        Z = standardise(X, device)
        _, K, D = Z["train"].shape
        model = LayerMixture(K, D, targets.outputs).to(device)
        model.head.linear.bias.data.copy_(targets.prior_logits())
        result, fit = fit_path(model, Z, y, targets, metrics=metrics, Cs=Cs, max_iter=max_iter)
        weights = torch.softmax(fit["state"]["layer_logits"].double(), dim=0).cpu().tolist()
    return result, [float(w) for w in weights]
