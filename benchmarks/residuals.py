"""An LIV part's VJP handed from its forward to its backward ("vjp") against a backward that
recomputes the part's forward ("recompute"), for whole backbones, both ways in one process.

``sj.train`` hands a part's residuals on while they fit ``parts.RESIDUAL_LIMIT_BYTES`` and
recomputes past it; here the limit is set to 0 (every part recomputes) or to no limit (every
part hands on). Two settings: the quick run's (width 32, in-context recall at L 32, 4-LIV
genomes, 256 test sequences) and the peer job's (width 64, L 128, 8-LIV genomes, 1,280 test
sequences), batch 16, each with its Transformer++ and random genomes. Per genome and way,
alternating which way goes first, ``--reps`` times:

- compile: the backbone's part programs compiled from nothing (in-memory programs forgotten, no
  persistent cache): wall seconds, XLA compiles and their seconds;
- step: the steady training step (forward and backward through the chained parts, as
  ``sj.train`` runs it, each step's intermediates held until the next is queued), ms per step
  over ``--steps`` steps;
- eval: the test set through the forward programs (on ``sj.train``'s threads).

Usage: python benchmarks/residuals.py [--reps 3] [--steps 60] [--name residuals]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from population import _machine, _save_results  # this directory's population benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {
    "quick run": {"width": 32, "vocab": 16, "seq": 32, "head_dim": 8, "window": 16, "n_liv": 4,
                  "num_test": 256, "random": (1, 2, 3, 4)},
    "peer job": {"width": 64, "vocab": 32, "seq": 128, "head_dim": 16, "window": None, "n_liv": 8,
                 "num_test": 1280, "random": (1, 2)},
}
BATCH = 16
WAYS = {"recompute": 0, "vjp": 1 << 50}


def measure(reps: int, steps: int) -> list[dict]:
    import jax
    import numpy as np

    import star_jax as sj
    from star_jax.train import parts as P
    from star_jax.train.step import stack_test_batches
    from star_jax.train.threads import eval_threads

    jax.config.update("jax_enable_compilation_cache", False)
    compiles: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **_: compiles.append(duration)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    default_limit = P.RESIDUAL_LIMIT_BYTES
    rows = []
    for sname, s in SETTINGS.items():
        task = sj.tasks.make("in_context_recall", vocab_size=s["vocab"], seq_len=s["seq"], num_test=s["num_test"])
        extra = {} if s["window"] is None else {"window": s["window"]}
        cfg = sj.ModelConfig(width=s["width"], vocab_size=s["vocab"], max_len=task.seq_len,
                             head_dim=s["head_dim"], **extra)
        test = [jax.device_put(list(a)) for a in stack_test_batches(task, BATCH)]
        inputs, targets = (jax.device_put(np.asarray(a, np.int32)) for a in task.sample(jax.random.key(0), BATCH))
        genomes = {"Transformer++": sj.baselines.transformer_pp(n_liv=s["n_liv"])}
        genomes.update({f"random {r}": sj.random_genome(s["n_liv"], r) for r in s["random"]})
        for gname, genome in genomes.items():
            row = {"setting": sname, "genome": gname, "text": genome.to_string()}
            for rep in range(reps):
                for way in (list(WAYS) if rep % 2 == 0 else list(WAYS)[::-1]):
                    P.RESIDUAL_LIMIT_BYTES = WAYS[way]
                    P.clear_program_cache()
                    jax.clear_caches()
                    model = P.PartModel(sj.compile_genome(genome, cfg), task.seq_len)
                    n0, t0 = len(compiles), time.perf_counter()
                    P.warm_up([model], BATCH)
                    row.setdefault(f"{way}_compile_wall_s", []).append(time.perf_counter() - t0)
                    row.setdefault(f"{way}_compile_s", []).append(sum(compiles[n0:]))
                    row[f"{way}_compiles"] = len(compiles) - n0
                    vecs = model.init(0)[0]
                    held: list = []

                    def step():
                        hold: list = []
                        out = model.loss_and_grads(vecs, inputs, targets, hold)
                        held[:] = hold + [out]
                        return out

                    jax.block_until_ready(step())
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        out = step()
                    jax.block_until_ready(out)
                    row.setdefault(f"{way}_step_ms", []).append((time.perf_counter() - t0) / steps * 1e3)
                    model.eval_sums(vecs, *test, eval_threads())
                    t0 = time.perf_counter()
                    model.eval_sums(vecs, *test, eval_threads())
                    row.setdefault(f"{way}_eval_s", []).append(time.perf_counter() - t0)
            P.RESIDUAL_LIMIT_BYTES = WAYS["vjp"]
            _, pullbacks, _, _ = model._forward(vecs, inputs)
            sizes = [sum(a.nbytes for a in jax.tree.leaves(pb)) / 2 ** 20 for pb in pullbacks[1:-1]]
            P.RESIDUAL_LIMIT_BYTES = default_limit
            row["residual_mib"] = sizes
            row["default_hands_on"] = sum(mib * 2 ** 20 <= default_limit for mib in sizes)
            for key in [k for k in row if isinstance(row[k], list) and k != "residual_mib"]:
                row[key + "_median"] = statistics.median(row[key])
            rows.append(row)
            print(sname, gname, {k: round(v, 3) for k, v in row.items() if k.endswith("_median")}, flush=True)
    return rows


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = ["# An LIV part's VJP handed to its backward (vjp) against a recomputed forward (recompute)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). Command: `{out['command']}`.",
             f"One process, both ways alternated, {out['reps']} times each; medians. Batch {BATCH}. Compile: the "
             "backbone's part programs from nothing (no persistent cache), wall seconds and XLA compile seconds "
             f"summed over threads; step: the steady chained training step, over {out['steps']} steps; eval: the "
             "test set through the forward programs. Residuals: MiB per part of the vjp way (sj.train hands a "
             f"part's residuals on up to `RESIDUAL_LIMIT_BYTES` = {out['limit_bytes'] / 2 ** 20:g} MiB).", "",
             "| setting | genome | residual MiB per part | parts the default hands on | compile wall s (recompute / vjp) "
             "| compile s summed | step ms | eval s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        def pair(key, fmt):
            a, b = r[f"recompute_{key}_median"], r[f"vjp_{key}_median"]
            return f"{a:{fmt}} / {b:{fmt}} ({b / a:.2f}x)"
        mib = r["residual_mib"]
        lines.append(f"| {r['setting']} | {r['genome']} | {min(mib):.1f}-{max(mib):.1f} | {r['default_hands_on']} of "
                     f"{len(mib)} | {pair('compile_wall_s', '.2f')} | {pair('compile_s', '.2f')} | "
                     f"{pair('step_ms', '.2f')} | {pair('eval_s', '.3f')} |")
    lines += ["", "Genomes: " + "; ".join(f"{r['setting']} {r['genome']}: `{r['text']}`" for r in out["rows"]) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="residuals")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    from star_jax.train import parts as P

    cmd = "python benchmarks/residuals.py" + "".join(
        f" --{k} {v}" for k, v, d in (("name", args.name, "residuals"), ("reps", args.reps, 3),
                                      ("steps", args.steps, 60)) if v != d)
    out = {"reps": args.reps, "steps": args.steps, "machine": _machine(), "command": cmd,
           "limit_bytes": P.RESIDUAL_LIMIT_BYTES, "rows": measure(args.reps, args.steps)}
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
