"""Where a launch keeps what it knows, and how it reports it.

Under ``<results>/.cache/launch/``::

    launches/<launch id>.json   one launch: its command, launcher, jobs x threads, units
                                (kind, title, needs) and runs (title, key)
    units/<unit id>.json        the latest attempt of one unit: state (queued, running, done,
                                failed, interrupted, skipped), launcher, job id, host, process,
                                log, times, what it cost, its error line
    logs/<unit id>.log          a pool job's output (SLURM jobs write theirs where submitit says)

A unit's state is written by whoever knows it: the launcher when it submits (queued), the job
itself when it starts and ends (running, done, failed), the launcher again when a job
vanished without a word (cancelled, preempted, killed: failed).  So ``ssl-bench status`` and
a rerun read the same truth, a detached launch included, and a rerun never submits a unit
whose job is still queued or running (:func:`alive`).

:class:`Progress` prints one line per unit state change and a whole-sweep estimate: each
kind of unit at the mean duration of its finished units, spread over the jobs that run at
once (a run of one unit in this process prints only a failure's line).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: The error of a unit whose job is gone without having said how it ended.
VANISHED = "its job ended without finishing (cancelled, preempted, timed out or killed)"
#: States of a unit; the last four are final for an attempt.
STATES = ("queued", "running", "done", "failed", "interrupted", "skipped")
FINAL = ("done", "failed", "interrupted", "skipped")


def launch_root(results: str | Path) -> Path:
    """``<results>/.cache/launch``: the launches of a results root (never ``$SSL_BENCH_CACHE``:
    a launch's state belongs to the results it writes)."""
    return Path(results) / ".cache" / "launch"


class LaunchState:
    """The launch records and unit states under one :func:`launch_root`."""

    def __init__(self, root: str | Path, readonly: bool = False):
        self.root = Path(root)
        self.readonly = readonly  # a torchrun rank other than 0: it reads, rank 0 writes

    # ------------------------------------------------------------------ units
    def unit_path(self, unit_id: str) -> Path:
        return self.root / "units" / f"{unit_id}.json"

    def read(self, unit_id: str) -> dict[str, Any]:
        try:
            data = json.loads(self.unit_path(unit_id).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, unit_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the unit's record (under its lock; written atomically)."""
        from ..files import atomic_write_text, file_lock

        if self.readonly:
            return {**self.read(unit_id), "id": unit_id, **fields}
        with file_lock(self.root / "units" / ".locks" / unit_id):
            record = {**self.read(unit_id), "id": unit_id, **fields, "updated": time.time()}
            atomic_write_text(self.unit_path(unit_id), json.dumps(record, indent=1, default=str))
        return record

    def start_attempt(self, unit_id: str, **fields: Any) -> dict[str, Any]:
        """A new attempt of the unit: what an earlier one said (its error, its times) is dropped."""
        from ..files import atomic_write_text, file_lock

        if self.readonly:
            return {"id": unit_id, **fields}
        with file_lock(self.root / "units" / ".locks" / unit_id):
            record = {"id": unit_id, **fields, "updated": time.time()}
            atomic_write_text(self.unit_path(unit_id), json.dumps(record, indent=1, default=str))
        return record

    def log_path(self, unit_id: str) -> Path:
        return self.root / "logs" / f"{unit_id}.log"

    # ------------------------------------------------------------------ launches
    def new_launch(self, record: dict[str, Any]) -> str:
        from ..files import atomic_write_text

        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        launch_id = f"{stamp}-{os.getpid()}-{os.urandom(2).hex()}"
        record = {"id": launch_id, "created": time.time(), "host": socket.gethostname(), **record}
        if self.readonly:
            return launch_id
        atomic_write_text(self.root / "launches" / f"{launch_id}.json", json.dumps(record, indent=1, default=str))
        return launch_id

    def set_launch(self, launch_id: str, **fields: Any) -> None:
        from ..files import atomic_write_text

        if self.readonly:
            return
        path = self.root / "launches" / f"{launch_id}.json"
        record = {**json.loads(path.read_text()), **fields}
        atomic_write_text(path, json.dumps(record, indent=1, default=str))

    def launches(self) -> list[dict[str, Any]]:
        """Every launch record, oldest first."""
        out = []
        for path in sorted((self.root / "launches").glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(out, key=lambda r: r.get("created", 0))


# --------------------------------------------------------------------------- liveness
def _process_alive(pid: Any, start: Any) -> bool:
    from ..files import _alive

    try:
        return _alive(int(pid), str(start))
    except (TypeError, ValueError):
        return False


def slurm_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """``{job id: state}`` from ``squeue`` for the jobs still known to SLURM (pending, running,
    completing...); None when ``squeue`` cannot be asked."""
    ids = {str(j) for j in job_ids if j}
    if not ids or shutil.which("squeue") is None:
        return None if ids else {}
    try:
        # every job of this user, one line per array task (-r): asking for ids SLURM has already
        # forgotten would fail the whole query
        import getpass

        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %T %r"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError, KeyError):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] in ids:
            states[parts[0]] = parts[1] + (f" ({parts[2]})" if len(parts) > 2 and parts[2] != "None" else "")
    return states


def alive(record: dict[str, Any], slurm: dict[str, str] | None = None) -> bool:
    """Whether the job of a queued or running unit still exists: a process of this host (a pool
    job, a detached driver), or a SLURM job ``squeue`` still lists.  A job that cannot be
    checked counts as gone: its unit is submitted again, and the unit's lock makes the newcomer
    wait for it rather than write beside it."""
    if record.get("state") not in ("queued", "running"):
        return False
    if record.get("launcher") == "slurm" and record.get("job_id"):
        states = slurm if slurm is not None else slurm_states([record["job_id"]])
        return bool(states) and str(record["job_id"]) in states
    if record.get("host") not in (None, socket.gethostname()):
        return False
    for pid_key, start_key in (("pid", "pid_start"), ("driver_pid", "driver_start")):
        if record.get(pid_key) and _process_alive(record[pid_key], record.get(start_key)):
            return True
    return False


# --------------------------------------------------------------------------- progress
def _duration(seconds: float) -> str:
    from ..progress import duration

    return duration(seconds)


class Progress:
    """One line per unit state change, with the sweep's count and an estimate of what is left.

    ``capacity``: units that run at once.  The estimate counts every unit not finished at the
    mean duration of the finished units of its kind (a running one minus its time so far),
    divided by ``capacity``; until a kind has a finished unit there is none."""

    def __init__(self, units: list[Any], capacity: int, echo: Callable[[str], None] | None = None,
                 quiet: bool = False):
        self.quiet = quiet  # only what went wrong (a run of one unit in this process)
        self.units = {u.id: u for u in units}
        self.order = [u.id for u in units]
        self.capacity = max(1, capacity)
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.state: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.durations: dict[str, list[float]] = {}

    def count(self) -> str:
        finished = sum(1 for s in self.state.values() if s in FINAL)
        return f"{finished}/{len(self.order)}"

    def estimate(self) -> str:
        left, now = 0.0, time.time()
        for uid in self.order:
            state = self.state.get(uid)
            if state in FINAL:
                continue
            kind = self.units[uid].kind
            known = self.durations.get(kind)
            if not known:
                return f"estimate after the first {kind} unit"
            mean = sum(known) / len(known)
            left += max(mean - (now - self.started[uid]), 0.0) if state == "running" and uid in self.started else mean
        return f"about {_duration(left / self.capacity)} left" if left else ""

    def mark(self, uid: str, state: str, detail: str = "") -> None:
        if self.state.get(uid) == state:
            return
        self.state[uid] = state
        unit = self.units[uid]
        if state == "running":
            self.started[uid] = time.time()
        elif state == "done" and uid in self.started:
            self.durations.setdefault(unit.kind, []).append(time.time() - self.started[uid])
        tail = f"; {detail}" if detail else ""
        if state == "done":  # (a failure's line ends with its log)
            left = self.estimate()
            finished = sum(1 for s in self.state.values() if s in FINAL)
            tail += f"; {left}" if left and finished < len(self.order) else ""
        if not self.quiet or state in ("failed", "interrupted", "skipped"):
            self.echo(f"[{self.count()}] {state:<9} {unit.kind:<10} {unit.title}{tail}")


# --------------------------------------------------------------------------- status
def report(results: str | Path, out: Callable[[str], None] = print) -> int:
    """``ssl-bench status RESULTS``: the latest launch of the results root, unit by unit, with
    the counts, the estimate and each failure's error and log; earlier launches are counted.
    Returns the number of units not done."""
    state = LaunchState(launch_root(results))
    launches = state.launches()
    if not launches:
        out(f"no launches under {launch_root(results)} (ssl-bench run writes one)")
        return 0
    launch = launches[-1]
    units = launch.get("units", [])
    records = {u["id"]: state.read(u["id"]) for u in units}
    slurm = slurm_states(r.get("job_id") for r in records.values()
                         if r.get("launcher") == "slurm" and r.get("state") in ("queued", "running"))
    when = datetime.fromtimestamp(launch.get("created", 0), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    how = launch.get("describe") or f"{launch.get('launcher')}, {launch.get('jobs', 1)} job(s)"
    out(f"launch {launch['id']} ({when}; {how}): {launch.get('command', '')}")
    counts: dict[str, int] = {}
    durations: dict[str, list[float]] = {}
    for u in units:
        r = records[u["id"]]
        s = r.get("state") or "queued"
        if s in ("queued", "running") and not alive(r, slurm):
            s, r = "failed", {**r, "error": r.get("error") or VANISHED}
        counts[s] = counts.get(s, 0) + 1
        if s == "done" and r.get("started") and r.get("ended"):
            durations.setdefault(u["kind"], []).append(float(r["ended"]) - float(r["started"]))
        where = f" job {r['job_id']}" if r.get("job_id") else ""
        line = f"  {s:<11} {u['kind']:<10} {u['title']}{where}"
        if s == "running" and r.get("started"):
            line += f", {_duration(time.time() - float(r['started']))} so far"
        if s == "done" and r.get("started") and r.get("ended"):
            line += f", {_duration(float(r['ended']) - float(r['started']))}"
        if s in ("failed", "interrupted"):
            line += f": {r.get('error') or 'no error recorded'}" + (f" (log: {r['log']})" if r.get("log") else "")
        out(line)
    before = launch.get("done_before", 0)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: STATES.index(kv[0])))
    left = [u for u in units if counts and records[u["id"]].get("state") not in FINAL]
    estimate = ""
    if left and all(durations.get(u["kind"]) for u in left):
        seconds = sum(sum(durations[u["kind"]]) / len(durations[u["kind"]]) for u in left)
        estimate = f"; about {_duration(seconds / max(1, int(launch.get('jobs', 1))))} left"
    earlier = f"; {before} run(s) finished before" if before else ""
    out(f"{len(units)} unit(s): {summary or 'none'}{estimate}{earlier}")
    if counts.get("failed") or counts.get("interrupted"):
        out("run the same command again to retry what failed (finished units are not submitted again)")
    elif not left and launch.get("runs"):
        out(f"finished: ssl-bench results {results}")
    return len(units) - counts.get("done", 0)
