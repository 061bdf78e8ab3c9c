"""Event tasks: your own events in DESED's TSV layout (``folder-events``) and the embedded
``synthetic-events`` plugin, read from fixtures written here, and one run through the real runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import taskfixtures as fx

from ssl_bench import get_task
from ssl_bench.errors import UserError
from ssl_bench.events import Event


def _all_clips(task):
    return {c.key: c for s in task.splits() for part in (s.train, s.valid or [], s.test) for c in part}


# --------------------------------------------------------------------------- folder-events
@pytest.mark.parametrize("nested, header", [(False, True), (True, False)])
def test_folder_events_split_layout(tmp_path, nested, header):
    root = fx.make_folder_events(tmp_path / "d", layout="split", nested=nested, header=header)
    task = get_task("folder-events", root)
    assert task.label_shape == "events" and task.classes == sorted(fx.EVENT_CLASSES)
    assert task.metrics == ["event_onset_200ms_fms", "segment_1s_er"] and task.clip_seconds == 1.0
    (split,) = task.splits()
    assert (len(split.train), len(split.valid), len(split.test)) == (4, 4, 4)
    clip = next(c for c in split.train if c.key == "train_1.wav")
    dog, speech = task.classes.index("Dog"), task.classes.index("Speech")
    assert clip.events == (Event(dog, 0.1, 0.6), Event(speech, 0.4, 1.0)) and clip.labels == (dog, speech)
    assert clip.path.exists() and (clip.path.parent.name == "train") == nested
    empty = next(c for c in split.test if c.key == "test_3.wav")
    assert empty.events == () and empty.labels == ()  # listed by its name alone: a clip without events


def test_folder_events_folds_and_a_single_tsv(tmp_path):
    task = get_task("folder-events", fx.make_folder_events(tmp_path / "folds", layout="folds"))
    assert [s.name for s in task.splits()] == ["fold1", "fold2", "fold3"]
    assert all(s.valid is None for s in task.splits())  # carved from the training folds by the runner
    assert {c.key.split("_")[0] for c in task.splits()[0].test} == {"fold1"}
    single = get_task("folder-events", fx.make_folder_events(tmp_path / "one", layout="single"))
    splits = single.splits()
    assert len(splits) == 5 and sorted(c.key for s in splits for c in s.test) == sorted(_all_clips(single))
    assert "stratified by its rarest label (events.tsv)" in single.split_protocol


def test_folder_events_task_yaml_classes_and_trimming(tmp_path):
    root = fx.make_folder_events(tmp_path / "d", layout="split")
    (root / "classes.txt").write_text("Speech\nDog\nAlarm_bell_ringing\nCat\n")
    (root / "task.yaml").write_text("clip_seconds: 0.3\nmetrics: [event_onset_50ms_fms, segment_1s_er]\n")
    task = get_task("folder-events", root)
    with pytest.warns(UserWarning, match=r"3 event\(s\) start after the clip length 0.3 s and were dropped, "
                                         r"9 were cut at it; set clip_seconds in task.yaml"):
        task.prepare()
    assert task.classes == ["Speech", "Dog", "Alarm_bell_ringing", "Cat"] and task.metrics[0] == "event_onset_50ms_fms"
    clip = _all_clips(task)["train_1.wav"]
    assert clip.events == (Event(1, 0.1, 0.3),)  # Dog 0.1..0.6 is cut at 0.3, Speech 0.4..1.0 dropped
    assert clip.labels == (1,)


@pytest.mark.parametrize("edit, match", [
    (lambda r: _line(r, "train.tsv", "train_0.wav\tsoon\t0.5\tDog"),
     r"train.tsv:2: onset must be a number of seconds, got 'soon'"),
    (lambda r: _line(r, "train.tsv", "train_0.wav\t0.5\t0.1\tDog"), r"train.tsv:2: offset 0.1 is before onset 0.5"),
    (lambda r: _line(r, "train.tsv", "train_0.wav 0.1 0.5 Dog"), r"train.tsv:2: fields must be separated by tabs"),
    (lambda r: _line(r, "train.tsv", "train_0.wav\t0.1\t0.5"), r"train.tsv:2: expected 4 tab-separated fields"),
    (lambda r: _line(r, "train.tsv", "test_0.wav\t0.1\t0.5\tDog"), r"test_0.wav is also listed in t"),
    (lambda r: (r / "classes.txt").write_text("Dog\nSpeech\n"), r"unknown label 'Alarm_bell_ringing' \(not in"),
    (lambda r: (r / "extra.tsv").write_text("a.wav\n"), r"mixed TSV names"),
    (lambda r: (r / "test.tsv").unlink(), r"a split needs train.tsv and test.tsv"),
    (lambda r: (r / "task.yaml").write_text("metrics: [mAP]\n"), r"unknown event metric\(s\) mAP; valid: event_onset"),
])
def test_folder_events_bad_metadata_names_file_and_line(tmp_path, edit, match):
    root = fx.make_folder_events(tmp_path / "d", layout="split")
    edit(root)
    with pytest.raises(ValueError, match=match):
        get_task("folder-events", root).prepare()


def _line(root, name, text):
    lines = (root / name).read_text().splitlines()
    lines[1] = text
    (root / name).write_text("\n".join(lines) + "\n")


def test_folder_events_missing_audio_is_reported_and_kept(tmp_path):
    root = fx.make_folder_events(tmp_path / "d", layout="split")
    (root / "audio" / "test_0.wav").unlink()
    task = get_task("folder-events", root)
    with pytest.warns(UserWarning, match="audio missing for test: 1 of 4"):
        task.prepare()
    assert "test_0.wav" in _all_clips(task)


# --------------------------------------------------------------------------- synthetic-events
def test_synthetic_events_is_generated_once_and_deterministically(tmp_path, capsys):
    from ssl_bench.tasks import synthetic_events as se

    task = get_task("synthetic-events", tmp_path / "a")
    clips = _all_clips(task)
    assert "generating" in capsys.readouterr().err
    assert task.label_shape == "events" and task.classes == se.CLASSES and len(clips) == 100
    (split,) = task.splits()
    assert (len(split.train), len(split.valid), len(split.test)) == (60, 20, 20)
    counts = [len(c.events) for c in clips.values()]
    assert min(counts) == 0 and max(counts) == se.MAX_EVENTS and sum(counts) > 100
    for c in clips.values():  # one class never overlaps itself
        assert not any(x.label == y.label and x.onset < y.offset and y.onset < x.offset
                       for x in c.events for y in c.events if x is not y)
    get_task("synthetic-events", tmp_path / "a").prepare()
    assert "generating" not in capsys.readouterr().err  # built once
    other = get_task("synthetic-events", tmp_path / "b")
    other.prepare()
    for name in ("train/train_000.wav", "test/test_019.wav"):
        assert (tmp_path / "a" / "audio" / name).read_bytes() == (tmp_path / "b" / "audio" / name).read_bytes()
    assert (tmp_path / "a" / "valid.tsv").read_text() == (tmp_path / "b" / "valid.tsv").read_text()
    # the events are where the sound is: louder inside the events than outside
    inside, outside = [], []
    for key in ("train_001.wav", "train_002.wav", "train_003.wav", "train_004.wav"):
        wave, sr = sf.read(clips[key].path)
        mask = np.zeros(len(wave), bool)
        for e in clips[key].events:
            mask[int(e.onset * sr):int(e.offset * sr)] = True
        inside += list(wave[mask] ** 2)
        outside += list(wave[~mask] ** 2)
    assert np.mean(inside) > 20 * np.mean(outside)
    # the same data, read as a DESED folder, give the same clips and events
    assert _all_clips(get_task("folder-events", tmp_path / "a")) == clips
    with pytest.raises(UserError, match="holds no synthetic-events dataset"):
        (tmp_path / "foreign").mkdir()
        (tmp_path / "foreign" / "x.txt").write_text("mine")
        get_task("synthetic-events", tmp_path / "foreign").prepare()


def test_synthetic_events_through_the_runner(tmp_path):
    """The plugin needs nothing of the core but its contracts: features, events, the data
    digest and a pretraining row come out of the ordinary runner."""
    from ssl_bench.config import resolve
    from ssl_bench.runner import run_experiment

    cfg = resolve("audiomae", preset="tiny", task="synthetic-events", overrides={
        "encoder.depth": 1, "decoder.depth": 1, "pretrain.epochs": 1, "pretrain.batch_size": 16,
        "pretrain.warmup_epochs": 0})
    run = run_experiment(cfg, data_dir=tmp_path / "data", results_root=tmp_path / "results", protocols=("pretrain",),
                         progress=False)
    result = json.loads((run / "result.json").read_text())
    (row,) = result["rows"]
    assert row["task"] == "synthetic-events" and row["metric"] == "loss" and np.isfinite(row["value"])
    assert (row["n_train"], row["n_valid"], row["n_test"]) == (60, 20, 20) and row["valid_source"] == "task"
    assert result["provenance"]["data"]["files"] == 100


def test_validation_carved_from_event_folds_keeps_label_sets_apart(tmp_path):
    from ssl_bench.registry import get_registry
    from ssl_bench.splitdata import TaskData

    root = fx.make_folder_events(tmp_path / "d", layout="folds", per_part=8)
    data = TaskData({"task": "folder-events", "data": {"valid_fraction": 0.25}}, get_registry(), root)
    assert data.label_shape == "events" and data.multilabel
    parts = data.parts(data.splits[0])
    assert parts.carved and len(parts.valid) == 4 and len(parts.train) == 12
    # the training folds hold each label set twice or more: every set keeps a clip in train
    assert {c.labels for c in parts.train} == {c.labels for c in data.splits[0].train}
