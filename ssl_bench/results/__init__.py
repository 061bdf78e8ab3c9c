"""Run records on disk, and the tables made from them.

Layout of a results root::

    results/
      <run-id>/            one finished run, written atomically (temp dir + rename)
        config.yaml        the fully resolved configuration
        metrics.jsonl      one JSON object per epoch / step record
        result.json        {"run_id", "run_key", "config_hash", "provenance", "config", "rows": [...]}
        log.txt            what the run printed
        *.pt               checkpoints, where asked
      .tmp-<run-id>-<host>-<pid>-<start>-*/
                           runs in progress (ignored by load; removed on error or Ctrl-C, and
                           by a later writer on the same host once that process is gone)
      .cache/              features, pretrained encoders, probe embeddings, file digests

One idea per module: :mod:`.writer` (a run directory, atomically), :mod:`.partial` (the rows
of a run that has not finished), :mod:`.load` (a root as one tidy DataFrame; choosing rows),
:mod:`.columns` (what a table's columns are), :mod:`.stats` (intervals and paired comparisons
from per-clip predictions, Holm's adjustment), :mod:`.views` (summary, comparison,
leaderboard, split table) and :mod:`.formatting` (text, Markdown, CSV, LaTeX).  Every row names its encoder by content:
``init`` (a readable name: ``random``, ``pretrained`` or the checkpoint's) and ``init_id``
(the SHA-256 prefix of the weights, or of the pretraining recipe when each split pretrained
its own), so tables group by ``init_id`` and two checkpoints never share a row.
"""

from __future__ import annotations

from .columns import (
    ENCODER_KEYS,
    NOT_SETTINGS,
    PRETRAINING_PREFIXES,
    ROW_KEYS,
    VARIANT_KEYS,
    is_setting,
    primary_rows,
    splitting_columns,
    variant_columns,
    varying_columns,
)
from .formatting import Best, csv_safe, format_cell, format_p, format_table, latex_escape
from .load import MISSING, ResultsWarning, finished_runs, load, run_dirs, run_time, select, short_run_id
from .stats import WILCOXON_MIN_PAIRS, cell_interval, holm, paired_comparison, paired_test, significance
from .views import board, compare, split_table, summary
from .writer import NullWriter, RunWriter, new_run_id, sweep_labels

__all__ = ["ENCODER_KEYS", "MISSING", "NOT_SETTINGS", "PRETRAINING_PREFIXES", "ROW_KEYS", "VARIANT_KEYS",
           "WILCOXON_MIN_PAIRS", "Best", "NullWriter", "ResultsWarning", "RunWriter", "board", "cell_interval", "compare",
           "csv_safe", "finished_runs", "format_cell", "format_p", "format_table", "latex_escape", "holm", "is_setting", "load", "new_run_id", "paired_comparison",
           "paired_test", "primary_rows", "run_dirs",
           "run_time", "select", "short_run_id", "significance", "split_table", "splitting_columns", "summary",
           "sweep_labels", "variant_columns", "varying_columns"]
