"""Metrics are plugins, and the event metrics equal sed_eval's.

The reference is ``sed_eval.sound_event`` (0.2.1, in the ``test`` extra) called exactly as
hear-eval-kit's scorer calls it (``heareval/score.py``: ``SoundEventScore._compute``, with its
parameters for each metric name): event containers in seconds from HEAR's millisecond dicts, one
``evaluate`` per predicted file, the overall scores.  When ``heareval`` itself is installed
(``pip install --no-deps heareval``) its scorer is compared too.
"""

from __future__ import annotations

import math
from collections import ChainMap

import numpy as np
import pytest

from ssl_bench.events import Event
from ssl_bench.metrics import (
    CLIP,
    EVENTS,
    Metric,
    UnknownMetricError,
    evaluate,
    evaluate_events,
    get_metric,
    metric_names,
)
from ssl_bench.metrics.sed import event_based

LABELS = ["dog", "door", "speech", "7"]
CLIP_SECONDS = 10.0

#: hear-eval-kit's metric settings (heareval/score.py, available_scores), as facts to check against.
HEAR = {
    "event_onset_200ms_fms": ("event", ("f_measure", "precision", "recall"),
                              {"evaluate_onset": True, "evaluate_offset": False, "t_collar": 0.2}),
    "event_onset_50ms_fms": ("event", ("f_measure", "precision", "recall"),
                             {"evaluate_onset": True, "evaluate_offset": False, "t_collar": 0.05}),
    "event_onset_offset_50ms_20perc_fms": ("event", ("f_measure", "precision", "recall"),
                                           {"evaluate_onset": True, "evaluate_offset": True, "t_collar": 0.05,
                                            "percentage_of_length": 0.2}),
    "segment_1s_er": ("segment", ("error_rate", "substitution_rate", "deletion_rate", "insertion_rate"),
                      {"time_resolution": 1.0}),
}


def hear_dicts(events_by_file):
    """Our events as a HEAR predictions file holds them: ms, label names."""
    return {f: [{"label": LABELS[e.label], "start": e.onset * 1000.0, "end": e.offset * 1000.0} for e in events]
            for f, events in events_by_file.items()}


def sed_eval_scores(name, predicted, reference):
    """hear-eval-kit's SoundEventScore._compute, on sed_eval."""
    import sed_eval
    from dcase_util.containers import MetaDataContainer

    kind, parts, params = HEAR[name]

    def container(x):
        return MetaDataContainer([{"event_label": str(e["label"]), "event_onset": e["start"] / 1000.0,
                                   "event_offset": e["end"] / 1000.0, "file": f}
                                  for f, events in x.items() for e in events])

    ref, est = container(reference), container(predicted)
    cls = sed_eval.sound_event.EventBasedMetrics if kind == "event" else sed_eval.sound_event.SegmentBasedMetrics
    scores = cls(event_label_list=list(LABELS), **params)
    for f in predicted:
        scores.evaluate(reference_event_list=ref.filter(filename=f), estimated_event_list=est.filter(filename=f))
    overall = dict(ChainMap(*scores.results_overall_metrics().values()))
    return {part: float(overall[part]) for part in parts}


def ours(name, predicted, reference):
    out = evaluate_events([name], predicted, reference, LABELS)
    _, parts, _ = HEAR[name]
    return {part: out[name if i == 0 else f"{name}_{part}"] for i, part in enumerate(parts)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.values(),
                                                                                                      b.values()))


def random_events(rng, files: int, max_events: int) -> dict[str, list[Event]]:
    """Events with the cases that matter: onsets on a 50 ms grid (ties at exactly the collar),
    overlapping events of one class, events from the clip's start and to its end, very short
    and zero-length ones."""
    out = {}
    for f in range(files):
        events = []
        for _ in range(int(rng.integers(0, max_events + 1))):
            label = int(rng.integers(0, len(LABELS)))
            kind = rng.random()
            if kind < 0.4:
                onset = round(float(rng.integers(0, 200)) * 0.05, 2)
            elif kind < 0.5:
                onset = 0.0
            else:
                onset = float(rng.uniform(0, CLIP_SECONDS))
            duration = float(rng.choice([0.0, 0.01, 0.05, 0.25, rng.uniform(0, 4)]))
            offset = CLIP_SECONDS if rng.random() < 0.1 else min(CLIP_SECONDS, onset + duration)
            events.append(Event(label, onset, offset))
        out[f"clip{f:02d}.wav"] = events
    return out


def jitter(rng, events_by_file, p_drop=0.2, p_add=0.3):
    """A system output near the reference: onsets and offsets moved, labels swapped, misses,
    insertions."""
    out = {}
    for f, events in events_by_file.items():
        pred = []
        for e in events:
            if rng.random() < p_drop:
                continue
            label = e.label if rng.random() > 0.15 else int(rng.integers(0, len(LABELS)))
            shift = float(rng.choice([0.0, 0.05, -0.05, 0.2, -0.2, rng.normal(0, 0.15)]))
            onset = max(0.0, e.onset + shift)
            offset = max(onset, e.offset + float(rng.normal(0, 0.1)))
            pred.append(Event(label, onset, offset))
        while rng.random() < p_add:
            onset = float(rng.uniform(0, CLIP_SECONDS))
            pred.append(Event(int(rng.integers(0, len(LABELS))), onset, min(CLIP_SECONDS, onset + 0.5)))
        out[f] = pred
    return out


# --------------------------------------------------------------------------- equal to sed_eval
@pytest.mark.parametrize("seed", range(8))
def test_event_metrics_equal_sed_eval_on_random_event_lists(seed):
    rng = np.random.default_rng(seed)
    reference = random_events(rng, files=int(rng.integers(1, 6)), max_events=12)
    predicted = jitter(rng, reference)
    for name in HEAR:
        want = sed_eval_scores(name, hear_dicts(predicted), hear_dicts(reference))
        got = ours(name, predicted, reference)
        assert same(got, want), (name, got, want)
        # HEAR's own dict form in, the same numbers out
        assert same(ours(name, hear_dicts(predicted), hear_dicts(reference)), want), name


@pytest.mark.parametrize("case", ["empty predictions", "empty reference", "both empty", "perfect",
                                  "all overlapping", "clip edges"])
def test_event_metrics_equal_sed_eval_on_edge_cases(case):
    rng = np.random.default_rng(42)
    reference = random_events(rng, files=3, max_events=6)
    if case == "empty predictions":
        predicted = {f: [] for f in reference}
    elif case == "empty reference":
        predicted, reference = reference, {f: [] for f in reference}
    elif case == "both empty":
        predicted = reference = {f: [] for f in reference}
    elif case == "perfect":
        predicted = {f: list(reversed(events)) for f, events in reference.items()}
    elif case == "all overlapping":  # one class, stacked events: only a maximum matching counts them all
        reference = {"a.wav": [Event(0, 1.0, 3.0), Event(0, 1.15, 2.0), Event(0, 1.3, 5.0), Event(0, 1.45, 1.5)]}
        predicted = {"a.wav": [Event(0, 1.2, 2.9), Event(0, 1.0, 2.2), Event(0, 1.35, 4.5), Event(0, 1.6, 1.62)]}
    else:  # events starting at 0 and ending at the clip's end, predictions exactly one collar off
        reference = {"a.wav": [Event(1, 0.0, 10.0), Event(2, 0.0, 0.5), Event(3, 9.5, 10.0)]}
        predicted = {"a.wav": [Event(1, 0.2, 10.0), Event(2, 0.05, 0.55), Event(3, 9.7, 10.0), Event(0, 0.0, 10.0)]}
    for name in HEAR:
        want = sed_eval_scores(name, hear_dicts(predicted), hear_dicts(reference))
        assert same(ours(name, predicted, reference), want), (case, name, want)


def test_hand_checked_values():
    ref = {"a.wav": [Event(0, 1.0, 2.0), Event(1, 3.0, 4.0)], "b.wav": [Event(0, 0.0, 1.0)]}
    pred = {"a.wav": [Event(0, 1.19, 2.5), Event(1, 3.3, 4.0)], "b.wav": [Event(0, 0.0, 1.0), Event(0, 5.0, 6.0)]}
    out = evaluate_events(["event_onset_200ms_fms", "event_onset_offset_50ms_20perc_fms"], pred, ref, LABELS)
    # onsets: a/dog 0.19 s off (hit), a/door 0.3 s off (miss), b/dog exact (hit), b insertion
    assert out["event_onset_200ms_fms_precision"] == 0.5 and out["event_onset_200ms_fms_recall"] == 2 / 3
    assert out["event_onset_200ms_fms"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # with offsets (50 ms collar, 20% of a 1 s event = 200 ms): a/dog's offset is 0.5 s off
    assert out["event_onset_offset_50ms_20perc_fms_recall"] == pytest.approx(1 / 3)


def test_a_file_missing_from_the_predictions_counts_as_predicting_nothing():
    ref = {"a.wav": [Event(0, 1.0, 2.0)], "b.wav": [Event(1, 1.0, 2.0)]}
    pred = {"a.wav": [Event(0, 1.0, 2.0)]}
    out = evaluate_events(["event_onset_200ms_fms"], pred, ref, LABELS)
    assert out["event_onset_200ms_fms_recall"] == 0.5  # b.wav's event is a miss, not ignored


def test_heareval_scorer_gives_the_same_numbers():
    score = pytest.importorskip("heareval.score", reason="hear-eval-kit's scorer: pip install --no-deps heareval")
    rng = np.random.default_rng(7)
    reference = random_events(rng, files=4, max_events=10)
    predicted = jitter(rng, reference)
    label_to_idx = {label: i for i, label in enumerate(LABELS)}
    for name in HEAR:
        hear = {p: float(v) for p, v in score.available_scores[name](label_to_idx=label_to_idx)(
            hear_dicts(predicted), hear_dicts(reference))}
        mine = ours(name, predicted, reference)
        assert same({p: mine[p] for p in hear}, hear), name  # hear-eval-kit reports ER alone


def test_bad_events_name_the_file():
    with pytest.raises(ValueError, match=r"file 'x.wav': unknown event label 'cat'"):
        evaluate_events(["event_onset_200ms_fms"], {"x.wav": [{"label": "cat", "start": 0, "end": 10}]}, {}, LABELS)
    with pytest.raises(ValueError, match=r"file 'x.wav': an event needs 0 <= start <= end"):
        evaluate_events(["segment_1s_er"], {"x.wav": [{"label": "dog", "start": 20, "end": 10}]}, {}, LABELS)
    with pytest.raises(ValueError, match=r"file 'y.wav': event label 9 out of range for 4 classes"):
        evaluate_events(["segment_1s_er"], {}, {"y.wav": [Event(9, 0.0, 1.0)]}, LABELS)


# --------------------------------------------------------------------------- HEAR's pitch metrics
def test_pitch_and_chroma_accuracy_as_hear_defines_them():
    scores = np.zeros((4, 30))
    scores[0, 5] = scores[1, 17] = scores[2, 29] = scores[3, 3] = 1.0  # predictions: 5, 17, 29, 3
    targets = np.array([5, 5, 17, 4])  # exact, octave up, octave down, a semitone off
    out = evaluate(["pitch_acc", "chroma_acc"], scores, targets)
    assert out == {"pitch_acc": 0.25, "chroma_acc": 0.75}
    one_hot = np.eye(30)[targets]
    assert evaluate(["pitch_acc", "chroma_acc"], scores, one_hot) == out


# --------------------------------------------------------------------------- the registry
def test_builtins_are_registered_with_their_input_kinds():
    assert metric_names(CLIP) == ["accuracy", "mAP", "AUC", "d_prime", "d_prime_mean_auc", "pitch_acc", "chroma_acc"]
    assert metric_names(EVENTS) == list(HEAR)
    assert not get_metric("segment_1s_er").greater_is_better and get_metric("event_onset_50ms_fms").greater_is_better
    with pytest.raises(ValueError, match=r"'event_onset_200ms_fms' scores events, not clip \(use evaluate_events\)"):
        evaluate(["event_onset_200ms_fms"], np.zeros((2, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"metric 'mAP' scores clip, not events \(use evaluate\)"):
        evaluate_events(["mAP"], {}, {}, LABELS)
    with pytest.raises(UnknownMetricError, match="^unknown metric 'onset_f'; available: accuracy, mAP"):
        evaluate_events(["onset_f"], {}, {}, LABELS)
    with pytest.raises(ValueError, match="input must be one of clip, events"):
        Metric(len, "frames")


def test_a_metric_plugin_is_picked_up_by_name(capsys):
    from functools import partial

    from ssl_bench import hookimpl
    from ssl_bench.cli import main
    from ssl_bench.registry import Registry, set_registry

    def top2(scores, targets):
        top = np.argsort(-scores, axis=1)[:, :2]
        return {"acc": float(np.mean([t in row for t, row in zip(targets, top)])), "n": float(len(targets))}

    class Plugin:
        @staticmethod
        @hookimpl
        def register_metrics(register):
            register("top2", top2)  # a plain function: a clip metric
            register("onset_1s_fms", Metric(partial(event_based, collar=1.0), EVENTS))
            register("mAP", top2)  # a built-in's name: refused, the built-in kept

    reg = Registry()
    reg.add_plugin(Plugin, name="mymetrics")
    old = set_registry(reg)
    try:
        scores = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
        out = evaluate(["accuracy", "top2"], scores, np.array([1, 2, 2]))
        assert out == {"accuracy": 1 / 3, "top2": 2 / 3, "top2_n": 3.0}
        ref = {"a.wav": [Event(0, 1.0, 2.0)]}
        assert evaluate_events(["onset_1s_fms"], {"a.wav": [Event(0, 1.9, 2.0)]}, ref, LABELS)["onset_1s_fms"] == 1.0
        assert get_metric("mAP").fn is not top2
        assert "metric 'mAP' is already registered by plugin 'metrics' (built-in, kept)" in capsys.readouterr().err
        assert main(["plugins"]) == 0
        listing = capsys.readouterr().out
        assert "mymetrics  (code)" in listing and "metrics     onset_1s_fms, top2" in listing
    finally:
        set_registry(old)


def test_a_task_whose_metrics_do_not_fit_its_shape_is_refused_before_any_audio():
    from ssl_bench import hookimpl
    from ssl_bench.config import ConfigError
    from ssl_bench.registry import Registry
    from ssl_bench.splitdata import TaskData

    def make(shape, metrics):
        class Fake:
            name = "fake"
            classes = ["a", "b"]
            multilabel = shape != "multiclass"
            label_shape = shape
            clip_seconds = 1.0

            def __init__(self, data_dir=None):
                self.metrics = metrics

            def prepare(self):
                pass

            def splits(self):
                from ssl_bench.components import Split

                return [Split("only", [], [])]

        return Fake

    cases = [
        ("events", ["mAP"], "task 'fake': metric 'mAP' scores clip, but the task's label shape is events: it is "
                            "scored with events metrics"),
        ("multiclass", ["event_onset_200ms_fms"], "'event_onset_200ms_fms' scores events, but the task's label "
                                                  "shape is multiclass"),
        ("events", ["segment_1s_er", "event_onset_200ms_fms"], "first metric 'segment_1s_er' is better lower"),
        ("multilabel", ["mAPP"], "task 'fake': unknown metric 'mAPP'; available: accuracy"),
        ("multiclass", [], "task 'fake' names no metrics"),
    ]
    for shape, metrics, message in cases:
        factory = make(shape, metrics)

        class Plugin:
            @staticmethod
            @hookimpl
            def register_tasks(register, factory=factory):
                register("fake", factory)

        reg = Registry(entry_points=False)
        reg.add_plugin(Plugin, name="fake")
        with pytest.raises(ConfigError, match=message):
            TaskData({"task": "fake"}, reg, None)


def test_a_protocol_scores_events_of_a_part_through_its_context(tmp_path):
    import torch

    from ssl_bench.components import Clip
    from ssl_bench.protocols.base import ProtocolContext
    from ssl_bench.protocols.data import SplitData, label_targets

    class Feats:
        clips = [Clip(tmp_path / f"{k}.wav", (0,), f"{k}.wav", (Event(0, 1.0, 2.0),)) for k in "abc"]

    data = SplitData(Feats(), np.array([0]), np.array([1]), np.array([2]), label_targets(Feats.clips, 4, "events"),
                     4, True, ["event_onset_200ms_fms", "segment_1s_er"], 16, label_shape="events", classes=LABELS)
    ctx = ProtocolContext(name="events", model=torch.nn.Linear(1, 1), init="random", data=data, config={}, section=None,
                          device=torch.device("cpu"), cache_dir=tmp_path, state_dir=tmp_path)
    out = ctx.evaluate_events({"c.wav": [Event(0, 1.1, 2.0)]}, "test")
    assert out["event_onset_200ms_fms"] == 1.0 and out["segment_1s_er"] == 0.0
    assert ctx.evaluate_events({}, "valid")["event_onset_200ms_fms_recall"] == 0.0  # b.wav: a miss
    with pytest.raises(ValueError, match=r"predictions for 1 clip\(s\) not in the test part of split 'split', e.g"):
        ctx.evaluate_events({"a.wav": [Event(1, 0.0, 1.0)]}, "test")


# --------------------------------------------------------------------------- predictions files
def test_event_predictions_round_trip_and_score_the_same_outside(tmp_path):
    """What the runner writes (HEAR's layout, ms) reads back as the same events, and sed_eval
    scoring the files as hear-eval-kit does gives our number exactly."""
    from ssl_bench import predictions as P

    rng = np.random.default_rng(11)
    reference = random_events(rng, files=5, max_events=10)
    predicted = jitter(rng, reference)
    path = P.write(tmp_path / "predictions" / "test", "events-random", P.event_layout(predicted, LABELS),
                   P.event_layout(reference, LABELS))
    pred_back, ref_back = P.read_events(path, LABELS)
    assert pred_back.keys() == predicted.keys() and ref_back.keys() == reference.keys()
    for key in predicted:
        assert [e.label for e in pred_back[key]] == [e.label for e in predicted[key]]
        np.testing.assert_allclose([(e.onset, e.offset) for e in pred_back[key]],
                                   [(e.onset, e.offset) for e in predicted[key]], rtol=0, atol=1e-12)
    pred_json, ref_json = P.read(path)
    for name in HEAR:
        mine = ours(name, predicted, reference)
        assert same(sed_eval_scores(name, pred_json, ref_json), mine), name
        assert same(ours(name, pred_back, ref_back), mine), name
    with pytest.raises(ValueError, match=r"predictions: file 'a.wav': unknown label 'cat'"):
        P.events_from_layout({"a.wav": [{"label": "cat", "start": 0.0, "end": 1.0}]}, LABELS)
    with pytest.raises(ValueError, match=r"predictions: file 'a.wav': an event needs 0 <= onset <= offset"):
        P.events_from_layout({"a.wav": [{"label": "dog", "start": 10.0, "end": 1.0}]}, LABELS)
