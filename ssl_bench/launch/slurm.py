"""Launchers through `submitit <https://github.com/facebookincubator/submitit>`_: ``slurm``, and
``submitit-local`` (submitit's local executor: the same job files and pickles on this
machine, no scheduler; how a SLURM setup is tried on a laptop, and how CI runs this path).

``slurm`` submits every unit at once, each with ``--dependency=afterok:<jobs it needs>`` and
``--kill-on-invalid-dep=yes``, so the scheduler orders them and a ``--detach``-ed launch needs
no driver; units of one kind with the same needs go as one job array (at most
``array_parallelism`` tasks at once).  Settings (``--launch KEY=VALUE``, or a YAML file of them
with ``--launch FILE``): ``partition``, ``time_min``, ``cpus_per_job``, ``gpus_per_job``,
``processes_per_job``, ``mem_gb``, ``nodes``, ``array_parallelism``, ``sbatch`` (any other sbatch option, e.g.
``{qos: high, account: lab}``), ``setup`` (shell lines run before the job, e.g. ``module load``),
``folder`` (submitit's job files; default ``<results>/.cache/launch/submitit``).  A job runs its
unit with ``cpus_per_job`` torch threads; with more than one GPU (or ``processes_per_job``) or
node it runs ``torchrun`` inside the allocation (one process per GPU, the rendezvous on the
first node; each process ``cpus_per_job / processes`` threads).  A job that is
preempted or reaches its time limit is requeued by submitit and resumes from its checkpoints;
one cancelled with ``scancel`` is a failed unit, submitted again by the next run.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .base import Handle, Launcher
from .local import usable_cores
from .state import VANISHED, LaunchState, slurm_states
from .units import JobSettings, Unit

#: Seconds between two ``squeue`` calls of a waiting launch (unit states are read every poll).
SQUEUE_EVERY_S = 5.0

class _SubmititJob(Handle):
    """A unit submitted through submitit: its state file says how it ends; a job the scheduler
    no longer knows (or, locally, a process that ended) without a final state vanished."""

    def __init__(self, unit: Unit, state: LaunchState, job: Any, log: str | None, launcher: SubmititLauncher):
        super().__init__(unit, state, str(job.job_id), log)
        self.job, self.launcher = job, launcher

    def poll(self) -> dict[str, Any] | None:
        record = self.record()
        if record.get("state") in ("done", "failed", "interrupted", "skipped"):
            return record
        if self.launcher.cluster == "local":
            if not self.job.done():
                return None
        else:
            states = self.launcher.squeue()
            if states is None or self.job_id in states:
                if states and "DependencyNeverSatisfied" in states.get(self.job_id, ""):
                    subprocess.run(["scancel", self.job_id], capture_output=True)
                    return self.state.update(self.unit.id, state="skipped", ended=time.time(),
                                             error="a unit it needs failed")
                return None
        time.sleep(0.2)  # the state file is written just before the job ends
        record = self.record()
        if record.get("state") in ("done", "failed", "interrupted", "skipped"):
            return record
        return self.state.update(self.unit.id, state="failed", ended=time.time(), error=VANISHED, log=self.log)

    def cancel(self) -> None:
        if self.launcher.cluster == "local":  # local jobs die with their launch; SLURM's go on
            self.job.cancel(check=False)


class SubmititLauncher(Launcher):
    """Units as submitit jobs (see the module docstring)."""

    name = "slurm"
    help = "SLURM jobs through submitit: scheduler dependencies, job arrays, torchrun for multi-GPU jobs"
    scheduler_dependencies = True
    cluster = "slurm"

    @dataclass
    class Config:
        partition: str | None = None
        time_min: int = 60  # the job's time limit, minutes
        cpus_per_job: int | None = None  # CPUs (and torch threads) per job; default --threads, else 1
        gpus_per_job: int = 0  # GPUs per node of a job
        processes_per_job: int | None = None  # torchrun processes per node (default: gpus_per_job); >1: torchrun
        mem_gb: float | None = None
        nodes: int = 1
        array_parallelism: int = 256  # array tasks at once
        sbatch: dict[str, Any] = field(default_factory=dict)  # other sbatch options: {qos: high, account: lab}
        setup: list[str] = field(default_factory=list)  # shell lines before the job (module load ...)
        folder: str | None = None  # submitit's job files (default <results>/.cache/launch/submitit)

    def __init__(self, cfg: Any, *, jobs: int = 1, threads: int | None = None):
        super().__init__(cfg, jobs=jobs, threads=threads)
        if self.cluster == "local":
            cores = usable_cores()
            self.threads = self.threads or max(1, cores // self.jobs)
            if self.jobs * self.threads > cores:
                raise ConfigError(f"--jobs {self.jobs} x --threads {self.threads} = {self.jobs * self.threads} threads "
                                  f"on {cores} core(s): jobs would slow each other down; lower --jobs or --threads")
        else:
            if cfg.cpus_per_job is None:
                cfg.cpus_per_job = self.threads or 1
            self.threads = self.threads or max(1, int(cfg.cpus_per_job) // self.processes())
        self._executor: Any = None
        self._squeue: tuple[float, dict[str, str] | None] = (0.0, None)
        self.submitted: list[str] = []

    def job_settings(self, base: JobSettings) -> JobSettings:
        # SLURM decides how many jobs run at once (rows say so with jobs = None)
        return replace(base, jobs=0) if self.cluster == "slurm" else base

    def processes(self) -> int:
        """Processes per node of a job: ``processes_per_job``, else one per GPU, else one."""
        return max(1, int(self.cfg.processes_per_job or self.cfg.gpus_per_job or 1))

    def capacity(self) -> int:
        return self.jobs if self.cluster == "local" else max(self.jobs, int(self.cfg.array_parallelism))

    def describe(self) -> str:
        if self.cluster == "local":
            return f"submitit-local, {self.jobs} job(s) at once, {self.threads} thread(s) each"
        where = f" on partition {self.cfg.partition}" if self.cfg.partition else ""
        return f"slurm{where}, {self.cfg.cpus_per_job} CPU(s), {self.cfg.gpus_per_job} GPU(s) per job"

    def squeue(self) -> dict[str, str] | None:
        """``squeue``'s view of this launch's jobs, asked at most every :data:`SQUEUE_EVERY_S`."""
        when, states = self._squeue
        if time.time() - when >= SQUEUE_EVERY_S:
            states = slurm_states(self.submitted)
            self._squeue = (time.time(), states)
        return states

    def executor(self, folder: Path) -> Any:
        if self._executor is not None:
            return self._executor
        try:
            import submitit
        except ImportError:
            raise ConfigError("the slurm launchers need submitit: pip install submitit") from None
        if self.cluster == "local":
            ex = submitit.LocalExecutor(folder=str(folder))
            ex.update_parameters(timeout_min=int(self.cfg.time_min), stderr_to_stdout=True)
        else:
            import shutil

            if shutil.which("sbatch") is None:
                raise ConfigError("--launcher slurm: sbatch is not on PATH (no SLURM client here); run on a login "
                                  "node, or try the launch with --launcher submitit-local")
            ex = submitit.SlurmExecutor(folder=str(folder))
            params: dict[str, Any] = {"time": int(self.cfg.time_min), "cpus_per_task": int(self.cfg.cpus_per_job),
                                      "nodes": int(self.cfg.nodes), "ntasks_per_node": 1,
                                      "array_parallelism": int(min(self.cfg.array_parallelism, self.jobs)
                                                               if self.jobs > 1 else self.cfg.array_parallelism),
                                      "stderr_to_stdout": True, "job_name": "ssl-bench"}
            if self.cfg.partition:
                params["partition"] = self.cfg.partition
            if self.cfg.gpus_per_job:
                params["gpus_per_node"] = int(self.cfg.gpus_per_job)
            if self.cfg.mem_gb:
                params["mem"] = f"{int(float(self.cfg.mem_gb) * 1024)}MB"
            if self.cfg.setup:
                params["setup"] = list(self.cfg.setup)
            params["additional_parameters"] = {"kill-on-invalid-dep": "yes", **dict(self.cfg.sbatch or {})}
            try:
                ex.update_parameters(**params)
            except ValueError as exc:
                raise ConfigError(f"--launch: {str(exc).splitlines()[0]}") from None
        self._executor = ex
        return ex

    def submit(self, unit: Unit, job: JobSettings, state: LaunchState, after: list[Handle]) -> Handle:
        return self.submit_group([unit], job, state, after)[unit.id]

    def submit_all(self, units: list[Unit], job: JobSettings, state: LaunchState,
                   handles: dict[str, Handle]) -> dict[str, Handle]:
        """Every unit at once, in order; units of one kind that need the same jobs go as one array."""
        out: dict[str, Handle] = {}
        groups: dict[tuple, list[Unit]] = {}
        waiting: set[str] = set()
        for unit in units:
            if waiting.intersection(unit.needs):  # it needs the job ids of units not submitted yet
                out.update(self._flush(groups, job, state, {**handles, **out}))
                waiting.clear()
            after = tuple(sorted({(handles.get(n) or out[n]).job_id or "" for n in unit.needs}))
            groups.setdefault((unit.kind, after), []).append(unit)
            waiting.add(unit.id)
        out.update(self._flush(groups, job, state, {**handles, **out}))
        return out

    def _flush(self, groups: dict[tuple, list[Unit]], job: JobSettings, state: LaunchState,
               handles: dict[str, Handle]) -> dict[str, Handle]:
        out: dict[str, Handle] = {}
        for (_, _), units in list(groups.items()):
            after = [handles[n] for n in dict.fromkeys(n for u in units for n in u.needs)]
            out.update(self.submit_group(units, job, state, after))
        groups.clear()
        return out

    def submit_group(self, units: list[Unit], job: JobSettings, state: LaunchState,
                     after: list[Handle]) -> dict[str, Handle]:
        """``units`` as one job (or one array of them) after the jobs of ``after``."""
        folder = Path(self.cfg.folder) if self.cfg.folder else state.root / "submitit"
        ex = self.executor(folder / "%j")
        job = replace(job, threads=self.threads)
        if self.cluster == "slurm":
            needs = [h.job_id for h in after if h.job_id]
            ex.update_parameters(additional_parameters={"kill-on-invalid-dep": "yes", **dict(self.cfg.sbatch or {}),
                                                        **({"dependency": "afterok:" + ":".join(needs)} if needs
                                                           else {})},
                                 job_name=f"ssl-bench-{units[0].kind}")
        for unit in units:
            state.start_attempt(unit.id, state="queued", kind=unit.kind, title=unit.title, launcher=self.name,
                                launch=job.launch_id)
        from .job import UnitJob

        processes = self.processes() if self.cluster == "slurm" else 1
        try:
            if len(units) > 1 and self.cluster == "slurm":
                with ex.batch():
                    jobs = [ex.submit(UnitJob(), unit.to_json(), job.__dict__, None, processes) for unit in units]
            else:
                jobs = [ex.submit(UnitJob(), unit.to_json(), job.__dict__, None, processes) for unit in units]
        except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:  # sbatch said no
            said = getattr(exc, "output", None) or getattr(exc, "stderr", None) or str(exc)
            said = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
            lines = [line for line in said.strip().splitlines() if line.strip()]
            for unit in units:
                state.update(unit.id, state="failed", ended=time.time(), error=lines[-1] if lines else str(exc))
            raise ConfigError(f"--launcher {self.name}: the scheduler refused the job ({lines[-1] if lines else exc}); "
                              "check --launch partition/time_min/cpus_per_job/sbatch") from None
        out: dict[str, Handle] = {}
        for unit, submitted in zip(units, jobs):
            log = str(submitted.paths.stdout).replace("%t", "0")
            self.submitted.append(str(submitted.job_id))
            state.update(unit.id, job_id=str(submitted.job_id), log=log)
            out[unit.id] = _SubmititJob(unit, state, submitted, log, self)
        return out


class SubmititLocalLauncher(SubmititLauncher):
    name = "submitit-local"
    help = "submitit's local executor: SLURM's job path on this machine, --jobs at once, jobs x threads <= cores"
    scheduler_dependencies = False
    cluster = "local"

    @dataclass
    class Config:
        time_min: int = 60  # a job's time limit, minutes
        folder: str | None = None  # submitit's job files (default <results>/.cache/launch/submitit)
