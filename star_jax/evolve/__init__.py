"""Multi-objective evolution of genomes: NSGA-II, hypervolume, objectives, the resumable run loop.
The building blocks are pure numpy over flat integer genomes; `evolve` runs them on real training."""
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
from star_jax.evolve.config import EvolveConfig
from star_jax.evolve.latency import measure_decode_latency
from star_jax.evolve.loop import EvolveResult, evolve, load_run
from star_jax.evolve.records import Candidate, EvalRecord, RunState
from star_jax.evolve.report import write_report
from star_jax.evolve.reevaluate import Reevaluation, reevaluate
from star_jax.evolve.objectives import (
    Constraint,
    Objective,
    get_objective,
    objective_names,
    register_objective,
)

__all__ = [
    "EvolveConfig",
    "EvolveResult",
    "Candidate",
    "EvalRecord",
    "RunState",
    "evolve",
    "load_run",
    "reevaluate",
    "Reevaluation",
    "measure_decode_latency",
    "write_report",
    "NSGA2",
    "NSGA2State",
    "Constraint",
    "Objective",
    "constrained_rank",
    "crowding_distance",
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

# `star_jax.evolve(config, run_dir)` runs the loop; `star_jax.evolve.nsga2` etc. stay submodules.
from star_jax._util.callable_module import make_callable as _make_callable

_make_callable(__name__, evolve)
