#!/usr/bin/env bash
# One GPU, one script, at most BUDGET seconds of parts (default 330: 5.5 minutes, so a cold
# machine start and the script fit 6): the compile-count tests, the Transformer++ job end to end
# (cold and warm compilation cache; one sj.train per candidate, then train_many), one generation
# of 16 random 8-LIV genomes per population strategy; then, while the budget lasts, both ways an
# LIV part can train (benchmarks/part_kinds.py: VJP handed on, or forward recomputed), 1 against 2
# candidates trained at once (whether the default of 1 worker on a GPU is right), the part
# initialisation benchmark (whether the shared draw programs give the same bytes there), and the
# compile time with XLA's GPU autotuning off (xla_gpu_autotune_level 0; a candidate for the GPU
# default if it compiles much faster), and the attention's causal query blocks against the whole
# masked scores at long lengths. Each part has its own timeout; a part that would start
# with less than its timeout left of the budget is skipped (and recorded so).
# Each part writes its results under OUT_DIR before the next one starts, so a timeout never
# loses a finished part. Runs with the machine's own jax/flax/optax (no install): PYTHONPATH
# points at this checkout.
# Usage: [BUDGET=330] benchmarks/gpu_check.sh OUT_DIR
set -u
OUT="${1:?usage: benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export STAR_JAX_TEST_CACHE="$OUT/.test_cache"
BUDGET="${BUDGET:-330}"
START=$SECONDS
part() {  # part NAME SECONDS COMMAND...: run, log, record the exit status at once
  local name=$1 secs=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt "$secs" ]; then
    echo "{\"part\": \"$name\", \"skipped\": true, \"limit\": $secs, \"budget_left\": $left}" >> "$OUT/parts.jsonl"
    return
  fi
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"part\": \"$name\", \"exit\": $rc, \"seconds\": $((SECONDS - t0)), \"limit\": $secs}" >> "$OUT/parts.jsonl"
}
part devices 20 "$PY" -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.default_backend(), jax.devices())"
# 1. what a training call compiles (second call 0, new genome 0, fresh process <= 20)
part compile_tests 60 "$PY" -m pytest tests/test_compile.py -q -x -p no:cacheprovider
# 2. 16 Transformer++ candidates end to end, cold then warm cache (each process at most 25 s)
part peer_job 105 "$PY" benchmarks/peer_job.py --out "$OUT" --name peer_job_gpu --timeout 25
# 3. one generation of 16 random 8-LIV genomes per strategy (issue-5 setting), a fresh process each
for s in sequential static data; do
  part "population_$s" 45 "$PY" benchmarks/population.py --out "$OUT" --name "population_gpu_$s" \
    --strategies "$s:1" --timeout 45
done
# the rest while the budget lasts
# 4. both ways an LIV part could train (VJP handed to the backward, or the forward recomputed, as
#    sj.train does) for SA-1, SwiGLU, Rec-1 and SA-1-Diff: whether a GPU would favour the hand-over
part part_kinds 40 "$PY" benchmarks/part_kinds.py --out "$OUT" --name part_kinds_gpu --reps 10 --classes 1,9,5,10
# 5. 1 against 2 candidates at once, 4 random genomes, compiled first (metrics checked equal)
part workers 45 "$PY" benchmarks/workers.py --out "$OUT" --name workers_gpu --candidates 4 --reps 1 --jobs random
# 6. part initialisation: shared draw programs against per-kind compiled ones (same bytes on a GPU?)
part part_init 30 "$PY" benchmarks/part_init.py --out "$OUT" --name part_init_gpu --reps 3
# 7. compile time of the Transformer++ and two other kinds' programs without GEMM/fusion autotuning
part compile_options 45 "$PY" benchmarks/compile_options.py --out "$OUT" --name compile_options_gpu \
  --settings "peer job" --classes 1,9,5,8 --reps 3
# 8. causal query blocks against the whole masked scores, the attention alone (time, compile, memory)
part attention_blocks 30 "$PY" benchmarks/attention_blocks.py --out "$OUT" --name attention_blocks_gpu \
  --reps 10 --lengths 127,1023,2047 --skip parts,transformer,backbones
cat "$OUT/parts.jsonl"
