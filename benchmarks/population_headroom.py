"""Is there idle parallel hardware for a population engine to use? One model's training step
timed alone, with 2 and 4 independent steps in flight at once (asynchronous dispatch), and
vmapped over 2 candidates. Ratios near 1.0 mean one step already keeps every core busy, so no
engine can run candidate-steps faster together than alone on this machine.

Usage: python benchmarks/population_headroom.py [--out benchmarks/results] [--classes 1,5,9]
"""
from __future__ import annotations

import argparse
import json
import os
import time

from population import _machine  # this directory's population benchmark

HERE = os.path.dirname(os.path.abspath(__file__))


def _time(fn, reps: int) -> float:
    import jax

    jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--classes", default="1,5,9", help="LIV classes; each timed as an 8-LIV backbone of that class")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    import star_jax as sj
    from star_jax.train import TrainConfig
    from star_jax.train.optim import FlatLayout, make_flat_optimizer
    from star_jax.train.step import make_train_step

    cfg = sj.ModelConfig(width=64, vocab_size=16, max_len=128, head_dim=16)
    tc = TrainConfig(steps=100, batch_size=16, warmup_steps=10)
    tokens = jnp.zeros((16, 128), jnp.int32)
    rows = []
    for cid in [int(c) for c in args.classes.split(",")]:
        genome = sj.Genome([[cid, 1, 1, 1, 1]] * 8)
        model = sj.build_model(genome, cfg)
        params = model.init(jax.random.key(0), jnp.zeros((1, 128), jnp.int32))
        layout = FlatLayout(params)
        opt = make_flat_optimizer(tc, layout)
        step_fn = make_train_step(lambda f, tok: model.apply(layout.unravel(f), tok), opt)
        step = jax.jit(step_fn)
        flat = layout.ravel(params)
        state = opt.init(flat)
        copies = [flat + 0.001 * i for i in range(4)]  # independent candidates
        one = _time(lambda: step(copies[0], state, tokens, tokens), args.reps)
        two = _time(lambda: [step(copies[i], state, tokens, tokens) for i in range(2)], args.reps) / 2
        four = _time(lambda: [step(copies[i], state, tokens, tokens) for i in range(4)], args.reps) / 4
        vstep = jax.jit(jax.vmap(step_fn, in_axes=(0, 0, None, None)))
        stacked = jnp.stack(copies[:2])
        vstate = jax.tree.map(lambda a: jnp.stack([a, a]), state)
        vm = _time(lambda: vstep(stacked, vstate, tokens, tokens), args.reps) / 2
        rows.append({"class": cid, "name": genome.classes[0].name, "ms_alone": 1e3 * one,
                     "ms_2_in_flight": 1e3 * two, "ms_4_in_flight": 1e3 * four, "ms_vmap_2": 1e3 * vm})
        print(rows[-1], flush=True)

    machine = _machine()
    result = {"machine": machine,
              "load_average_1min_at_start": os.getloadavg()[0],
              "config": "8 LIVs of one class, width 64, L 128, batch 16, flat AdamW step", "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "population_headroom.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = ["# Parallel headroom for a population engine", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, JAX {machine['jax']} ({machine['backend']}); "
             f"1-min load average at start {result['load_average_1min_at_start']:.2f}.",
             "One training step of an 8-LIV backbone (width 64, L 128, batch 16), ms per candidate-step.", "",
             "| class | alone | 2 in flight | 4 in flight | vmap over 2 | speed-up of 2 in flight |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['ms_alone']:.1f} | {r['ms_2_in_flight']:.1f} | {r['ms_4_in_flight']:.1f} | "
                     f"{r['ms_vmap_2']:.1f} | {r['ms_alone'] / r['ms_2_in_flight']:.2f}x |")
    lines += ["", "Command: `python benchmarks/population_headroom.py`."]
    with open(os.path.join(args.out, "population_headroom.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
