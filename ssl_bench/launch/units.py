"""A sweep as units of work, and what one unit does where it runs.

:func:`plan` turns the runs ``ssl-bench run`` resolved (:class:`RunSpec`) into a graph of
:class:`Unit` objects, skipping what is done by content identity:

* a run whose key (:func:`ssl_bench.provenance.run_key`) names a finished run directory needs
  nothing; a split whose part is kept in the run's state directory needs no unit;
* **features** (one per feature cache entry: a task's clips with one frontend): a unit of its
  own only when two or more units read the entry and it is not cached yet, so parallel jobs
  never extract it twice (the entry's lock would make them wait anyway);
* **encoder** (one per pretraining recipe and split, or per recipe with a corpus): a unit of its
  own only when two or more evaluations share it; it leaves the encoder in the pretraining
  cache and a marker that it did (the cache is keyed by content; the marker only spares a
  rerun the unit);
* **evaluation** (one per run and split): the run's protocols on that split, its rows kept as
  the split's part; the unit that completes the run writes the run directory.

:func:`execute` runs one unit in the current process, whatever the launcher: it sets the
threads (``jobs x threads <= cores``), the environment that tells rows which launcher and job
computed them, the plugins, measures what the unit cost (:class:`ssl_bench.compute.Meter`)
and records the unit's state (:mod:`ssl_bench.launch.state`).  A unit is plain data (JSON),
so it travels to a pool worker, a SLURM job or a detached driver unchanged.  ``python -m
ssl_bench.launch.units UNIT.json`` runs one (``torchrun`` inside a multi-GPU allocation).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The settings of the ``data`` section that say which labelled clips train, not what the
#: audio or the encoder is: runs that differ only in them share features and encoders.
LABEL_KEYS = ("shots", "fraction", "draw", "num_workers")
KINDS = ("features", "encoder", "evaluation")


@dataclass
class RunSpec:
    """One run of a sweep: what :func:`ssl_bench.runner.run_experiment` is called with."""

    config: dict[str, Any]
    protocols: list[str]
    data_dir: str | None = None
    splits: list[str] | None = None
    checkpoint: str | None = None
    label: str = ""
    columns: dict[str, Any] = field(default_factory=dict)
    track: dict[str, Any] = field(default_factory=dict)

    def title(self) -> str:
        parts = [str(self.config.get("model")), str(self.config.get("task"))]
        if self.columns.get("suite"):
            parts.insert(0, f"{self.columns['suite']}@{self.columns.get('suite_version')}")
        return " ".join(parts + ([self.label] if self.label else []))


@dataclass
class Unit:
    """One unit of a sweep (see the module docstring).  ``needs``: ids of the units it waits
    for; ``run``: the run it computes for (``part`` its splits; ``pretrain_only`` for an
    encoder unit); ``marker``: the file a features or encoder unit leaves when done."""

    id: str
    kind: str
    title: str
    run: RunSpec
    needs: list[str] = field(default_factory=list)
    part: list[str] = field(default_factory=list)
    pretrain_only: bool = False
    marker: str | None = None
    key: str = ""  # the run key as planned (every job of a launch uses it; ssl_bench.provenance.run_key)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Unit:
        return cls(**{**data, "run": RunSpec(**data["run"])})


@dataclass
class JobSettings:
    """How a launch runs its units: results root, resume, plugins, threads per job, who
    launches (``launcher``, ``jobs`` at once), where unit states go, progress lines."""

    results: str
    state_dir: str
    launcher: str = "local"
    jobs: int = 1  # units at once; 0: a scheduler decides
    threads: int | None = None
    resume: bool = True
    plugins_dirs: list[str] = field(default_factory=list)
    progress: bool = True
    launch_id: str = ""
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES for this job slot (a local pool on a multi-GPU host)


@dataclass
class Plan:
    """What a sweep needs: ``units`` in an order that respects ``needs``; ``runs`` with, per run,
    its key and the finished run directory when there is one already."""

    units: list[Unit]
    runs: list[dict[str, Any]]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _registry(plugins_dirs: list[str]) -> Any:
    from ..registry import Registry, get_registry

    return Registry(plugins_dirs=plugins_dirs) if plugins_dirs else get_registry()


# --------------------------------------------------------------------------- planning
def encoder_key(config: dict[str, Any], registry: Any, fingerprint: str, split_names: list[str],
                split: str | None) -> str:
    """Which pretraining a run's split needs, as far as the plan can tell without the data:
    everything in the config except the evaluation protocols' sections and the labelled-subset
    settings, the task's fingerprint, the run's splits (batch sizes are capped to the
    smallest) and the split (``None``: one encoder on a corpus for every split).  Runs with one
    key need the same encoder; the cache itself is keyed by content, so a plan that guessed
    wrong costs a second pretraining, never a wrong number."""
    from ..config import BOOKKEEPING_FIELDS, config_hash

    evaluate = {n for n in registry.names("protocol")
                if getattr(registry.get("protocol", n).factory, "stage", "evaluate") == "evaluate"}

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in BOOKKEEPING_FIELDS}
        return node

    recipe = strip({k: v for k, v in config.items() if k not in evaluate and k != "checkpoint"})
    if isinstance(recipe.get("data"), dict):
        recipe["data"] = {k: v for k, v in recipe["data"].items() if k not in LABEL_KEYS}
    return config_hash({"recipe": recipe, "data": fingerprint, "splits": split_names, "split": split})


def _pretrains(spec: RunSpec, registry: Any) -> bool:
    """Whether a run trains its encoder (a pretraining-stage protocol, enabled, no checkpoint,
    a model with a method).  A guess that is too eager makes an encoder unit that does nothing."""
    if spec.checkpoint or spec.config.get("method") is None:
        return False
    for name in spec.protocols:
        proto = registry.get("protocol", name).factory
        section = spec.config.get(name) or {}
        if getattr(proto, "stage", "evaluate") == "pretrain" and section.get("enabled", True):
            return True
    return False


def plan(runs: list[RunSpec], *, results: str | Path, resume: bool, registry: Any,
         pending: Callable[[list[int]], None] | None = None) -> Plan:
    """The units ``runs`` still need (see the module docstring).  ``pending`` is called with the
    indices of the runs that are not finished once their identities are known, before any
    file is hashed for the feature cache's key."""
    from ..errors import UserError
    from ..features import cache_key
    from ..files import cache_root
    from ..provenance import run_key, weights_digest
    from ..results import finished_runs
    from ..splitdata import TaskData

    results = Path(results)
    cache = cache_root(results)
    finished = finished_runs(results) if resume else {}
    out_runs: list[dict[str, Any]] = []
    evaluations: list[Unit] = []
    feature_users: dict[str, list[Unit]] = {}
    feature_units: dict[str, Unit] = {}
    encoder_users: dict[str, list[Unit]] = {}
    known = []
    for index, spec in enumerate(runs):  # each run's identity first (stat-based, nothing hashed)
        config = copy.deepcopy(spec.config)  # sizing the frontend writes into it
        try:
            task_data = TaskData(config, registry, spec.data_dir, spec.splits)
        except UserError:  # its data is not here: its plan is shown, then the error
            if pending is not None:
                pending([r["index"] for r in out_runs if r["run_dir"] is None] + [index])
            raise
        names = [s.name for s in task_data.splits]
        fingerprint = task_data.fingerprint()
        sha = weights_digest(spec.checkpoint, cache) if spec.checkpoint else None
        key = run_key(spec.config, spec.protocols, names, fingerprint, sha, spec.columns)
        out_runs.append({"index": index, "key": key, "title": spec.title(),
                         "run_dir": str(finished[key]) if key in finished else None,
                         "code_version": _code_of(finished[key]) if key in finished else None})
        known.append((config, task_data, names, fingerprint, key))
    if pending is not None:
        pending([r["index"] for r in out_runs if r["run_dir"] is None])
    for spec, (config, task_data, names, fingerprint, key) in zip(runs, known):
        if key in finished:
            continue
        state = results / ".cache" / "runs" / key
        if not resume:
            shutil.rmtree(state, ignore_errors=True)  # no earlier part may complete this run
        todo = [n for n in names if not (state / _slug(n) / "part.json").is_file()]
        if not todo:  # every split is kept; only the run directory is missing
            evaluations.append(Unit(f"run-{key}", "evaluation", f"{spec.title()} · write run", spec, key=key))
            continue
        entry = None
        if config.get("data", {}).get("cache", True):
            task_data.size_frontend()
            entry = cache_key(task_data.all_clips(), task_data.frontend, task_data.clip_seconds)
            if (cache / "features" / entry).is_dir():
                entry = None  # extracted already
        corpus = (spec.config.get("pretrain") or {}).get("corpus")
        for name in todo:
            unit = Unit(f"eval-{key}-{_slug(name)}", "evaluation", f"{spec.title()} · {name}", spec, part=[name],
                        key=key)
            evaluations.append(unit)
            if entry is not None:
                feature_users.setdefault(entry, []).append(unit)
                if entry not in feature_units:
                    feature_units[entry] = Unit(f"features-{entry[:12]}", "features",
                                                f"{spec.config.get('task')} features ({config['frontend']['name']})",
                                                spec, marker=str(cache / "features" / entry))
            if _pretrains(spec, registry):
                ek = encoder_key(spec.config, registry, fingerprint, names, None if corpus else name)
                encoder_users.setdefault(ek, []).append(unit)
    units: list[Unit] = []
    for entry, unit in feature_units.items():
        users = feature_users[entry]
        encoders = {k for k, us in encoder_users.items() if len(us) > 1 and any(u in users for u in us)}
        if len(users) + len(encoders) > 1:  # one reader extracts for itself
            units.append(unit)
            for user in users:
                user.needs.append(unit.id)
    feature_of = {u.id: [f.id for f in units if f.id in u.needs] for u in evaluations}
    for ek, users in encoder_users.items():
        marker = Path(cache) / "launch" / "encoders" / f"{ek}.json"
        if len(users) < 2 or marker.is_file():
            continue
        first = users[0]
        unit = Unit(f"encoder-{ek}", "encoder", f"{first.run.title()} · encoder for {first.part[0]}", first.run,
                    needs=list(feature_of[first.id]), part=list(first.part), pretrain_only=True, marker=str(marker),
                    key=first.key)
        units.append(unit)
        for user in users:
            user.needs.append(unit.id)
    return Plan(units + evaluations, out_runs)


def _code_of(run_dir: Path) -> str | None:
    """The code version a finished run was computed by (its provenance)."""
    try:
        return json.loads((Path(run_dir) / "result.json").read_text())["provenance"]["code_version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- running one
@contextlib.contextmanager
def job_environment(unit: Unit, job: JobSettings) -> Iterator[None]:
    """The process as the job needs it, for the unit's duration: threads, the launcher's
    environment variables (read back by :func:`ssl_bench.provenance.job_record`), the plugins."""
    import torch

    from ..provenance import JOBS_ENV, LAUNCHER_ENV
    from ..registry import set_registry

    env = {LAUNCHER_ENV: job.launcher, **({JOBS_ENV: str(job.jobs)} if job.jobs else {})}
    if job.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = job.gpu
    saved_env = {k: os.environ.get(k) for k in (*env, JOBS_ENV)}
    os.environ.pop(JOBS_ENV, None)
    saved_threads = torch.get_num_threads()
    os.environ.update(env)
    limits = contextlib.nullcontext()
    if job.threads:
        torch.set_num_threads(int(job.threads))
        try:  # numpy's BLAS (scikit-learn's probes) to the same count
            from threadpoolctl import threadpool_limits

            limits = threadpool_limits(int(job.threads))
        except ImportError:  # pragma: no cover - scikit-learn depends on it
            pass
    previous = set_registry(_registry(job.plugins_dirs)) if job.plugins_dirs else None
    try:
        with limits:
            yield
    finally:
        if job.plugins_dirs:
            set_registry(previous)
        torch.set_num_threads(saved_threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _error_line(exc: BaseException) -> str:
    from ..errors import UserError

    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(exc, UserError) and first else f"{type(exc).__name__}: {first}".rstrip(": ")


def execute(unit: Unit, job: JobSettings, log: str | None = None) -> dict[str, Any]:
    """Run ``unit`` here (see the module docstring); returns its final state record (``state``
    ``done`` or ``failed`` with its ``error`` line).  ``log``: where its output goes, for the
    state record.  Interruptions (Ctrl-C, SIGTERM) are recorded and raised again."""
    from ..compute import Meter
    from ..distributed import current
    from ..files import atomic_write_text
    from ..provenance import job_record
    from .state import LaunchState

    state = LaunchState(Path(job.state_dir))
    is_main = int(os.environ.get("RANK", "0")) == 0
    with job_environment(unit, job):
        who = job_record()
        if is_main:
            state.update(unit.id, state="running", started=time.time(), pid=os.getpid(), host=socket.gethostname(),
                         job_id=who["job_id"], launcher=job.launcher, launch=job.launch_id,
                         pid_start=_process_start(), **({"log": log} if log else {}))
        meter = Meter()
        try:
            run_dir = _work(unit, job)
            if unit.marker and unit.kind == "encoder" and is_main:
                atomic_write_text(Path(unit.marker), json.dumps({"unit": unit.id, "done": time.time()}))
            record = {"state": "done", "run_dir": str(run_dir) if run_dir else None}
        except (Exception, KeyboardInterrupt) as exc:
            from ..errors import UserError

            if not isinstance(exc, (KeyboardInterrupt, UserError)):
                traceback.print_exc()  # a bug: its traceback goes to the unit's log
            record = {"state": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                      "error": _error_line(exc)}
            if is_main:
                state.update(unit.id, ended=time.time(), compute=meter.read(current().world_size), **record)
            raise
        record = {**record, "ended": time.time(), "compute": meter.read(current().world_size)}
        if is_main:
            state.update(unit.id, **record)
        return {**state.read(unit.id), **record}


def _process_start() -> str:
    from ..files import _process_start as start

    return start()


def _work(unit: Unit, job: JobSettings) -> Path | None:
    """What the unit computes (features, an encoder, a run's splits)."""
    from ..distributed import resolve_device
    from ..files import cache_root
    from ..registry import get_registry
    from ..runner import run_experiment
    from ..splitdata import prepare_features

    spec = unit.run
    if unit.kind == "features":
        prepare_features(copy.deepcopy(spec.config), get_registry(), data_dir=spec.data_dir, splits=spec.splits,
                         cache_dir=cache_root(job.results), device=resolve_device(spec.config.get("device")),
                         progress=job.progress)
        return None
    return run_experiment(spec.config, data_dir=spec.data_dir, results_root=job.results, protocols=spec.protocols,
                          checkpoint=spec.checkpoint, splits=spec.splits, resume=job.resume, progress=job.progress,
                          track=spec.track, label=spec.label, part=unit.part, pretrain_only=unit.pretrain_only,
                          columns=spec.columns, run_key=unit.key or None)


def main(argv: list[str] | None = None) -> int:
    """``python -m ssl_bench.launch.units UNIT.json``: run one unit (every torchrun rank)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m ssl_bench.launch.units UNIT.json", file=sys.stderr)
        return 2
    data = json.loads(Path(argv[0]).read_text())
    try:
        execute(Unit.from_json(data["unit"]), JobSettings(**data["job"]), log=data.get("log"))
    except Exception:  # noqa: BLE001 - recorded in the unit's state and printed
        return 1
    finally:
        from ..distributed import shutdown

        shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
