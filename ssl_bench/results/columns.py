"""What the columns of a results table are: row keys, variants, encoders, settings.

A setting is a column of the flattened config that is not bookkeeping (:func:`is_setting`);
the settings that take several values inside one model/task/protocol/metric group split a
table into rows (:func:`splitting_columns`), so runs that differ in them are never pooled.
"""

from __future__ import annotations

import pandas as pd

from ..config import BOOKKEEPING_FIELDS

ROW_KEYS = ("run_id", "model", "task", "protocol", "split", "seed", "init", "init_id", "metric", "value")

#: Row columns that tell apart several results of one protocol on one split (the per-layer
#: probes' ``layer``; ``status``, present only when some run has not finished, keeps an
#: interrupted run's rows apart from finished ones): summaries and tables keep them apart;
#: rows without one hold "".
VARIANT_KEYS = ("layer", "status")

#: What names an encoder in a table: the readable name and the content id.
ENCODER_KEYS = ("init", "init_id")

#: Settings of how an encoder was pretrained (meaningless for a random-init row).
PRETRAINING_PREFIXES = ("pretrain", "masker", "decoder", "objective", "method")

#: Columns that say which version of each loaded plugin a run had: ``plugin.<name>``.  Like
#: ``code_version`` they can be filtered on and compared, but do not split a table.
PLUGIN_PREFIX = "plugin."
#: Config columns that never split a table (bookkeeping, or said by ``init_id``).
NOT_SETTINGS = ("config_hash", "checkpoint", "device")


def variant_columns(df: pd.DataFrame) -> list[str]:
    """The :data:`VARIANT_KEYS` that tell rows of ``df`` apart: present, with some value other
    than "" (and, for ``status``, other than ``finished``)."""
    from .partial import FINISHED

    return [k for k in VARIANT_KEYS if k in df.columns
            and (~df[k].fillna("").astype(str).isin(["", FINISHED])).any()]


def is_setting(df: pd.DataFrame, col: str) -> bool:
    """Whether column ``col`` of ``df`` is a setting of the config: a dotted key, a component
    choice (``masker``, when ``masker.*`` columns exist) or a top-level run setting (``preset``,
    ``amp``, ...)."""
    from ..config import TOP_LEVEL

    if (col in ROW_KEYS or col in NOT_SETTINGS or col == "run" or col in BOOKKEEPING_FIELDS
            or str(col).rsplit(".", 1)[-1] in BOOKKEEPING_FIELDS or str(col).startswith(PLUGIN_PREFIX)):
        return False
    return "." in col or col in TOP_LEVEL or any(str(c).startswith(col + ".") for c in df.columns)


def varying_columns(df: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    """Config columns (settings, :func:`is_setting`) whose value differs between runs."""
    out = []
    for col in df.columns:
        if col in exclude or not is_setting(df, col):
            continue
        if df[col].astype(str).nunique(dropna=False) > 1:
            out.append(col)
    return out


def splitting_columns(df: pd.DataFrame, within: list[str], exclude: tuple[str, ...] = ()) -> list[str]:
    """The varying config columns that take more than one value inside some group of
    ``within`` (a recipe setting that differs only between tasks does not split a task's rows)."""
    cols = varying_columns(df, exclude)
    within = [c for c in within if c in df.columns]
    if not within:
        return cols
    out = []
    for col in cols:
        counts = df[within + [col]].astype(str).groupby(within, sort=False)[col].nunique()
        if (counts > 1).any():
            out.append(col)
    return out


def primary_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each task's primary metric (``primary_metric``, the task's first; for older
    records the first metric each task reports)."""
    if "primary_metric" in df.columns and df["primary_metric"].notna().any():
        known = df["primary_metric"].notna() & (df["primary_metric"].astype(str) != "")
        keep = known & (df["metric"] == df["primary_metric"])
        first = df[~known].groupby("task")["metric"].first()
        keep |= ~known & (df["metric"] == df["task"].map(first))
        return df[keep]
    first = df.groupby("task")["metric"].first()
    return df[df["metric"] == df["task"].map(first)]
