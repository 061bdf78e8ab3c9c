"""The rows of a run that has not finished, kept where ``ssl-bench results`` can show them.

A run keeps its finished protocols in its state directory, ``<results>/.cache/runs/<hash>/``,
until it ends, so running the same command again continues where it stopped.  A
:class:`Journal` there also holds what the finished run directory will hold: ``partial.json``
(run id, config hash, config, provenance, the process) and ``rows.jsonl`` (every row so far,
a line each).  A run that ends removes its state directory; one that was interrupted (Ctrl-C,
an error, SIGTERM, SIGKILL, a lost node) leaves it, and :func:`partial_runs` reads it back:
``results`` shows those rows with a ``status`` apart from every finished run's:
``interrupted`` (Ctrl-C, SIGTERM, or a process that is gone: SIGKILL), ``failed`` (an error),
``running`` (its process is alive) or ``unfinished`` (a process of another host).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, process_alive, process_tag

#: Where runs keep their state until they end, under a results root.
STATE_DIR = Path(".cache") / "runs"
#: ``status`` of the rows of a finished run (only shown when some run has not finished).
FINISHED = "finished"


class Journal:
    """The record of one unfinished run in its state ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | Path, default: Any = str):
        self.dir = Path(directory)
        self._default = default  # how a value JSON cannot hold is written

    def start(self, *, run_id: str, config_hash: str, config: dict[str, Any], provenance: dict[str, Any]) -> None:
        """Begin this attempt's record (a rerun's rows replace an earlier attempt's)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rows.jsonl").write_text("")
        info = {"run_id": run_id, "config_hash": config_hash, "started": time.time(), "process": process_tag(),
                "provenance": provenance, "config": config}
        atomic_write_text(self.dir / "partial.json", json.dumps(info, default=self._default))

    def end(self, interrupted: bool) -> None:
        """Say how this attempt ended when it did not finish (Ctrl-C and SIGTERM interrupt;
        an exception fails); a killed process says nothing and is found gone."""
        path = self.dir / "partial.json"
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        info["ended"] = "interrupted" if interrupted else "failed"
        atomic_write_text(path, json.dumps(info, default=self._default))

    def add(self, row: dict[str, Any]) -> None:
        """Append one row (a line; a line cut short by a kill is skipped when read)."""
        with open(self.dir / "rows.jsonl", "a") as fh:
            fh.write(json.dumps(row, default=self._default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def partial_runs(root: str | Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``(info, rows)`` of every unfinished run under ``root`` with at least one row; ``info`` is
    its ``partial.json`` plus ``status`` (see the module docstring) and ``dir``."""
    out = []
    for path in sorted((Path(root) / STATE_DIR).glob("*/partial.json")):
        try:
            info = json.loads(path.read_text())
            lines = (path.parent / "rows.jsonl").read_text().splitlines()
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict) or not info.get("run_id"):
            continue
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the line a kill cut short
            if isinstance(row, dict):
                rows.append(row)
        if rows:
            alive = process_alive(info.get("process") or {})
            status = info.get("ended") or ("unfinished" if alive is None else "running" if alive else "interrupted")
            out.append(({**info, "status": status, "dir": str(path.parent)}, rows))
    return out
