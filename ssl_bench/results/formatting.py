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


class Best(str):
    """A table cell to show in bold where the format has bold (``md``, ``latex``): the best of its
    column on a leaderboard.  Otherwise the plain text."""


#: What LaTeX would read as a command, a group, an alignment or a comment, and its escaped text.
LATEX_SPECIALS = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "&": r"\&", "%": r"\%", "$": r"\$",
                  "#": r"\#", "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
#: Cell starts that a spreadsheet reads as a formula (CSV injection): such cells get a leading ``'``.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def format_table(df: pd.DataFrame, fmt: str = "table") -> str:
    """Render a DataFrame as ``table`` (plain text), ``md``, ``csv`` or ``latex``.

    Text in cells, labels and headers comes from run records, which anyone can write: ``latex``
    escapes LaTeX's special characters (no ``\\input{...}`` runs), ``csv`` puts ``'`` before a
    cell a spreadsheet would read as a formula, ``md`` keeps each row on one line (newlines become
    ``<br>``, ``|`` is escaped)."""
    if fmt == "csv":
        return _csv(df)
    if fmt == "md":
        return _markdown(df)
    if fmt == "latex":
        return _latex(df)
    if fmt == "table":
        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 250,
                               "display.max_colwidth", 60):
            return df.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-")
    raise ValueError(f"unknown format {fmt!r}; choose table, md, csv or latex")


def _flat(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The table with its index as leading columns, and one header text per column."""
    flat = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    cols = [" / ".join(str(x) for x in c if str(x) != "") if isinstance(c, tuple) else str(c) for c in flat.columns]
    return flat, cols


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped and newlines as spaces."""
    out = "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    return out.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("±", "$\\pm$")


def _latex(df: pd.DataFrame) -> str:
    flat, cols = _flat(df)

    def cell(v: Any) -> Any:
        if isinstance(v, Best):
            return f"\\textbf{{{latex_escape(v)}}}"
        return latex_escape(v) if isinstance(v, str) else v

    safe = pd.DataFrame({i: flat.iloc[:, i].map(cell) for i in range(flat.shape[1])})
    safe.columns = [latex_escape(c) for c in cols]
    return safe.to_latex(index=False, na_rep="", float_format="%.4f", escape=False)


def csv_safe(value: Any) -> Any:
    """``value``, or ``'value`` when it is text a spreadsheet would run as a formula (a number
    written as text, such as ``-0.5``, and the lone ``-`` of a missing setting stay)."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS) or value == "-":
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def _csv(df: pd.DataFrame) -> str:
    if isinstance(df.index, pd.RangeIndex):
        safe = df.map(csv_safe)
        safe.columns = [csv_safe(c) if isinstance(c, str) else c for c in df.columns]
        return safe.to_csv()
    flat, cols = _flat(df)
    safe = pd.DataFrame({i: flat.iloc[:, i].map(csv_safe) for i in range(flat.shape[1])})
    safe.columns = [csv_safe(c) for c in cols]
    return safe.to_csv(index=False)


def _markdown(df: pd.DataFrame) -> str:
    flat, cols = _flat(df)
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in flat.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    text = str(v).replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")
    return f"**{text}**" if isinstance(v, Best) else text
