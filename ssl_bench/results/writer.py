"""Writing one run directory atomically, and naming it.

A run writes into a hidden temporary directory beside its final one; on a clean exit
``result.json`` is written and the directory renamed in one step, so ``results/`` never holds
half a run (see :class:`RunWriter`).
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

from ..config import config_hash, dump_yaml
from ..files import atomic_write_text, clean_stale_temps, follow_umask, temp_prefix


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
        self.run_id = run_id
        self.run_key = run_key
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
            from ..tracking import Trackers

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
        from ..checkpoint import save_model

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
