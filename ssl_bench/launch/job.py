"""What a submitit job runs (imported by the job, and by a launcher only when it submits: submitit
is not imported to list plugins)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from .units import JobSettings, Unit, execute


class UnitJob(Checkpointable):
    """What a submitit job calls: the unit through :func:`execute`, or ``torchrun`` of it when
    the allocation has several GPUs or nodes.  Checkpointable: on a time limit or preemption
    submitit requeues the same call, which resumes from the unit's checkpoints."""

    def __call__(self, unit_json: dict[str, Any], job_json: dict[str, Any], log: str | None,
                 processes: int = 1) -> str:
        job = JobSettings(**job_json)
        unit = Unit.from_json(unit_json)
        nodes = int(os.environ.get("SLURM_NNODES", "1") or 1)
        if processes > 1 or nodes > 1:
            return _torchrun(unit, job, log, processes, nodes)
        if job.threads is None and os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
            job = replace(job, threads=int(os.environ["SLURM_CPUS_PER_TASK"]))
        record = execute(unit, job, log=log)
        return str(record.get("state"))


def _torchrun(unit: Unit, job: JobSettings, log: str | None, processes: int, nodes: int) -> str:
    """``torchrun`` of the unit on this node of the allocation (every rank runs it; rank 0
    records its state)."""
    path = Path(job.state_dir) / "jobs" / f"{unit.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"unit": unit.to_json(), "job": job.__dict__, "log": log}))
    if nodes > 1:
        head = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], capture_output=True,
                              text=True, check=True).stdout.split()[0]
        where = ["--nnodes", str(nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{head}:29500",
                 "--rdzv-id", os.environ.get("SLURM_JOB_ID", "ssl-bench")]
    else:
        where = ["--standalone"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(processes),
           "-m", "ssl_bench.launch.units", str(path)]
    print("running", shlex.join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise RuntimeError(f"torchrun of unit {unit.id} exited with status {code}")
    return "done"
