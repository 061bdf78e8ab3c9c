"""``ssl-bench run ... --protocols pretrain,events`` end to end: onset-F rows for the pretrained and
the random-init encoder, on the embedded ``synthetic-events`` task and on a HEAR event task
directory, and the written predictions scored outside (sed_eval as hear-eval-kit calls it, and
hear-eval-kit's own scorer where it is installed) give each row's number to 1e-6."""

from __future__ import annotations

import importlib.util
import json
from collections import ChainMap
from pathlib import Path

import pytest

from ssl_bench import results
from ssl_bench.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: tiny settings: one pretraining epoch (no warm-up: its one step moves the weights), a few head epochs, a
#: small post-processing grid
CHEAP = ["--set", "pretrain.epochs=1", "--set", "pretrain.warmup_epochs=0", "--set", "events.max_epochs=6", "--set", "events.check_every=3",
         "--set", "events.hidden=32", "--set", "events.median_filter_ms=0", "--set", "events.threshold=0.3",
         "-q"]
#: hear-eval-kit's settings of the two metrics (heareval/score.py, available_scores)
SED = {"event_onset_200ms_fms": ("EventBasedMetrics", ("f_measure", "precision", "recall"),
                                 {"evaluate_onset": True, "evaluate_offset": False, "t_collar": 0.2}),
       "segment_1s_er": ("SegmentBasedMetrics", ("error_rate",), {"time_resolution": 1.0})}


def sed_eval_score(name: str, predicted: dict, reference: dict, labels: list[str]) -> dict[str, float]:
    """hear-eval-kit's ``SoundEventScore._compute`` on sed_eval: the files of the predictions, ms to s."""
    import sed_eval
    from dcase_util.containers import MetaDataContainer

    kind, parts, params = SED[name]

    def container(x: dict) -> MetaDataContainer:
        return MetaDataContainer([{"event_label": str(e["label"]), "event_onset": e["start"] / 1000.0,
                                   "event_offset": e["end"] / 1000.0, "file": f} for f, evs in x.items() for e in evs])

    ref, est = container(reference), container(predicted)
    scores = getattr(sed_eval.sound_event, kind)(event_label_list=list(labels), **params)
    for f in predicted:
        scores.evaluate(reference_event_list=ref.filter(filename=f), estimated_event_list=est.filter(filename=f))
    overall = dict(ChainMap(*scores.results_overall_metrics().values()))
    return {part: float(overall[part]) for part in parts}


def check_predictions_score_as_the_rows(root: Path, protocols: set[str], labels: list[str]) -> None:
    df = results.load(root)
    run_dir = next(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    hear = importlib.util.find_spec("heareval") is not None  # `pip install --no-deps heareval`: checked too
    checked = 0
    for (protocol, init, path), rows in df[df["protocol"].isin(protocols)].groupby(["protocol", "init", "predictions"]):
        values = dict(zip(rows["metric"], rows["value"]))
        predicted = json.loads((run_dir / path).read_text())
        reference = json.loads((run_dir / path.replace(".json", ".reference.json")).read_text())
        assert set(predicted) == set(reference) and len(predicted) == rows["n_test"].iloc[0]  # every test clip
        for name, (_, parts, _) in SED.items():
            outside = sed_eval_score(name, predicted, reference, labels)
            for i, part in enumerate(parts):
                column = name if i == 0 else f"{name}_{part}"
                assert outside[part] == pytest.approx(values[column], abs=1e-6), (protocol, init, column)
            if hear:
                from heareval.score import available_scores

                scorer = available_scores[name](label_to_idx={label: i for i, label in enumerate(labels)})
                first = scorer(predicted, reference)[0][1]
                assert first == pytest.approx(values[name], abs=1e-6), (protocol, init, name)
        checked += 1
    assert checked >= len(protocols)


def test_synthetic_events_pretrain_and_events(tmp_path):
    """The task's events protocol rows for both encoders, frames every 40 ms by interpolation."""
    from ssl_bench.tasks.synthetic_events import CLASSES

    root = tmp_path / "res"
    assert main(["run", "-m", "audiomae", "-p", "tiny", "-t", "synthetic-events", "--protocols", "pretrain,events",
                 "--set", "events.hop_ms=40", "--results", str(root), *CHEAP]) == 0
    df = results.load(root)
    onset = df[(df["protocol"] == "events") & (df["metric"] == "event_onset_200ms_fms")]
    assert sorted(onset["init"]) == ["pretrained", "random"]
    assert set(onset["primary_metric"]) == {"event_onset_200ms_fms"}
    assert set(onset["frame_hop_ms"]) == {40.0} and set(onset["frame_method"]) == {"interpolate"}
    assert set(onset["frame_dtype"]) == {"float16"} and set(onset["selection"]) == {"valid"}
    metrics = set(df[df["protocol"] == "events"]["metric"])
    assert {"event_onset_200ms_fms_precision", "event_onset_200ms_fms_recall", "segment_1s_er"} <= metrics
    check_predictions_score_as_the_rows(root, {"events"}, list(CLASSES))


def test_hear_event_task_events_and_events_finetune(tmp_path):
    """A HEAR 2021 event task directory: pretrain + events (both encoders) + events_finetune."""
    from taskfixtures import make_hear

    data = make_hear(tmp_path / "hear", embedding="event", per_split=6, seconds=2.0)
    labels = [line.split(",", 1)[1] for line in (data / "labelvocabulary.csv").read_text().splitlines()[1:]]
    root = tmp_path / "res"
    assert main(["run", "-m", "audiomae", "-p", "tiny", "-t", "hear", "--data-dir", str(data), "--splits", "fold00",
                 "--protocols", "pretrain,events,events_finetune", "--results", str(root),
                 "--set", "events_finetune.epochs=2", "--set", "events_finetune.median_filter_ms=0",
                 "--set", "events_finetune.threshold=0.3", *CHEAP]) == 0
    df = results.load(root)
    onset = df[df["metric"] == "event_onset_200ms_fms"]
    assert sorted(zip(onset["protocol"], onset["init"])) == [("events", "pretrained"), ("events", "random"),
                                                             ("events_finetune", "pretrained")]
    tuned = onset[onset["protocol"] == "events_finetune"].iloc[0]
    assert tuned["head_init"] == "probe" and tuned["frame_method"] == "columns" and tuned["frame_hop_ms"] == 160.0
    check_predictions_score_as_the_rows(root, {"events", "events_finetune"}, labels)
