"""Metrics and validation splits: values checked against hand computations and sklearn."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ssl_bench.components import Clip
from ssl_bench.metrics import AUC_EPS, average_precision_per_class, d_prime_from_auc, evaluate
from ssl_bench.splits import carve_validation


# --------------------------------------------------------------------------- metrics
def test_accuracy_multiclass_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    targets = np.array([0, 2, 1, 1])
    assert evaluate(["accuracy"], scores, targets) == {"accuracy": 0.75}


def test_multilabel_accuracy_counts_top_class_among_positives():
    scores = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.7]])
    targets = np.array([[0, 1, 0], [0, 0, 1]])
    assert evaluate(["accuracy"], scores, targets)["accuracy"] == 0.5


def test_map_auc_dprime_match_sklearn_and_skip_classes_without_positives():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 5))
    targets = (rng.random((40, 5)) < 0.3).astype(int)
    targets[:, 3] = 0  # no positives: excluded from mAP and AUC
    targets[:, 4] = 1  # no negatives: excluded from AUC only
    scores[:, 0] += 2 * targets[:, 0]  # a learnable class
    out = evaluate(["mAP", "AUC", "d_prime"], scores, targets)
    ap = [average_precision_score(targets[:, k], scores[:, k]) for k in (0, 1, 2, 4)]
    auc = [roc_auc_score(targets[:, k], scores[:, k]) for k in (0, 1, 2)]
    assert out["mAP"] == pytest.approx(np.mean(ap))
    assert out["AUC"] == pytest.approx(np.mean(auc))
    from scipy.stats import norm

    assert out["d_prime"] == pytest.approx(np.mean(math.sqrt(2) * norm.ppf(auc)))  # hear-eval-kit's
    assert list(out) == ["mAP", "AUC", "d_prime"]
    assert evaluate(["d_prime_mean_auc"], scores, targets)["d_prime_mean_auc"] == pytest.approx(
        math.sqrt(2) * norm.ppf(np.mean(auc)))  # PANNs' and AST's


def test_scene_metrics_by_hand():
    # 4 clips, 3 classes. Class 0: positives score 0.9, 0.4, negatives 0.5, 0.1 -> 3 of the 4
    # (positive, negative) pairs ordered right, AUC 3/4; ranked P N P N, AP (1/1 + 2/3) / 2 = 5/6.
    # Class 1: positives 0.8, 0.2, negatives 0.6, 0.3 -> AUC 2/4; ranked P N N P, AP (1 + 2/4) / 2 = 3/4.
    # Class 2 has no positives: left out of every average.
    scores = np.array([[0.9, 0.8, 0.3], [0.4, 0.2, 0.1], [0.5, 0.6, 0.7], [0.1, 0.3, 0.2]])
    targets = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    out = evaluate(["mAP", "AUC", "d_prime", "d_prime_mean_auc", "accuracy"], scores, targets)
    assert out["mAP"] == pytest.approx((5 / 6 + 3 / 4) / 2, abs=1e-12)
    assert out["AUC"] == pytest.approx(0.625, abs=1e-12)
    # hear-eval-kit's d': the mean of the classes' sqrt(2) Phi^-1(AUC), Phi^-1(3/4) = 0.6744897501960817
    # (the normal's upper quartile) and Phi^-1(1/2) = 0: 0.6744897501960817 * sqrt(2) / 2
    assert out["d_prime"] == pytest.approx(0.4769362762044699, abs=1e-12)
    # the AudioSet papers' d' of the mean AUC: sqrt(2) Phi^-1(0.625) = sqrt(2) * 0.31863936396437514
    assert out["d_prime_mean_auc"] == pytest.approx(0.4506241100243562, abs=1e-12)
    assert out["accuracy"] == 0.5  # top classes 0, 0, 2, 1: positives for the first two clips


def test_scene_metrics_match_hear_eval_kit():
    score = pytest.importorskip("heareval.score", reason="hear-eval-kit's scorer: pip install --no-deps heareval")
    rng = np.random.default_rng(3)
    labels = {str(k): k for k in range(7)}
    multilabel = (rng.random((80, 7)) < 0.3).astype(float)
    one_hot = np.eye(7)[rng.integers(0, 7, 80)]
    for targets in (multilabel, one_hot):
        scores = rng.normal(size=(80, 7)) + 1.2 * targets
        scores[:, 4] = np.round(scores[:, 4])  # ties
        ours = evaluate(["mAP", "d_prime", "AUC", "accuracy"], scores, targets)
        for name, theirs in (("mAP", "mAP"), ("d_prime", "d_prime"), ("AUC", "aucroc")):
            assert ours[name] == pytest.approx(float(score.available_scores[theirs](labels)(scores, targets)),
                                               abs=1e-12), name
    # top1_acc compares the top class with the first positive: the same as ours for one-hot targets
    assert ours["accuracy"] == pytest.approx(score.available_scores["top1_acc"](labels)(scores, one_hot), abs=1e-12)


def test_map_with_tied_scores_matches_sklearn_per_class():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(60, 9)).astype(float)  # many ties within each class
    scores[:, 5] = np.round(rng.normal(size=60), 1)
    targets = (rng.random((60, 9)) < 0.25).astype(int)
    targets[:, 2] = 0
    ours = average_precision_per_class(scores, targets)
    assert np.isnan(ours[2])
    for k in (0, 1, 3, 4, 5, 6, 7, 8):
        assert ours[k] == pytest.approx(average_precision_score(targets[:, k], scores[:, k]), abs=1e-12)


def test_multiclass_targets_are_one_hot_for_map():
    scores = np.array([[2.0, 1.0], [0.5, 1.5], [1.0, 0.0], [0.0, 3.0]])
    targets = np.array([0, 1, 0, 1])
    out = evaluate(["accuracy", "mAP", "AUC"], scores, targets)
    assert out == {"accuracy": 1.0, "mAP": 1.0, "AUC": 1.0}


def test_perfect_auc_gives_finite_dprime_and_chance_gives_zero():
    assert d_prime_from_auc(0.5) == pytest.approx(0.0, abs=1e-12)
    big = d_prime_from_auc(1.0)
    assert math.isfinite(big) and big == pytest.approx(d_prime_from_auc(1 - AUC_EPS))
    assert math.isnan(d_prime_from_auc(float("nan")))


@pytest.mark.parametrize(
    "names, scores, targets, match",
    [
        (["top5"], np.zeros((2, 2)), np.array([0, 1]), "unknown metric 'top5'; available: accuracy, mAP"),
        (["accuracy"], np.zeros((2, 2)), np.array([0, 2]), r"class ids must lie in \[0, 2\)"),
        (["accuracy"], np.zeros((3, 2)), np.array([0, 1]), "targets has 2 entries, scores has 3"),
        (["accuracy"], np.zeros(3), np.array([0, 1, 0]), r"scores must be \[N, C\]"),
        (["accuracy"], np.array([[np.nan, 0.0]]), np.array([0]), "NaN"),
        (["mAP"], np.zeros((2, 3)), np.zeros((2, 2)), "do not match"),
        (["mAP"], np.zeros((0, 3)), np.zeros(0, dtype=int), "zero examples"),
    ],
)
def test_bad_inputs_raise_clear_errors(names, scores, targets, match):
    with pytest.raises((ValueError, KeyError), match=match):
        evaluate(names, scores, targets)


# --------------------------------------------------------------------------- splits
def _clips(labels_per_clip):
    return [Clip(Path(f"/d/{i}.wav"), tuple(lab), f"{i}.wav") for i, lab in enumerate(labels_per_clip)]


def test_carve_validation_is_stratified_deterministic_and_order_free():
    clips = _clips([(c,) for c in range(5) for _ in range(20)])
    train, valid = carve_validation(clips, 0.1, seed=3)
    assert len(valid) == 10 and len(train) == 90
    assert Counter(c.labels[0] for c in valid) == {c: 2 for c in range(5)}
    assert {c.key for c in train}.isdisjoint(c.key for c in valid)
    again = carve_validation(list(reversed(clips)), 0.1, seed=3)[1]
    assert {c.key for c in again} == {c.key for c in valid}
    other = carve_validation(clips, 0.1, seed=4)[1]
    assert {c.key for c in other} != {c.key for c in valid}
    # Input order is preserved in both parts.
    assert [c.key for c in train] == [c.key for c in clips if c in set(train)]


def test_carve_validation_never_empty_and_keeps_singletons_in_train():
    clips = _clips([(0,), (0,), (0,), (1,)])
    train, valid = carve_validation(clips, 0.01, seed=0)
    assert len(valid) == 1 and valid[0].labels == (0,)
    assert any(c.labels == (1,) for c in train)
    train, valid = carve_validation(_clips([(0,), (1,)]), 0.5, seed=0)
    assert len(train) == 1 and len(valid) == 1
    assert carve_validation(_clips([(0,)]), 0.5, seed=0) == (_clips([(0,)]), [])
    assert carve_validation(clips, 0.0, seed=0) == (clips, [])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        carve_validation(clips, 1.0, seed=0)


def test_carve_validation_multilabel_covers_rare_labels():
    labels = [(0, 1)] * 30 + [(0, 2)] * 10 + [(0,)] * 20
    train, valid = carve_validation(_clips(labels), 0.2, seed=1, shape="multilabel")
    assert len(valid) == 12
    assert any(2 in c.labels for c in valid) and any(2 in c.labels for c in train)
    assert any(1 in c.labels for c in valid)
