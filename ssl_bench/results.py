"""Run records on disk, and the pandas tables made from them.

Layout of a results root::

    results/
      <run-id>/            one finished run, written atomically (temp dir + rename)
        config.yaml        the fully resolved configuration
        metrics.jsonl      one JSON object per epoch / step record
        result.json        {"run_id", "config_hash", "rows": [...]}
        log.txt            what the run printed
        *.pt               checkpoints, where asked
      .tmp-<run-id>-*/     runs in progress (ignored by load; removed on error or Ctrl-C)
      .cache/              features, pretrained encoders, probe embeddings

:func:`load` returns one row per run x task x protocol x split x seed x metric with the
flattened configuration as columns; :func:`summary` gives mean and std over splits and seeds;
:func:`compare` pivots on the settings that vary.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .checkpoint import atomic_write_text, save_model
from .config import config_hash, dump_yaml, flat_config

ROW_KEYS = ("run_id", "model", "task", "protocol", "split", "seed", "init", "metric", "value")


def new_run_id(config: dict[str, Any]) -> str:
    """``<UTC time>-<model>-<task>-<config hash>-<4 random hex>``: sortable and unique."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.get('model')}-{config.get('task')}-{config_hash(config)[:6]}-{os.urandom(2).hex()}"


class RunWriter:
    """Writes one run directory atomically.

    Everything goes to a hidden temporary directory beside the final one; on a clean exit
    ``result.json`` is written and the directory is renamed to ``<root>/<run_id>`` in one
    step.  On an exception or Ctrl-C the temporary directory is removed: ``results/`` never
    holds half a run.  ``keep_partial=True`` keeps it under ``.failed-<run_id>`` instead.
    """

    def __init__(self, root: str | Path, run_id: str, config: dict[str, Any], *, echo: bool = False,
                 keep_partial: bool = False):
        self.root = Path(root)
        self.run_id = run_id
        self.config = config
        self.echo = echo
        self.keep_partial = keep_partial
        self.rows: list[dict[str, Any]] = []
        self.final_dir = self.root / run_id
        self.dir: Path | None = None
        self._t0 = time.time()

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "RunWriter":
        self.root.mkdir(parents=True, exist_ok=True)
        if self.final_dir.exists():
            raise FileExistsError(f"{self.final_dir} already exists")
        self.dir = Path(tempfile.mkdtemp(prefix=f".tmp-{self.run_id}-", dir=self.root))
        atomic_write_text(self.dir / "config.yaml", dump_yaml(self.config))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.dir is not None
        if exc_type is None:
            self._finish()
        elif self.keep_partial:
            os.replace(self.dir, self.root / f".failed-{self.run_id}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def _finish(self) -> None:
        payload = {
            "run_id": self.run_id,
            "config_hash": config_hash(self.config),
            "host": socket.gethostname(),
            "wall_time_s": round(time.time() - self._t0, 3),
            "rows": self.rows,
        }
        atomic_write_text(self.dir / "result.json", json.dumps(payload, indent=1, default=_jsonable))
        os.replace(self.dir, self.final_dir)
        self.dir = self.final_dir

    # ------------------------------------------------------------------ records
    def log(self, message: str) -> None:
        with open(self.dir / "log.txt", "a") as fh:
            fh.write(message.rstrip("\n") + "\n")
        if self.echo:
            print(message, flush=True)

    def metrics(self, record: dict[str, Any]) -> None:
        with open(self.dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=_jsonable) + "\n")

    def add_row(self, *, task: str, protocol: str, split: str, seed: int, init: str, metric: str,
                value: float, **extra: Any) -> dict[str, Any]:
        row = {
            "run_id": self.run_id, "model": self.config.get("model"), "task": task, "protocol": protocol,
            "split": split, "seed": seed, "init": init, "metric": metric, "value": float(value), **extra,
        }
        self.rows.append(row)
        return row

    def save_checkpoint(self, model: Any, name: str = "checkpoint.pt", **extra: Any) -> Path:
        return save_model(model, self.dir / name, **extra)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# --------------------------------------------------------------------------- reading
def run_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "result.json").is_file())


def load(root: str | Path = "results") -> pd.DataFrame:
    """Every finished run under ``root`` as one tidy DataFrame (see module docstring)."""
    frames = []
    for d in run_dirs(root):
        try:
            result = json.loads((d / "result.json").read_text())
            config = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"{d}: unreadable run record ({exc})") from None
        rows = result.get("rows", [])
        if not rows:
            continue
        df = pd.DataFrame(rows)
        flat = {k: v for k, v in flat_config(config or {}).items() if k not in df.columns}
        for k, v in flat.items():
            df[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
        df["config_hash"] = result.get("config_hash")
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=list(ROW_KEYS))
    return pd.concat(frames, ignore_index=True)


def varying_columns(df: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    """Config columns (dotted names) whose value differs between runs."""
    out = []
    for col in df.columns:
        if col in ROW_KEYS or col in exclude or col in ("config_hash", "checkpoint") or "." not in col:
            continue
        if df[col].astype(str).nunique(dropna=False) > 1:
            out.append(col)
    return out


def summary(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, std and count of ``value`` over splits and seeds.

    Grouped by model, task, protocol, init, metric, plus ``by`` (defaults to the config
    columns that vary between the runs, so ablations come out as separate rows).
    """
    if df.empty:
        return pd.DataFrame(columns=["model", "task", "protocol", "init", "metric", "mean", "std", "n"])
    by = list(by) if by is not None else varying_columns(df)
    keys = by + ["model", "task", "protocol", "init", "metric"]
    keys = list(dict.fromkeys(k for k in keys if k in df.columns))
    grouped = df.groupby(keys, dropna=False, sort=True)["value"]
    out = grouped.agg(["mean", "std", "count"]).rename(columns={"count": "n"}).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def compare(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One table: rows = task/protocol/init/metric, columns = the values of ``keys``, cells mean ± std."""
    missing = [k for k in keys if k not in df.columns]
    if missing:
        valid = sorted(c for c in df.columns if "." in c)
        raise KeyError(f"no column {', '.join(missing)} in the results; config columns: {', '.join(valid)}")
    s = summary(df, by=keys)
    s["cell"] = [f"{m:.4f} ± {sd:.4f}" for m, sd in zip(s["mean"], s["std"])]
    index = [c for c in ("model", "task", "protocol", "init", "metric") if c in s.columns]
    table = s.pivot_table(index=index, columns=keys, values="cell", aggfunc="first")
    return table


def format_table(df: pd.DataFrame, fmt: str = "table") -> str:
    """Render a DataFrame as ``table`` (plain text), ``md``, ``csv`` or ``latex``."""
    if fmt == "csv":
        return df.to_csv()
    if fmt == "md":
        return _markdown(df)
    if fmt == "latex":
        return df.to_latex()
    if fmt == "table":
        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200):
            return df.to_string()
    raise ValueError(f"unknown format {fmt!r}; choose table, md, csv or latex")


def _markdown(df: pd.DataFrame) -> str:
    flat = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    cols = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in flat.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in flat.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)
