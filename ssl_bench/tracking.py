"""Experiment tracking in the tools researchers already use: MLflow and TensorBoard.

Off by default; one setting each (``ssl-bench run --mlflow [URI] --tensorboard [DIR]``, or
``$SSL_BENCH_MLFLOW`` / ``$SSL_BENCH_TENSORBOARD``, or ``run_experiment(track={...})``).  A
run's directory under ``results/`` stays the record; a tracker receives a copy:

* **params**: the flattened resolved config (``encoder.depth``, ``masker.ratio``, ...);
* **per-epoch metrics**: every ``metrics.jsonl`` record, as ``<protocol>/<split>/<init>/<key>``
  at step = its epoch (pretraining loss, fine-tuning loss and validation scores, ...);
* **final rows**: ``<task>/<protocol>/<init>/<metric>/<split>/seed<seed>`` and the mean over
  splits ``<task>/<protocol>/<init>/<metric>/mean``; tags name the run id, its directory, the
  code version and the encoder ids.

MLflow: the URI ``default`` is a store inside the results root: SQLite (``mlflow.db``) when
the full ``mlflow`` package is installed, else the local file store (``mlruns/``) that the
``mlflow-skinny`` client of the ``track`` extra supports.  Runs go to the experiment
``$SSL_BENCH_MLFLOW_EXPERIMENT`` (default ``ssl-bench``).  TensorBoard: ``default`` is
``<results>/tensorboard/<run-id>/``, written with ``torch.utils.tensorboard``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from .errors import UserError

#: ``--mlflow`` / ``--tensorboard`` without a value.
DEFAULT = "default"
#: Steps/keys that are record bookkeeping, not metrics.
_NOT_METRICS = {"epoch", "step", "protocol", "split", "init"}


class TrackingError(UserError, RuntimeError):
    """A tracker that was asked for but cannot be used (package missing, bad URI)."""


def _key(*parts: Any) -> str:
    """An MLflow/TensorBoard metric name: alphanumerics, ``_ - . /`` and spaces only."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. ]+", "_", str(p)) for p in parts if p not in (None, ""))


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in record.items():
        if k in _NOT_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def settings_from_env() -> dict[str, str]:
    """The trackers ``$SSL_BENCH_MLFLOW`` and ``$SSL_BENCH_TENSORBOARD`` switch on."""
    out = {}
    for name in ("mlflow", "tensorboard"):
        value = os.environ.get(f"SSL_BENCH_{name.upper()}", "").strip()
        if value and value.lower() not in ("0", "false", "no", "off"):
            out[name] = DEFAULT if value.lower() in ("1", "true", "yes", "on") else value
    return out


def default_mlflow_uri(results_root: str | Path) -> str:
    """A store inside ``results_root``: SQLite with the full ``mlflow``, else the file store."""
    root = Path(results_root).expanduser().resolve()
    if importlib.util.find_spec("sqlalchemy") and importlib.util.find_spec("alembic"):
        return f"sqlite:///{root / 'mlflow.db'}"
    return (root / "mlruns").as_uri()


class MLflowTracker:
    """One MLflow run per ssl-bench run, through ``MlflowClient`` (no global active run)."""

    def __init__(self, uri: str, results_root: str | Path):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackingError("--mlflow needs the MLflow client: pip install 'ssl-bench[track]' "
                                "(mlflow-skinny) or mlflow") from None
        self.uri = default_mlflow_uri(results_root) if uri == DEFAULT else uri
        if "://" not in self.uri or self.uri.startswith("file:"):
            # the local file store: supported by mlflow-skinny, but opt-in in MLflow 3
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            if "://" not in self.uri:
                self.uri = Path(self.uri).expanduser().resolve().as_uri()
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            name = os.environ.get("SSL_BENCH_MLFLOW_EXPERIMENT", "ssl-bench")
            found = self.client.get_experiment_by_name(name)
            self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name)
        except Exception as exc:  # noqa: BLE001 - any store problem is the user's to fix
            raise TrackingError(f"--mlflow {self.uri}: cannot open the tracking store ({exc})") from None
        self.run_id: str | None = None

    def start(self, run_id: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        run = self.client.create_run(self.experiment_id, run_name=run_id, tags=tags)
        self.run_id = run.info.run_id
        items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}


class TensorBoardTracker:
    """Scalars in a TensorBoard event file (``torch.utils.tensorboard``)."""

    def __init__(self, directory: str, results_root: str | Path):
        if importlib.util.find_spec("tensorboard") is None:
            raise TrackingError("--tensorboard needs the tensorboard package: pip install 'ssl-bench[track]'")
        self.base = Path(results_root) / "tensorboard" if directory == DEFAULT else Path(directory).expanduser()
        self.writer = None
        self.dir: Path | None = None

    def start(self, run_id: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = self.base / run_id
        self.writer = SummaryWriter(log_dir=str(self.dir))
        text = "\n".join(f"    {k}: {v}" for k, v in params.items())  # indented: markdown keeps it verbatim
        self.writer.add_text("config", text, 0)
        self.writer.add_text("provenance", "\n".join(f"    {k}: {v}" for k, v in tags.items()), 0)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def tags(self, tags: dict[str, str]) -> None:
        self.writer.add_text("result", "\n".join(f"    {k}: {v}" for k, v in tags.items()), 0)

    def end(self, status: str) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()

    def describe(self) -> dict[str, Any]:
        return {"dir": str(self.dir) if self.dir else None}


class Trackers:
    """The trackers a run logs to (none by default); :class:`~ssl_bench.results.RunWriter`
    calls ``start``, ``record`` per metrics line, ``rows`` at the end and ``end``."""

    def __init__(self, settings: dict[str, Any] | None, results_root: str | Path):
        settings = dict(settings or {})
        unknown = sorted(set(settings) - {"mlflow", "tensorboard"})
        if unknown:
            raise TrackingError(f"unknown tracker {', '.join(unknown)}; choose mlflow or tensorboard")
        self.active: dict[str, Any] = {}
        if settings.get("mlflow"):
            self.active["mlflow"] = MLflowTracker(str(settings["mlflow"]), results_root)
        if settings.get("tensorboard"):
            self.active["tensorboard"] = TensorBoardTracker(str(settings["tensorboard"]), results_root)
        self.errors: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.active)

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in self.active.items():
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker never loses the run; results/ is the record
                if len(self.errors) < 5:
                    self.errors.append(f"{name}.{method}: {type(exc).__name__}: {exc}")

    def start(self, run_id: str, config: dict[str, Any], tags: dict[str, str]) -> None:
        from .config import flat_config

        self._each("start", run_id, flat_config(config), tags)

    def record(self, record: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` record: its numbers at step = its epoch (or step)."""
        step = int(record.get("epoch", record.get("step", 0)) or 0)
        prefix = (record.get("protocol"), record.get("split"), record.get("init"))
        values = {_key(*prefix, k): v for k, v in _numbers(record).items()}
        if values:
            self._each("metrics", values, step)

    def rows(self, rows: list[dict[str, Any]], tags: dict[str, str]) -> None:
        """The final rows, one metric each, and their mean over splits and seeds."""
        values: dict[str, float] = {}
        groups: dict[str, list[float]] = {}
        for r in rows:
            base = (r.get("task"), r.get("protocol"), r.get("init"), r.get("metric"))
            if r.get("layer") not in (None, ""):
                base = (*base, f"layer{r['layer']}")
            values[_key(*base, r.get("split"), f"seed{r.get('seed')}")] = float(r["value"])
            groups.setdefault(_key(*base, "mean"), []).append(float(r["value"]))
        values.update({k: sum(v) / len(v) for k, v in groups.items()})
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        if values:
            self._each("metrics", values, 0)
        self._each("tags", tags)

    def end(self, status: str) -> None:
        self._each("end", status)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: t.describe() for name, t in self.active.items()}
        if self.errors:
            out["errors"] = list(self.errors)
        return out
