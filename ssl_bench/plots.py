"""PNG plots of a results root (``ssl-bench plot``), drawn with matplotlib's Agg canvas.

* ``board.png``: the leaderboard as a figure, whenever there are results: one panel per task,
  a row per model / encoder / protocol (and setting that varies), a dot at the mean of the
  task's primary metric and a bar across its 95% interval (:func:`ssl_bench.results.summary`;
  a cell with no interval, one value, is a dot marked ``n=1``);
* ``ablation-<key>.png``: for each setting that varies (or each ``--compare`` key), one panel
  per model, task, protocol and combination of the other settings that vary (runs that differ
  in another setting are never pooled, as in ``results --compare``): a bar per value of the
  setting and encoder (random init apart from trained encoders), the height the mean of the
  task's primary metric, the error bar its 95% interval (:func:`ssl_bench.results.summary`).
* ``layers-<task>.png``: per-layer probe curves (rows with a ``layer`` column): the metric of
  each layer with its 95% interval as a band, one line per model, encoder and protocol.
* ``label-efficiency-<task>.png``: the primary metric against the labelled training clips
  per class (``data.shots``; ``all`` at the right) or the fraction of them (``data.fraction``),
  one line per model, encoder and protocol, the band its 95% interval over splits, seeds and
  draws (``data.draw``).
* ``curves-<run-id>.png``: the training curves in the run's ``metrics.jsonl``: the
  pretraining loss per epoch, the fine-tuning loss and its validation score, one line per
  split.

:func:`plot_results` draws the kinds asked for (:data:`KINDS`, default all) and says in one
line why a kind it was asked for has nothing to draw.  No pyplot state is touched (figures
are built on their own canvas), so plotting from a notebook or a server thread leaves the
user's backend alone.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .files import atomic_write
from .results import ENCODER_KEYS, primary_rows, splitting_columns, summary, variant_columns

#: Record keys that tell apart several trainings of one split (fine-tuning's grid).
TRIAL_KEYS = ("lr_peak", "aug")
#: At most this many settings get an ablation plot when none are named.
MAX_AUTO_ABLATIONS = 6
#: What ``ssl-bench plot --kind`` draws.
KINDS = ("board", "ablation", "layers", "label-efficiency", "curves")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(path, "wb", lambda fh: fh.write(buf.getvalue()))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _order(values: list[Any]) -> list[Any]:
    def key(v: Any) -> tuple:
        try:
            return (0, float(v), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(v))

    return sorted(values, key=key)


# --------------------------------------------------------------------------- the board
def plot_board(df: pd.DataFrame, path: Path) -> Path | None:
    """Model / encoder / protocol x task: the mean of each task's primary metric and its 95%
    interval (see the module docstring)."""
    rows = primary_rows(df[df["protocol"] != "pretrain"])
    if rows.empty:
        return None
    extra = splitting_columns(rows, ["model", "task", "protocol", "metric"])
    index = list(dict.fromkeys(c for c in ["model", *ENCODER_KEYS, "protocol", *extra, *variant_columns(rows)]
                               if c in rows.columns))
    s = summary(rows, by=index)
    tasks = sorted(s["task"].unique())
    labels = sorted({_board_label(r, index) for _, r in s.iterrows()})
    fig = _figure(min(4.0 + 3.2 * len(tasks), 20.0), 1.2 + 0.32 * len(labels))
    axes = np.atleast_1d(fig.subplots(1, len(tasks), squeeze=False, sharey=True)).ravel()
    ys = {label: i for i, label in enumerate(reversed(labels))}
    for ax, task in zip(axes, tasks):
        part = s[s["task"] == task]
        for _, r in part.iterrows():
            y, mean = ys[_board_label(r, index)], float(r["mean"])
            color = "#999999" if str(r.get("init_id")) == "random" else "#1f77b4"
            low, high = r.get("ci_low"), r.get("ci_high")
            if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
                ax.plot([low, high], [y, y], color=color, linewidth=2.0, alpha=0.6, solid_capstyle="butt")
                ax.annotate(f"{mean:.3f}", (mean, y), textcoords="offset points", xytext=(0, 4), ha="center",
                            fontsize=7)
            else:
                ax.annotate(f"{mean:.3f} (n={int(r['n'])}, no interval)", (mean, y), textcoords="offset points",
                            xytext=(0, 4), ha="center", fontsize=7)
            ax.plot([mean], [y], "o", color=color, ms=4)
        ax.set_title(f"{task}", fontsize=10)
        ax.set_xlabel(str(part["metric"].iloc[0]))
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_yticks(list(ys.values()), list(ys.keys()), fontsize=7)
    axes[0].set_ylim(-0.7, len(labels) - 0.3)
    fig.suptitle("primary metric per task: dot = mean over splits and seeds, bar = 95% interval; grey = random init",
                 fontsize=9)
    return _save(fig, path)


def _board_label(row: pd.Series, index: list[str]) -> str:
    return " · ".join(str(row[c]) for c in index if c in row and str(row[c]) not in ("", "-", "nan")
                      and c != "init_id") + (f" [{row['init_id']}]" if str(row.get("init_id")) not in
                                             ("random", "", "nan", "None") else "")


# --------------------------------------------------------------------------- ablations
def ablation_cells(df: pd.DataFrame, key: str) -> tuple[pd.DataFrame, list[str], list[tuple[str, ...]]] | None:
    """``(summary, other settings, panels)`` of an ablation plot of ``key``: the summary of the
    primary metric by value of ``key``, encoder kind and every other setting that varies, and
    one panel per model, task, protocol, metric and combination of those other settings."""
    rows = primary_rows(df[df["protocol"] != "pretrain"])
    if "layer" in rows.columns:  # per-layer results have their own plot
        rows = rows[rows["layer"].fillna("").astype(str) == ""]
    if rows.empty or key not in rows.columns:
        return None
    rows = rows.copy()
    rows["encoder"] = np.where(rows["init_id"].astype(str) == "random", "random init", "trained encoder")
    others = splitting_columns(rows, ["model", "task", "protocol", "metric"], exclude=(key,))
    rows = rows.astype({c: str for c in others})
    s = summary(rows, by=[key, "encoder", *others])
    panel_keys = ["model", "task", "protocol", "metric", *others]
    panels = sorted({tuple(str(v) for v in t) for t in s[panel_keys].itertuples(index=False, name=None)})
    return (s, others, panels) if panels else None


def plot_ablation(df: pd.DataFrame, key: str, path: Path) -> Path | None:
    """Bars of the primary metric per value of ``key``, with 95% intervals (see module).  Runs
    that differ in another setting are never pooled: each combination of the other settings
    that vary gets its own panel, and two encoders at one value get a bar each."""
    cells = ablation_cells(df, key)
    if cells is None:
        return None
    s, others, panels = cells
    panel_keys = ["model", "task", "protocol", "metric", *others]
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = _figure(4.2 * cols, 3.4 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    encoders = [e for e in ("trained encoder", "random init") if e in set(s["encoder"])]
    colors = {"trained encoder": "#1f77b4", "random init": "#bbbbbb"}
    for ax, panel in zip(axes, panels):
        part = s[np.logical_and.reduce([s[c].astype(str) == v for c, v in zip(panel_keys, panel)])]
        values = _order(list(dict.fromkeys(part[key].tolist())))
        for i, value in enumerate(values):
            bars = part[part[key] == value].sort_values(["encoder", "init", "init_id"],
                                                        key=lambda c: c.map(str) if c.name != "encoder" else
                                                        c.map({e: k for k, e in enumerate(encoders)}))
            width = 0.8 / len(bars)
            for j, (_, bar) in enumerate(bars.iterrows()):
                x, h = i + (j - (len(bars) - 1) / 2) * width, float(bar["mean"])
                low, high = float(bar["ci_low"]), float(bar["ci_high"])
                err = [[h - low], [high - h]] if math.isfinite(low) and math.isfinite(high) else None
                ax.bar([x], [h], width=width * 0.95, yerr=err, capsize=4, color=colors[bar["encoder"]],
                       edgecolor="black", linewidth=0.5)
                note = f"{h:.3f}" + ("" if err is not None else f"\nn={int(bar['n'])}")
                if len(bars) > len(set(bars["encoder"])):  # several encoders at one value: name them
                    note += f"\n{bar['init']}"
                ax.annotate(note, (x, h), textcoords="offset points", xytext=(0, 2), ha="center", va="bottom",
                            fontsize=6)
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel(panel[3])
        fixed = ", ".join(f"{c}={v}" for c, v in zip(others, panel[4:]))
        ax.set_title(f"{panel[1]} · {panel[2]}" + (f"\n{fixed}" if fixed else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colors[e], edgecolor="black", linewidth=0.5, label=e) for e in encoders]
    axes[0].legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
    fig.suptitle(f"{key}: mean over splits and seeds, error bars = 95% interval (none for one value)", fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------- layers
def plot_layers(df: pd.DataFrame, task: str, path: Path) -> Path | None:
    """The metric of each layer with its 95% interval, per model / encoder / protocol."""
    if "layer" not in df.columns:
        return None
    rows = df[(df["task"] == task) & (df["layer"].astype(str) != "") & df["layer"].notna()]
    rows = primary_rows(rows)
    if rows.empty:
        return None
    rows = rows.copy()
    rows["layer_n"] = pd.to_numeric(rows["layer"], errors="coerce")
    rows = rows[rows["layer_n"].notna()]
    if rows.empty:
        return None
    fig = _figure(6.0, 3.8)
    ax = fig.subplots()
    metric = rows["metric"].iloc[0]
    for (model, init, init_id, protocol), part in rows.groupby(["model", "init", "init_id", "protocol"], sort=True):
        s = summary(part, by=["layer_n"]).sort_values("layer_n")
        x = s["layer_n"].to_numpy(dtype=float)
        y = s["mean"].to_numpy(dtype=float)
        low, high = s["ci_low"].to_numpy(dtype=float), s["ci_high"].to_numpy(dtype=float)
        style = "--" if str(init_id) == "random" else "-"
        line, = ax.plot(x, y, style, marker="o", ms=3, label=f"{model} {init} ({protocol})")
        shown = np.isfinite(low) & np.isfinite(high)  # a layer with one value and no per-clip data has no band
        ax.fill_between(x, np.where(shown, low, y), np.where(shown, high, y), color=line.get_color(), alpha=0.2,
                        linewidth=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = patch embedding)")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: per-layer probe, band = 95% CI", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


# --------------------------------------------------------------------------- label efficiency
#: Settings a label-efficiency sweep varies, in the order they are looked for.
LABEL_SETTINGS = ("data.shots", "data.fraction")


def _label_amount(value: Any, key: str) -> float | None:
    """The x of a row: shots per class, or the fraction; ``all`` / unset is the whole training
    part (``inf`` for shots, 1 for fractions)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip().lower() in (
            "all", "none", "null", "-", ""):
        return math.inf if key == "data.shots" else 1.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot_label_efficiency(df: pd.DataFrame, task: str, path: Path) -> Path | None:
    """The primary metric against labelled data (see the module docstring)."""
    rows = df[(df["task"] == task) & (df["protocol"] != "pretrain")]
    key = next((k for k in LABEL_SETTINGS if k in rows.columns and rows[k].astype(str).nunique() > 1), None)
    if key is None:
        return None
    rows = primary_rows(rows)
    if "layer" in rows.columns:
        rows = rows[rows["layer"].fillna("").astype(str) == ""]
    rows = rows.assign(_x=[_label_amount(v, key) for v in rows[key]])
    rows = rows[rows["_x"].notna()]
    if rows.empty:
        return None
    finite = [x for x in rows["_x"].unique() if math.isfinite(x)]
    top = max(finite) * 2 if finite else 1.0  # where "all" sits on the shots axis
    rows["_x"] = [top if not math.isfinite(x) else x for x in rows["_x"]]
    fig = _figure(6.0, 3.8)
    ax = fig.subplots()
    metric = rows["metric"].iloc[0]
    for (model, init, init_id, protocol), part in rows.groupby(["model", "init", "init_id", "protocol"], sort=True):
        s = summary(part, by=["_x"]).sort_values("_x")
        x, y = s["_x"].to_numpy(dtype=float), s["mean"].to_numpy(dtype=float)
        low, high = s["ci_low"].to_numpy(dtype=float), s["ci_high"].to_numpy(dtype=float)
        style = "--" if str(init_id) == "random" else "-"
        line, = ax.plot(x, y, style, marker="o", ms=3, label=f"{model} {init} ({protocol})")
        shown = np.isfinite(low) & np.isfinite(high)  # one value without per-clip data has no band
        ax.fill_between(x, np.where(shown, low, y), np.where(shown, high, y), color=line.get_color(), alpha=0.2,
                        linewidth=0)
    xs = sorted(rows["_x"].unique())
    if key == "data.shots":
        ax.set_xscale("log")
        ax.set_xticks(xs, ["all" if x == top and top not in finite else f"{x:g}" for x in xs])
        ax.set_xlabel("labelled training clips per class")
    else:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("fraction of the labelled training clips")
    ax.minorticks_off()
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: label efficiency, band = 95% interval (test clips, splits, seeds, draws)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


# --------------------------------------------------------------------------- training curves
def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def plot_curves(run_dir: Path, path: Path) -> Path | None:
    """Pretraining loss, fine-tuning loss and validation score per epoch, one line per split."""
    from matplotlib.ticker import MaxNLocator

    records = [r for r in read_metrics(run_dir) if "epoch" in r and isinstance(r.get("loss"), (int, float))]
    if not records:
        return None
    panels: list[tuple[str, str, list[dict[str, Any]]]] = []
    pre = [r for r in records if r.get("protocol") == "pretrain"]
    fine = [r for r in records if r.get("protocol") == "finetune"]
    if pre:
        panels.append(("pretraining loss", "loss", pre))
    if fine:
        panels.append(("fine-tuning loss", "loss", fine))
        valid_keys = sorted({k for r in fine for k in r if k.startswith("valid_") and k != "valid_loss"
                             and isinstance(r[k], (int, float))})
        if valid_keys:
            panels.append((f"fine-tuning {valid_keys[0]}", valid_keys[0], fine))
    if not panels:
        return None
    fig = _figure(4.0 * len(panels), 3.3)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    for ax, (title, key, recs) in zip(axes, panels):
        groups: dict[str, list[tuple[int, float]]] = {}
        for r in recs:
            if isinstance(r.get(key), (int, float)):
                label = str(r.get("split", ""))
                # one line per training: fine-tuning's lr / augmentation trials apart
                trial = ", ".join(f"{t} {r[t]:g}" for t in TRIAL_KEYS if isinstance(r.get(t), (int, float)))
                if trial:
                    label += f" ({trial})"
                groups.setdefault(label, []).append((int(r["epoch"]), float(r[key])))
        # one colour per split; a split's several trainings (trials) share it, labelled once
        splits = list(dict.fromkeys(label.split(" (")[0] for label in sorted(groups)))
        palette = [f"C{i % 10}" for i in range(len(splits))]
        labelled: set[str] = set()
        for label, points in sorted(groups.items()):
            points.sort()
            split = label.split(" (")[0]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, alpha=0.8,
                    color=palette[splits.index(split)], label=None if split in labelled else split)
            labelled.add(split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(splits) > 1:
            ax.legend(fontsize=7, title="split (one line per trial)" if len(groups) > len(splits) else "split",
                      title_fontsize=7, framealpha=0.8)
    fig.suptitle(run_dir.name, fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------- all
def plot_results(df: pd.DataFrame, root: str | Path | list[str | Path], out: str | Path,
                 compare: list[str] | None = None, kinds: list[str] | None = None) -> tuple[list[Path], list[str]]:
    """Every plot of ``kinds`` (default :data:`KINDS`) the rows of ``df`` (loaded from ``root``, or
    several roots) allow, written under ``out``; returns the files written and one line per kind
    that had nothing to draw."""
    out = Path(out)
    asked = list(kinds or [])
    kinds = list(kinds or KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        from .config import ConfigError

        raise ConfigError(f"plot --kind {', '.join(unknown)}: choose from {', '.join(KINDS)}")
    written: list[Path] = []
    notes: list[str] = []
    if "board" in kinds:
        p = plot_board(df, out / "board.png")
        if p is not None:
            written.append(p)
        else:
            notes.append("board: nothing to draw (no evaluation rows: only pretraining losses)")
    if "ablation" in kinds:
        keys = list(compare) if compare else [k for k in splitting_columns(
            df[df["protocol"] != "pretrain"], ["model", "task", "protocol", "metric"])
            if k not in (*LABEL_SETTINGS, "data.draw")][:MAX_AUTO_ABLATIONS]
        missing = [k for k in keys if k not in df.columns]
        if missing:
            from .config import ConfigError

            valid = sorted(c for c in df.columns if "." in c)
            raise ConfigError(f"plot --compare: no column {', '.join(missing)}; config columns: {', '.join(valid)}")
        drawn = [p for key in keys if (p := plot_ablation(df, key, out / f"ablation-{_slug(key)}.png")) is not None]
        written += drawn
        if not drawn:
            notes.append(f"ablation: nothing to draw ({', '.join(keys)} take one value in these rows)" if keys else
                         "ablation: nothing to draw (no setting varies between these runs; --compare KEY names one)")
    if "layers" in kinds:
        drawn = [p for task in sorted(df["task"].dropna().unique())
                 if (p := plot_layers(df, task, out / f"layers-{_slug(task)}.png")) is not None]
        written += drawn
        if not drawn:
            notes.append("layers: nothing to draw (no per-layer probe rows: --protocols layers makes them)")
    if "label-efficiency" in kinds:
        drawn = [p for task in sorted(df["task"].dropna().unique())
                 if (p := plot_label_efficiency(df, task, out / f"label-efficiency-{_slug(task)}.png")) is not None]
        written += drawn
        if not drawn and "label-efficiency" in asked:  # (a sweep of its own: unsaid unless asked for)
            notes.append("label-efficiency: nothing to draw (no sweep over data.shots or data.fraction here)")
    if "curves" in kinds:
        roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
        where = dict(zip(df["run_id"], df["root"])) if "root" in df.columns else {}
        drawn = []
        for run_id in sorted(df["run_id"].dropna().unique()):
            run_dir = Path(where[run_id]) / run_id if run_id in where else roots[0] / run_id
            p = plot_curves(run_dir, out / f"curves-{_slug(run_id)}.png")
            if p is not None:
                drawn.append(p)
        written += drawn
        if not drawn:
            notes.append("curves: nothing to draw (no run here trained: pretraining and fine-tuning write curves)")
    return written, notes
