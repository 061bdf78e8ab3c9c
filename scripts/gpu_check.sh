#!/usr/bin/env bash
# GPU check: on a machine with one CUDA GPU, run the test suite on CUDA, then the base-size
# benchmark (files to features with the frontend on the GPU, the torch probe vs scikit-learn,
# bf16 vs float32, the pretraining step), and write every figure into one JSON file.
#
#   scripts/gpu_check.sh [OUT.json]          (default gpu_check.json)
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3); GPU_CHECK_DEVICE
# (default cuda; "cpu" dry-runs the plumbing); GPU_CHECK_TESTS (default tests/; space-separated paths);
# GPU_CHECK_TEST_TIMEOUT / GPU_CHECK_BENCH_TIMEOUT in seconds (default 150 / 240);
# GPU_CHECK_PRESET (default base); GPU_CHECK_BENCH_ARGS (extra flags, e.g. --quick).  Wheels in .whl/ (packages the machine lacks, e.g.
# soundfile) are installed first; the project is installed editable when it is not importable.
# Exit status: 0 when the tests pass and the benchmark ran, 1 otherwise (the JSON says which).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-gpu_check.json}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TESTS=${GPU_CHECK_TESTS:-tests/}
PRESET=${GPU_CHECK_PRESET:-base}
BENCH_ARGS=${GPU_CHECK_BENCH_ARGS:-}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-150}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT:-240}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
export PYTHONUNBUFFERED=1
START=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing wheels from .whl/"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" .whl/*.whl && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c "import ssl_bench.plugins.audio" 2>/dev/null; then
    echo "== installing ssl-bench (editable, no dependencies)"
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$WORK/install.log" 2>&1 \
        || { cat "$WORK/install.log"; echo "could not install ssl-bench"; }
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== tests on $DEVICE ($TESTS)"
SSL_BENCH_TEST_DEVICE=$DEVICE timeout "$TEST_TIMEOUT" "$PYTHON" -m pytest -q -p no:cacheprovider \
    --junitxml="$WORK/junit.xml" $TESTS 2>&1 | tee "$WORK/pytest.log"
TEST_RC=${PIPESTATUS[0]}

echo "== benchmark: preset $PRESET on $DEVICE"
timeout "$BENCH_TIMEOUT" "$PYTHON" -m ssl_bench bench --preset "$PRESET" --device "$DEVICE" \
    --out "$WORK/bench.json" $BENCH_ARGS 2>&1 | tee "$WORK/bench.log"
BENCH_RC=${PIPESTATUS[0]}

"$PYTHON" scripts/gpu_check.py --out "$OUT" --junit "$WORK/junit.xml" --bench "$WORK/bench.json" \
    --pytest-log "$WORK/pytest.log" --bench-log "$WORK/bench.log" --test-rc "$TEST_RC" --bench-rc "$BENCH_RC" \
    --device "$DEVICE" --seconds $(( $(date +%s) - START ))
RC=$?
rm -rf "$WORK"
exit $RC
