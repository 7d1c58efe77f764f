#!/bin/sh
# The GPU check of simulations/gpu_check.py (its docstring says what it measures); run from the
# repository root on a machine with a CUDA GPU: sh simulations/gpu_check.sh (JSON under $OUT, else runs/gpu_check)
set -e
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make install
exec timeout 300 .venv/bin/python simulations/gpu_check.py --out "${OUT:-runs/gpu_check}" "$@"
