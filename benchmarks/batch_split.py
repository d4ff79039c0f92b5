"""A lone candidate's step with its batch split over two host threads: measured, not adopted.

One candidate's training step is a chain of small part programs (``star_jax.train.parts``), and
on a CPU one such chain leaves cores idle: that is why ``train_many`` trains two candidates at
once there. A lone ``sj.train`` (a scaled-up winner, a single study run) could fill the cores
another way: split each batch into two halves, run both halves' forward and backward chains on
two host threads at once, and add their gradients. This benchmark times the forward + backward
of an 8-LIV Transformer++ (``PartModel.loss_and_grads``) three ways, alternated call by call in
one process with every program compiled first:

- ``whole``: the batch of 16 on one thread (what ``sj.train`` does);
- ``halves on 2 threads``: two batches of 8, one per thread, at once;
- ``halves in turn``: the same two batches of 8 one after the other on one thread (what a
  worker of ``train_many`` would have to do for its results to stay bit-identical to a lone
  ``sj.train`` that splits).

Not adopted: the half-batch gradients add up in another order than the whole batch's, so a
lone ``sj.train`` that split would no longer give bit for bit what ``train_many`` gives the same
candidate (a tested promise), unless every worker split too and paid the ``halves in turn`` cost.

Usage:

    python benchmarks/batch_split.py [--reps 30] [--name batch_split]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import time

from population import _machine, _save_results  # this directory's population benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = ({"name": "peer job", "width": 64, "seq": 128, "n_liv": 8, "vocab": 32, "head_dim": 16},
            {"name": "quick run", "width": 32, "seq": 32, "n_liv": 4, "vocab": 16, "head_dim": 8})
BATCH = 16
WAYS = ("whole", "halves on 2 threads", "halves in turn")


def measure(setting: dict, reps: int) -> dict:
    import jax
    import numpy as np

    import star_jax as sj
    from star_jax.model import compile_genome
    from star_jax.train import parts as P

    task = sj.tasks.make("in_context_recall", vocab_size=setting["vocab"], seq_len=setting["seq"])
    cfg = sj.ModelConfig(width=setting["width"], vocab_size=setting["vocab"], max_len=task.seq_len,
                         head_dim=setting["head_dim"])
    model = P.PartModel(compile_genome(sj.baselines.transformer_pp(n_liv=setting["n_liv"]), cfg), task.seq_len)
    vecs = model.init(0)[0]
    inputs, targets = (np.asarray(a, np.int32) for a in task.sample(jax.random.key(1), BATCH))
    half = BATCH // 2
    halves = [(inputs[:half], targets[:half]), (inputs[half:], targets[half:])]
    P.warm_up([model], BATCH)
    P.warm_up([model], half)
    pool = concurrent.futures.ThreadPoolExecutor(2)

    def chain(x, y):
        jax.block_until_ready(model.loss_and_grads(vecs, x, y))

    calls = {"whole": lambda: chain(inputs, targets),
             "halves on 2 threads": lambda: list(pool.map(lambda h: chain(*h), halves)),
             "halves in turn": lambda: [chain(*h) for h in halves]}
    for call in calls.values():  # first calls: allocations, thread start
        call()
        call()
    times = {w: [] for w in WAYS}
    for _ in range(reps):
        for w in WAYS:
            t = time.perf_counter()
            calls[w]()
            times[w].append(time.perf_counter() - t)
    pool.shutdown()
    ms = {w: 1e3 * statistics.median(times[w]) for w in WAYS}
    return {**setting, "batch": BATCH, "reps": reps, "ms": ms,
            "ratio_to_whole": {w: ms[w] / ms["whole"] for w in WAYS}}


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = ["# A lone candidate's step with its batch split over two threads (measured, not adopted)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). Command: "
             f"`{out['command']}`. Forward + backward of a Transformer++ (`PartModel.loss_and_grads`), "
             f"batch {BATCH}; the three ways alternated call by call in one process, medians of "
             f"{out['rows'][0]['reps']} calls each, programs compiled first.", "",
             "| setting | " + " | ".join(f"{w} (ms)" for w in WAYS) + " | halves on 2 threads / whole | "
             "halves in turn / whole |", "|---|" + "---|" * (len(WAYS) + 2)]
    for r in out["rows"]:
        lines.append(f"| {r['name']} ({r['n_liv']} LIVs, width {r['width']}, L {r['seq'] - 1}) | "
                     + " | ".join(f"{r['ms'][w]:.2f}" for w in WAYS)
                     + f" | {r['ratio_to_whole']['halves on 2 threads']:.2f}x"
                     f" | {r['ratio_to_whole']['halves in turn']:.2f}x |")
    lines += ["", "Not adopted: the halves' gradients add up in another order than the whole batch's, so a "
              "lone `sj.train` that split its batch would no longer match `train_many` bit for bit, unless "
              "every worker split too and paid the 'halves in turn' cost."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--name", default="batch_split")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")
    command = "python benchmarks/batch_split.py" + ("" if args.reps == 30 else f" --reps {args.reps}") + (
        "" if args.name == "batch_split" else f" --name {args.name}")
    rows = []
    for setting in SETTINGS:
        rows.append(measure(setting, args.reps))
        print(f"{setting['name']}: {rows[-1]['ms']}", flush=True)
    out = {"machine": _machine(), "command": command, "rows": rows}
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
