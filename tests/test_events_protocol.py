"""The ``events`` protocol's parts: frames to events, frame targets at the frames' timestamps, the
post-processing grid chosen on validation only, and heads that learn a separable problem."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ssl_bench.config import ConfigError
from ssl_bench.events import Event, frame_targets
from ssl_bench.metrics import evaluate_events
from ssl_bench.protocols.embeddings import FrameEmbeddings
from ssl_bench.protocols.events import (
    EventsConfig,
    EventScorer,
    PostProcessing,
    clip_targets,
    fit_event_heads,
    frames_to_events,
    head_grid,
    median_width,
    post_processing_grid,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOP = 0.04
CLASSES = ["bell", "dog"]
METRICS = ["event_onset_200ms_fms", "segment_1s_er"]


def test_frames_to_events_runs_thresholds_and_durations():
    t = (np.arange(25) + 0.5) * HOP  # frames centred at 20, 60, ..., 980 ms
    p = np.zeros((25, 2))
    p[2:5, 0] = 0.9  # frames 2-4: 80 ms .. 200 ms
    p[10, 0] = 0.8  # one frame: 40 ms long
    p[22:, 1] = 0.6  # to the end of the clip
    p[15, 1] = 0.5  # not above a threshold of 0.5
    events = frames_to_events(p, t, HOP, threshold=0.5, min_duration_s=0.0, clip_seconds=1.0)
    assert events == [Event(0, 0.08, 0.2), Event(0, 0.4, 0.44), Event(1, 0.88, 1.0)]
    assert [e.onset for e in frames_to_events(p, t, HOP, threshold=0.5, min_duration_s=0.05, clip_seconds=1.0)] \
        == [0.08, 0.88]  # the one-frame event is shorter than 50 ms
    assert frames_to_events(p, t, HOP, threshold=0.85, min_duration_s=0.0) == [Event(0, 0.08, 0.2)]
    # the last event is clipped to the clip's end
    assert frames_to_events(p, t, HOP, threshold=0.5, min_duration_s=0.0, clip_seconds=0.95)[-1] == Event(1, 0.88, 0.95)


def test_median_width_is_odd_and_centred():
    assert median_width(0, HOP) == 1
    assert median_width(250, HOP) == 7  # round(6.25) = 6, made odd
    assert median_width(250, 0.16) == 3  # round(1.56) = 2 -> 3
    assert median_width(120, HOP) == 3


def test_clip_targets_follow_frame_targets_at_the_frames_spans():
    events = [Event(0, 0.05, 0.31), Event(1, 0.5, 0.5)]
    t = (np.arange(25) + 0.5) * HOP
    assert np.array_equal(clip_targets(events, t, HOP, 2), frame_targets(events, 25, HOP, 2, offset_s=0.0))
    # columns of two windows with a gap between them: each run of even spacing on its own
    gap = np.concatenate([0.0875 + 0.16 * np.arange(4), 0.8675 + 0.16 * np.arange(3)])
    out = clip_targets([Event(0, 0.9, 1.0)], gap, 0.16, 2)
    # the columns spanning 0.7875-0.9475 and 0.9475-1.1075 s (evenly spaced from the first, they would not)
    assert out[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 0]


def test_grids_are_checked_and_ordered():
    cfg = EventsConfig(heads=["linear", "mlp"], hidden=[32, 8], lr=[1e-2, 1e-3])
    assert head_grid(cfg) == [("linear", 0, 1e-2), ("linear", 0, 1e-3), ("mlp", 8, 1e-2), ("mlp", 8, 1e-3),
                              ("mlp", 32, 1e-2), ("mlp", 32, 1e-3)]
    posts = post_processing_grid(EventsConfig(median_filter_ms=[0, 250], threshold=[0.3, 0.5], min_duration_ms=[0]))
    assert posts[:2] == [PostProcessing(0, 0, 0.3), PostProcessing(0, 0, 0.5)]
    with pytest.raises(ConfigError, match="events.heads"):
        head_grid(EventsConfig(heads=["cnn"]))
    with pytest.raises(ConfigError, match="events.threshold: give one or more numbers between 0 and 1"):
        post_processing_grid(EventsConfig(threshold=[1.5]))


def problem(n_clips: int, seed: int, dim: int = 8, noise: float = 0.3):
    """Frames whose first two dimensions say which class is active, with random events."""
    rng = np.random.default_rng(seed)
    t = (np.arange(50) + 0.5) * HOP  # 2 s clips
    values, events = [], []
    for _ in range(n_clips):
        clip = []
        for label in (0, 1):
            onset = float(rng.uniform(0.0, 1.2))
            clip.append(Event(label, round(onset, 3), round(onset + float(rng.uniform(0.3, 0.7)), 3)))
        x = noise * rng.standard_normal((50, dim))
        x[:, :2] += 2.0 * clip_targets(clip, t, HOP, 2)
        values.append(x.astype(np.float16))
        events.append(tuple(clip))
    frames = FrameEmbeddings(np.concatenate(values), np.tile(t, n_clips), np.arange(n_clips + 1) * 50, "interpolate",
                             HOP)
    return frames, events, [f"clip{seed}_{i}.wav" for i in range(n_clips)]


def fit(cfg, parts):
    frames = {p: parts[p][0] for p in parts}
    events = {p: parts[p][1] for p in parts}
    keys = {p: parts[p][2] for p in parts}
    return fit_event_heads(frames, events, keys, classes=CLASSES, metrics=METRICS, cfg=cfg, seed=0,
                           clip_seconds=2.0)


SMALL = EventsConfig(heads=["linear", "mlp"], hidden=[16], lr=[1e-2], max_epochs=12, check_every=3, patience=3,
                     train_batch_size=256, median_filter_ms=[0, 120], min_duration_ms=[0, 200],
                     threshold=[0.3, 0.5])


def test_heads_learn_and_the_choice_is_made_on_validation_only():
    parts = {"train": problem(24, 1), "valid": problem(8, 2), "test": problem(8, 3)}
    result = fit(SMALL, parts)
    assert result.test["event_onset_200ms_fms"] > 0.8
    assert {"event_onset_200ms_fms_precision", "event_onset_200ms_fms_recall", "segment_1s_er"} <= set(result.test)
    assert result.columns["selection"] == "valid" and result.columns["grid_size"] == 16
    # the test events score as reported, and every test clip is in them
    reference = {k: list(ev) for k, ev in zip(parts["test"][2], parts["test"][1])}
    assert set(result.events) == set(reference)
    assert evaluate_events(METRICS, result.events, reference, CLASSES) == result.test
    chosen = PostProcessing(result.columns["median_filter_ms"], result.columns["min_duration_ms"],
                            result.columns["threshold"])
    assert 0 < result.columns["valid_event_onset_200ms_fms"] <= 1
    # other test data (other clips, other events) changes no choice
    other = fit(SMALL, {**parts, "test": problem(8, 9)})
    keep = ("head", "hidden", "lr", "best_epoch", "median_filter_ms", "min_duration_ms", "threshold")
    assert {k: other.columns[k] for k in keep} == {k: result.columns[k] for k in keep}
    assert PostProcessing(other.columns["median_filter_ms"], other.columns["min_duration_ms"],
                          other.columns["threshold"]) == chosen


def test_the_post_processing_the_scorer_picks_is_the_best_on_its_part():
    frames, events, keys = problem(6, 4)
    posts = post_processing_grid(SMALL)
    scorer = EventScorer(frames, keys, events, CLASSES, METRICS, posts, 2.0)
    rng = np.random.default_rng(0)
    probs = np.clip(clip_targets_all(frames, events) * 0.7 + 0.4 * rng.random((len(frames.timestamps), 2)), 0, 1)
    best, value = scorer.best(probs)
    scores = [scorer.score(probs, p, [METRICS[0]])[METRICS[0]] for p in posts]
    assert value == max(scores) and best == posts[scores.index(max(scores))]  # the first of the best


def clip_targets_all(frames, events):
    return np.concatenate([clip_targets(ev, frames.clip(i)[1], HOP, 2) for i, ev in enumerate(events)])


def test_without_validation_data_one_setting_only():
    parts = {"train": problem(12, 1), "valid": (FrameEmbeddings(np.zeros((0, 8), np.float16), np.zeros(0),
                                                                 np.zeros(1, np.int64), "interpolate", HOP), [], []),
             "test": problem(4, 3)}
    with pytest.raises(ConfigError, match="no validation data to choose among 2 heads"):
        fit(SMALL, parts)
    one = dataclasses.replace(SMALL, heads=["linear"], median_filter_ms=[0], min_duration_ms=[0], threshold=[0.5],
                              max_epochs=3)
    result = fit(one, parts)
    assert result.columns["selection"] == "max epochs" and result.columns["best_epoch"] == 3


def test_bad_settings_are_refused_before_any_data_work(tmp_path, capsys):
    """A section's settings are checked when the runner reads it, before the task is even prepared."""
    from ssl_bench.cli import main

    for setting, message in (("events.hop_method=nearest", "events.hop_method 'nearest': choose one of"),
                             ("events.frame_dtype=int8", "events.frame_dtype 'int8'"),
                             ("events.heads=cnn", "events.heads"),
                             ("events_finetune.head_init=zeros", "events_finetune.head_init"),
                             ("events_finetune.threshold=2", "events_finetune.threshold: give one or more numbers")):
        code = main(["run", "-m", "audiomae", "-p", "tiny", "-t", "synthetic-events", "--protocols",
                     "events,events_finetune", "--data-dir", str(tmp_path / "never-made"), "--set", setting,
                     "--results", str(tmp_path / "res"), "-q"])
        err = capsys.readouterr().err
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, (setting, err)
        assert not (tmp_path / "never-made").exists()
