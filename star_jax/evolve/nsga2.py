"""NSGA-II building blocks in plain numpy: Pareto ranks, crowding, tournaments, survivors.
Generic over candidates: everything works on an objective matrix (all objectives minimised)."""

# Conventions, stated once:
# - Every objective is minimised. A row is one candidate, a column one objective.
# - Non-finite objectives (NaN, +inf, -inf: a diverging or failed candidate) are mapped to the
#   worst value of their column by `sanitize_objectives` before any comparison: strictly worse than
#   every finite value in that column (``max_finite + max(1, max_finite - min_finite)``); a column
#   with no finite value becomes all zeros. The mapping is per entry, so a diverged candidate keeps
#   its (finite, correct) parameter count but loses on quality.
# - Constraints follow Deb's feasibility-first rules (constrained domination): a feasible
#   candidate (total violation <= 0) beats an infeasible one; between two infeasible candidates
#   the smaller total violation wins; between feasible ones Pareto rank then crowding decide.
#   NaN violations count as infinite.
# - Crowding distance matches pymoo's ``calc_crowding_distance`` (the "cd" survival default)
#   exactly, see `crowding_distance`.
# - Ties are broken by index (stable sorts), so every function here is deterministic.
# - Conscious differences from pymoo's NSGA2: ties in the truncation of the last front and in
#   tournaments are broken by index, not at random; the rank and crowding kept for the next
#   tournaments are recomputed on the survivors (pymoo keeps those of the merged pool, which only
#   differ in the crowding of the cut front); infeasible candidates are layered by total
#   violation, which orders them exactly as pymoo's sort by constraint violation does.

from __future__ import annotations

from typing import Any

import numpy as np

from star_jax._util.validate import Fields

__all__ = [
    "OPTION_DEFAULTS",
    "check_options",
    "sanitize_objectives",
    "total_violation",
    "dominance_matrix",
    "non_dominated_sort",
    "constrained_rank",
    "crowding_distance",
    "rank_and_crowding",
    "selection_order",
    "tournament_select",
    "select_survivors",
]


OPTION_DEFAULTS: dict[str, Any] = {
    "mutation_prob": 0.1,
    "crossover_points": 2,
    "elitism": 2,
    "tournament_size": 2,
    "crossover_prob": 1.0,
    "n_offspring": None,
    "merge_parents": True,
    "duplicate_retries": 0,
}
"""The NSGA-II settings a run can choose and their defaults (the paper's: mutation 0.1, 2-point
crossover always applied, 2 elites, binary tournaments, pop_size offspring merged with their
parents, duplicates kept). ``star_jax.evolve.ask_tell.NSGA2`` and ``EvolveConfig`` hold them."""


def check_options(check: Fields, pop_size: int) -> None:
    """Validates the NSGA-II settings of one holder (`NSGA2` or `EvolveConfig`) by one set of rules.

    Arguments:
        check: the holder's validators (they read each setting by its name in `OPTION_DEFAULTS`
            and raise the holder's `ConfigError`, naming ``<holder>.<setting>``).
        pop_size: the holder's population size (already validated).

    Raises:
        ConfigError: a setting outside its range (the message names it and the range).
    """
    check.real("mutation_prob", 0, 1)
    check.real("crossover_prob", 0, 1)
    check.int("crossover_points", lo=0)
    check.int("elitism", lo=0, hi=pop_size, accepted=f"an integer in [0, pop_size={pop_size}]")
    check.int("tournament_size", lo=1)
    if check.obj.n_offspring is not None:
        check.int("n_offspring", lo=1, accepted="an integer >= 1, or None (JSON null) for pop_size")
    merge = check.bool("merge_parents")
    check.int("duplicate_retries", lo=0)
    n_offspring = pop_size if check.obj.n_offspring is None else check.obj.n_offspring
    if not merge and n_offspring + check.obj.elitism < pop_size:
        check.fail_reason("n_offspring", f"with merge_parents false the next population is the {check.obj.elitism} "
                          f"elites plus the offspring, so n_offspring + elitism must be >= pop_size={pop_size} "
                          f"(else the population shrinks for good); got {n_offspring}", value=check.obj.n_offspring)


def _as_matrix(objectives) -> np.ndarray:
    """Checks and converts an objective matrix to float64 of shape [n, n_objectives]."""
    f = np.asarray(objectives, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(
            f"objectives must be a 2-D array [n_candidates, n_objectives], got shape {f.shape}"
        )
    return f


def sanitize_objectives(objectives) -> np.ndarray:
    """Maps non-finite objective values to the worst value of their column.

    A diverging candidate is a bad score: NaN, +inf and -inf all become a value strictly worse
    (larger) than every finite value in the same column, ``max + max(1, max - min)`` over the
    column's finite values. A column with no finite value at all becomes zeros (nobody can be
    told apart on it).

    Arguments:
        objectives: [n, n_objectives] objective values, all minimised.

    Returns:
        [n, n_objectives] float64 array with only finite values (a new array).
    """
    f = _as_matrix(objectives).copy()
    bad = ~np.isfinite(f)
    if not bad.any():
        return f
    for j in np.flatnonzero(bad.any(axis=0)):
        col = f[:, j]
        good = col[~bad[:, j]]
        if good.size == 0:
            worst = 0.0
        else:
            hi, lo = float(good.max()), float(good.min())
            worst = hi + max(1.0, hi - lo)
        col[bad[:, j]] = worst
    return f


def total_violation(violations, n: int) -> np.ndarray:
    """Reduces constraint violations to one non-negative total per candidate.

    Arguments:
        violations: None (no constraints), [n] totals, or [n, n_constraints] per-constraint
            values; each value counts as ``max(0, v)`` and NaN counts as +inf.
        n: number of candidates (checked against the leading axis).

    Returns:
        [n] float64 totals, 0 where feasible.
    """
    if violations is None:
        return np.zeros(n, dtype=np.float64)
    v = np.asarray(violations, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != n:
        raise ValueError(
            f"violations must have shape [{n}] or [{n}, n_constraints], got {np.shape(violations)}"
        )
    v = np.where(np.isnan(v), np.inf, v)
    return np.maximum(v, 0.0).sum(axis=1)


def dominance_matrix(objectives) -> np.ndarray:
    """Pairwise Pareto dominance for minimisation.

    Arguments:
        objectives: [n, n_objectives] finite objective values.

    Returns:
        [n, n] bool array, ``d[i, j]`` true when row i dominates row j (no worse in every
        objective and strictly better in at least one). Identical rows do not dominate each other.
    """
    f = _as_matrix(objectives)
    n = f.shape[0]
    all_le = np.ones((n, n), dtype=bool)
    any_lt = np.zeros((n, n), dtype=bool)
    for j in range(f.shape[1]):  # one objective at a time keeps memory at O(n^2)
        col = f[:, j]
        all_le &= col[:, None] <= col[None, :]
        any_lt |= col[:, None] < col[None, :]
    return all_le & any_lt


def non_dominated_sort(objectives) -> np.ndarray:
    """Fast non-dominated sorting (Deb et al. 2002).

    Non-finite values are first mapped to the worst (see `sanitize_objectives`).

    Arguments:
        objectives: [n, n_objectives] objective values, all minimised.

    Returns:
        [n] int64 Pareto rank per row: 0 for the first (non-dominated) front, 1 for the front
        that is non-dominated once front 0 is removed, and so on. Duplicate rows share a rank.
    """
    f = sanitize_objectives(objectives)
    n = f.shape[0]
    rank = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return rank
    dom = dominance_matrix(f)
    n_dominators = dom.sum(axis=0).astype(np.int64)
    front = np.flatnonzero(n_dominators == 0)
    r = 0
    while front.size:
        rank[front] = r
        n_dominators -= dom[front].sum(axis=0)
        n_dominators[front] = -1  # never selected again
        front = np.flatnonzero(n_dominators == 0)
        r += 1
    return rank


def constrained_rank(objectives, violations=None) -> np.ndarray:
    """Non-dominated sorting under Deb's constrained domination.

    Feasible candidates (total violation 0) get their Pareto rank among the feasible ones.
    Infeasible candidates come after every feasible front, one front per distinct total
    violation in increasing order (equal violations share a front).

    Arguments:
        objectives: [n, n_objectives] objective values, all minimised.
        violations: None, [n] or [n, n_constraints] constraint violations (see `total_violation`).

    Returns:
        [n] int64 rank per row, 0 best.
    """
    f = _as_matrix(objectives)
    n = f.shape[0]
    cv = total_violation(violations, n)
    feasible = cv <= 0.0
    rank = np.zeros(n, dtype=np.int64)
    n_feasible_fronts = 0
    if feasible.any():
        rank[feasible] = non_dominated_sort(f[feasible])
        n_feasible_fronts = int(rank[feasible].max()) + 1
    if (~feasible).any():
        _, dense = np.unique(cv[~feasible], return_inverse=True)
        rank[~feasible] = n_feasible_fronts + dense.astype(np.int64)
    return rank


def crowding_distance(objectives) -> np.ndarray:
    """NSGA-II crowding distance of the points of one front, as pymoo computes it.

    Per objective the points are sorted stably (ties keep index order); each point gets the gap
    between its two neighbours divided by the front's range on that objective; the first and
    last point of the sorted order get +inf (only one point at each end, even with ties). An
    objective whose range is zero contributes 0 to every point, its ends included. The sum over
    objectives is divided by the number of objectives (pymoo's scaling; it changes no ordering).
    A front of at most two points is all +inf.

    Arguments:
        objectives: [n, n_objectives] objective values of the points of one front.

    Returns:
        [n] float64 crowding distances, larger means less crowded.
    """
    f = sanitize_objectives(objectives)
    n, m = f.shape
    if n <= 2:
        return np.full(n, np.inf)
    order = np.argsort(f, axis=0, kind="stable")  # [n, m]
    fs = np.take_along_axis(f, order, axis=0)
    span = fs[-1] - fs[0]
    gap = np.empty((n, m))
    gap[1:-1] = fs[2:] - fs[:-2]
    gap[0] = np.inf
    gap[-1] = np.inf
    degenerate = span == 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = gap / np.where(degenerate, 1.0, span)
    gap[:, degenerate] = 0.0
    cd = np.zeros((n, m))
    np.put_along_axis(cd, order, gap, axis=0)
    return cd.sum(axis=1) / m


def rank_and_crowding(objectives, violations=None) -> tuple[np.ndarray, np.ndarray]:
    """Constrained Pareto rank of every row and crowding distance within its own front.

    Arguments:
        objectives: [n, n_objectives] objective values, all minimised.
        violations: None, [n] or [n, n_constraints] constraint violations.

    Returns:
        rank: [n] int64, 0 best (see `constrained_rank`).
        crowding: [n] float64, computed front by front (see `crowding_distance`).
    """
    f = sanitize_objectives(objectives)
    rank = constrained_rank(f, violations)
    crowd = np.zeros(f.shape[0])
    for r in np.unique(rank):
        idx = np.flatnonzero(rank == r)
        crowd[idx] = crowding_distance(f[idx])
    return rank, crowd


def selection_order(rank, crowding) -> np.ndarray:
    """Indices sorted best first: lower rank, then larger crowding, then lower index.

    Arguments:
        rank: [n] ranks.
        crowding: [n] crowding distances.

    Returns:
        [n] int64 permutation, best first.
    """
    rank = np.asarray(rank)
    crowding = np.asarray(crowding, dtype=np.float64)
    idx = np.arange(rank.shape[0])
    return np.lexsort((idx, -crowding, rank)).astype(np.int64)


def tournament_select(rank, crowding, n_select: int, rng: np.random.Generator, *,
                      tournament_size: int = 2) -> np.ndarray:
    """Tournament selection on (rank, then larger crowding, then lower index).

    Each tournament draws ``tournament_size`` distinct contestants uniformly (with replacement
    between tournaments); with constraints folded into the rank (`constrained_rank`) this is
    Deb's feasibility-first binary tournament.

    Arguments:
        rank: [n] ranks (lower is better).
        crowding: [n] crowding distances (larger is better).
        n_select: number of winners to return.
        rng: numpy Generator the draws come from.
        tournament_size: contestants per tournament, at least 1 and at most n.

    Returns:
        [n_select] int64 indices of the winners.
    """
    rank = np.asarray(rank)
    n = rank.shape[0]
    if not 1 <= tournament_size <= n:
        raise ValueError(f"tournament_size must be in [1, {n}] for {n} candidates, got {tournament_size}")
    # position of each candidate in the best-first order: smaller is better
    position = np.empty(n, dtype=np.int64)
    position[selection_order(rank, crowding)] = np.arange(n)
    keys = rng.random((n_select, n))
    contestants = np.argsort(keys, axis=1, kind="stable")[:, :tournament_size]  # [n_select, k]
    best = np.argmin(position[contestants], axis=1)
    return contestants[np.arange(n_select), best].astype(np.int64)


def select_survivors(objectives, n_survive: int, violations=None, *, elites=None) -> np.ndarray:
    """NSGA-II environmental selection: whole fronts in order, the last one cut by crowding.

    Rank and crowding are computed on the whole pool (crowding of the front being cut is that of
    the complete front, as in pymoo). Indices listed in ``elites`` survive whatever their rank;
    the remaining ``n_survive - len(elites)`` places go to the other candidates in the pool's
    best-first order. Without elites this is exactly the standard NSGA-II truncation.

    Arguments:
        objectives: [n, n_objectives] objective values of the pool, all minimised.
        n_survive: number of survivors, at most n.
        violations: None, [n] or [n, n_constraints] constraint violations.
        elites: optional indices into the pool that must survive (at most n_survive of them).

    Returns:
        [n_survive] int64 indices into the pool: the elites first (in the given order), then the
        others best first by (rank, larger crowding, index).
    """
    f = _as_matrix(objectives)
    n = f.shape[0]
    if not 0 <= n_survive <= n:
        raise ValueError(f"n_survive must be in [0, {n}], got {n_survive}")
    elites = np.asarray([] if elites is None else elites, dtype=np.int64).reshape(-1)
    if elites.size > n_survive:
        raise ValueError(f"{elites.size} elites cannot fit in {n_survive} survivors")
    if elites.size and (elites.min() < 0 or elites.max() >= n or np.unique(elites).size != elites.size):
        raise ValueError(f"elites must be distinct indices in [0, {n}), got {elites.tolist()}")
    rank, crowd = rank_and_crowding(f, violations)
    order = selection_order(rank, crowd)
    others = order[~np.isin(order, elites)]
    return np.concatenate([elites, others[: n_survive - elites.size]]).astype(np.int64)
