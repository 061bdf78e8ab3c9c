"""Choosing on validation: the one rule every protocol that picks a setting follows.

A protocol tries its candidates (``C`` values, ``k`` values, (hidden, lr) pairs, epochs,
fine-tuning grid points) in the order it gives them and scores each on the validation part.
The task's first metric decides: a candidate replaces the one kept only when it scores
strictly higher, so a tie keeps the earlier candidate.  A ``tiebreak`` orders candidates
whose metric ties (fine-tuning: :func:`lower_loss`).  The test part never enters a choice.

Without validation data there is nothing to choose with: :func:`require_single` allows one
candidate only, which is kept unscored; the row's ``selection`` column then says so
(``single C``, ``single k``, ``max epochs``, ``last``) instead of :data:`VALID`.

:func:`choose_on_validation` walks a list of candidates; :class:`Best` is the same rule one
candidate at a time, for choices made as training goes (epochs, grid points that may diverge).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..config import ConfigError

#: The ``selection`` column of a result chosen on validation.
VALID = "valid"

T = TypeVar("T", bound=Hashable)  # a candidate
Kept = TypeVar("Kept")  # what the caller keeps of a candidate (a fitted model, weights, ...)

#: ``tiebreak(valid metrics)``: higher wins among candidates whose metric ties.
Tiebreak = Callable[[Mapping[str, float]], float]


def lower_loss(valid: Mapping[str, float]) -> float:
    """Tie-break on the validation ``loss``: the lower wins (no finite loss: no preference).
    Small validation sets tie on accuracy often; their losses rarely tie."""
    loss = valid.get("loss")
    return -float(loss) if loss is not None and math.isfinite(loss) else 0.0


def require_single(candidates: Sequence[object], has_valid: bool, *, owner: str, what: str, instead: str,
                   error: type[Exception] = ConfigError) -> None:
    """Without validation data, allow one candidate only; otherwise raise ``error``:
    ``"<owner>: no validation data to choose <what>; set data.valid_fraction > 0 or <instead>"``."""
    if not has_valid and len(candidates) > 1:
        raise error(f"{owner}: no validation data to choose {what}; set data.valid_fraction > 0 or {instead}")


class Best(Generic[T]):
    """The best candidate offered so far, by ``metric`` (then ``tiebreak``) on validation.

    ``candidate`` and ``valid`` (its validation metrics) are the best's; ``scores`` maps every
    scored candidate to its ``metric``, in the order offered.  A candidate offered without
    validation metrics (an empty mapping) is kept only if it is the first.
    """

    def __init__(self, metric: str, tiebreak: Tiebreak | None = None):
        self.metric = metric
        self.tiebreak = tiebreak
        self.found = False
        self.candidate: T | None = None
        self.valid: dict[str, float] = {}
        self.scores: dict[T, float] = {}

    def _rank(self, valid: Mapping[str, float]) -> tuple[float, float]:
        return float(valid[self.metric]), (self.tiebreak(valid) if self.tiebreak is not None else 0.0)

    def beats(self, valid: Mapping[str, float]) -> bool:
        """Whether a candidate with these validation metrics would replace the best."""
        if not self.found:
            return True
        return bool(valid) and bool(self.valid) and self._rank(valid) > self._rank(self.valid)

    def offer(self, candidate: T, valid: Mapping[str, float]) -> bool:
        """Consider ``candidate`` with its validation metrics; True when it is the best now."""
        if valid:
            self.scores[candidate] = valid[self.metric]
        if not self.beats(valid):
            return False
        self.found, self.candidate, self.valid = True, candidate, dict(valid)
        return True


@dataclass
class Choice(Generic[T, Kept]):
    """What :func:`choose_on_validation` chose.

    ``candidate``: the chosen one; ``valid``: its validation metrics (empty without validation
    data); ``scores``: each candidate's selection metric, in the order tried (empty without
    validation data); ``kept``: what ``evaluate`` returned beside the metrics for the chosen one.
    """

    candidate: T
    valid: dict[str, float]
    scores: dict[T, float]
    kept: Kept


def choose_on_validation(candidates: Iterable[T], evaluate: Callable[[T], tuple[Mapping[str, float], Kept]],
                         metric: str, tiebreak: Tiebreak | None = None) -> Choice[T, Kept]:
    """Try each candidate in order and keep the best on validation (see the module docstring).

    ``evaluate(candidate)`` fits what the candidate asks for and returns ``(validation metrics,
    what to keep if it is chosen)``; the metrics are empty when there is no validation data
    (then only the first candidate is kept: call :func:`require_single` first).
    """
    best: Best[T] = Best(metric, tiebreak)
    kept: Kept | None = None
    for candidate in candidates:
        valid, keep = evaluate(candidate)
        if best.offer(candidate, valid):
            kept = keep
    if not best.found:
        raise ValueError("choose_on_validation: no candidates to choose from")
    return Choice(best.candidate, best.valid, best.scores, kept)  # type: ignore[arg-type]
