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

:func:`load` returns one row per run x task x protocol x split x seed x metric with the
flattened configuration as columns.  Every row names its encoder by content: ``init`` (a
readable name: ``random``, ``pretrained`` or the checkpoint's) and ``init_id`` (the SHA-256
prefix of the weights, or of the pretraining recipe when each split pretrained its own), so
tables group by ``init_id`` and two checkpoints never share a row.

* :func:`summary`: mean, std, n and a 95% confidence interval over splits and seeds (fold and
  seed spread apart when both vary);
* :func:`compare`: one column per value of a setting, and a paired test of each value against
  a baseline over matched splits and seeds;
* :func:`board`: the leaderboard, encoders x tasks, each task's primary metric.

Statistics (what README's "Reading the tables" explains): the interval is Student's t on the
independent units: the per-split means when there are several splits (seeds are averaged
within a split first, as folds share nothing but seeds share a test set), else the seeds.
Cross-validation folds overlap in training data, so fold intervals are somewhat optimistic
(Bengio & Grandvalet, 2004).  The paired test pairs each (split, seed) of a value with the
same (split, seed) of the baseline: a paired t-test below :data:`WILCOXON_MIN_PAIRS` pairs (a
signed-rank test cannot reach p < 0.05 with fewer than 6), else the Wilcoxon signed-rank test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .checkpoint import save_model
from .config import BOOKKEEPING_FIELDS, config_hash, dump_yaml, flat_config
from .files import atomic_write_text, clean_stale_temps, follow_umask, shown, temp_prefix

ROW_KEYS = ("run_id", "model", "task", "protocol", "split", "seed", "init", "init_id", "metric", "value")
#: Row columns that tell apart several results of one protocol on one split (the per-layer
#: probes' ``layer``): summaries and tables keep them apart; rows without one hold "".
VARIANT_KEYS = ("layer",)
#: What names an encoder in a table: the readable name and the content id.
ENCODER_KEYS = ("init", "init_id")
#: Pairs from which the Wilcoxon signed-rank test replaces the paired t-test.
WILCOXON_MIN_PAIRS = 8
#: Settings of how an encoder was pretrained (meaningless for a random-init row).
PRETRAINING_PREFIXES = ("pretrain", "masker", "decoder", "objective", "method")
#: Config columns that never split a table (bookkeeping, or said by ``init_id``).
NOT_SETTINGS = ("config_hash", "checkpoint", "device", "data.num_workers")
#: What a config column holds in rows of runs whose config lacks that key (a masker without
#: ``width``): shown, grouped and filtered like any value, so no row drops out of a table.
MISSING = "-"


class ResultsWarning(UserWarning):
    """A run directory whose record cannot be read; it is left out of the tables."""


def new_run_id(config: dict[str, Any], label: str = "") -> str:
    """``<UTC time>-<model>-<task>[-<label>]-<config hash>-<4 random hex>``: sortable and unique;
    ``label`` names what a sweep varied (``masker.ratio=0.8``, made safe for a file name)."""
    import re

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    label = re.sub(r"[^A-Za-z0-9.=_+]+", "_", label).strip("_")[:80]
    middle = f"-{label}" if label else ""
    return (f"{stamp}-{config.get('model')}-{config.get('task')}{middle}-{config_hash(config)[:6]}-"
            f"{os.urandom(2).hex()}")


def sweep_labels(sweeps: list[dict[str, Any]]) -> list[str]:
    """For each run of a sweep, ``key=value`` of every key whose value varies, joined by ``_``."""
    keys = [k for k in dict.fromkeys(k for sweep in sweeps for k in sweep)
            if len({json.dumps(sweep.get(k), default=str) for sweep in sweeps}) > 1]
    return ["_".join(f"{k}={sweep.get(k)}" for k in keys) for sweep in sweeps]


class RunWriter:
    """Writes one run directory atomically.

    Everything goes to a hidden temporary directory beside the final one; on a clean exit
    ``result.json`` is written and the directory is renamed to ``<root>/<run_id>`` in one
    step.  On an exception or Ctrl-C the temporary directory is removed: ``results/`` never
    holds half a run.  ``keep_partial=True`` keeps it under ``.failed-<run_id>`` instead.

    ``provenance``: the run's provenance block (:func:`ssl_bench.provenance.run_record` plus
    data and checkpoint digests), saved in ``result.json``.  ``track``: trackers to copy the
    params, per-epoch metrics and final rows to (``{"mlflow": URI, "tensorboard": DIR}``).
    """

    def __init__(self, root: str | Path, run_id: str, config: dict[str, Any], *, echo: bool = False,
                 keep_partial: bool = False, provenance: dict[str, Any] | None = None,
                 track: dict[str, Any] | None = None, run_key: str | None = None):
        self.root = Path(root)
        self.run_key = run_key
        self.run_id = run_id
        self.config = config
        self.echo = echo
        self.keep_partial = keep_partial
        self.provenance = dict(provenance or {})
        self.rows: list[dict[str, Any]] = []
        self.final_dir = self.root / run_id
        self.dir: Path | None = None
        self._t0 = time.time()
        self.trackers = None
        if track:
            from .tracking import Trackers

            self.trackers = Trackers(track, self.root)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "RunWriter":
        self.root.mkdir(parents=True, exist_ok=True)
        if self.final_dir.exists():
            raise FileExistsError(f"{self.final_dir} already exists")
        clean_stale_temps(self.root)  # what writers killed on this host left behind
        self.dir = Path(tempfile.mkdtemp(prefix=temp_prefix(self.run_id), dir=self.root))
        follow_umask(self.dir, directory=True)  # a shared results directory stays readable to the team
        atomic_write_text(self.dir / "config.yaml", dump_yaml(self.config))
        if self.trackers:
            self.trackers.start(self.run_id, self.config, self._tags())
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.dir is not None
        if exc_type is None:
            self._finish()
        else:
            if self.trackers:
                self.trackers.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
            if self.keep_partial:
                os.replace(self.dir, self.root / f".failed-{self.run_id}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def _tags(self) -> dict[str, str]:
        tags = {"ssl_bench.run_id": self.run_id, "ssl_bench.run_dir": str(self.final_dir.resolve()),
                "ssl_bench.model": str(self.config.get("model")), "ssl_bench.task": str(self.config.get("task"))}
        if self.provenance.get("code_version"):
            tags["ssl_bench.code_version"] = str(self.provenance["code_version"])
        if self.provenance.get("command"):
            tags["ssl_bench.command"] = str(self.provenance["command"])[:5000]
        return tags

    def _finish(self) -> None:
        if self.trackers:
            ids = sorted({str(r.get("init_id")) for r in self.rows if r.get("init_id")})
            self.trackers.rows(self.rows, {**self._tags(), "ssl_bench.init_ids": ",".join(ids)})
            self.trackers.end("FINISHED")
            self.provenance["tracking"] = self.trackers.describe()
        payload = {
            "run_id": self.run_id,
            "run_key": self.run_key,
            "config_hash": config_hash(self.config),
            "host": socket.gethostname(),
            "wall_time_s": round(time.time() - self._t0, 3),
            "provenance": self.provenance,
            "config": self.config,
            "rows": self.rows,
        }
        atomic_write_text(self.dir / "result.json", json.dumps(payload, indent=1, default=_jsonable))
        os.replace(self.dir, self.final_dir)
        self.dir = self.final_dir

    # ------------------------------------------------------------------ records
    def log(self, message: str) -> None:
        with open(self.dir / "log.txt", "a", errors="backslashreplace") as fh:  # a non-UTF-8 file name
            fh.write(message.rstrip("\n") + "\n")
        if self.echo:
            print(message, flush=True)

    def metrics(self, record: dict[str, Any]) -> None:
        with open(self.dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=_jsonable) + "\n")
        if self.trackers:
            self.trackers.record(record)

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


class NullWriter:
    """What torchrun ranks other than 0 write to: nothing (the :class:`RunWriter` interface)."""

    dir = None
    final_dir = None

    def __enter__(self) -> NullWriter:
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False

    def log(self, message: str) -> None:
        pass

    def metrics(self, record: dict[str, Any]) -> None:
        pass

    def add_row(self, **row: Any) -> dict[str, Any]:
        return row


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
    """Every finished run under ``root`` (or under each of several roots) as one tidy DataFrame
    (see module docstring); the ``root`` column says where each run was read.

    Roots from several machines merge: a run found under two roots is one run (runs are
    deduplicated by run id); if its two records disagree, a :class:`ResultsWarning` names the
    run and both places, and the first root's record is kept.  Rows of runs written before
    encoders had ids keep ``random`` and ``pretrained`` (an in-run pretraining, told apart by the
    config columns) as their ``init_id``; a checkpoint's row gets ``unknown:<run id>``, so it
    never pools with another checkpoint of the same name."""
    roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
    frames = []
    bad: list[tuple[Path, str]] = []
    loaded = 0
    settings: set[str] = set()
    seen: dict[str, tuple[Path, str]] = {}  # run id -> (where, digest of its rows)
    for d in (d for r in roots for d in run_dirs(r)):
        try:
            result = json.loads((d / "result.json").read_text())
            config = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").is_file() else {}
            if not isinstance(result, dict) or not isinstance(result.get("rows", []), list) \
                    or not isinstance(config or {}, dict):
                raise ValueError("not a run record")
            rows = result.get("rows", [])
            df = pd.DataFrame(rows) if rows else None
            if df is not None and not {"init", "value"} <= set(df.columns):
                raise ValueError("its rows lack init/value")
        except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            bad.append((d, reason[:200]))
            continue
        digest = json.dumps(result.get("rows", []), sort_keys=True, default=str)
        if d.name in seen:
            where, first = seen[d.name]
            if first != digest:
                warnings.warn(f"run {d.name} differs between {shown(where)} and {shown(d)}: kept the first; remove "
                              "or rename one of them", ResultsWarning, stacklevel=2)
            continue
        seen[d.name] = (d, digest)
        loaded += 1
        if df is None:
            continue
        if "init_id" not in df.columns:
            df["init_id"] = [(i if i in ("random", "pretrained") else f"unknown:{d.name}") for i in df["init"]]
        flat = {k: v for k, v in flat_config(config or {}).items() if k not in df.columns}
        settings.update(flat)
        added = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flat.items()}
        added.update(config_hash=result.get("config_hash"), root=str(d.parent))
        # one block of columns at once (a column at a time fragments the frame)
        frames.append(pd.concat([df, pd.DataFrame({k: [v] * len(df) for k, v in added.items()}, index=df.index)],
                                axis=1))
    for d, reason in bad:  # one damaged record must not hide every other run
        warnings.warn(f"{shown(d / 'result.json')}: unreadable run record ({reason}); skipped, {loaded} run(s) "
                      "loaded; remove or repair that directory", ResultsWarning, stacklevel=2)
    if not frames:
        return pd.DataFrame(columns=list(ROW_KEYS))
    # a key some runs' configs lack: MISSING there, before concat turns an int column to floats
    frames = [f.assign(**{k: MISSING for k in settings if k not in f.columns}) for f in frames]
    df = pd.concat(frames, ignore_index=True)
    for key in variant_columns(df):
        df[key] = df[key].fillna("").astype(str)
    for key in sorted(settings):  # a key a config holds as null: MISSING too, so no table drops its rows
        if key in df.columns and df[key].isna().any():
            df[key] = df[key].astype(object).where(df[key].notna(), MISSING)
    df = df.copy()  # one block per dtype again after the column-wise fills
    df.insert(1, "run", [short_run_id(r) for r in df["run_id"]])
    return df


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
    from .config import ConfigError

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


def variant_columns(df: pd.DataFrame) -> list[str]:
    """The :data:`VARIANT_KEYS` present in ``df``."""
    return [k for k in VARIANT_KEYS if k in df.columns]


def is_setting(df: pd.DataFrame, col: str) -> bool:
    """Whether column ``col`` of ``df`` is a setting of the config: a dotted key, a component
    choice (``masker``, when ``masker.*`` columns exist) or a top-level run setting (``preset``,
    ``amp``, ...)."""
    from .config import TOP_LEVEL

    if col in ROW_KEYS or col in NOT_SETTINGS or col == "run" or str(col).rsplit(".", 1)[-1] in BOOKKEEPING_FIELDS:
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


# --------------------------------------------------------------------------- statistics
def t_interval(values: np.ndarray, confidence: float = 0.95) -> float:
    """Half-width of Student's t interval of the mean of ``values`` (NaN for fewer than 2)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return float("nan")
    sd = float(np.std(values, ddof=1))
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def _cell_stats(group: pd.DataFrame) -> dict[str, Any]:
    """Mean, std, n and the 95% interval of one table cell (see the module docstring)."""
    values = group["value"].to_numpy(dtype=float)
    per_split = group.groupby("split", sort=False)["value"].mean().to_numpy(dtype=float)
    seeds = group["seed"].nunique() if "seed" in group else 1
    units = per_split if len(per_split) > 1 else values
    out = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
           "n": int(len(values)), "n_splits": int(len(per_split)), "n_seeds": int(seeds),
           "ci95": t_interval(units), "runs": _runs(group)}
    out["ci_low"], out["ci_high"] = out["mean"] - out["ci95"], out["mean"] + out["ci95"]
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
    """Mean, std, n, 95% interval (``ci95`` half-width, ``ci_low``, ``ci_high``) of ``value``
    over splits and seeds; ``std_split`` and ``std_seed`` when both vary.

    Grouped by model, task, protocol, the encoder (``init``, ``init_id``), metric and any
    variant column (``layer``), plus ``by`` (default: the config columns that vary within a
    task, so ablations come out as separate rows).
    """
    base = ["model", "task", "protocol", *ENCODER_KEYS, "metric"]
    columns = base + ["mean", "std", "n", "ci95"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    by = list(by) if by is not None else splitting_columns(df, ["model", "task", "protocol", "metric"])
    keys = list(dict.fromkeys(k for k in by + base + variant_columns(df) if k in df.columns))
    records = []
    for values, group in df.groupby(keys, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        records.append({**dict(zip(keys, values)), **_cell_stats(group)})
    out = pd.DataFrame.from_records(records)
    extra = [c for c in ("std_split", "std_seed") if c in out.columns]
    return out[keys + ["mean", "std", "n", "ci95", "ci_low", "ci_high", "n_splits", "n_seeds"] + extra + ["runs"]]


def paired_test(diffs: np.ndarray) -> tuple[str, float]:
    """``(test, p)`` for paired differences: a two-sided paired t-test below
    :data:`WILCOXON_MIN_PAIRS` pairs, else the Wilcoxon signed-rank test.  ``p`` is NaN for
    fewer than two pairs or for identical non-zero differences (no spread to test against),
    1.0 when every difference is zero."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=float)
    n = len(diffs)
    test = "t" if n < WILCOXON_MIN_PAIRS else "W"
    if n < 2:
        return test, float("nan")
    if np.allclose(diffs, 0.0, atol=1e-12):
        return test, 1.0
    if np.allclose(diffs, diffs[0], atol=1e-12):
        return test, float("nan")
    if test == "t":
        return test, float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return test, float(stats.wilcoxon(diffs).pvalue)


def significance(p: float) -> str:
    """``***`` p < 0.001, ``**`` p < 0.01, ``*`` p < 0.05, ``ns`` otherwise, ``-`` untested."""
    if not math.isfinite(p):
        return "-"
    return "***" if p < 1e-3 else "**" if p < 1e-2 else "*" if p < 0.05 else "ns"


def format_cell(mean: float, ci: float, n: int) -> str:
    """``0.8123 ± 0.0211 (n=5)``: the mean and the half-width of its 95% interval."""
    if not math.isfinite(ci):
        return f"{mean:.4f} (n={n})"
    return f"{mean:.4f} ± {ci:.4f} (n={n})"


def _label(values: tuple) -> str:
    return " / ".join(str(v) for v in values) if len(values) > 1 else str(values[0])


def _matches(value: Any, wanted: str) -> bool:
    from .config import parse_value

    return str(value) == wanted or value == parse_value(wanted)


def compare(df: pd.DataFrame, keys: list[str], baseline: str | None = None) -> pd.DataFrame:
    """One table: a row per model/task/protocol/encoder kind/metric (and any other setting that
    varies), a column per value of ``keys`` (``mean ± 95% CI (n)``), and per value a column
    ``p vs <baseline>``: the paired test over the (split, seed) pairs both have.

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
            st = _cell_stats(g)
            row[_label(value)] = format_cell(st["mean"], st["ci95"], st["n"])
        for value in column_values:
            if value == base_value:
                continue
            g = cells.get(value)
            name = f"p: {_label(value)} vs {_label(base_value)}"
            if g is None or ref is None:
                row[name] = ""
                continue
            a = g.groupby(["split", "seed"])["value"].mean()
            b = ref.groupby(["split", "seed"])["value"].mean()
            pairs = a.index.intersection(b.index)
            test, p = paired_test((a.loc[pairs] - b.loc[pairs]).to_numpy())
            shown = f"{p:.3g}" if math.isfinite(p) else "n/a"
            row[name] = f"{shown} {significance(p)} ({test}, n={len(pairs)})"
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


def board(df: pd.DataFrame, fmt: str = "table", by_suite: bool = False) -> pd.DataFrame:
    """The leaderboard: a row per model, encoder (``init``, ``init_id``) and protocol (and any
    setting that varies within a task), a column per task holding the task's primary metric as
    ``mean ± 95% CI (n)``; the best of each column is bold in ``md`` and ``latex``.

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
    s["cell"] = [format_cell(m, c, n) for m, c, n in zip(s["mean"], s["ci95"], s["n"])]
    best = s.groupby("task")["mean"].transform("max")  # every primary metric here is higher-is-better
    bold = {"md": "**{}**", "latex": "\\textbf{{{}}}"}.get(fmt)
    if bold is not None:
        s.loc[s["mean"] == best, "cell"] = [bold.format(c) for c in s.loc[s["mean"] == best, "cell"]]
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


# --------------------------------------------------------------------------- output
def format_table(df: pd.DataFrame, fmt: str = "table") -> str:
    """Render a DataFrame as ``table`` (plain text), ``md``, ``csv`` or ``latex``."""
    if fmt == "csv":
        return df.to_csv()
    if fmt == "md":
        return _markdown(df)
    if fmt == "latex":
        flat = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
        text = flat.to_latex(index=False, na_rep="", float_format="%.4f")
        return text.replace("±", "$\\pm$").replace("_", "\\_").replace("\\textbf\\{", "\\textbf{")
    if fmt == "table":
        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 250,
                               "display.max_colwidth", 60):
            return df.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-")
    raise ValueError(f"unknown format {fmt!r}; choose table, md, csv or latex")


def _markdown(df: pd.DataFrame) -> str:
    flat = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    cols = [" / ".join(str(x) for x in c if str(x) != "") if isinstance(c, tuple) else str(c) for c in flat.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in flat.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    return str(v).replace("|", "\\|")
