"""NSGA-II as a purely functional init / ask / tell strategy over flat integer genomes.
Its state is numpy arrays plus the numpy RNG state, so a run checkpoints to JSON and resumes exactly."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Callable

import numpy as np

from star_jax._util.validate import Fields
from star_jax.evolve.nsga2 import (
    _as_matrix,
    check_options,
    rank_and_crowding,
    select_survivors,
    selection_order,
    total_violation,
    tournament_select,
)

__all__ = [
    "NSGA2",
    "NSGA2State",
    "k_point_crossover",
    "uniform_mutation",
    "state_to_dict",
    "state_from_dict",
    "state_to_json",
    "state_from_json",
]

_STATE_FORMAT = "star_jax.nsga2_state/1"


def k_point_crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                      n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """k-point crossover of two flat genomes: alternate segments are swapped.

    Arguments:
        a: [n_genes] first parent.
        b: [n_genes] second parent.
        rng: numpy Generator for the cut points.
        n_points: number of distinct cut points (capped at n_genes - 1).

    Returns:
        Two children, each [n_genes], same dtype as the parents.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"parents must be flat genomes of the same length, got {a.shape} and {b.shape}")
    n = a.shape[0]
    k = min(int(n_points), n - 1)
    if k <= 0:
        return a.copy(), b.copy()
    cuts = np.sort(rng.choice(np.arange(1, n), size=k, replace=False))
    # segment id of each gene: number of cuts at or before it; odd segments are swapped
    swap = (np.searchsorted(cuts, np.arange(n), side="right") % 2) == 1
    return np.where(swap, b, a), np.where(swap, a, b)


def uniform_mutation(low, high) -> Callable[[np.ndarray, np.random.Generator, float], np.ndarray]:
    """A per-gene mutation for genomes whose gene i takes the integers ``low[i]..high[i]``.

    With probability ``prob`` a gene is replaced by a different valid value drawn uniformly
    (genes with a single valid value never change). A generic stand-in for the genome package's
    own mutation, useful for toy problems and tests.

    Arguments:
        low: scalar or [n_genes] smallest valid values.
        high: scalar or [n_genes] largest valid values (inclusive).

    Returns:
        ``mutate(genome_flat, rng, prob) -> genome_flat``.
    """
    low = np.asarray(low, dtype=np.int64)
    high = np.asarray(high, dtype=np.int64)
    if np.any(high < low):
        raise ValueError("uniform_mutation: every high must be >= low")

    def mutate(genome: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
        genome = np.asarray(genome, dtype=np.int64)
        lo = np.broadcast_to(low, genome.shape)
        size = np.broadcast_to(high, genome.shape) - lo + 1
        hit = (rng.random(genome.shape) < prob) & (size > 1)
        shift = rng.integers(1, np.maximum(size, 2))  # 1..size-1: always a different value
        moved = lo + (genome - lo + shift) % size
        return np.where(hit, moved, genome)

    return mutate


def _identity(genome: np.ndarray) -> np.ndarray:
    return genome


@dataclasses.dataclass(frozen=True)
class NSGA2State:
    """Everything an NSGA-II run carries between generations (plain numpy, no pickle).

    Attributes:
        population: [n, n_genes] int64 genomes of the current population, best first.
        objectives: [n, n_objectives] float64 raw objectives (NaN before the first tell; may hold
            non-finite values of diverged candidates, mapped to the worst whenever compared).
        violations: [n] float64 total constraint violations (0 = feasible).
        rank: [n] int64 constrained Pareto rank within the population.
        crowding: [n] float64 crowding distance within each front of the population.
        generation: number of tells so far (0: the population is not evaluated yet).
        rng_state: ``numpy.random.Generator.bit_generator.state`` (a JSON-able dict).
    """

    population: np.ndarray
    objectives: np.ndarray
    violations: np.ndarray
    rank: np.ndarray
    crowding: np.ndarray
    generation: int
    rng_state: dict


def _generator(rng_state: dict) -> np.random.Generator:
    """A fresh Generator positioned at ``rng_state`` (the state dict is not modified)."""
    name = rng_state.get("bit_generator")
    bit_generator_cls = getattr(np.random, str(name), None)
    if not (isinstance(bit_generator_cls, type) and issubclass(bit_generator_cls, np.random.BitGenerator)):
        raise ValueError(f"unknown numpy bit generator {name!r} in the RNG state")
    bit_generator = bit_generator_cls()
    bit_generator.state = copy.deepcopy(rng_state)
    return np.random.Generator(bit_generator)


@dataclasses.dataclass(frozen=True)
class NSGA2:
    """NSGA-II over flat integer genomes; all objectives minimised. Paper defaults.

    Usage::

        strategy = NSGA2(pop_size=16, n_objectives=2, mutate=mutate, crossover=crossover, repair=repair)
        state = strategy.init(seed, initial_population)      # [n, n_genes] int
        for generation in range(1 + 18):
            genomes, state = strategy.ask(state)               # first ask: the initial population
            objectives = evaluate(genomes)                     # [n, n_objectives], all minimised
            state = strategy.tell(state, genomes, objectives)

    The first ask returns the (repaired) initial population so it can be evaluated; every later
    ask returns offspring bred from the current population by tournament, k-point crossover,
    per-gene mutation and repair. Every tell merges parents and offspring and keeps ``pop_size``
    survivors by NSGA-II's (constrained) rank and crowding, the ``elitism`` best parents
    guaranteed a place. The strategy holds only hyper-parameters and operators; everything that
    changes lives in `NSGA2State`, and no method modifies the state it is given.

    Attributes:
        pop_size: population size kept after every tell (paper: 16).
        n_objectives: number of objectives per candidate.
        mutation_prob: per-gene mutation probability handed to ``mutate`` (paper: 0.1).
        crossover_points: cut points of the crossover (paper: 2).
        elitism: the best this many parents, by (rank, larger crowding) within the previous
            population, survive every tell whatever the offspring do (paper: 2). The remaining
            places go to the other members of the merged pool by NSGA-II's usual truncation, so
            with ``merge_parents`` elitism only matters when a best parent would otherwise be
            dominated or crowded out.
        tournament_size: contestants per tournament (2: binary tournament).
        mutate: ``mutate(genome_flat, rng, prob) -> genome_flat`` (see `uniform_mutation`).
        crossover: ``crossover(a, b, rng, n_points) -> (child_a, child_b)``.
        repair: ``repair(genome_flat) -> genome_flat``, applied to every offspring and to the
            initial population.
        crossover_prob: probability that a pair of parents is crossed (else copied) before mutation.
        n_offspring: offspring per ask (default: pop_size).
        merge_parents: True (NSGA-II): survivors are chosen from parents + offspring. False:
            generational replacement, survivors are chosen from offspring + the elites.
        duplicate_retries: how many times to breed a child again when it equals a member of the
            population or an earlier child of the same ask (0: keep duplicates; the evolution loop
            caches objectives by genome hash, so a duplicate costs nothing to evaluate).
    """

    pop_size: int = 16
    n_objectives: int = 1
    mutation_prob: float = 0.1
    crossover_points: int = 2
    elitism: int = 2
    tournament_size: int = 2
    mutate: Callable | None = None
    crossover: Callable = k_point_crossover
    repair: Callable = _identity
    crossover_prob: float = 1.0
    n_offspring: int | None = None
    merge_parents: bool = True
    duplicate_retries: int = 0

    def __post_init__(self):
        check = Fields("NSGA2", self, integral=True)
        check.int("pop_size", lo=1)
        check.int("n_objectives", lo=1)
        check_options(check, int(self.pop_size))
        if self.mutate is None:
            check.fail("mutate", "a callable: pass mutate=... (the genome package's mutation, or "
                       "uniform_mutation(low, high))")
        for name in ("mutate", "crossover", "repair"):
            if not callable(getattr(self, name)):
                check.fail(name, "a callable")

    # ------------------------------------------------------------------ init
    def init(self, rng: int | np.random.Generator, initial_population) -> NSGA2State:
        """Starts a run from an initial population (evaluated by the first ask/tell).

        Arguments:
            rng: an integer seed, or a numpy Generator over PCG64 or PCG64DXSM (whose state
                saves as JSON) whose current state is copied (the caller's generator is not
                advanced).
            initial_population: [n, n_genes] integer genomes, n >= 1 (n may differ from pop_size;
                the first tell keeps at most pop_size of them).

        Returns:
            The initial `NSGA2State` (generation 0).
        """
        if isinstance(rng, np.random.Generator):
            if not isinstance(rng.bit_generator, (np.random.PCG64, np.random.PCG64DXSM)):
                raise TypeError(f"rng must be a numpy Generator over PCG64 or PCG64DXSM (np.random.default_rng), "
                                f"whose state saves as JSON; got one over {type(rng.bit_generator).__name__}")
            rng_state = copy.deepcopy(rng.bit_generator.state)
        elif isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            rng_state = np.random.default_rng(int(rng)).bit_generator.state
        else:
            raise TypeError(f"rng must be an int seed or a numpy Generator, got {type(rng).__name__}")
        pop = self._check_genomes(initial_population, None, "initial_population")
        n = pop.shape[0]
        return NSGA2State(
            population=pop,
            objectives=np.full((n, self.n_objectives), np.nan),
            violations=np.zeros(n),
            rank=np.zeros(n, dtype=np.int64),
            crowding=np.full(n, np.inf),
            generation=0,
            rng_state=rng_state,
        )

    # ------------------------------------------------------------------- ask
    def ask(self, state: NSGA2State) -> tuple[np.ndarray, NSGA2State]:
        """Genomes to evaluate next.

        Arguments:
            state: current state (not modified).

        Returns:
            genomes: [n_offspring, n_genes] int64 (at generation 0: the repaired initial
                population).
            state: the new state (only the RNG state advances).
        """
        if state.generation == 0:
            genomes = np.stack([self._repair(g, state.population.shape[1]) for g in state.population])
            return genomes, state
        rng = _generator(state.rng_state)
        n_genes = state.population.shape[1]
        n_off = int(self.n_offspring or self.pop_size)
        seen = {g.tobytes() for g in state.population} if self.duplicate_retries else set()
        children: list[np.ndarray] = []
        attempts = 0
        while len(children) < n_off:
            for child in self._breed_pair(state, rng, n_genes):
                if len(children) == n_off:
                    break
                key = child.tobytes()
                if key in seen and attempts < self.duplicate_retries:
                    attempts += 1
                    continue
                children.append(child)
                seen.add(key)
                attempts = 0
        genomes = np.stack(children)
        return genomes, dataclasses.replace(state, rng_state=rng.bit_generator.state)

    def _breed_pair(self, state: NSGA2State, rng: np.random.Generator, n_genes: int):
        """Tournament -> crossover -> mutation -> repair for one pair of children."""
        k = min(int(self.tournament_size), state.population.shape[0])
        i, j = tournament_select(state.rank, state.crowding, 2, rng, tournament_size=k)
        a, b = state.population[i].copy(), state.population[j].copy()
        if rng.random() < self.crossover_prob:
            a, b = self.crossover(a, b, rng, int(self.crossover_points))
        out = []
        for child in (a, b):
            child = self._check_flat(self.mutate(np.asarray(child, dtype=np.int64), rng, float(self.mutation_prob)),
                                     n_genes, "mutate")
            out.append(self._repair(child, n_genes))
        return out

    def _repair(self, genome: np.ndarray, n_genes: int) -> np.ndarray:
        return self._check_flat(self.repair(np.asarray(genome, dtype=np.int64).copy()), n_genes, "repair")

    @staticmethod
    def _check_flat(genome, n_genes: int, who: str) -> np.ndarray:
        g = np.asarray(genome)
        if g.shape != (n_genes,) or not np.issubdtype(g.dtype, np.integer):
            raise ValueError(f"{who} must return a flat integer genome of length {n_genes}, "
                             f"got shape {g.shape} dtype {g.dtype}")
        return g.astype(np.int64)

    def _check_genomes(self, genomes, n_genes: int | None, what: str) -> np.ndarray:
        g = np.asarray(genomes)
        if g.ndim != 2 or g.shape[0] < 1 or not np.issubdtype(g.dtype, np.integer):
            raise ValueError(f"{what} must be a non-empty integer array [n, n_genes], "
                             f"got shape {g.shape} dtype {g.dtype}")
        if n_genes is not None and g.shape[1] != n_genes:
            raise ValueError(f"{what} has {g.shape[1]} genes per genome, the population has {n_genes}")
        return g.astype(np.int64)

    # ------------------------------------------------------------------ tell
    def tell(self, state: NSGA2State, genomes, objectives, violations=None) -> NSGA2State:
        """Environmental selection after evaluating the genomes of the last ask.

        Arguments:
            state: state returned by the ask that produced ``genomes``.
            genomes: [n, n_genes] evaluated genomes.
            objectives: [n, n_objectives] objective values, all minimised (NaN/inf: worst);
                [n] is accepted when n_objectives is 1.
            violations: None, [n] total or [n, n_constraints] constraint violations (feasible
                when all are <= 0).

        Returns:
            The new state: ``pop_size`` survivors best first, generation + 1.
        """
        genomes = self._check_genomes(genomes, state.population.shape[1], "genomes")
        n = genomes.shape[0]
        f = np.asarray(objectives, dtype=np.float64)
        if f.ndim == 1 and self.n_objectives == 1:
            f = f[:, None]
        f = _as_matrix(f)
        if f.shape != (n, self.n_objectives):
            raise ValueError(f"objectives must have shape [{n}, {self.n_objectives}] "
                             f"(one row per genome, one column per objective), got {f.shape}")
        cv = total_violation(violations, n)

        if state.generation == 0:
            pool_g, pool_f, pool_cv, elites = genomes, f, cv, None
        else:
            best_parents = selection_order(state.rank, state.crowding)[: int(self.elitism)]
            if self.merge_parents:
                pool_g = np.concatenate([state.population, genomes])
                pool_f = np.concatenate([state.objectives, f])
                pool_cv = np.concatenate([state.violations, cv])
                elites = best_parents
            else:
                pool_g = np.concatenate([state.population[best_parents], genomes])
                pool_f = np.concatenate([state.objectives[best_parents], f])
                pool_cv = np.concatenate([state.violations[best_parents], cv])
                elites = np.arange(best_parents.size)
        n_survive = min(int(self.pop_size), pool_g.shape[0])
        keep = select_survivors(pool_f, n_survive, pool_cv, elites=elites)
        pop_g, pop_f, pop_cv = pool_g[keep], pool_f[keep], pool_cv[keep]
        rank, crowd = rank_and_crowding(pop_f, pop_cv)
        order = selection_order(rank, crowd)
        return NSGA2State(
            population=pop_g[order],
            objectives=pop_f[order],
            violations=pop_cv[order],
            rank=rank[order],
            crowding=crowd[order],
            generation=state.generation + 1,
            rng_state=state.rng_state,
        )


# ------------------------------------------------------------- serialisation
_ARRAY_FIELDS = ("population", "objectives", "violations", "rank", "crowding")


def state_to_dict(state: NSGA2State) -> tuple[dict[str, np.ndarray], dict]:
    """Splits a state into numpy arrays (for an array checkpointer) and JSON-able metadata.

    Arguments:
        state: the state.

    Returns:
        arrays: {"population", "objectives", "violations", "rank", "crowding"} -> copies.
        meta: {"format", "generation", "rng_state"}; ``json.dumps`` works on it.
    """
    arrays = {name: np.array(getattr(state, name), copy=True) for name in _ARRAY_FIELDS}
    meta = {"format": _STATE_FORMAT, "generation": int(state.generation),
            "rng_state": copy.deepcopy(state.rng_state)}
    return arrays, meta


def state_from_dict(arrays: dict, meta: dict) -> NSGA2State:
    """Inverse of `state_to_dict`.

    Arguments:
        arrays: the arrays of `state_to_dict`.
        meta: the metadata of `state_to_dict`.

    Returns:
        The `NSGA2State`.
    """
    if meta.get("format") != _STATE_FORMAT:
        raise ValueError(f"not an NSGA-II state of format {_STATE_FORMAT!r}: format {meta.get('format')!r}")
    missing = [k for k in _ARRAY_FIELDS if k not in arrays]
    if missing:
        raise ValueError(f"NSGA-II state is missing arrays {missing}")
    _generator(meta["rng_state"])  # validates the RNG state
    return NSGA2State(
        population=np.asarray(arrays["population"], dtype=np.int64),
        objectives=np.asarray(arrays["objectives"], dtype=np.float64),
        violations=np.asarray(arrays["violations"], dtype=np.float64),
        rank=np.asarray(arrays["rank"], dtype=np.int64),
        crowding=np.asarray(arrays["crowding"], dtype=np.float64),
        generation=int(meta["generation"]),
        rng_state=copy.deepcopy(meta["rng_state"]),
    )


_NONFINITE = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def _encode_array(a: np.ndarray) -> dict:
    if np.issubdtype(a.dtype, np.floating):
        data = [("nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")) if not np.isfinite(x) else float(x)
                for x in a.reshape(-1).tolist()]
    else:
        data = a.reshape(-1).tolist()
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": data}


def _decode_array(d: dict) -> np.ndarray:
    data = [_NONFINITE[x] if isinstance(x, str) else x for x in d["data"]]
    return np.asarray(data, dtype=np.dtype(d["dtype"])).reshape(d["shape"])


def state_to_json(state: NSGA2State) -> str:
    """Serialises a state to a JSON string; floats round-trip exactly, non-finite ones as strings.

    Arguments:
        state: the state.

    Returns:
        Standard JSON text (no NaN/Infinity literals).
    """
    arrays, meta = state_to_dict(state)
    return json.dumps({"meta": meta, "arrays": {k: _encode_array(v) for k, v in arrays.items()}},
                      allow_nan=False)


def state_from_json(text: str) -> NSGA2State:
    """Inverse of `state_to_json`.

    Arguments:
        text: JSON text written by `state_to_json`.

    Returns:
        The `NSGA2State`, equal to the one serialised.
    """
    d = json.loads(text)
    return state_from_dict({k: _decode_array(v) for k, v in d["arrays"].items()}, d["meta"])
