#!/usr/bin/env bash
# Population engine on an accelerator: the correctness tests, then a GPU-sized benchmark.
# Usage: benchmarks/gpu_check.sh OUT_DIR   (about 5 minutes; writes OUT_DIR/*.log, *.md, *.json)
set -u
OUT="${1:?usage: benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
"$PY" -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())" 2>&1 | tee "$OUT/devices.log"
# 1. correctness (every strategy against star_jax.train; compile counts; divergence; chunks). The
# gradient-level identity test (about 50 s of compiles) is left to CI to keep this under 5 minutes.
timeout 150 "$PY" -m pytest tests/test_population.py -q -m "not slow" -x --durations=10 \
  -k "not gradient_matches_model" 2>&1 | tee "$OUT/tests.log"
echo "tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/tests.log"
# 2. benchmark, GPU-sized: 16 genomes, 8 LIVs, width 128, L 256, batch 32, 200 steps
timeout 150 "$PY" benchmarks/population.py --out "$OUT" --name population_gpu --strategies static,data,sequential \
  --population 16 --n-liv 8 --width 128 --seq-len 256 --batch 32 --steps 200 --timeout 60 2>&1 | tee "$OUT/bench.log"
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log"
