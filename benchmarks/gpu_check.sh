#!/usr/bin/env bash
# One GPU, one script, about 5 minutes after the machine is up: the compile-count tests, the
# Transformer++ job end to end (cold and warm compilation cache; one sj.train per candidate, then
# train_many), one generation of 16 random 8-LIV genomes per population strategy, 1 against 2
# candidates trained at once (whether the default of 1 worker on a GPU is right), the part
# initialisation benchmark (whether the shared draw programs give the same bytes there), and last
# the compile time with XLA's GPU autotuning off (xla_gpu_autotune_level 0; a candidate for the
# GPU default if it compiles much faster). Each part has its own timeout and writes its
# results under OUT_DIR before the next part starts, so a timeout never loses a finished part.
# Runs with the machine's own jax/flax/optax (no install): PYTHONPATH points at this checkout.
# Usage: benchmarks/gpu_check.sh OUT_DIR
set -u
OUT="${1:?usage: benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export STAR_JAX_TEST_CACHE="$OUT/.test_cache"
part() {  # part NAME SECONDS COMMAND...: run, log, record the exit status at once
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"exit\": $rc, \"seconds\": $((SECONDS - t0)), \"limit\": $secs}" >> "$OUT/parts.jsonl"
}
part devices 30 "$PY" -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.default_backend(), jax.devices())"
# 1. what a training call compiles (second call 0, new genome 0, fresh process <= 20)
part compile_tests 60 "$PY" -m pytest tests/test_compile.py -q -x -p no:cacheprovider
# 2. 16 Transformer++ candidates end to end, cold then warm cache (each process at most 30 s)
part peer_job 125 "$PY" benchmarks/peer_job.py --out "$OUT" --name peer_job_gpu --timeout 30
# 3. one generation of 16 random 8-LIV genomes per strategy (issue-5 setting), a fresh process each
for s in sequential static data; do
  part "population_$s" 50 "$PY" benchmarks/population.py --out "$OUT" --name "population_gpu_$s" \
    --strategies "$s:1" --timeout 50
done
# 4. 1 against 2 candidates at once, 4 random genomes, compiled first (metrics checked equal)
part workers 45 "$PY" benchmarks/workers.py --out "$OUT" --name workers_gpu --candidates 4 --reps 1 --jobs random
# 5. part initialisation: shared draw programs against per-kind compiled ones (same bytes on a GPU?)
part part_init 30 "$PY" benchmarks/part_init.py --out "$OUT" --name part_init_gpu --reps 3
# 6. compile time of the Transformer++ and two other kinds' programs without GEMM/fusion autotuning
part compile_options 45 "$PY" benchmarks/compile_options.py --out "$OUT" --name compile_options_gpu \
  --settings "peer job" --classes 1,9,5,8 --reps 3
cat "$OUT/parts.jsonl"
