"""What the genome-as-data engine costs per candidate-step, op family by op family: the gradient
of one 8-LIV backbone computed by the model itself ("lone", what `sj.train` runs) and by the
"data" strategy's forward over the superset parameters (one candidate, its genome as data), in
the same process on the same batch. The ratio data / lone is the engine's overhead: the
`lax.switch` per slot, the rematerialised branches, the feature-sharing stash and the gradient
of the whole superset.

Usage: python benchmarks/population_step.py [--out benchmarks/results] [--classes 1,5,7,9]
"""
from __future__ import annotations

import argparse
import json
import os
import time

from population import _machine  # this directory's population benchmark

HERE = os.path.dirname(os.path.abspath(__file__))


def _median_ms(fn, args, reps: int) -> tuple[float, float]:
    """(median ms of ``reps`` timed calls, seconds of the first call = compile + one run)."""
    import jax
    import numpy as np

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times)), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--classes", default="1,5,7,9",
                    help="LIV classes; each timed as an 8-LIV backbone of that class (no sharing)")
    ap.add_argument("--shared", type=int, default=2,
                    help="also this many random 8-LIV genomes with sharing (share_prob 0.5)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    import star_jax as sj
    from star_jax import tasks
    from star_jax.population import data as D
    from star_jax.train.step import masked_loss_and_accuracy

    task = tasks.make("in_context_recall", vocab_size=16, seq_len=128)
    cfg = sj.ModelConfig(width=64, vocab_size=16, max_len=task.seq_len, head_dim=16)
    inputs, targets = task.sample(jax.random.key(0), 16)
    pool = D.make_pool(cfg, task.seq_len)
    base = D._base_params(pool, 8, task.seq_len)
    fwd = D.DataForward(pool, 8)

    def data_loss(sp, code):
        return masked_loss_and_accuracy(fwd(sp, code, inputs), targets)[0]

    data_grad = jax.jit(jax.grad(data_loss))  # one compile for every genome below
    genomes = [(f"8 x {sj.get_liv_class(int(c)).name}",
                sj.random_genome(8, np.random.default_rng(0), classes=(int(c),), share_prob=0.0))
               for c in args.classes.split(",")]
    rng = np.random.default_rng(1)
    genomes += [(f"random, shared ({i + 1})", sj.random_genome(8, rng, share_prob=0.5)) for i in range(args.shared)]
    rows = []
    for label, g in genomes:
        model = sj.build_model(g, cfg)
        params = model.init(jax.random.key(1), inputs)
        lone = jax.jit(jax.grad(lambda p, model=model: masked_loss_and_accuracy(model.apply(p, inputs), targets)[0]))
        sp = jax.tree.map(jnp.asarray, D.to_superset(params, g, pool, base))
        code = jnp.asarray(D.encode(g, pool))
        lone_ms, lone_first = _median_ms(lone, (params,), args.reps)
        data_ms, data_first = _median_ms(data_grad, (sp, code), args.reps)
        row = {"backbone": label, "genome": g.to_string(), "lone_ms": lone_ms, "data_ms": data_ms,
               "ratio": data_ms / lone_ms, "lone_first_call_s": lone_first, "data_first_call_s": data_first}
        rows.append(row)
        print(f"{label:24s} lone {lone_ms:7.1f} ms  data {data_ms:7.1f} ms  data/lone {row['ratio']:.2f}", flush=True)

    machine = _machine()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "population_step.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows, "setting": {
            "n_liv": 8, "width": 64, "seq_len": task.seq_len, "batch": 16, "superset_size":
            sum(int(np.prod(a.shape)) for a in jax.tree.leaves(base))}}, f, indent=1)
    lines = [
        "# Per candidate-step cost of the genome-as-data engine",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, JAX {machine['jax']} ({machine['backend']}).",
        "Gradient of the loss of one 8-LIV backbone (width 64, L 128, batch 16, in_context_recall), "
        f"median of {args.reps} calls after the first, same process, same batch. lone = the model's own "
        "`apply` (as `sj.train`); data = the `data` strategy's forward over superset parameters, genome "
        "as data (one compile serves every row; its first call is the compile).",
        "",
        "| backbone | lone (ms) | data (ms) | data / lone |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['backbone']} | {r['lone_ms']:.1f} | {r['data_ms']:.1f} | {r['ratio']:.2f} |" for r in rows]
    lines += ["", f"Command: `python benchmarks/population_step.py --classes {args.classes} --shared {args.shared}`."]
    with open(os.path.join(args.out, "population_step.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
