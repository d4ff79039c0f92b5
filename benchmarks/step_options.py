"""Ways to a faster candidate that were measured and not adopted, kept so the numbers can be
reproduced. The first two change results in the last bits, which would move every recorded result
of the classes they touch; the third shows the evaluation is cheapest at the batch it runs at.

1. Attention's contractions at the peer-job setting ([16, 4, 127, 16] queries/keys, [.., 127, 127]
   scores). The backward's two products that contract over the query axis (dK = dS^T Q and
   dV = P^T dO, "TN") are compared with the forward's two ("NT": Q K^T; "NN": P V) and with the
   same TN product computed from an explicitly transposed copy of the scores (an
   ``optimization_barrier`` stops XLA folding the transpose back into the product). Each is
   checked bit for bit against the plain TN product.
2. XLA's backend optimisation level 1 (instead of the default) for the forward and backward part
   programs of every LIV class (one LIV, the peer-job setting): compile seconds, run time, and
   whether forward outputs and gradients are bit-identical to the default build.
3. The evaluation of the peer job's 1,280 test sequences through an 8-LIV Transformer++ (the
   forward part programs, on ``sj.train``'s evaluation threads) at other batch sizes than the
   training batch of 16 that ``sj.train`` evaluates at (sums checked equal up to rounding).

Times are medians of ``--reps`` calls after a warm-up, each call waited for before the next
starts (as in a training step, where every program needs the previous one's output), so a time
includes the call's dispatch. (Calls queued back to back can overlap on the cores, which a step's
chain of dependent programs cannot do, so such timings flatter whatever leaves a core idle.)
Usage:

    python benchmarks/step_options.py [--reps 30] [--name step_options]
"""
from __future__ import annotations

import argparse
import os
import time

from compile_options import build_variants  # this directory's build-options benchmark
from population import _machine, _save_results  # this directory's population benchmark
from population_step import _median_ms

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTH, VOCAB, SEQ, BATCH, HEADS, HEAD_DIM = 64, 32, 128, 16, 4, 16
OPT_LEVEL = {"xla_backend_optimization_level": 1}


def contractions(reps: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    length = SEQ - 1
    rs = np.random.RandomState(0)
    q = jnp.asarray(rs.randn(BATCH, HEADS, length, HEAD_DIM).astype(np.float32))
    k = jnp.asarray(rs.randn(BATCH, HEADS, length, HEAD_DIM).astype(np.float32))
    s = jnp.asarray(rs.randn(BATCH, HEADS, length, length).astype(np.float32))

    def tn_copy(s, q):
        st = jax.lax.optimization_barrier(jnp.swapaxes(s, -1, -2))
        return jnp.einsum("bhml,bhld->bhmd", st, q)

    cases = [("NT: Q K^T (forward scores)", lambda q, k: jnp.einsum("bhld,bhmd->bhlm", q, k), (q, k)),
             ("NN: P V (forward output)", lambda s, v: jnp.einsum("bhlm,bhmd->bhld", s, v), (s, k)),
             ("TN: dS^T Q (backward dK, dV)", lambda s, q: jnp.einsum("bhlm,bhld->bhmd", s, q), (s, q)),
             ("TN from a transposed copy", tn_copy, (s, q))]
    flops = 2 * BATCH * HEADS * length * length * HEAD_DIM
    reference = jax.jit(cases[2][1])(*cases[2][2])
    rows = []
    for name, fn, args in cases:
        jitted = jax.jit(fn)
        ms, _ = _median_ms(jitted, args, reps)
        row = {"case": name, "ms": ms, "gflops": flops / ms / 1e6}
        if name.startswith("TN from"):
            out = jitted(*args)
            row["bit_identical_to_tn"] = bool(jnp.array_equal(out, reference))
            row["max_abs_diff"] = float(jnp.max(jnp.abs(out - reference)))
        rows.append(row)
    return rows


def opt_levels(reps: int) -> list[dict]:
    setting = {"name": "peer job", "width": WIDTH, "seq": SEQ, "head_dim": HEAD_DIM, "batch": BATCH, "vocab": VOCAB}
    rows = build_variants(setting, {"level1": OPT_LEVEL}, reps)
    for r in rows:
        r["bit_identical"] = r.pop("level1_identical")
    return rows


EVAL_BATCHES = (8, 16, 32, 64, 128)
EVAL_REPS = 5


def eval_batches(reps: int) -> list[dict]:
    import statistics

    import jax
    import numpy as np

    import star_jax as sj
    from star_jax.model import compile_genome
    from star_jax.train import parts as P
    from star_jax.train.step import stack_test_batches
    from star_jax.train.threads import eval_threads

    task = sj.tasks.make("in_context_recall", vocab_size=VOCAB, seq_len=SEQ)
    cfg = sj.ModelConfig(width=WIDTH, vocab_size=VOCAB, max_len=task.seq_len, head_dim=HEAD_DIM)
    model = P.PartModel(compile_genome(sj.baselines.transformer_pp(n_liv=8), cfg), task.seq_len)
    vecs = model.init(0)[0]
    threads = eval_threads()
    rows, ref = [], None
    for batch in EVAL_BATCHES:
        inputs, targets = (jax.device_put(list(a)) for a in stack_test_batches(task, batch))
        P.warm_up([model], batch)
        sums = model.eval_sums(vecs, inputs, targets, threads)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model.eval_sums(vecs, inputs, targets, threads)
            times.append(time.perf_counter() - t)
        ref = sums if ref is None else ref
        rows.append({"batch": batch, "batches": len(inputs), "threads": threads, "s": statistics.median(times),
                     "all_s": times, "sums_match": bool(np.allclose(sums, ref, rtol=1e-5))})
        print(f"evaluation at batch {batch}: {rows[-1]['s']:.3f} s", flush=True)
    return rows


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = ["# Step options measured and not adopted", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). "
             f"Command: `{out['command']}`. Medians of {out['reps']} calls, each waited for before the next "
             "(so a time includes its dispatch, as in a step's chain of dependent programs).", "",
             f"## Attention contractions (batch {BATCH}, {HEADS} heads of {HEAD_DIM}, L {SEQ - 1})", "",
             "| product | ms per call | GFLOP/s | bit-identical to TN |", "|---|---|---|---|"]
    for r in out["contractions"]:
        same = ("yes" if r["bit_identical_to_tn"] else f"no (max diff {r['max_abs_diff']:.1e})") \
            if "bit_identical_to_tn" in r else ""
        lines.append(f"| {r['case']} | {r['ms']:.3f} | {r['gflops']:.0f} | {same} |")
    rows = out["opt_levels"]
    lines += ["", f"## XLA backend optimisation level 1 against the default, per class (width {WIDTH}, "
              f"L {SEQ - 1}, batch {BATCH}; forward + backward part programs)", "",
              "| class | compile s (default) | compile s (level 1) | run ms (default) | run ms (level 1) | "
              "bit-identical |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['class']} | {r['default_compile_s']:.2f} | {r['level1_compile_s']:.2f} | "
                     f"{r['default_ms']:.2f} | {r['level1_ms']:.2f} | {'yes' if r['bit_identical'] else 'no'} |")
    sums = {key: sum(r[key] for r in rows) for key in ("default_compile_s", "level1_compile_s", "default_ms",
                                                        "level1_ms")}
    lines += ["", f"Summed over the 17 classes: compile {sums['default_compile_s']:.1f} -> "
              f"{sums['level1_compile_s']:.1f} s, run {sums['default_ms']:.1f} -> {sums['level1_ms']:.1f} ms; "
              f"{sum(not r['bit_identical'] for r in rows)} of 17 classes not bit-identical."]
    ev = out["eval_batches"]
    lines += ["", f"## Evaluation of the 1,280 test sequences at other batch sizes (8-LIV Transformer++, width {WIDTH}, "
              f"{ev[0]['threads']} thread{'s' if ev[0]['threads'] > 1 else ''}; median of {out['eval_reps']})", "",
              "| batch | batches | seconds (median) | all runs | sums equal the first row's |", "|---|---|---|---|---|"]
    for r in ev:
        lines.append(f"| {r['batch']} | {r['batches']} | {r['s']:.3f} | {', '.join(f'{x:.3f}' for x in r['all_s'])} "
                     f"| {'yes' if r['sums_match'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="step_options")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    out = {"reps": args.reps, "machine": _machine(),
           "command": "python benchmarks/step_options.py" + (f" --reps {args.reps}" if args.reps != 30 else "")
           + (f" --name {args.name}" if args.name != "step_options" else ""),
           "contractions": contractions(args.reps), "opt_levels": opt_levels(args.reps),
           "eval_reps": EVAL_REPS, "eval_batches": eval_batches(EVAL_REPS)}
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
