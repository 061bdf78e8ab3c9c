"""Reading a results root into one tidy DataFrame, and choosing rows of it.

:func:`load` returns one row per run x task x protocol x split x seed x metric with the
flattened configuration as columns; :func:`select` keeps the rows of some runs, dates or
settings.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..config import flat_config
from ..files import shown
from .columns import PLUGIN_PREFIX, ROW_KEYS, VARIANT_KEYS
from .partial import FINISHED, partial_runs

#: What a config column holds in rows of runs whose config lacks that key (a masker without
#: ``width``): shown, grouped and filtered like any value, so no row drops out of a table.
MISSING = "-"


class ResultsWarning(UserWarning):
    """A run directory whose record cannot be read; it is left out of the tables."""


# --------------------------------------------------------------------------- reading
def run_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "result.json").is_file())


def finished_runs(root: str | Path) -> dict[str, Path]:
    """``{run key: run directory}`` of the finished runs under ``root`` that record their key
    (:func:`ssl_bench.provenance.run_key`); of several with one key, the latest.  What a
    launcher skips: the same computation, done."""
    found: dict[str, Path] = {}
    for d in run_dirs(root):
        try:
            key = json.loads((d / "result.json").read_text()).get("run_key")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(key, str) and key:
            found[key] = d
    return found


def load(root: str | Path | list[str | Path] = "results") -> pd.DataFrame:
    """Every run under ``root`` (or under each of several roots) as one tidy DataFrame (see
    module docstring); the ``root`` column says where each run was read.

    Roots from several machines merge: a run found under two roots is one run (runs are
    deduplicated by run id); if its two records disagree, a :class:`ResultsWarning` names the
    run and both places, and the first root's record is kept.

    Rows of runs written before encoders had ids keep ``random`` and ``pretrained`` (an in-run
    pretraining, told apart by the config columns) as their ``init_id``; a checkpoint's row
    gets ``unknown:<run id>``, so it never pools with another checkpoint of the same name.
    Each loaded plugin's version (a file plugin's ``sha256:<12 hex>``) is a column
    ``plugin.<name>``; a row's per-clip predictions file is ``predictions_file``.  The rows of runs that have not finished (:mod:`.partial`) come too,
    when there are any, with a ``status`` column (``interrupted``, ``running``) that keeps
    them apart from the finished runs' (``finished``)."""
    frames = []
    bad: list[tuple[Path, str]] = []
    loaded = 0
    settings: set[str] = set()
    skipped_rows: list[tuple[Path, list[Any]]] = []
    roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
    seen: dict[str, tuple[Path, str]] = {}  # run id -> (where, digest of its rows)
    for d in (d for r in roots for d in run_dirs(r)):
        record = d / "result.json"
        try:
            result = json.loads(record.read_text())
            if not isinstance(result, dict) or not isinstance(result.get("rows", []), list):
                raise ValueError("not a run record")
            record = d / "config.yaml"
            config = yaml.safe_load(record.read_text()) if record.is_file() else {}
            if not isinstance(config or {}, dict):
                raise ValueError("not a mapping of settings")
            record = d / "result.json"
            rows, dropped = _numeric_rows(result.get("rows", []))
            df = _frame({**result, "rows": rows}, config or {}, d.name, settings, lambda name, d=d: d / name)
        except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            bad.append((record, reason[:200]))
            continue
        digest = json.dumps(result.get("rows", []), sort_keys=True, default=str)
        if d.name in seen:
            where, first = seen[d.name]
            if first != digest:
                warnings.warn(f"run {d.name} differs between {shown(where)} and {shown(d)}: kept the first; remove "
                              "or rename one of them", ResultsWarning, stacklevel=2)
            continue
        seen[d.name] = (d, digest)
        if dropped:
            skipped_rows.append((d / "result.json", dropped))
        loaded += 1
        if df is not None:
            frames.append(df.assign(root=str(d.parent)))
    for path, reason in bad:  # one damaged record must not hide every other run
        warnings.warn(f"{shown(path)}: unreadable run record ({reason}); skipped, {loaded} run(s) "
                      "loaded; remove or repair that directory", ResultsWarning, stacklevel=2)
    for path, dropped in skipped_rows:
        warnings.warn(f"{shown(path)}: {len(dropped)} row(s) whose value is not a number left out (the first: "
                      f"{dropped[0]!r}); the run's other rows are loaded", ResultsWarning, stacklevel=2)
    finished = set(seen)
    finished_keys = {k for r in roots for k in finished_runs(r)}
    unfinished = []
    for info, rows in (found for r in roots for found in partial_runs(r)):
        if info["run_id"] in finished or info.get("run_key") in finished_keys:  # ended between its rename and
            continue  # the state's removal
        try:
            df = _frame({**info, "rows": rows}, info.get("config") or {}, info["run_id"], settings,
                        partial(_unfinished_predictions, Path(info["dir"])))
        except (ValueError, TypeError):
            continue
        if df is not None:
            unfinished.append(df.assign(status=info["status"]))
    if unfinished:
        frames = [f.assign(status=FINISHED) for f in frames] + unfinished
    if not frames:
        return pd.DataFrame(columns=list(ROW_KEYS))
    # a key some runs' configs lack: MISSING there, before concat turns an int column to floats
    frames = [f.assign(**{k: MISSING for k in settings if k not in f.columns}) for f in frames]
    df = pd.concat(frames, ignore_index=True)
    for key in VARIANT_KEYS:
        if key in df.columns:
            df[key] = df[key].fillna("").astype(str)
    for key in sorted(settings):  # a key a config holds as null: MISSING too, so no table drops its rows
        if key in df.columns and df[key].isna().any():
            df[key] = df[key].astype(object).where(df[key].notna(), MISSING)
    df = df.copy()  # one block per dtype again after the column-wise fills
    df.insert(1, "run", [short_run_id(r) for r in df["run_id"]])
    return df


def _frame(result: dict[str, Any], config: dict[str, Any], name: str, settings: set[str],
           where: Callable[[str], Path]) -> pd.DataFrame | None:
    """The rows of one run record as a DataFrame with its config and plugin columns and, for
    rows that name their per-clip predictions, ``predictions_file`` (the file's absolute path:
    ``where`` maps the row's ``predictions``); ``None`` for a run without rows; ``settings``
    collects the config columns seen."""
    rows = result.get("rows", [])
    if not isinstance(rows, list):
        raise ValueError("not a run record")
    if not rows:
        return None
    df = pd.DataFrame(rows)
    if not {"init", "value"} <= set(df.columns):
        raise ValueError("its rows lack init/value")
    if "init_id" not in df.columns:
        df["init_id"] = [(i if i in ("random", "pretrained") else f"unknown:{name}") for i in df["init"]]
    flat = {k: v for k, v in flat_config(config).items() if k not in df.columns}
    settings.update(flat)
    columns = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flat.items()}
    plugins = plugin_columns((result.get("provenance") or {}).get("plugins"))
    columns.update({k: v for k, v in plugins.items() if k not in df.columns and k not in columns})
    if "predictions" in df.columns:
        columns["predictions_file"] = [str(where(p)) if isinstance(p, str) and p else None for p in df["predictions"]]
    columns["config_hash"] = result.get("config_hash")
    # joined at once: a config has hundreds of keys, and one column at a time fragments the frame
    return pd.concat([df.drop(columns=[c for c in columns if c in df.columns]),
                      pd.DataFrame({k: (v if isinstance(v, list) else [v] * len(df)) for k, v in columns.items()},
                                   index=df.index)], axis=1)


def _numeric_rows(rows: list[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """``(rows whose value is a number, as a float; the values of the others)``.  A value written
    as text that reads as a number (``"0.5"``, ``"nan"``) is taken; anything else is left out."""
    kept, dropped = [], []
    for row in rows:
        if not isinstance(row, dict):
            dropped.append(row)
            continue
        value = row.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            dropped.append(value)
            continue
        try:
            number = float(value)
        except ValueError:
            dropped.append(value)
            continue
        kept.append({**row, "value": number})
    return kept, dropped


def _unfinished_predictions(state: Path, name: str) -> Path:
    """Where an unfinished run keeps the predictions its rows name: ``predictions/<split>/<file>``
    of the run directory is ``<split>/predictions/<file>`` of its state directory."""
    parts = Path(name).parts
    return state / parts[1] / parts[0] / Path(*parts[2:]) if len(parts) >= 3 else state / name


def plugin_columns(plugins: Any) -> dict[str, str]:
    """``{"plugin.<name>": version}`` of a run's loaded plugins (a file plugin's version is
    ``sha256:`` and the first 12 hex digits of its content)."""
    out = {}
    for p in plugins if isinstance(plugins, list) else []:
        if isinstance(p, dict) and p.get("name") and not p.get("error"):
            out[f"{PLUGIN_PREFIX}{p['name']}"] = (f"sha256:{str(p['sha256'])[:12]}" if p.get("sha256")
                                                  else str(p.get("version") or p.get("origin") or "-"))
    return out


def short_run_id(run_id: str) -> str:
    """The last two parts of a run id (config hash and random suffix, ``3fa2c1-9b0e``): what
    tables show and ``results --run`` accepts."""
    parts = str(run_id).split("-")
    return "-".join(parts[-2:]) if len(parts) >= 4 else str(run_id)


def run_time(run_id: str) -> datetime | None:
    """When a run started (UTC), from its id; ``None`` for ids that carry no time."""
    try:
        return datetime.strptime(str(run_id)[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def select(df: pd.DataFrame, runs: list[str] | None = None, since: str | None = None,
           where: list[str] | None = None, suite: str | None = None) -> pd.DataFrame:
    """The rows of ``df`` from ``runs`` (full ids, short ids or id prefixes), of runs started at or
    after ``since`` (``2026-12-01`` or ``2026-12-01T14:00``, UTC) and whose settings match every
    ``where`` (``masker.ratio=0.8``; ``-`` matches runs without the key), and of ``suite``
    (``NAME`` or ``NAME@VERSION``)."""
    from ..config import ConfigError

    if suite:
        name, _, version = suite.partition("@")
        keep = df["suite"].astype(str) == name if "suite" in df.columns else pd.Series(False, index=df.index)
        if version and "suite_version" in df.columns:
            keep &= df["suite_version"].astype(str) == version
        df = df.loc[keep.to_numpy(dtype=bool)]

    if runs:
        wanted = [r.strip() for r in runs if r.strip()]
        keep = [any(rid == w or short == w or rid.startswith(w) for w in wanted)
                for rid, short in zip(df["run_id"].astype(str), df["run"].astype(str))]
        df = df.loc[np.asarray(keep, dtype=bool)]  # (a plain empty list would select no columns)
    if since:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            raise ConfigError(f"--since {since}: expected a date such as 2026-12-01 or 2026-12-01T14:00") from None
        start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
        df = df.loc[np.asarray([t is not None and t >= start for t in map(run_time, df["run_id"])], dtype=bool)]
    for condition in where or []:
        key, sep, wanted = condition.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--where {condition}: expected KEY=VALUE, e.g. masker.ratio=0.8")
        if key not in df.columns:
            known = ", ".join(sorted(c for c in df.columns if "." in c)[:20])
            raise ConfigError(f"--where {key}: no such column in the results; config columns include {known}")
        df = df.loc[np.asarray([_matches(v, wanted.strip()) for v in df[key]], dtype=bool)]
    return df


def _matches(value: Any, wanted: str) -> bool:
    from ..config import parse_value

    return str(value) == wanted or value == parse_value(wanted)
