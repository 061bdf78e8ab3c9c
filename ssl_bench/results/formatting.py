"""Rendering a table as plain text, Markdown, CSV or LaTeX, and one cell as mean ± interval."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def format_cell(mean: float, ci: float, n: int) -> str:
    """``0.8123 ± 0.0211 (n=5)``: the mean and the half-width of its 95% interval."""
    if not math.isfinite(ci):
        return f"{mean:.4f} (n={n})"
    return f"{mean:.4f} ± {ci:.4f} (n={n})"


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
