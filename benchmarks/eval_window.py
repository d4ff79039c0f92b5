"""How many test batches an evaluation holds at once (``parts.EVAL_WINDOW``): time and peak
memory of the peer job's evaluation (8-LIV Transformer++, width 64, in-context recall at L 128,
1,280 test sequences in batches of 16, on ``sj.train``'s evaluation threads), each window in its
own fresh process (peak memory is a process's high-water mark), alternated ``--reps`` times.
Window "all" holds every batch's intermediates until the evaluation ends (the code before
``EVAL_WINDOW``). Per process: the median of 7 evaluations after one warm-up, and the peak
resident memory the evaluations added; the sums are checked equal across windows.

Usage: python benchmarks/eval_window.py [--windows all,1,2,4] [--reps 3] [--name eval_window]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from population import _machine, _save_results  # this directory's population benchmark

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(window: str) -> dict:
    import resource
    import time

    import jax
    import numpy as np

    import star_jax as sj
    from star_jax.train import parts as P
    from star_jax.train.step import stack_test_batches
    from star_jax.train.threads import eval_threads

    P.EVAL_WINDOW = None if window == "all" else int(window)  # deque(maxlen=None): no limit
    task = sj.tasks.make("in_context_recall", vocab_size=32, seq_len=128)
    cfg = sj.ModelConfig(width=64, vocab_size=32, max_len=task.seq_len, head_dim=16)
    model = P.PartModel(sj.compile_genome(sj.baselines.transformer_pp(n_liv=8), cfg), task.seq_len)
    vecs = model.init(0)[0]
    test = [jax.device_put(list(a)) for a in stack_test_batches(task, 16)]
    P.warm_up([model], 16)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sums = model.eval_sums(vecs, *test, eval_threads())
    times = []
    for _ in range(7):
        t = time.perf_counter()
        model.eval_sums(vecs, *test, eval_threads())
        times.append(time.perf_counter() - t)
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB on Linux
    return {"window": window, "eval_s": statistics.median(times), "peak_added_mb": added,
            "sums": [float(x) for x in sums]}


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = ["# Test batches an evaluation holds at once", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). Command: `{out['command']}`.",
             "The peer job's evaluation (8-LIV Transformer++, width 64, L 127, 1,280 test sequences in batches of 16, "
             "on sj.train's evaluation threads); each window in a fresh process, alternated; per process the median "
             "of 7 evaluations and the peak resident memory they added; medians over processes.", "",
             "| window | eval s (median) | all | peak memory added, MB (median) | all | same sums |",
             "|---|---|---|---|---|---|"]
    for w, runs in out["runs"].items():
        lines.append(f"| {w} | {statistics.median(r['eval_s'] for r in runs):.3f} | "
                     + ", ".join(f"{r['eval_s']:.3f}" for r in runs) + " | "
                     + f"{statistics.median(r['peak_added_mb'] for r in runs):.0f} | "
                     + ", ".join(f"{r['peak_added_mb']:.0f}" for r in runs) + " | "
                     + ("yes" if all(r["sums"] == out["reference_sums"] for r in runs) else "no") + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--windows", default="all,1,2,4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--name", default="eval_window")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(_worker(args.worker)), flush=True)
        return
    windows = args.windows.split(",")
    bad = [w for w in windows if w != "all" and not (w.isdigit() and int(w) > 0)]
    if bad:
        ap.error(f"--windows: each must be 'all' or a positive number of batches, got {bad}")
    runs: dict[str, list] = {w: [] for w in windows}
    for rep in range(args.reps):
        for w in (windows if rep % 2 == 0 else windows[::-1]):
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", w],
                                  capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            runs[w].append(json.loads(line[len("RESULT "):]))
            print(w, runs[w][-1]["eval_s"], runs[w][-1]["peak_added_mb"], flush=True)
    cmd = "python benchmarks/eval_window.py" + "".join(
        f" --{k} {v}" for k, v, d in (("windows", args.windows, "all,1,2,4"), ("reps", args.reps, 3),
                                      ("name", args.name, "eval_window")) if v != d)
    out = {"machine": _machine(), "command": cmd, "runs": runs, "reference_sums": runs[windows[0]][0]["sums"]}
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
