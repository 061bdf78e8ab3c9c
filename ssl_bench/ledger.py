"""The compute ledger: what a table of results cost (``ssl-bench results --compute``).

Work is counted once, by what it made, wherever and however often it was used:

* **features**: a feature cache entry, extracted once (its manifest records the wall time and
  CPU time of the extraction; a run's provenance names the entry it read);
* **encoder**: a pretraining, once per ``pretrain_hash`` however many runs evaluated it (its
  rows carry the training's compute, also when a later run reused it);
* **evaluation**: a run's split, as its job measured it (wall, CPU, GPU, peak memory), minus
  the pretraining done inside it; runs recorded before splits were measured count their
  protocols' own columns instead.

:func:`ledger` gives the scores with the compute of the rows behind each (wall hours, CPU-hours,
GPU-hours, peak memory), every unit of work, and the totals: per kind, GPU-hours by device
kind, the peak memory of the largest unit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: What the ledger's unit table holds per unit of work.
UNIT_COLUMNS = ("kind", "unit", "wall_h", "cpu_h", "gpu_h", "device", "peak_mb", "runs")


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if np.isfinite(out) else 0.0


@dataclass
class Ledger:
    """The three parts of ``results --compute`` (see the module docstring)."""

    scores: pd.DataFrame
    units: pd.DataFrame
    totals: pd.DataFrame

    def render(self, fmt: str = "table") -> str:
        from .results import format_table

        def shown(frame: pd.DataFrame) -> pd.DataFrame:  # hours of tiny runs need significant digits
            out = frame.copy()
            for col in ("wall_h", "cpu_h", "gpu_h", "mean", "ci_low", "ci_high"):
                if col in out.columns:
                    out[col] = [f"{v:.4g}" if isinstance(v, (int, float)) and np.isfinite(v) else "-" for v in out[col]]
            if "peak_mb" in out.columns:
                out["peak_mb"] = [f"{v:.0f}" if isinstance(v, (int, float)) and np.isfinite(v) else "-"
                                  for v in out["peak_mb"]]
            return out

        parts = [format_table(shown(f), fmt) for f in (self.scores, self.units, self.totals)]
        if fmt == "csv":
            return "\n".join(parts)
        titles = ["scores, with the compute of the rows behind each", "units of work (each counted once)", "totals"]
        return "\n\n".join(f"{t}:\n{p}" for t, p in zip(titles, parts))


def _records(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``result.json`` of every run in ``df`` (by run id), read from the root it was loaded from."""
    out = {}
    for run_id, root in df[["run_id", "root"]].drop_duplicates("run_id").itertuples(index=False):
        try:
            out[str(run_id)] = json.loads((Path(str(root)) / str(run_id) / "result.json").read_text())
        except (OSError, ValueError):
            out[str(run_id)] = {}
    return out


def _protocol_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per protocol execution (the metric rows of one share its compute columns)."""
    keys = [c for c in ("run_id", "split", "protocol", "init") if c in df.columns]
    return df.drop_duplicates(keys)


def units(df: pd.DataFrame) -> pd.DataFrame:
    """Every unit of work behind ``df``, once (see the module docstring)."""
    records = _records(df) if "root" in df.columns else {}
    rows: list[dict[str, Any]] = []
    features: dict[str, dict[str, Any]] = {}
    for run_id, record in records.items():
        entry = ((record.get("provenance") or {}).get("data") or {}).get("features") or {}
        if entry.get("entry") and "wall_s" in entry:
            f = features.setdefault(entry["entry"], {"kind": "features", "unit": entry["entry"][:12],
                                                     "wall_h": _num(entry["wall_s"]) / 3600,
                                                     "cpu_h": _num(entry.get("cpu_hours")), "gpu_h": 0.0,
                                                     "device": str(entry.get("device") or "cpu"), "peak_mb": np.nan,
                                                     "runs": set()})
            f["runs"].add(run_id)
    rows += features.values()
    pre = df[df["protocol"] == "pretrain"] if "protocol" in df.columns else df.iloc[:0]
    if "pretrain_hash" in pre.columns:
        for h, group in pre[pre["pretrain_hash"].notna()].groupby("pretrain_hash"):
            first = group.iloc[0]
            rows.append({"kind": "encoder", "unit": str(h)[:12], "wall_h": _num(first.get("wall_s")) / 3600,
                         "cpu_h": _num(first.get("cpu_hours")), "gpu_h": _num(first.get("gpu_hours")),
                         "device": str(first.get("device", "cpu")), "peak_mb": _num(first.get("peak_memory_mb")),
                         "runs": set(group["run_id"].astype(str))})
    measured: set[tuple[str, str]] = set()
    for run_id, record in records.items():
        for split, part in ((record.get("provenance") or {}).get("parts") or {}).items():
            cost = (part.get("compute") or {}).get("split") or {}
            made = (part.get("compute") or {}).get("pretraining") or {}
            if not cost:
                continue
            measured.add((run_id, split))
            gpu = _num(cost.get("gpu_hours")) - _num(made.get("gpu_hours"))
            rows.append({"kind": "evaluation", "unit": f"{_short(run_id)} {split}",
                         "wall_h": max(_num(cost.get("wall_s")) - _num(made.get("wall_s")), 0.0) / 3600,
                         "cpu_h": max(_num(cost.get("cpu_hours")) - _num(made.get("cpu_hours")), 0.0),
                         "gpu_h": max(gpu, 0.0), "device": str(cost.get("device", "cpu")),
                         "peak_mb": max(_num(cost.get("peak_rss_mb")), _num(cost.get("peak_gpu_mb"))),
                         "runs": {run_id}})
    evals = _protocol_runs(df[df["protocol"] != "pretrain"]) if "protocol" in df.columns else df.iloc[:0]
    for (run_id, split), group in evals.groupby(["run_id", "split"]):
        if (str(run_id), str(split)) in measured:
            continue
        rows.append({"kind": "evaluation", "unit": f"{_short(run_id)} {split}",
                     "wall_h": sum(_num(v) for v in group.get("wall_s", [])) / 3600,
                     "cpu_h": sum(_num(v) for v in group.get("cpu_hours", [])),
                     "gpu_h": sum(_num(v) for v in group.get("gpu_hours", [])),
                     "device": str(group["device"].iloc[0]) if "device" in group else "cpu",
                     "peak_mb": max((_num(v) for v in group.get("peak_memory_mb", [])), default=np.nan),
                     "runs": {str(run_id)}})
    out = pd.DataFrame(rows, columns=list(UNIT_COLUMNS))
    out["runs"] = [len(r) for r in out["runs"]]
    return out


def _short(run_id: str) -> str:
    from .results import short_run_id

    return short_run_id(run_id)


def ledger(df: pd.DataFrame) -> Ledger:
    """The ledger of the rows of ``df`` (loaded by :func:`ssl_bench.results.load`)."""
    from .results import summary

    s = summary(df)
    execs = _protocol_runs(df)
    keys = [c for c in s.columns if c not in ("mean", "std", "n", "ci95", "ci_low", "ci_high", "n_splits", "n_seeds",
                                              "std_split", "std_seed", "runs")]
    costs = []
    for _, row in s.iterrows():
        mask = np.ones(len(execs), dtype=bool)
        for k in keys:
            if k in execs.columns and k != "metric":
                mask &= (execs[k].astype(str) == str(row[k])).to_numpy()
        part = execs[mask]
        if "pretrain_hash" in part.columns and (part["protocol"] == "pretrain").all():
            part = part.drop_duplicates("pretrain_hash")  # one encoder, however many runs report it
        costs.append({"wall_h": sum(_num(v) for v in part.get("wall_s", [])) / 3600,
                      "cpu_h": sum(_num(v) for v in part.get("cpu_hours", [])),
                      "gpu_h": sum(_num(v) for v in part.get("gpu_hours", [])),
                      "peak_mb": max((_num(v) for v in part.get("peak_memory_mb", [])), default=np.nan)})
    scores = s[[*keys, "mean", "ci_low", "ci_high", "n"]]
    scores = pd.concat([scores.reset_index(drop=True), pd.DataFrame(costs)], axis=1)
    u = units(df)
    totals = []
    for kind in ("features", "encoder", "evaluation"):
        part = u[u["kind"] == kind]
        if len(part):
            totals.append({"what": kind, "units": len(part), "wall_h": part["wall_h"].sum(),
                           "cpu_h": part["cpu_h"].sum(), "gpu_h": part["gpu_h"].sum(),
                           "peak_mb": part["peak_mb"].max()})
    totals.append({"what": "all", "units": len(u), "wall_h": u["wall_h"].sum(), "cpu_h": u["cpu_h"].sum(),
                   "gpu_h": u["gpu_h"].sum(), "peak_mb": u["peak_mb"].max() if len(u) else np.nan})
    for device, part in u[u["gpu_h"] > 0].groupby("device"):
        totals.append({"what": f"GPU-hours on {device}", "units": len(part), "wall_h": part["wall_h"].sum(),
                       "cpu_h": part["cpu_h"].sum(), "gpu_h": part["gpu_h"].sum(), "peak_mb": part["peak_mb"].max()})
    return Ledger(scores.set_index(keys),
                  u.sort_values(["kind", "unit"]).reset_index(drop=True), pd.DataFrame(totals).set_index("what"))
