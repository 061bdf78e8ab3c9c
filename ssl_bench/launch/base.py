"""The launcher contract, and the loop that waits on a launch.

A launcher is registered by name (``register_launchers``; ``ssl-bench plugins`` lists them)
as a :class:`Launcher` subclass: a ``Config`` dataclass (its fields are the ``--launch KEY=VALUE``
settings), :meth:`Launcher.submit` to start one unit and return a :class:`Handle`, and
:meth:`Launcher.capacity`, how many units run at once.  A launcher whose scheduler enforces
dependencies (SLURM) sets ``scheduler_dependencies``: every unit is submitted at once, each
after the jobs of what it needs, so a detached launch goes on without its driver.  Otherwise
:func:`drive` submits a unit when what it needs is done.

A launcher decides where a unit runs, never what it computes: every launcher ends in
:func:`ssl_bench.launch.units.execute`, so a unit run with the same threads and device gives
the same rows under every launcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .state import FINAL, VANISHED, LaunchState, Progress, alive
from .units import JobSettings, Plan, Unit


class Handle:
    """A submitted unit.  :meth:`poll` is None while it is queued or running, else its final
    record (``state`` and, for a failure, ``error`` and ``log``)."""

    def __init__(self, unit: Unit, state: LaunchState, job_id: str | None = None, log: str | None = None):
        self.unit, self.state, self.job_id, self.log = unit, state, job_id, log

    def record(self) -> dict[str, Any]:
        return self.state.read(self.unit.id)

    def poll(self) -> dict[str, Any] | None:
        record = self.record()
        return record if record.get("state") in FINAL else None

    def running(self) -> bool:
        return self.record().get("state") == "running"

    def cancel(self) -> None:
        """Stop the unit's job (Ctrl-C of a waiting launch that owns its jobs)."""


class AttachedHandle(Handle):
    """A unit an earlier launch submitted whose job still runs: waited for, not submitted again."""

    def poll(self) -> dict[str, Any] | None:
        record = self.record()
        if record.get("state") in FINAL:
            return record
        if not alive(record):
            record = self.record()  # it may have finished between the two reads
            if record.get("state") in FINAL:
                return record
            return self.state.update(self.unit.id, state="failed", error=VANISHED, ended=time.time())
        return None


class Launcher:
    """Base class of a launcher (see the module docstring).

    ``jobs``: units at once (``--jobs``); ``threads``: torch threads per job (``--threads``;
    None: the launcher decides, ``jobs x threads <= cores`` for local ones)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    scheduler_dependencies: ClassVar[bool] = False
    #: units run inside the launching process, one after another
    in_process: ClassVar[bool] = False

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: Any, *, jobs: int = 1, threads: int | None = None):
        self.cfg, self.jobs, self.threads = cfg, max(1, int(jobs)), threads

    def capacity(self) -> int:
        return self.jobs

    def job_settings(self, base: JobSettings) -> JobSettings:
        """The settings every unit of this launch runs with (threads decided here)."""
        return base

    def submit(self, unit: Unit, job: JobSettings, state: LaunchState, after: list[Handle]) -> Handle:
        raise NotImplementedError(f"launcher {self.name!r} has no submit()")

    def submit_all(self, units: list[Unit], job: JobSettings, state: LaunchState,
                   handles: dict[str, Handle]) -> dict[str, Handle]:
        """Every unit at once (``scheduler_dependencies``), in order, each after the jobs it
        needs; a scheduler with job arrays groups them."""
        out: dict[str, Handle] = {}
        for unit in units:
            out[unit.id] = self.submit(unit, job, state, [(handles.get(n) or out[n]) for n in unit.needs])
        return out

    def describe(self) -> str:
        """One line: where units run, how many at once, threads each."""
        return f"{self.name}, {self.jobs} job(s) x {self.threads or 'default'} thread(s)"

    def prepare(self) -> None:
        """Called once it is known that units will run, before they are planned in full: start
        what takes time to start (the local pool's forkserver) while the launch is planned."""

    def close(self) -> None:
        """Release what the launcher holds (executors, the forkserver's children)."""


def drive(plan: Plan, launcher: Launcher, job: JobSettings, state: LaunchState, *, wait: bool = True,
          echo: Callable[[str], None] | None = None, poll_s: float = 0.2,
          quiet: bool = False) -> dict[str, dict[str, Any]]:
    """Submit ``plan``'s units with ``launcher`` (each when what it needs is done, or all at once
    with scheduler dependencies) and, with ``wait``, wait for them, printing one line per
    unit state change (``quiet``: only for what went wrong).  A unit whose job from an earlier
    launch still runs is waited for, not submitted again.  A unit whose need failed is
    ``skipped``.  Returns each unit's final record (or its last one, without ``wait``)."""
    units = {u.id: u for u in plan.units}
    progress = Progress(plan.units, launcher.capacity(), echo, quiet=quiet)
    handles: dict[str, Handle] = {}
    final: dict[str, dict[str, Any]] = {}
    for unit in plan.units:  # jobs of earlier launches that still run
        record = state.read(unit.id)
        if record.get("launch") != job.launch_id and record.get("state") in ("queued", "running") and alive(record):
            handles[unit.id] = AttachedHandle(unit, state, record.get("job_id"), record.get("log"))
            progress.mark(unit.id, record["state"], f"submitted earlier (job {record.get('job_id') or '?'}); waiting")

    def submit(unit: Unit) -> None:
        if launcher.in_process:
            progress.mark(unit.id, "running")
        handle = launcher.submit(unit, job, state, [handles[n] for n in unit.needs if n in handles])
        handles[unit.id] = handle
        if not launcher.in_process:
            progress.mark(unit.id, "queued", f"job {handle.job_id}" if handle.job_id else "")

    for unit in plan.units:
        if unit.id not in handles and launcher.in_process:
            progress.mark(unit.id, "queued")
    if launcher.scheduler_dependencies:
        fresh = launcher.submit_all([u for u in plan.units if u.id not in handles], job, state, handles)
        for uid, handle in fresh.items():
            handles[uid] = handle
            progress.mark(uid, "queued", f"job {handle.job_id}" if handle.job_id else "")
    if not wait:
        return {uid: state.read(uid) for uid in units}
    try:
        while len(final) < len(units):
            for unit in plan.units:
                if unit.id in handles or unit.id in final:
                    continue
                failed = [n for n in unit.needs if n in final and final[n].get("state") != "done"]
                if failed:
                    why = f"needs {units[failed[0]].kind} unit {failed[0]}, which {final[failed[0]].get('state')}"
                    final[unit.id] = state.update(unit.id, state="skipped", error=why, launch=job.launch_id)
                    progress.mark(unit.id, "skipped", why)
                    continue
                running = sum(1 for uid, h in handles.items() if uid not in final)
                if all(final.get(n, {}).get("state") == "done" for n in unit.needs) and running < launcher.capacity():
                    submit(unit)
            for uid, handle in handles.items():
                if uid in final:
                    continue
                record = handle.poll()
                if record is None:
                    if handle.running():
                        progress.mark(uid, "running", f"job {handle.job_id}" if handle.job_id else "")
                    continue
                final[uid] = record
                if record.get("state") == "done":
                    progress.mark(uid, "running")  # a unit that started and ended between two polls
                    wall = (float(record["ended"]) - float(record["started"])) if record.get("started") else None
                    progress.mark(uid, "done", f"{wall:.1f} s" if wall is not None else "")
                else:
                    log = f" (log: {record['log']})" if record.get("log") else ""
                    error = record.get("error") or "no error recorded"
                    progress.mark(uid, record.get("state", "failed"), f"{error}{log}")
            if len(final) < len(units) and not launcher.in_process:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for uid, handle in handles.items():
            if uid not in final:
                handle.cancel()
        raise
    return final
