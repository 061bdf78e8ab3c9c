"""Rendering a table as plain text, Markdown, CSV or LaTeX, and one cell as mean ± interval."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def format_cell(mean: float, low: float, high: float, n: int) -> str:
    """``0.8123 [0.7900, 0.8300] (n=5)``: the mean and its 95% interval; the mean alone when
    there is no interval (one value without per-clip predictions)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.4f} (n={n})"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}] (n={n})"


def format_p(p: float, adjusted: float, test: str, over: str, compared: int) -> str:
    """``0.012 * (McNemar, 800 clips; Holm 0.024 of 2)``: the raw p, the marker of the
    Holm-adjusted one, the test, what it paired and, with several values compared with one
    baseline, the adjusted p; ``n/a`` when nothing could be tested."""
    from .stats import significance

    if not math.isfinite(p):
        return f"n/a - ({test}, {over})"
    holm = f"; Holm {adjusted:.3g} of {compared}" if compared > 1 else ""
    return f"{p:.3g} {significance(adjusted)} ({test}, {over}{holm})"


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
