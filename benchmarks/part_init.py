"""Part initialisation: the shared draw programs (``star_jax.train.draw``) against compiling each
part kind's flax initialisation, compile included.

For each setting, a backbone of all 17 LIV classes (one LIV each, no sharing; 19 part kinds with
the embedding and the final part) is initialised once with a cold in-process cache, both ways,
in the same process: the plan path as ``sj.train`` runs it (``PartModel.init``), and every
kind's own jitted initialisation (what parts compiled before, at XLA optimisation level 0).
Records wall seconds and XLA compiles of that first initialisation, the median of ``--reps``
later initialisations (a new candidate of known kinds), and whether both ways give the same
bytes. Run it in a fresh process (no persistent compilation cache is enabled here).

Usage: python benchmarks/part_init.py [--name part_init] [--reps 10]
"""
from __future__ import annotations

import argparse
import os
import time

from population import _machine, _save_results  # this directory's population benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = ((32, 32, 8, "the quick run's: width 32, L 32, head_dim 8"),
            (64, 128, 16, "the peer job's: width 64, L 128, head_dim 16"))
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def measure(reps: int) -> list[dict]:
    import jax
    import numpy as np

    import star_jax as sj
    from star_jax.genome import Genome
    from star_jax.model import compile_genome
    from star_jax.train import parts as P
    from star_jax.train.draw import INIT_OPTIONS

    compiles = [0]
    jax.monitoring.register_event_duration_secs_listener(
        lambda ev, d, **_: compiles.__setitem__(0, compiles[0] + 1) if ev == COMPILE_EVENT else None)

    def first(fn):
        c, t = compiles[0], time.perf_counter()
        out = jax.block_until_ready(fn())
        return out, time.perf_counter() - t, compiles[0] - c

    def steady(fn):
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    rows = []
    genome = Genome([[c, 1, 1, 1, 1] for c in range(1, 18)])
    for width, seq, head_dim, label in SETTINGS:
        task = sj.tasks.make("in_context_recall", vocab_size=16, seq_len=seq)
        cfg = sj.ModelConfig(width=width, vocab_size=16, max_len=task.seq_len, head_dim=head_dim, window=16)
        t0 = time.perf_counter()
        model = P.PartModel(compile_genome(genome, cfg), task.seq_len)
        build = time.perf_counter() - t0
        plan_vecs, plan_s, plan_n = first(lambda: model.init(0)[0])
        own = [jax.jit(p._init, compiler_options=INIT_OPTIONS) for p in model.progs]

        def own_init(seed=0):
            return [f(np.uint32(seed), np.int32(k))[0] for k, f in enumerate(own)]

        own_vecs, own_s, own_n = first(own_init)
        same = all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(plan_vecs, own_vecs))
        rows.append({"setting": label, "kinds": len(model.progs), "build_s": build,
                     "plan_first_s": plan_s, "plan_compiles": plan_n, "own_first_s": own_s, "own_compiles": own_n,
                     "plan_steady_ms": 1e3 * steady(lambda: model.init(1)[0]),
                     "own_steady_ms": 1e3 * steady(lambda: own_init(1)), "bit_identical": bool(same)})
    return rows


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = ["# Part initialisation: shared draw programs against one compiled initialisation per kind", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). "
             f"Command: `{out['command']}`.",
             "A backbone of the 17 LIV classes (19 part kinds), initialised the first time (all kinds new, "
             "compile included) and then as a new candidate of known kinds (median of "
             f"{out['reps']}); both ways in one process. Build: the part kinds' programs set up, "
             "initialisation plans traced.", "",
             "| setting | build s | shared: first s | compiles | per kind: first s | compiles | shared: later ms "
             "| per kind: later ms | same bytes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['setting']} | {r['build_s']:.2f} | {r['plan_first_s']:.2f} | {r['plan_compiles']} "
                     f"| {r['own_first_s']:.2f} | {r['own_compiles']} | {r['plan_steady_ms']:.1f} "
                     f"| {r['own_steady_ms']:.1f} | {'yes' if r['bit_identical'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="part_init")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    out = {"reps": args.reps, "machine": _machine(),
           "command": "python benchmarks/part_init.py" + (f" --name {args.name}" if args.name != "part_init" else ""),
           "rows": measure(args.reps)}
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
