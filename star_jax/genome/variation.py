"""Variation operators over flat genomes: per-gene mutation, k-point crossover, random genomes.

Every operator takes an explicit seed or numpy Generator and ends with repair, so its output
always validates.
"""
from __future__ import annotations

import numpy as np

from .genome import Genome, SEGMENT_LEN
from .errors import GenomeError


def as_rng(rng) -> np.random.Generator:
    """A numpy Generator from a seed (int), a Generator, or a SeedSequence."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(rng)
    raise TypeError(f"expected an int seed or numpy Generator, got {type(rng).__name__}")


def _flat_pools(n_liv: int) -> list[tuple[int, ...]]:
    probe = Genome([[1, 1, 1, 1, 1]] * n_liv)
    return probe.pools() * n_liv


def mutate(genome: Genome, rng, prob: float = 0.1) -> Genome:
    """Per-gene mutation: each integer is, with probability `prob`, redrawn uniformly from the
    other values of its position's pool; then repair.

    Arguments:
      genome: the parent.
      rng: an int seed or numpy Generator.
      prob: per-gene mutation probability in [0, 1].
    Returns:
      A valid genome of the same length.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mutation prob must lie in [0, 1], got {prob}")
    rng = as_rng(rng)
    flat = genome.to_array().copy()
    pools = _flat_pools(len(genome))
    hits = rng.random(flat.size) < prob
    for i in np.flatnonzero(hits):
        others = [v for v in pools[i] if v != flat[i]]
        if others:
            flat[i] = others[rng.integers(len(others))]
    return Genome.from_array(flat, repair=True)


def crossover(a: Genome, b: Genome, rng, n_points: int = 2) -> tuple[Genome, Genome]:
    """k-point crossover over the flat integer genomes (cut points anywhere, also inside a segment),
    followed by repair.

    Returns:
      Two children: a's pieces alternating with b's, and the complement.
    """
    if len(a) != len(b):
        raise GenomeError(f"crossover needs genomes of equal length, got {len(a)} and {len(b)} LIVs")
    rng = as_rng(rng)
    fa, fb = a.to_array(), b.to_array()
    n = fa.size
    k = min(n_points, n - 1)
    if k < 1:
        return a.repair(), b.repair()
    cuts = np.sort(rng.choice(np.arange(1, n), size=k, replace=False))
    take_b = (np.searchsorted(cuts, np.arange(n), side="right") % 2).astype(bool)
    c1 = np.where(take_b, fb, fa)
    c2 = np.where(take_b, fa, fb)
    return Genome.from_array(c1, repair=True), Genome.from_array(c2, repair=True)


def random_genome(n_liv: int, rng, *, classes: tuple[int, ...] | None = None, share_prob: float = 0.25) -> Genome:
    """A random valid genome of `n_liv` LIVs.

    Arguments:
      n_liv: backbone length.
      rng: an int seed or numpy Generator.
      classes: the LIV class ids to draw from (default: all registered).
      share_prob: probability that each sharing strategy is drawn as 2 (before repair).
    """
    rng = as_rng(rng)
    probe = Genome([[1, 1, 1, 1, 1]] * n_liv)
    pool_cls = classes or probe.pools()[0]
    groups = max(1, min(n_liv, 3))  # small group ids so that sharing happens
    segs = []
    for _ in range(n_liv):
        segs.append([int(pool_cls[rng.integers(len(pool_cls))]), int(rng.integers(1, groups + 1)),
                     2 if rng.random() < share_prob else 1, int(rng.integers(1, groups + 1)),
                     2 if rng.random() < share_prob else 1])
    return Genome(segs).repair()


def flat_operators(n_liv: int):
    """(mutate_flat, crossover_flat, repair_flat) on flat numpy genomes, for array-based optimisers."""

    def mutate_flat(flat, rng, prob):
        return mutate(Genome.from_array(flat, repair=True), rng, prob).to_array()

    def crossover_flat(a, b, rng, n_points):
        c1, c2 = crossover(Genome.from_array(a, repair=True), Genome.from_array(b, repair=True), rng, n_points)
        return c1.to_array(), c2.to_array()

    def repair_flat(flat):
        return Genome.from_array(flat, repair=True).to_array()

    del n_liv
    return mutate_flat, crossover_flat, repair_flat


__all__ = ["mutate", "crossover", "random_genome", "flat_operators", "as_rng", "SEGMENT_LEN"]
