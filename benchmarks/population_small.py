"""A small same-process comparison of the population strategies (compile included): 4 random
genomes with sharing, 4 LIVs, width 32, in_context_recall at vocab 16 / length 32, 30 steps.

    python benchmarks/population_small.py
"""
import time

import numpy as np

import star_jax as sj
from star_jax.population import train_population


def main():
    cfg = sj.ModelConfig(width=32, vocab_size=16, max_len=31, head_dim=8, window=16)
    task = sj.tasks.make("in_context_recall", vocab_size=16, seq_len=32, num_train=4096, num_test=256)
    tc = sj.TrainConfig(steps=30, batch_size=16, lr=3e-3, weight_decay=0.0, warmup_steps=5, seed=0)
    rng = np.random.default_rng(1)
    genomes = [sj.random_genome(4, rng, share_prob=0.5) for _ in range(4)]
    for g in genomes:
        print(g.short())
    ref = None
    for strategy in ["sequential", "static", "data"]:
        t0 = time.time()
        r = train_population(genomes, cfg, task, tc, strategy=strategy)
        sec = time.time() - t0
        ref = ref or sec
        print(f"{strategy:10s} {sec:7.1f} s  (sequential / this = {ref / sec:.2f}x)  "
              f"test_loss={[round(m['test_loss'], 5) for m in r.metrics]}", flush=True)


if __name__ == "__main__":
    main()
