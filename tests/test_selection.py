"""The one rule of choosing on validation (ssl_bench.protocols.selection) that linear, kNN,
MLP, layers and fine-tuning share: order, strict improvement, tie-break, no validation data."""

from __future__ import annotations

import math

import pytest

from ssl_bench.config import ConfigError
from ssl_bench.protocols.selection import VALID, Best, choose_on_validation, lower_loss, require_single


def test_the_first_strictly_better_candidate_wins_and_ties_keep_the_earlier():
    scores = {0.1: 0.5, 1.0: 0.7, 10.0: 0.7, 100.0: 0.6}
    choice = choose_on_validation(scores, lambda c: ({"accuracy": scores[c], "mAP": 0.0}, f"model {c}"), "accuracy")
    assert (choice.candidate, choice.kept) == (1.0, "model 1.0")
    assert choice.valid == {"accuracy": 0.7, "mAP": 0.0}
    assert list(choice.scores.items()) == list(scores.items())  # every candidate, in the order tried
    reverse = dict(reversed(list(scores.items())))
    assert choose_on_validation(reverse, lambda c: ({"accuracy": reverse[c]}, None), "accuracy").candidate == 10.0


def test_a_tiebreak_orders_equal_metrics_and_lower_loss_wins():
    valid = {1: {"accuracy": 0.9, "loss": 0.5}, 2: {"accuracy": 0.9, "loss": 0.3}, 3: {"accuracy": 0.9, "loss": 0.4},
             4: {"accuracy": 0.8, "loss": 0.1}}
    assert choose_on_validation(valid, lambda e: (valid[e], None), "accuracy", tiebreak=lower_loss).candidate == 2
    assert choose_on_validation(valid, lambda e: (valid[e], None), "accuracy").candidate == 1
    assert lower_loss({"accuracy": 1.0}) == 0.0 and lower_loss({"loss": math.nan}) == 0.0
    assert lower_loss({"loss": 0.25}) == -0.25


def test_a_nan_score_neither_beats_nor_is_beaten():
    best: Best[int] = Best("accuracy")
    assert best.offer(1, {"accuracy": math.nan}) and not best.offer(2, {"accuracy": 0.9})
    assert best.candidate == 1 and list(best.scores) == [1, 2]  # as `score > best` has always compared


def test_without_validation_one_candidate_is_kept_unscored():
    choice = choose_on_validation([0.5], lambda c: ({}, f"fit {c}"), "accuracy")  # fitted, nothing to score on
    assert (choice.candidate, choice.valid, choice.scores, choice.kept) == (0.5, {}, {}, "fit 0.5")
    require_single([0.5], has_valid=False, owner="linear probe", what="C from [0.5]", instead="give one C")
    require_single([1, 3], has_valid=True, owner="knn", what="k from [1, 3]", instead="give one k")
    with pytest.raises(ConfigError, match=r"^knn: no validation data to choose k from \[1, 3\]; "
                                          r"set data.valid_fraction > 0 or give one k$"):
        require_single([1, 3], has_valid=False, owner="knn", what="k from [1, 3]", instead="give one k")
    with pytest.raises(ValueError, match="no validation data to choose C"):
        require_single([1.0, 2.0], False, owner="linear probe", what="C", instead="give one C", error=ValueError)
    with pytest.raises(ValueError, match="no candidates"):
        choose_on_validation([], lambda c: ({}, None), "accuracy")
    assert VALID == "valid"
