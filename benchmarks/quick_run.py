"""The README's main job, `star-jax evolve` (the quick default run), timed with its compile cost:
a first process on an empty persistent compilation cache (cold), then a second process on the
same cache (warm), each in a fresh run directory. Records wall seconds and the seconds and
counts of JAX's tracing, lowering and XLA compiles (``jax.monitoring``). Usage:

    python benchmarks/quick_run.py [--out benchmarks/results] [--name quick_run]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

EVENTS = {"/jax/core/compile/backend_compile_duration": "compile",
          "/jax/core/compile/jaxpr_trace_duration": "trace",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower"}


def _worker(run_dir: str) -> dict:
    t0 = time.perf_counter()
    import jax

    seconds = {v: 0.0 for v in EVENTS.values()}
    counts = {v: 0 for v in EVENTS.values()}
    intervals: list[tuple[float, float]] = []

    def listen(event, duration, **_):
        if event in EVENTS:
            seconds[EVENTS[event]] += duration
            counts[EVENTS[event]] += 1
            end = time.perf_counter()
            intervals.append((end - duration, end))

    jax.monitoring.register_event_duration_secs_listener(listen)
    from star_jax.cli import main

    rc = main(["evolve", "--run-dir", run_dir, "--no-progress"])
    wall = time.perf_counter() - t0
    return {"rc": rc, "wall_s": wall, "seconds": seconds, "counts": counts, "jit_wall_s": _union(intervals)}


def _union(intervals: list[tuple[float, float]]) -> float:
    """Wall seconds during which at least one trace, lowering or compile was running (programs
    compile on parallel threads, so their durations overlap and their sum can exceed the wall)."""
    total, end = 0.0, -float("inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="quick_run")
    args = ap.parse_args()
    if args.worker:
        out = _worker(args.worker)
        print(json.dumps(out))
        return
    from population import _machine

    machine = _machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="star-jax-quick-") as tmp:
        env = dict(os.environ, STAR_JAX_CACHE_DIR=os.path.join(tmp, "cache"),
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--worker", os.path.join(tmp, f"run_{label}")],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["cache"] = label
            r["process_wall_s"] = time.perf_counter() - t0
            results.append(r)
            print(json.dumps(r), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=1)
    lines = ["# The quick default run (`star-jax evolve`), compile included\n",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, JAX {machine['jax']} ({machine['backend']}).",
             "Command: `python benchmarks/quick_run.py`: two fresh processes on one new persistent "
             "compilation cache, each in a new run directory.\n",
             "| cache | process wall (s) | wall time tracing, lowering or compiling (s) | share of wall | "
             "XLA compiles | their summed seconds (parallel threads overlap) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        s = r["seconds"]
        lines.append(f"| {r['cache']} | {r['process_wall_s']:.1f} | {r['jit_wall_s']:.1f} | "
                     f"{100 * r['jit_wall_s'] / r['process_wall_s']:.0f}% | {r['counts']['compile']} | {s['compile']:.1f} |")
    cold, warm = results
    lines.append(f"\nThe warm process spent {warm['seconds']['compile']:.1f} s in XLA compiles (cache reads "
                 f"included), {100 * warm['seconds']['compile'] / max(cold['seconds']['compile'], 1e-9):.0f}% of "
                 f"the cold process's {cold['seconds']['compile']:.1f} s.")
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
