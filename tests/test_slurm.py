"""The ``slurm`` launcher on a real cluster: a one-node SLURM on this machine
(``scripts/slurm_local.sh``, started here when SLURM is installed and we may run its daemons).

What the issue asks of it, as written: four runs (``masker.ratio`` x ``seed``) as SLURM jobs
(the evaluations one job array after the features job), the command waits and prints the
table, each row names its job; the same command again submits nothing; ``scancel`` of one job
mid-sweep, then the same command completes only that unit; and ``--launcher local --jobs 2``
gives the same numbers.  Skipped, with the reason, where SLURM is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ssl_bench import results
from ssl_bench.cli import main
from test_launch import PLUGIN, argv, rows

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"


@pytest.fixture(scope="module")
def cluster():
    """SLURM_CONF of a running cluster: the one in the environment, or scripts/slurm_local.sh's."""
    tools = ("sbatch", "sinfo", "squeue", "scancel", "slurmctld", "slurmd", "munged")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"SLURM is not installed here (no {', '.join(missing)}): apt-get install slurm-wlm munge, "
                    "then scripts/slurm_local.sh")
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("no SLURM cluster answers and starting one (scripts/slurm_local.sh) needs root")
        out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            pytest.skip(f"scripts/slurm_local.sh could not start a cluster: {out.stderr.strip().splitlines()[-1:]}")
        os.environ["SLURM_CONF"] = out.stdout.strip().split("=", 1)[1]
    assert subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
    return os.environ.get("SLURM_CONF")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    (root / "plugins").mkdir()
    (root / "plugins" / "tiny_launch.py").write_text(PLUGIN)
    return {"root": root, "plugins": root / "plugins", "data": root / "tinytones"}


SWEEP = ("--set", "masker.ratio=0.6,0.8", "--set", "seed=0,1")


def test_four_runs_as_slurm_jobs_then_nothing_then_the_same_numbers_locally(cluster, env, capsys):
    root = env["root"] / "slurm"
    assert main(argv(env, root, *SWEEP, "--launcher", "slurm")) == 0
    captured = capsys.readouterr()
    assert "4 run(s), 0 finished before; 5 unit(s) to run (1 features, 4 evaluation)" in captured.err
    assert captured.err.count(" done ") == 5 and "fold1" in captured.out and "masker.ratio" in captured.out
    df = results.load(root)
    assert df["run_id"].nunique() == 4 and set(df["launcher"]) == {"slurm"}
    assert set(df["node"]) == {socket.gethostname().split(".")[0]} and set(df["threads"]) == {1}
    assert all(re.fullmatch(r"\d+_\d", j) for j in df["job_id"])  # one array of four evaluations
    assert sorted(df.drop_duplicates("run_id")["array_index"]) == [0, 1, 2, 3]
    assert main(argv(env, root, *SWEEP, "--launcher", "slurm")) == 0
    err = capsys.readouterr().err
    assert "4 finished before; 0 unit(s) to run" in err and "queued" not in err
    local = env["root"] / "local"
    assert main(argv(env, local, *SWEEP, "--jobs", "2")) == 0  # one thread each, as one CPU per SLURM job
    capsys.readouterr()
    assert rows(local) == rows(root)


def test_scancel_mid_sweep_then_the_rerun_completes_only_that_unit(cluster, env, capsys):
    root = env["root"] / "cancel"
    assert main(argv(env, root, *SWEEP, "--launcher", "slurm", "--detach")) == 0
    jobs = re.findall(r"job (\d+_\d)", capsys.readouterr().err)
    assert len(jobs) == 4  # the evaluations' array, waiting for the features job
    subprocess.run(["scancel", jobs[1]], check=True)
    time.sleep(1)
    assert main(["status", str(root)]) == 0
    status = capsys.readouterr().out
    assert f"job {jobs[1]}: its job ended without finishing" in status
    assert main(argv(env, root, *SWEEP, "--launcher", "slurm")) == 0
    err = capsys.readouterr().err
    fresh = [line for line in err.splitlines() if " queued " in line and "submitted earlier" not in line]
    assert len(fresh) == 1 and "masker.ratio=0.6_seed=1" in fresh[0]  # only the cancelled unit, again
    df = results.load(root)
    assert df["run_id"].nunique() == 4
    assert rows(root) == rows(env["root"] / "slurm")


def test_a_job_of_two_processes_runs_torchrun_inside_its_allocation(cluster, env, capsys):
    """``processes_per_job=2`` (as ``gpus_per_job`` would on GPU nodes): the job runs torchrun on
    the two CPUs it was given; the run is one run of world size 2, its rows name the job."""
    root = env["root"] / "torchrun"
    assert main(argv(env, root, "--launcher", "slurm", "--launch", "processes_per_job=2",
                     "--launch", "cpus_per_job=2")) == 0
    # one run, one unit: its own features, its pretraining, its probe
    assert capsys.readouterr().err.count(" done ") == 1
    df = results.load(root)
    assert set(df["world_size"]) == {2} and set(df["launcher"]) == {"slurm"} and df["job_id"].nunique() == 1
    assert set(df["protocol"]) == {"pretrain", "linear"}
