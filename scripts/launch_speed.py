"""Speed of the local launchers, as ratios measured in one run (README, *Speed*).

1. A 4-run tiny sweep (AudioMAE ``tiny`` on the synthetic task, fold 1, pretraining for
   ``--epochs`` epochs then the linear probe; ``masker.ratio`` 0.6/0.8 x ``seed`` 0/1) run
   sequentially in this process (the ``local`` launcher, torch's default threads) against the
   same sweep with ``--jobs 2`` (a pool, ``cores // 2`` threads each: no oversubscription).
   Each side starts from an empty results root (features and encoders computed again); the
   sides alternate over ``--rounds`` rounds and the ratio is the median of the per-round ratios.
   Goal: >= 1.3x on a 2-core machine.
2. The overhead of a finished sweep's rerun: the same ``--jobs 2`` command again on a root
   where everything is done (it plans, finds every run by its identity, submits nothing and
   prints the table): wall seconds of the whole command, a fresh interpreter included.  Goal:
   < 5 s.

Each command runs as ``ssl-bench`` does, in a fresh interpreter.  The synthetic task is
generated once before anything is timed.  Prints both figures and writes them as JSON
(``--out``), with the commands, the cores, the threads each job recorded and the machine.

    python scripts/launch_speed.py [--rounds 1] [--epochs 2] [--out launch_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = ["run", "-m", "audiomae", "-p", "tiny", "-t", "synthetic", "--splits", "fold1",
         "--protocols", "pretrain,linear", "--set", "masker.ratio=0.6,0.8", "--set", "seed=0,1", "--quiet"]


def ssl_bench(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``ssl-bench ARGS`` in a fresh interpreter (its output is kept on failure)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ssl_bench", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"ssl-bench {' '.join(args)} failed with status {out.returncode}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the two sides (default 1)")
    parser.add_argument("--epochs", type=int, default=2, help="pretraining epochs of each run (default 2)")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the results roots (printed)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ssl-bench-launch-speed-"))
    env = {**os.environ, "SSL_BENCH_DATA": os.environ.get("SSL_BENCH_DATA", str(work / "data"))}
    env.pop("SSL_BENCH_CACHE", None)  # each results root keeps its own caches
    sweep = [*SWEEP, "--set", f"pretrain.epochs={args.epochs}"]
    subprocess.run([sys.executable, "-c", "import ssl_bench; ssl_bench.get_task('synthetic').prepare()"], env=env,
                   check=True)  # generated once, untimed
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rounds = []
    for i in range(args.rounds):
        seq_root, pool_root = work / f"sequential-{i}", work / f"jobs2-{i}"
        sequential = ssl_bench([*sweep, "--results", str(seq_root)], env)
        pooled = ssl_bench([*sweep, "--jobs", "2", "--results", str(pool_root)], env)
        rerun = ssl_bench([*sweep, "--jobs", "2", "--results", str(pool_root)], env)
        rounds.append({"sequential_s": round(sequential, 2), "jobs2_s": round(pooled, 2), "rerun_s": round(rerun, 2),
                       "speedup": round(sequential / pooled, 3)})
        print(f"round {i + 1}: sequential {sequential:.1f} s, --jobs 2 {pooled:.1f} s ({sequential / pooled:.2f}x), "
              f"finished sweep's rerun {rerun:.1f} s", flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ssl_bench import results

    df = results.load(work / "jobs2-0")
    threads = sorted({(int(j), int(t)) for j, t in zip(df["jobs"], df["threads"])})
    report = {
        "speedup_jobs2_vs_sequential": statistics.median(r["speedup"] for r in rounds),
        "rerun_overhead_s": statistics.median(r["rerun_s"] for r in rounds),
        "goals": {"speedup": ">= 1.3", "rerun_overhead_s": "< 5"},
        "rounds": rounds, "cores": cores, "jobs_x_threads": threads,
        "command": "ssl-bench " + " ".join(sweep), "machine": platform.platform(), "processor": platform.processor(),
        "python": platform.python_version(),
    }
    print(f"\n4-run tiny sweep, --jobs 2 vs sequential: {report['speedup_jobs2_vs_sequential']:.2f}x (goal >= 1.3; "
          f"jobs x threads {threads} on {cores} cores)")
    print(f"finished sweep's rerun: {report['rerun_overhead_s']:.1f} s (goal < 5)")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    if args.keep:
        print(f"results roots kept under {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
