"""The built-in metrics, registered through the same hook as any plugin's.

Event metrics carry hear-eval-kit's names and settings (``heareval/score.py``), so a HEAR task's
``evaluation`` list names them directly.
"""

from __future__ import annotations

from functools import partial

from ..hookspecs import hookimpl
from . import CLIP, EVENTS, Metric
from .clip import (
    accuracy,
    chroma_accuracy,
    d_prime,
    d_prime_mean_auc,
    macro_auc,
    mean_average_precision,
    pitch_accuracy,
)
from .sed import event_based, segment_based


@hookimpl
def register_metrics(register):
    register("accuracy", Metric(accuracy, CLIP, help="top-1 accuracy (multi-label: top class is a positive)"))
    register("mAP", Metric(mean_average_precision, CLIP, help="mean average precision over classes with a positive"))
    register("AUC", Metric(macro_auc, CLIP, help="macro ROC AUC over classes with positives and negatives"))
    register("d_prime", Metric(d_prime, CLIP, help="HEAR: mean over classes of d' = sqrt(2) Phi^-1(class AUC)"))
    register("d_prime_mean_auc", Metric(d_prime_mean_auc, CLIP,
                                        help="AudioSet papers (PANNs, AST): d' = sqrt(2) Phi^-1(macro AUC)"))
    register("pitch_acc", Metric(pitch_accuracy, CLIP, help="HEAR: top-1 accuracy of the pitch class"))
    register("chroma_acc", Metric(chroma_accuracy, CLIP, help="HEAR: top-1 accuracy modulo octaves (class % 12)"))
    register("event_onset_200ms_fms", Metric(
        partial(event_based, collar=0.2), EVENTS,
        help="event-based F-measure, onset within 200 ms (with precision, recall)"))
    register("event_onset_50ms_fms", Metric(
        partial(event_based, collar=0.05), EVENTS,
        help="event-based F-measure, onset within 50 ms (with precision, recall)"))
    register("event_onset_offset_50ms_20perc_fms", Metric(
        partial(event_based, collar=0.05, offsets=True, offset_fraction=0.2), EVENTS,
        help="event-based F-measure, onset within 50 ms and offset within max(50 ms, 20% of the event)"))
    register("segment_1s_er", Metric(
        partial(segment_based, resolution=1.0), EVENTS, greater_is_better=False,
        help="segment-based error rate in 1 s segments (with substitution, deletion, insertion rates)"))
