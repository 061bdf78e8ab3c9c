#!/usr/bin/env bash
# Regenerates the numbers README's quick start quotes: the quick-start command, run in a fresh
# results directory (and fresh synthetic data), then its closing table and the wall time.
# Usage: scripts/readme_numbers.sh [OUT_DIR]   (default: a new temporary directory)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
cd "$out"
export SSL_BENCH_DATA="$out/data"
start=$(date +%s)
"$here/.venv/bin/ssl-bench" run --model audiomae --task synthetic --preset tiny --quiet | tee quickstart.txt
echo "wall time: $(( $(date +%s) - start )) s on $(nproc) CPU cores ($(uname -m)); torch $("$here/.venv/bin/python" -c 'import torch; print(torch.__version__)')" | tee -a quickstart.txt
