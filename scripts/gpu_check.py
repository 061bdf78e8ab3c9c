"""Merge the GPU check's pieces (pytest JUnit XML, benchmark JSON, logs) into one JSON file.

Called by ``scripts/gpu_check.sh``; prints a short summary and exits 0 only when the tests
passed and the benchmark produced its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def junit_summary(path: Path) -> dict:
    """Counts, time and the failing test ids from a pytest JUnit XML file."""
    if not path.is_file():
        return {"error": f"no JUnit report at {path} (pytest did not finish: timeout or crash)"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "seconds": 0.0}
    failed, skipped, slowest = [], [], []
    for suite in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            out[key] += int(suite.get(key, 0))
        out["seconds"] += float(suite.get("time", 0.0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            slowest.append((float(case.get("time", 0.0)), name))
            for child in case:
                if child.tag in ("failure", "error"):
                    message = (child.get("message") or "").strip().splitlines()
                    failed.append({"test": name, "kind": child.tag, "message": message[0][:300] if message else ""})
                elif child.tag == "skipped":
                    skipped.append({"test": name, "reason": (child.get("message") or "")[:200]})
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    out["failed"] = failed
    out["skipped_tests"] = skipped
    out["slowest"] = [{"test": n, "seconds": round(t, 2)} for t, n in sorted(slowest, reverse=True)[:10]]
    return out


def tail(path: Path, lines: int = 40) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


def gpu_info() -> dict:
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
        return {"nvidia_smi": text}
    except (OSError, subprocess.SubprocessError):
        return {"nvidia_smi": None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--junit", required=True, type=Path)
    p.add_argument("--bench", required=True, type=Path)
    p.add_argument("--pytest-log", type=Path)
    p.add_argument("--bench-log", type=Path)
    p.add_argument("--test-rc", type=int, required=True)
    p.add_argument("--bench-rc", type=int, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seconds", type=float, default=None)
    args = p.parse_args(argv)

    tests = junit_summary(args.junit)
    tests["exit_code"] = args.test_rc
    if args.test_rc == 124:
        tests["error"] = "pytest ran past its time limit"
    bench: dict = {}
    if args.bench.is_file():
        bench = json.loads(args.bench.read_text())
    report = {
        "device": args.device,
        "host": platform.node(),
        **gpu_info(),
        "total_seconds": args.seconds,
        "tests": tests,
        "bench_exit_code": args.bench_rc,
        "bench": bench,
    }
    if args.test_rc != 0 and args.pytest_log:
        report["pytest_log_tail"] = tail(args.pytest_log)
    if not bench and args.bench_log:
        report["bench_log_tail"] = tail(args.bench_log)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out)

    ok = args.test_rc == 0 and args.bench_rc == 0 and bool(bench)
    passed = tests.get("passed", "?")
    print(f"gpu check: tests {passed} passed, {len(tests.get('failed', []))} failed "
          f"(exit {args.test_rc}); bench exit {args.bench_rc}; "
          f"{'OK' if ok else 'FAILED'}; wrote {out}")
    for key in ("files_to_features_speedup", "files_to_features_speedup_vs_1thread_reference",
                "files_to_features_max_abs_diff", "resample_max_abs_diff", "frontend_speedup",
                "frontend_cuda_speedup", "pretrain_speedup_vs_reference", "mfu", "data_wait_fraction",
                "probe_speedup", "probe_speedup_vs_sklearn_1thread", "probe_map_diff_points",
                "bf16_cpu_supported", "bf16_gemm_speedup",
                "bf16_forward_speedup", "bf16_pretrain_step_speedup", "bf16_embedding_cosine_min", "peak_memory_mb"):
        if key in bench:
            value = bench[key]
            print(f"  {key}: {value if isinstance(value, bool) else format(value, '.4g')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
