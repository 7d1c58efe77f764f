#!/bin/sh
# The GPU check of simulations/gpu_check.py (its docstring says what it measures); run from the
# repository root on a machine with a CUDA GPU: sh simulations/gpu_check.sh (JSON under $OUT, else runs/gpu_check).
# PYTHON names an interpreter that already has the dependencies (an offline GPU machine); else .venv is made.
set -e
cd "$(dirname "$0")/.."
if [ -z "$PYTHON" ]; then
    [ -x .venv/bin/python ] || make install
    PYTHON=.venv/bin/python
fi
exec timeout 300 "$PYTHON" simulations/gpu_check.py --out "${OUT:-runs/gpu_check}" "$@"
