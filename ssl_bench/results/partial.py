"""The rows of a run that has not finished, kept where ``ssl-bench results`` can show them.

A run keeps its work in its state directory, ``<results>/.cache/runs/<run key>/``, until every
split is done and the run directory is written (:mod:`ssl_bench.runner`): per split, its
*part* once the split is finished (``<split>/part.json``: its rows, log and records) and, while
it is not, the rows of each protocol it finished (``<split>/<protocol>-<init>.json``).  So
running the same command again continues where it stopped.  A :class:`Journal` there,
``partial.json``, says which run it is (run id, run key, config hash, config, provenance) and
which process works on it.  A run that ends removes its state directory; one that was
interrupted (Ctrl-C, an error, SIGTERM, SIGKILL, a lost node) leaves it, and
:func:`partial_runs` reads it back: ``results`` shows those rows with a ``status`` apart from
every finished run's: ``interrupted`` (Ctrl-C, SIGTERM, or a process that is gone: SIGKILL),
``failed`` (an error), ``running`` (its process is alive) or ``unfinished`` (a process of
another host).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, process_alive, process_tag

#: Where runs keep their state until they end, under a results root.
STATE_DIR = Path(".cache") / "runs"
#: ``status`` of the rows of a finished run (only shown when some run has not finished).
FINISHED = "finished"
#: The file of a finished split in its folder of the state directory.
PART = "part.json"


class Journal:
    """The record of one unfinished run in its state ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | Path, default: Any = str):
        self.dir = Path(directory)
        self._default = default  # how a value JSON cannot hold is written

    def start(self, *, run_id: str, run_key: str | None, config_hash: str, config: dict[str, Any],
              provenance: dict[str, Any]) -> None:
        """Say that this process works on the run now (a rerun's record replaces an earlier one's)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        info = {"run_id": run_id, "run_key": run_key, "config_hash": config_hash, "started": time.time(),
                "process": process_tag(), "provenance": provenance, "config": config}
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


def _rows_of(path: Path) -> list[dict[str, Any]]:
    """The ``rows`` of a JSON record, or none when it cannot be read (a kill cut it short)."""
    try:
        rows = json.loads(path.read_text()).get("rows", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def state_rows(state: Path) -> list[dict[str, Any]]:
    """Every row a run's state directory holds: a finished split's part, else the rows of the
    protocols its split finished, split by split."""
    rows: list[dict[str, Any]] = []
    for folder in sorted(p for p in state.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / PART).is_file():
            rows += _rows_of(folder / PART)
        else:
            for path in sorted(folder.glob("*.json")):
                rows += _rows_of(path)
    return rows


def partial_runs(root: str | Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``(info, rows)`` of every unfinished run under ``root`` with at least one row; ``info`` is
    its ``partial.json`` plus ``status`` (see the module docstring) and ``dir``; each row names
    the run (``run_id``) and its model, as a finished run's rows do."""
    out = []
    for path in sorted((Path(root) / STATE_DIR).glob("*/partial.json")):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict) or not info.get("run_id"):
            continue
        model = (info.get("config") or {}).get("model")
        rows = [{**row, "run_id": info["run_id"], "model": row.get("model", model)} for row in state_rows(path.parent)]
        if rows:
            alive = process_alive(info.get("process") or {})
            status = info.get("ended") or ("unfinished" if alive is None else "running" if alive else "interrupted")
            out.append(({**info, "status": status, "dir": str(path.parent)}, rows))
    return out
