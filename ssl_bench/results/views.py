"""The tables made from loaded rows: summary, comparison, leaderboard, the split table.

* :func:`summary`: mean, std, n and a 95% interval over splits, seeds and test clips (fold and
  seed spread apart when both vary); how the interval is made is in :mod:`.stats`;
* :func:`compare`: one column per value of a setting, and a paired comparison of each value
  with a baseline, clip by clip on matched splits and seeds, Holm-adjusted over the values;
* :func:`board`: the leaderboard, encoders x tasks, each task's primary metric;
* :func:`split_table`: what a run prints when it ends, a column per split.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .columns import ENCODER_KEYS, PRETRAINING_PREFIXES, primary_rows, splitting_columns, variant_columns
from .formatting import Best, format_cell, format_p
from .load import MISSING, _matches, short_run_id
from .stats import ClipData, cell_interval, holm, paired_comparison, units

#: The statistics columns of :func:`summary`, after its key columns.
STAT_COLUMNS = ["mean", "std", "n", "ci_low", "ci_high", "ci_method", "n_clips", "n_splits", "n_seeds"]


def _cell_stats(group: pd.DataFrame, clips: ClipData) -> dict[str, Any]:
    """Mean, std, n (evaluations) and the 95% interval of one table cell (:mod:`.stats`); the
    mean is over splits of the mean over a split's seeds."""
    cell = units(group)
    values = np.array([float(r["value"]) for seeds in cell.values() for r in seeds.values()])
    per_split = np.array([np.mean([float(r["value"]) for r in seeds.values()]) for seeds in cell.values()])
    seeds = max(len(s) for s in cell.values())
    interval = cell_interval(group, clips)
    out = {"mean": float(per_split.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
           "n": int(len(values)), "ci_low": interval.low, "ci_high": interval.high, "ci_method": interval.method,
           "n_clips": interval.clips, "n_splits": int(len(per_split)), "n_seeds": int(seeds), "runs": _runs(group)}
    if len(per_split) > 1 and seeds > 1:
        out["std_split"] = float(per_split.std(ddof=1))  # spread of the fold means
        within = group.groupby("split", sort=False)["value"].std(ddof=1).dropna()
        out["std_seed"] = float(np.sqrt((within ** 2).mean())) if len(within) else float("nan")
    return out


def _runs(group: pd.DataFrame, most: int = 3) -> str:
    """The short ids of the runs a cell pools (``4 runs`` beyond ``most``)."""
    ids = list(dict.fromkeys(group["run"].astype(str))) if "run" in group else \
        list(dict.fromkeys(short_run_id(r) for r in group.get("run_id", [])))
    return ", ".join(ids) if len(ids) <= most else f"{len(ids)} runs"


def summary(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, std, n (evaluations), the 95% interval (``ci_low``, ``ci_high``; NaN for a single
    value without per-clip predictions), how it was made (``ci_method``) and the test clips it
    resampled (``n_clips``), over splits, seeds and clips (:mod:`.stats`); ``std_split`` and
    ``std_seed`` when splits and seeds both vary.

    Grouped by model, task, protocol, the encoder (``init``, ``init_id``), metric and any
    variant column (``layer``), plus ``by`` (default: the config columns that vary within a
    task, so ablations come out as separate rows).
    """
    base = ["model", "task", "protocol", *ENCODER_KEYS, "metric"]
    if df.empty:
        return pd.DataFrame(columns=base + STAT_COLUMNS)
    by = list(by) if by is not None else splitting_columns(df, ["model", "task", "protocol", "metric"])
    keys = list(dict.fromkeys(k for k in by + base + variant_columns(df) if k in df.columns))
    clips = ClipData()
    records = []
    for values, group in df.groupby(keys, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        records.append({**dict(zip(keys, values)), **_cell_stats(group, clips)})
    out = pd.DataFrame.from_records(records)
    extra = [c for c in ("std_split", "std_seed") if c in out.columns]
    return out[keys + STAT_COLUMNS + extra + ["runs"]]


def _label(values: tuple) -> str:
    return " / ".join(str(v) for v in values) if len(values) > 1 else str(values[0])


def compare(df: pd.DataFrame, keys: list[str], baseline: str | None = None) -> pd.DataFrame:
    """One table: a row per model/task/protocol/encoder kind/metric (and any other setting that
    varies, so runs that differ in another setting are never pooled), a column per value of
    ``keys`` (``mean [95% interval] (n)``), and per value a column ``p: <value> vs <baseline>``:
    the paired comparison over the (split, seed) pairs both have, clip by clip (McNemar or a
    paired bootstrap, :func:`.stats.paired_comparison`), its p Holm-adjusted over the values
    compared with the baseline in that row; the marker follows the adjusted p.

    ``baseline``: the value the others are tested against (``0.8``; for several keys the
    values joined by commas); default the first value in sorted order.  The encoder's
    ``init``/``init_id`` join the row key only where one cell would otherwise mix encoders.
    """
    missing = [k for k in keys if k not in df.columns]
    if missing:
        valid = sorted(c for c in df.columns if "." in c)
        raise KeyError(f"no column {', '.join(missing)} in the results; config columns: {', '.join(valid)}")
    df = df.copy()
    df["_encoder"] = np.where(df["init_id"].astype(str) == "random", "random", "trained") \
        if "init_id" in df.columns else df["init"].astype(str)
    base = ["model", "task", "protocol", "_encoder", "metric", *variant_columns(df)]
    base += splitting_columns(df, ["model", "task", "protocol", "metric"], exclude=tuple(keys))
    base = list(dict.fromkeys(c for c in base if c in df.columns))
    for col in ENCODER_KEYS:  # an encoder column joins the row key only where a cell would mix encoders
        if col in df.columns and (df.astype({col: str}).groupby(base + keys, dropna=False)[col].nunique() > 1).any():
            base.append(col)
    column_values = sorted({tuple(v) for v in df[keys].itertuples(index=False, name=None)}, key=lambda t: tuple(
        (0, float(x)) if isinstance(x, (int, float)) and not isinstance(x, bool) else (1, str(x)) for x in t))
    base_value = column_values[0] if column_values else None
    if baseline is not None:
        wanted = [b.strip() for b in str(baseline).split(",")] if len(keys) > 1 else [str(baseline)]
        found = [v for v in column_values if len(wanted) == len(v) and all(_matches(x, w) for x, w in zip(v, wanted))]
        if not found:
            raise KeyError(f"--baseline {baseline}: {', '.join(keys)} takes the values "
                           f"{', '.join(_label(v) for v in column_values)}")
        base_value = found[0]
    records = []
    clips = ClipData()
    for index, group in df.groupby(base, dropna=False, sort=True):
        index = index if isinstance(index, tuple) else (index,)
        row = dict(zip(base, index))
        if "init" not in base:  # name the encoders of this row
            names = sorted({str(i) for i in group["init"]})
            row["init"] = names[0] if len(names) == 1 else ", ".join(names)
        cells = {v: g for v, g in group.groupby(keys, dropna=False, sort=False)}
        cells = {(v if isinstance(v, tuple) else (v,)): g for v, g in cells.items()}
        ref = cells.get(base_value)
        for value in column_values:
            g = cells.get(value)
            if g is None:
                row[_label(value)] = ""
                continue
            st = _cell_stats(g, clips)
            row[_label(value)] = format_cell(st["mean"], st["ci_low"], st["ci_high"], st["n"])
        tests = {}
        for value in column_values:
            g = cells.get(value)
            if value != base_value and g is not None and ref is not None:
                tests[value] = paired_comparison(g, ref, clips)
        adjusted = dict(zip(tests, holm([p for _, p, _ in tests.values()])))
        for value in column_values:
            if value == base_value:
                continue
            name = f"p: {_label(value)} vs {_label(base_value)}"
            if value not in tests:
                row[name] = ""
                continue
            test, p, over = tests[value]
            row[name] = format_p(p, adjusted[value], test, over, len(tests))
        row["runs"] = _runs(group)  # what this row pools, by short run id
        records.append(row)
    out = pd.DataFrame.from_records(records)
    index = [("init" if c == "_encoder" else c) for c in base]
    if "init" not in base:
        out = out.drop(columns=["_encoder"])
    else:
        out = out.drop(columns=["_encoder"])
        index = [c for c in index if c != "init" or c in out.columns]
    index = list(dict.fromkeys(c for c in index if c in out.columns))
    return out.set_index(index)


def board(df: pd.DataFrame, by_suite: bool = False) -> pd.DataFrame:
    """The leaderboard: a row per model, encoder (``init``, ``init_id``) and protocol (and any
    setting that varies within a task), a column per task holding the task's primary metric as
    ``mean [95% interval] (n)``; the best of each column is a :class:`Best` cell, which
    :func:`format_table` shows in bold in ``md`` and ``latex``.

    ``by_suite``: rows of suites only, a row per suite (name and version), model, encoder and
    setting, a column per (task, protocol) of the suite, ranked by ``suite mean``: the mean of
    those cells' means, for an encoder with every cell (one without is unranked, ``-``)."""
    df = df[df["protocol"] != "pretrain"] if "protocol" in df.columns else df
    if by_suite:
        if "suite" not in df.columns:
            return pd.DataFrame()
        df = df[df["suite"].notna() & (df["suite"].astype(str) != MISSING)].copy()
        df["protocol"] = df["task"].astype(str) + " · " + df["protocol"].astype(str)  # a column per cell
        df["task"] = df["protocol"]
    df = primary_rows(df)
    if df.empty:
        return pd.DataFrame()
    extra = splitting_columns(df, ["model", "task", "protocol", "metric"])
    # a random-init row is not made by any pretraining setting: one row, each evaluation once
    # (runs of a pretraining sweep repeat the same random-init baseline)
    pretraining = [c for c in extra if c.split(".")[0] in PRETRAINING_PREFIXES]
    if pretraining and "init_id" in df.columns:
        df = df.copy()
        random = df["init_id"].astype(str) == "random"
        df[pretraining] = df[pretraining].astype(object)
        df.loc[random, pretraining] = "-"
        rest = [c for c in ("task", "protocol", "split", "seed", "metric", *extra, *variant_columns(df))
                if c in df.columns and c not in pretraining]
        df = pd.concat([df[~random], df[random].drop_duplicates(subset=rest)])
    index = ["model", *ENCODER_KEYS, "protocol", *extra, *variant_columns(df)]
    if by_suite:
        index = ["suite", "suite_version", "model", *ENCODER_KEYS, *extra, *variant_columns(df)]
    index = list(dict.fromkeys(c for c in index if c in df.columns))
    s = summary(df, by=index)
    tasks = sorted(s["task"].unique())
    best = s.groupby("task")["mean"].transform("max")  # every primary metric here is higher-is-better
    s["cell"] = [(Best if is_best else str)(format_cell(m, lo, hi, n))
                 for m, lo, hi, n, is_best in zip(s["mean"], s["ci_low"], s["ci_high"], s["n"], s["mean"] == best)]
    metric = s.groupby("task")["metric"].first()
    table = s.pivot_table(index=index, columns="task", values="cell", aggfunc="first").fillna("")
    table = table[tasks]
    table.columns = [f"{t} ({metric[t]})" for t in tasks]
    if by_suite:
        cells = s.groupby(index, dropna=False)["mean"]
        complete = s.groupby(["suite", "suite_version"])["task"].transform("nunique")
        s["_complete"] = s.groupby(index, dropna=False)["task"].transform("nunique") == complete
        score = cells.mean().where(s.groupby(index, dropna=False)["_complete"].all())
        table["suite mean"] = [f"{v:.4f}" if pd.notna(v) else "-" for v in score.reindex(table.index)]
        order = score.reindex(table.index).fillna(-np.inf).to_numpy()
        table = table.iloc[np.argsort(-order, kind="stable")]
        ranks = score.reindex(table.index)
        table.insert(0, "rank", [str(i + 1) if pd.notna(v) else "-" for i, v in enumerate(ranks)])
    return table


def split_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table a run prints when it ends: a row per setting that varies between the runs
    (every component choice and setting, ``-`` where a run's config lacks the key), task,
    protocol, encoder, metric (and ``layer``); a column per split, then ``mean ± std`` (the
    mean alone for a single value), ``n``, the 95% interval and the runs pooled."""
    if df.empty:
        return pd.DataFrame()
    varying = splitting_columns(df, ["model", "task", "protocol", "metric"])  # not per-task recipes
    index = list(dict.fromkeys(varying + ["task", "protocol", "init", "init_id", "metric"] + variant_columns(df)))
    table = df.astype({c: str for c in varying}).pivot_table(index=index, columns="split", values="value",
                                                             aggfunc="mean", dropna=False)
    table = table.dropna(how="all")  # index combinations no row has
    s = summary(df.astype({c: str for c in varying}), by=varying).set_index(index).loc[table.index]
    table.columns = [str(c) for c in table.columns]
    table = table.map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    table["mean ± std"] = [f"{m:.4f}" if n < 2 else f"{m:.4f} ± {sd:.4f}"
                           for m, sd, n in zip(s["mean"], s["std"], s["n"])]
    table["n"] = s["n"].astype(int).to_numpy()
    table["95% CI"] = [f"[{lo:.4f}, {hi:.4f}]" if math.isfinite(lo) else "-"
                       for lo, hi in zip(s["ci_low"], s["ci_high"])]
    table["runs"] = s["runs"].to_numpy()
    return table
