"""Label shapes and events: the Event record, frame targets at any hop, clip targets of an events
task, a split's events, validation carved by label sets, and the runner's refusal of a protocol
that does not serve the task's shape."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ssl_bench.components import Clip
from ssl_bench.events import CLIP_SHAPES, EVENTS, SHAPES, Event, frame_targets, label_shape_of, labels_present
from ssl_bench.protocols.data import SplitData, label_targets
from ssl_bench.splits import carve_validation


def _clip(key: str, events=(), labels=None) -> Clip:
    events = tuple(events)
    return Clip(Path(f"/nowhere/{key}.wav"), labels_present(events) if labels is None else labels, key, events)


# --------------------------------------------------------------------------- Event
def test_event_is_validated_and_ordered():
    e = Event(np.int64(2), 1, 1.5)
    assert (e.label, e.onset, e.offset, e.duration) == (2, 1.0, 1.5, 0.5)
    assert type(e.label) is int and type(e.onset) is float
    assert sorted([Event(1, 0.5, 1.0), Event(0, 2.0, 3.0), Event(0, 1.0, 3.0)])[0] == Event(0, 1.0, 3.0)
    for bad in [(-1, 0.0, 1.0), (0, 2.0, 1.0), (0, -0.1, 1.0), (0, 0.0, float("nan")), (True, 0.0, 1.0)]:
        with pytest.raises(ValueError):
            Event(*bad)


def test_label_shape_defaults_to_the_multilabel_flag_and_refuses_unknown():
    class Old:
        multilabel = True

    class Plain:
        multilabel = False

    class New:
        label_shape = "events"

    class Wrong:
        name = "wrong"
        label_shape = "frames"

    assert (label_shape_of(Old()), label_shape_of(Plain()), label_shape_of(New())) == ("multilabel", "multiclass",
                                                                                       "events")
    with pytest.raises(ValueError, match="task 'wrong': label_shape 'frames' is not one of multiclass, multilabel"):
        label_shape_of(Wrong())
    assert SHAPES == ("multiclass", "multilabel", "events") and EVENTS not in CLIP_SHAPES


# --------------------------------------------------------------------------- frame targets
def test_frame_targets_hop_finer_than_the_events():
    events = [Event(0, 0.25, 0.55), Event(1, 0.0, 0.1)]
    y = frame_targets(events, num_frames=10, hop_s=0.1, num_classes=2)
    assert y.dtype == np.float32 and y.shape == (10, 2)
    # frame i spans [0.1 i, 0.1 (i+1)): [0.25, 0.55) overlaps frames 2..5
    assert np.flatnonzero(y[:, 0]).tolist() == [2, 3, 4, 5]
    # an event ending exactly where frame 1 starts does not mark frame 1
    assert np.flatnonzero(y[:, 1]).tolist() == [0]


def test_frame_targets_hop_coarser_than_the_events():
    events = [Event(0, 0.30, 0.32), Event(0, 1.05, 1.95), Event(1, 0.99, 1.0)]
    y = frame_targets(events, num_frames=3, hop_s=1.0, num_classes=2)
    assert y[:, 0].tolist() == [1.0, 1.0, 0.0]  # a 20 ms event inside frame 0 marks it
    assert y[:, 1].tolist() == [1.0, 0.0, 0.0]  # [0.99, 1.0) ends at frame 1's start
    # the same events on a 10 ms grid mark exactly the frames they overlap
    fine = frame_targets(events, num_frames=200, hop_s=0.01, num_classes=2)
    assert np.flatnonzero(fine[:, 0]).tolist() == [30, 31] + list(range(105, 195))
    assert np.flatnonzero(fine[:, 1]).tolist() == [99]


def test_frame_targets_offset_zero_length_events_and_clip_edges():
    # frames centred on timestamps 0, 0.5, 1.0, ...: spans start half a hop early
    y = frame_targets([Event(0, 0.0, 0.2), Event(0, 1.9, 2.0)], num_frames=5, hop_s=0.5, num_classes=1, offset_s=-0.25)
    assert y[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    # a zero-length event marks the frame holding its onset; one past the last frame marks nothing
    y = frame_targets([Event(0, 0.3, 0.3), Event(0, 5.0, 6.0), Event(0, 0.0, 0.0)], num_frames=4, hop_s=0.25,
                      num_classes=1)
    assert y[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert frame_targets([], 0, 0.1, 3).shape == (0, 3)
    with pytest.raises(ValueError, match="out of range for 2 classes"):
        frame_targets([Event(2, 0.0, 1.0)], 4, 0.25, 2)
    with pytest.raises(ValueError, match="hop_s"):
        frame_targets([], 4, 0.0, 2)


def test_frame_targets_agree_with_the_overlap_rule_at_random_hops():
    rng = np.random.default_rng(0)
    for _ in range(30):
        events = []
        for _ in range(int(rng.integers(0, 6))):
            on = float(rng.uniform(0, 3))
            events.append(Event(int(rng.integers(0, 3)), on, on + float(rng.choice([0.0, rng.uniform(0, 1)]))))
        hop, offset, n = float(rng.uniform(0.005, 0.7)), float(rng.uniform(-0.3, 0.3)), int(rng.integers(1, 80))
        y = frame_targets(events, n, hop, 3, offset_s=offset)
        want = np.zeros_like(y)
        for i in range(n):
            start, end = offset + i * hop, offset + (i + 1) * hop
            for e in events:
                hit = (start < e.offset and e.onset < end) if e.offset > e.onset else start <= e.onset < end
                want[i, e.label] = max(want[i, e.label], float(hit))
        np.testing.assert_array_equal(y, want)


# --------------------------------------------------------------------------- clip targets and split data
def test_label_targets_of_an_events_task_are_the_labels_present():
    clips = [_clip("a", [Event(2, 0, 1), Event(0, 1, 2), Event(2, 3, 4)]), _clip("b"), _clip("c", [Event(1, 0, 0.5)])]
    y = label_targets(clips, 3, "events")
    assert y.dtype == np.float32 and y.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match=r"clip d: labels \[1\] are not the labels of its events \[0\]"):
        label_targets([_clip("d", [Event(0, 0, 1)], labels=(1,))], 3, "events")
    with pytest.raises(ValueError, match="unknown label shape 'frames'"):
        label_targets(clips, 3, "frames")


class _Feats:
    def __init__(self, clips):
        self.clips = clips


def test_split_data_gives_each_part_its_events_and_keys():
    clips = [_clip(f"c{i}", [Event(i % 2, 0.1 * i, 0.1 * i + 0.5)] if i != 3 else []) for i in range(6)]
    data = SplitData(_Feats(clips), np.array([0, 1, 2]), np.array([3]), np.array([5, 4]),
                     label_targets(clips, 2, "events"), 2, True, ["event_onset_200ms_fms"], 16,
                     label_shape="events", classes=["dog", "cat"])
    assert data.keys("test") == ["c5", "c4"]
    assert data.events("test") == [clips[5].events, clips[4].events]
    assert data.reference_events("valid") == {"c3": []}
    assert data.reference_events("test") == {"c5": [Event(1, 0.5, 1.0)], "c4": [Event(0, 0.4, 0.9)]}
    assert data.part_targets("test").tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="unknown part 'dev'"):
        data.keys("dev")
    clip_task = SplitData(_Feats(clips), np.array([0]), np.array([1]), np.array([2]), np.zeros(6, np.int64), 2, False,
                          ["accuracy"], 16)
    assert clip_task.label_shape == "multiclass"
    with pytest.raises(ValueError, match="a multiclass task has no events"):
        clip_task.events("test")


# --------------------------------------------------------------------------- carving
def test_carving_an_events_task_stratifies_by_label_sets():
    rng = np.random.default_rng(1)
    sets = [(0,)] * 20 + [(0, 1)] * 20 + [(1, 2)] * 10 + [()] * 10 + [(2,)] + [(0, 1, 2)]
    clips = []
    for i, labels in enumerate(sets):
        events = [Event(c, float(rng.uniform(0, 5)), 6.0) for c in labels for _ in range(int(rng.integers(1, 3)))]
        clips.append(_clip(f"clip{i:03d}", events))
    train, valid = carve_validation(clips, 0.2, seed=0, shape="events")
    assert len(valid) == 12 and len(train) + len(valid) == len(clips)
    counts = Counter(c.labels for c in valid)
    # every shared label set keeps its share: 20% of each
    assert (counts[(0,)], counts[(0, 1)], counts[(1, 2)], counts[()]) == (4, 4, 2, 2)
    # deterministic, order-free, seed-dependent
    keys = {c.key for c in valid}
    assert {c.key for c in carve_validation(list(reversed(clips)), 0.2, seed=0, shape="events")[1]} == keys
    assert {c.key for c in carve_validation(clips, 0.2, seed=1, shape="events")[1]} != keys
    with pytest.raises(ValueError, match="unknown label shape"):
        carve_validation(clips, 0.2, seed=0, shape="frames")


# --------------------------------------------------------------------------- runner
def test_the_runner_refuses_a_protocol_that_does_not_serve_the_tasks_shape(tmp_path):
    """Before any audio is read: the clips here do not even exist."""
    from ssl_bench import hookimpl
    from ssl_bench.components import Split
    from ssl_bench.config import ConfigError, resolve
    from ssl_bench.registry import Registry
    from ssl_bench.runner import run_experiment

    class Beeps:
        name = "beeps"
        classes = ["beep", "buzz"]
        multilabel = True
        label_shape = "events"
        sample_rate = 16000
        clip_seconds = 2.0
        metrics = ["event_onset_200ms_fms"]
        split_protocol = "fixed"
        norm_stats: dict = {}

        def __init__(self, data_dir=None):
            pass

        def prepare(self):
            pass

        def splits(self):
            clips = [_clip(f"b{i}", [Event(i % 2, 0.5, 1.0)]) for i in range(6)]
            return [Split("only", clips[:4], clips[4:])]

    class Plugin:
        @staticmethod
        @hookimpl
        def register_tasks(register):
            register("beeps", Beeps)

    reg = Registry()
    reg.add_plugin(Plugin, name="beeps")
    from ssl_bench.registry import set_registry

    old = set_registry(reg)
    try:
        cfg = resolve("audiomae", preset="tiny", task="beeps", registry=reg)
        with pytest.raises(ConfigError, match=r"^protocol 'linear' serves multiclass, multilabel tasks; task 'beeps' "
                                              r"is events \(protocols for events: events, events_finetune, pretrain\)$"):
            run_experiment(cfg, results_root=tmp_path, protocols=("pretrain", "linear"), progress=False)
    finally:
        set_registry(old)
    assert not any((tmp_path / ".cache").glob("features/*"))
