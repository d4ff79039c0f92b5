"""Multi-objective evolution of genomes: NSGA-II, hypervolume, objectives, ask/tell strategy.
Pure numpy and generic over flat integer genomes; genome operators are passed in as callables."""
from star_jax.evolve.ask_tell import (
    NSGA2,
    NSGA2State,
    k_point_crossover,
    state_from_dict,
    state_from_json,
    state_to_dict,
    state_to_json,
    uniform_mutation,
)
from star_jax.evolve.hypervolume import hypervolume
from star_jax.evolve.nsga2 import (
    constrained_rank,
    crowding_distance,
    non_dominated_sort,
    rank_and_crowding,
    sanitize_objectives,
    select_survivors,
    selection_order,
    tournament_select,
    total_violation,
)
from star_jax.evolve.objectives import (
    Constraint,
    Objective,
    constraint_violations,
    evaluate_objectives,
    get_objective,
    objective_names,
    register_objective,
)

__all__ = [
    "NSGA2",
    "NSGA2State",
    "Constraint",
    "Objective",
    "constrained_rank",
    "constraint_violations",
    "crowding_distance",
    "evaluate_objectives",
    "get_objective",
    "hypervolume",
    "k_point_crossover",
    "non_dominated_sort",
    "objective_names",
    "rank_and_crowding",
    "register_objective",
    "sanitize_objectives",
    "select_survivors",
    "selection_order",
    "state_from_dict",
    "state_from_json",
    "state_to_dict",
    "state_to_json",
    "tournament_select",
    "total_violation",
    "uniform_mutation",
]
