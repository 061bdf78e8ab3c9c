"""The ``local`` launcher: units in this process (the default), or ``--jobs N`` at once in a pool.

In process (``--jobs 1``), units run one after another exactly as ``ssl-bench run`` always
ran them; ``--threads N`` sets torch's threads (default: torch's own, every core).

With ``--jobs N`` each unit runs in a process of its own, forked from a server that has
imported torch and the plugins once (``multiprocessing``'s forkserver: a job starts in a
fraction of a second and shares nothing with its neighbours).  Threads per job default to
``cores // jobs`` and ``jobs x threads`` may not exceed the cores this process may use: two
jobs that each start torch with every core's threads make the machine slower than one.  On a
host with several GPUs job slot ``i`` gets GPU ``i mod count``.  A job's output goes to
``<results>/.cache/launch/logs/<unit>.log``; a job killed without a word is a failed unit
whose line says so.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..config import ConfigError
from ..errors import UserError
from .base import Handle, Launcher
from .state import LaunchState, VANISHED
from .units import JobSettings, Unit, execute

#: Modules the pool's server imports once, so every job starts warm.
PRELOAD = ["ssl_bench.launch.warm"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _Finished(Handle):
    """A unit that ran in this process: its record is final when the handle is made."""

    def __init__(self, unit: Unit, state: LaunchState, record: dict[str, Any]):
        super().__init__(unit, state, record.get("job_id"), record.get("log"))
        self._record = record

    def poll(self) -> dict[str, Any] | None:
        return self._record


class _PoolJob(Handle):
    """A unit in a process of the pool."""

    def __init__(self, unit: Unit, state: LaunchState, process: Any, log: str, slot: int):
        super().__init__(unit, state, f"pid{process.pid}", log)
        self.process, self.slot = process, slot

    def poll(self) -> dict[str, Any] | None:
        record = self.record()
        if self.process.exitcode is None:
            return None
        self.process.join()
        record = self.record()
        if record.get("state") in ("done", "failed", "interrupted"):
            return record
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return self.state.update(self.unit.id, state="failed", ended=time.time(),
                                 error=f"{VANISHED} ({how})", log=self.log)

    def cancel(self) -> None:
        if self.process.exitcode is None:
            self.process.terminate()  # SIGTERM: training checkpoints at a step boundary and exits
            self.process.join(60)
            if self.process.exitcode is None:
                self.process.kill()
                self.process.join()


def _pool_job(unit_json: dict[str, Any], job_json: dict[str, Any], log: str) -> None:
    """A pool job: output to ``log``, the unit through :func:`execute`, exit status 0 or 1."""
    with open(log, "ab", buffering=0) as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    try:
        execute(Unit.from_json(unit_json), JobSettings(**job_json), log=log)
    except BaseException:  # noqa: BLE001 - recorded in the unit's state; the status says it failed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()


class LocalLauncher(Launcher):
    name = "local"
    help = "this machine: in this process (default), or --jobs N processes at once, jobs x threads <= cores"

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: Any, *, jobs: int = 1, threads: int | None = None):
        super().__init__(cfg, jobs=jobs, threads=threads)
        cores = usable_cores()
        if self.jobs > 1:
            if self.threads is None:
                self.threads = max(1, cores // self.jobs)
            if self.jobs * self.threads > cores:
                raise ConfigError(f"--jobs {self.jobs} x --threads {self.threads} = {self.jobs * self.threads} threads "
                                  f"on {cores} core(s): jobs would slow each other down; lower --jobs or --threads")
        self.slots: dict[int, Any] = {}
        self._context: Any = None

    @property
    def in_process(self) -> bool:  # type: ignore[override]
        return self.jobs == 1

    def describe(self) -> str:
        where = "in this process" if self.jobs == 1 else f"{self.jobs} processes at once"
        return f"local, {where}, {self.threads or 'default'} thread(s) each"

    def context(self) -> Any:
        if self._context is None:
            import multiprocessing

            self._context = multiprocessing.get_context("forkserver")
            self._context.set_forkserver_preload(PRELOAD)
        return self._context

    def prepare(self) -> None:
        """With ``--jobs N``, start the forkserver now: it imports torch and the plugins (seconds)
        while this process plans the launch, instead of when the first job is submitted."""
        if self.jobs > 1:
            from multiprocessing import forkserver

            self.context()
            with _main_module_hidden():
                forkserver.ensure_running()

    def submit(self, unit: Unit, job: JobSettings, state: LaunchState, after: list[Handle]) -> Handle:
        if self.jobs == 1:
            log = str(state.log_path(unit.id))
            state.start_attempt(unit.id, state="running", kind=unit.kind, title=unit.title, launcher=job.launcher,
                                launch=job.launch_id, pid=os.getpid(), log=log)
            try:
                record = execute(unit, job, log=log)
            except UserError:
                raise  # in this process, an error in what was asked is one line and stops, as it always did
            except Exception as exc:  # noqa: BLE001 - a bug in one unit: its traceback is printed, the others go on
                record = state.read(unit.id)
                _write_traceback(state.log_path(unit.id), exc)
                record = {**record, "state": record.get("state", "failed")}
            return _Finished(unit, state, record)
        slot = next(i for i in range(self.jobs) if i not in self.slots or self.slots[i].poll() is not None)
        gpu = _gpu_for(slot)
        job = replace(job, gpu=gpu) if gpu is not None else job
        log = state.log_path(unit.id)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_bytes(b"")
        process = self.context().Process(target=_pool_job, args=(unit.to_json(), job.__dict__, str(log)),
                                         name=f"ssl-bench {unit.id}")
        state.start_attempt(unit.id, state="queued", kind=unit.kind, title=unit.title, launcher=job.launcher,
                            launch=job.launch_id, log=str(log), driver_pid=os.getpid(), driver_start=_start())
        with _main_module_hidden():
            process.start()
        handle = _PoolJob(unit, state, process, str(log), slot)
        self.slots[slot] = handle
        return handle


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a job without the launching script: multiprocessing would import ``__main__`` again
    in the child (a notebook's or a script's top-level code, or ``<stdin>``, which cannot be); the
    job's function lives in this package and needs none of it."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    had_file, file, spec = hasattr(main, "__file__"), getattr(main, "__file__", None), getattr(main, "__spec__", None)
    try:
        if had_file:
            del main.__file__
        main.__spec__ = None
        yield
    finally:
        if had_file:
            main.__file__ = file
        main.__spec__ = spec


def _start() -> str:
    from ..files import _process_start

    return _process_start()


def _gpu_for(slot: int) -> str | None:
    """The GPU of a pool slot on a host with several (None: leave the environment alone)."""
    count = _gpu_count()
    return str(slot % count) if count > 1 else None


def _gpu_count() -> int:
    import torch

    # device_count() asks the driver without starting CUDA here (forked jobs start their own)
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _write_traceback(path: Any, exc: BaseException) -> None:
    import traceback
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write("".join(traceback.format_exception(exc)))
