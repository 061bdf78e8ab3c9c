"""A sweep from start to table: plan, launch, wait (or detach), report.

:func:`run_sweep` is what ``ssl-bench run`` calls with the runs it resolved: it plans the
units (:func:`ssl_bench.launch.units.plan`), records the launch
(:class:`~ssl_bench.launch.state.LaunchState`), and either waits for the units with one line
per state change (:func:`~ssl_bench.launch.base.drive`), or, with ``detach``, leaves them to
the scheduler (SLURM dependencies) or to a driver process of its own (the local launchers),
for ``ssl-bench status`` to report.  ``python -m ssl_bench.launch.sweep LAUNCH.json`` is that
driver.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError, parse_value
from .base import Launcher, drive
from .state import LaunchState, launch_root
from .units import JobSettings, Plan, RunSpec, Unit, plan


@dataclass
class SweepOutcome:
    """What a sweep ended with: the run directory of each run that is finished (``None`` for one
    that is not), the units that failed (their final records) and whether it was detached."""

    run_dirs: list[str | None]
    failed: list[dict[str, Any]] = field(default_factory=list)
    detached: bool = False
    launch_id: str = ""


# --------------------------------------------------------------------------- launchers
def launch_options(items: list[str] | None) -> dict[str, Any]:
    """``--launch KEY=VALUE`` (a YAML value) and ``--launch FILE.yaml`` (a mapping of them), later
    items winning."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" in item:
            key, _, raw = item.partition("=")
            out[key.strip()] = parse_value(raw.strip())
            continue
        path = Path(item).expanduser()
        if not path.is_file():
            raise ConfigError(f"--launch {item}: expected KEY=VALUE (e.g. partition=gpu) or a YAML file of them")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--launch {item}: not readable YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--launch {item}: expected a mapping of launcher settings at the top level")
        out.update(data)
    return out


def make_launcher(name: str, options: dict[str, Any], *, jobs: int, threads: int | None, registry: Any) -> Launcher:
    """The launcher ``name`` with its ``Config`` from ``options`` (unknown keys and bad values are
    one line naming the valid keys)."""
    cls = registry.get("launcher", name).factory
    config_cls = getattr(cls, "Config", None)
    fields = {f.name: f for f in dataclasses.fields(config_cls)} if config_cls is not None else {}
    unknown = sorted(k for k in options if k not in fields)
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"--launch {unknown[0]}: launcher {name!r} has no such setting; its settings: {valid}")
    if jobs < 1 or (threads is not None and threads < 1):
        raise ConfigError(f"--jobs {jobs} / --threads {threads}: expected numbers of at least 1")
    try:
        cfg = config_cls(**options) if config_cls is not None else None
    except TypeError as exc:
        raise ConfigError(f"--launch: {exc}") from None
    return cls(cfg, jobs=jobs, threads=threads)


# --------------------------------------------------------------------------- the sweep
def _counts(units: list[Unit]) -> str:
    kinds: dict[str, int] = {}
    for u in units:
        kinds[u.kind] = kinds.get(u.kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items())


def run_sweep(runs: list[RunSpec], launcher: Launcher, *, results: str | Path, resume: bool = True,
              detach: bool = False, plugins_dirs: list[str] | None = None, progress: bool = True,
              command: str = "", registry: Any = None, launcher_options: dict[str, Any] | None = None,
              echo: Callable[[str], None] | None = None,
              before_work: Callable[[list[RunSpec]], None] | None = None) -> SweepOutcome:
    """Run ``runs`` with ``launcher`` (see the module docstring); ``resume=False`` runs every
    unit again and makes new runs of finished ones.  ``before_work``: called (on rank 0) with
    the runs that are not finished yet, before any unit is submitted (``ssl-bench run`` prints
    their plan)."""
    from ..registry import get_registry

    registry = registry or get_registry()
    # progress, like the meters, goes to stderr: stdout keeps the table (`ssl-bench run ... > table.txt`)
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    is_main = int(os.environ.get("RANK", "0")) == 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not launcher.in_process:
        raise ConfigError("under torchrun every process is one rank of one run: use the local launcher without "
                          "--jobs (--launcher slurm runs torchrun inside each job itself)")

    def pending(indices: list[int]) -> None:
        if is_main and indices:
            launcher.prepare()  # (the local pool's forkserver imports while the plans are timed)
            if before_work is not None:
                before_work([runs[i] for i in indices])

    the_plan = plan(runs, results=results, resume=resume, registry=registry, pending=pending)
    before = [r for r in the_plan.runs if r["run_dir"]]
    state = LaunchState(launch_root(results), readonly=not is_main)
    loud = is_main and (len(the_plan.units) > 1 or not launcher.in_process)
    if is_main and (loud or before):
        echo(f"sweep: {len(runs)} run(s), {len(before)} finished before; {len(the_plan.units)} unit(s) to run"
             + (f" ({_counts(the_plan.units)})" if the_plan.units else "") + f"; {launcher.describe()}")
    if is_main:
        _say_other_code(before, echo)
    if not the_plan.units:
        return SweepOutcome([r["run_dir"] for r in the_plan.runs])
    record = {"command": command, "launcher": launcher.name, "describe": launcher.describe(),
              "options": launcher_options or {}, "jobs": launcher.jobs,
              "threads": launcher.threads, "resume": resume, "done_before": len(before), "runs": the_plan.runs,
              "units": [{"id": u.id, "kind": u.kind, "title": u.title, "needs": u.needs} for u in the_plan.units],
              "plan": [u.to_json() for u in the_plan.units], "results": str(results),
              "plugins_dirs": list(plugins_dirs or [])}
    launch_id = state.new_launch(record)
    job = launcher.job_settings(JobSettings(
        results=str(results), state_dir=str(state.root), launcher=launcher.name, jobs=launcher.jobs,
        threads=launcher.threads, resume=resume, plugins_dirs=list(plugins_dirs or []),
        progress=progress if launcher.in_process else True, launch_id=launch_id))
    if detach and not launcher.scheduler_dependencies:
        return _detach_driver(the_plan, launch_id, job, state, echo)
    final = drive(the_plan, launcher, job, state, wait=not detach, echo=echo, quiet=not (loud or detach))
    launcher.close()
    if detach:
        echo(f"submitted {len(the_plan.units)} unit(s); `ssl-bench status {results}` reports on them, and the same "
             "command again waits for them (or resubmits what failed)")
        return SweepOutcome([r["run_dir"] for r in the_plan.runs], detached=True, launch_id=launch_id)
    return _outcome(the_plan, final, results, launch_id)


def _say_other_code(before: list[dict[str, Any]], echo: Callable[[str], None]) -> None:
    """A note when finished runs that a sweep reuses were computed by other code than this."""
    from ..provenance import code_version

    here = code_version()
    other = sorted({str(r["code_version"]) for r in before if r.get("code_version") not in (None, here)})
    if other:
        count = sum(1 for r in before if r.get("code_version") not in (None, here))
        echo(f"note: {count} finished run(s) were computed by code {', '.join(other)} (this is {here}); their rows "
             "say so (code_version); --no-resume computes them again")


def _outcome(the_plan: Plan, final: dict[str, dict[str, Any]], results: str | Path, launch_id: str) -> SweepOutcome:
    from ..results import finished_runs

    done = finished_runs(results)
    dirs = [str(done[r["key"]]) if r["key"] in done else None for r in the_plan.runs]
    failed = [{**rec, "id": uid} for uid, rec in final.items() if rec.get("state") != "done"]
    return SweepOutcome(dirs, failed, launch_id=launch_id)


def _detach_driver(the_plan: Plan, launch_id: str, job: JobSettings, state: LaunchState,
                   echo: Callable[[str], None]) -> SweepOutcome:
    """A driver process of its own runs the launch; this one returns."""
    from ..files import _process_start

    log = state.root / "logs" / f"launch-{launch_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        driver = subprocess.Popen([sys.executable, "-m", "ssl_bench.launch.sweep", str(state.root / "launches" /
                                                                                      f"{launch_id}.json")],
                                  stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, env={**os.environ, "SSL_BENCH_DRIVER": "1"})
    start = _process_start_of(driver.pid) or _process_start()
    state.set_launch(launch_id, driver_pid=driver.pid, driver_start=start, driver_log=str(log))
    for unit in the_plan.units:
        state.start_attempt(unit.id, state="queued", kind=unit.kind, title=unit.title, launcher=job.launcher,
                            launch=launch_id, driver_pid=driver.pid, driver_start=start, host=_host())
    echo(f"detached: {len(the_plan.units)} unit(s) queued for a driver process (pid {driver.pid}, log {log}); "
         f"`ssl-bench status {job.results}` reports on them")
    return SweepOutcome([r["run_dir"] for r in the_plan.runs], detached=True, launch_id=launch_id)


def _host() -> str:
    import socket

    return socket.gethostname()


def _process_start_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    """The driver of a detached local launch: ``python -m ssl_bench.launch.sweep LAUNCH.json``."""
    from ..registry import Registry, get_registry, set_registry

    argv = list(sys.argv[1:] if argv is None else argv)
    record = json.loads(Path(argv[0]).read_text())
    state = LaunchState(Path(argv[0]).parent.parent)
    units = [Unit.from_json(u) for u in record["plan"]]
    dirs = list(record.get("plugins_dirs") or [])
    registry = Registry(plugins_dirs=dirs) if dirs else get_registry()
    set_registry(registry)
    launcher = make_launcher(record["launcher"], record.get("options") or {}, jobs=int(record["jobs"]),
                             threads=record.get("threads"), registry=registry)
    job = launcher.job_settings(JobSettings(
        results=record["results"], state_dir=str(state.root), launcher=launcher.name, jobs=launcher.jobs,
        threads=launcher.threads, resume=bool(record.get("resume", True)), plugins_dirs=dirs, launch_id=record["id"]))
    started = time.time()
    final = drive(Plan(units, record["runs"]), launcher, job, state)
    launcher.close()
    failed = [uid for uid, r in final.items() if r.get("state") != "done"]
    print(f"launch {record['id']} ended after {time.time() - started:.1f} s; {len(failed)} unit(s) not done",
          file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
