"""The evolution loop: NSGA-II over genomes, every genome trained once, checkpointed each generation.
A run lives in a run directory; killing it and running the same call again resumes to the same result."""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import numpy as np

from star_jax.compile_cache import enable_compilation_cache
from star_jax.evolve.ask_tell import NSGA2
from star_jax.evolve.config import ConfigFieldError, EvolveConfig
from star_jax.evolve.display import Display
# names defined here before the loop was split stay importable from here
from star_jax.evolve.evaluation import (Evaluator, baseline_genomes, check_objectives_measured, evaluate,  # noqa: F401
                                        objective_matrix, pareto_front, record_failure, train_candidates)
from star_jax.evolve.records import RUN_FORMAT, Candidate, EvalRecord, RunState  # noqa: F401
from star_jax.evolve.reevaluate import reevaluate
from star_jax.evolve.report import print_front
from star_jax.evolve.runstate import (BASELINES_FILE, EXTENSIONS_FILE, EvolveResult, Run,  # noqa: F401
                                      adopt_reevaluate_seeds, check_classes, complete_config, extend_run,
                                      load_run)
from star_jax.genome import Genome, flat_operators, random_genome
from star_jax.io import MetricLogger, RunDir
from star_jax.io.rundir import LOCK_FILE
from star_jax.train.threads import check_workers, default_workers

__all__ = ["EvolveResult", "evolve", "load_run", "train_candidates", "baseline_genomes", "pareto_front",
           "record_failure", "RUN_FORMAT", "Candidate", "EvalRecord", "RunState"]


def _initial_population(config: EvolveConfig) -> np.ndarray:
    """[pop_size, 5 * n_liv] seeds and baselines first, then random genomes."""
    genomes = [Genome.from_string(text) for text in config.seed_genomes]  # checked by EvolveConfig
    if config.seed_baselines:
        genomes += list(baseline_genomes(config.n_liv).values())
    genomes = genomes[: config.pop_size]
    rng = np.random.default_rng([config.seed, 1])
    while len(genomes) < config.pop_size:
        genomes.append(random_genome(config.n_liv, rng))
    return np.stack([g.to_array() for g in genomes])


def _make_strategy(config: EvolveConfig) -> NSGA2:
    mutate, crossover, repair = flat_operators(config.n_liv)
    return NSGA2(pop_size=config.pop_size, n_objectives=len(config.objectives), **config.nsga2_options(),
                 mutate=mutate, crossover=crossover, repair=repair)


def _remove_if_only_the_lock(path: pathlib.Path) -> None:
    """Removes a run directory that holds nothing but its lock file (made by this call)."""
    entries = list(path.iterdir()) if path.is_dir() else None
    if entries is not None and all(e.name == LOCK_FILE and e.is_file() for e in entries):
        for e in entries:
            e.unlink()
        path.rmdir()


def evolve(config: EvolveConfig, run_dir, *, progress: bool = True, evaluator: Evaluator | None = None,
           resume: bool = True, workers: int | None = None) -> EvolveResult:
    """Runs (or resumes) a multi-objective evolution of genomes with NSGA-II.

    Generation 0 evaluates the initial population; each of the ``config.generations`` next ones
    breeds ``pop_size`` offspring (tournament, k-point crossover, per-gene mutation, repair),
    evaluates the genomes never seen before in one training call, and keeps ``pop_size``
    survivors (constrained rank and crowding, elitism). Every genome is trained at most once
    per run: the archive maps ``genome.content_hash()`` to its record (``EvalRecord``, one line
    of ``evaluations.jsonl`` per new genome; baselines in ``baselines.jsonl``). A checkpoint per
    generation holds the NSGA-II state and its random generator (``RunState``); on resume the
    archive is rebuilt from the records (see ``star_jax.evolve.runstate``).

    Extending a run: a config that differs from the run's recorded one only by a larger
    ``generations`` continues it (finished or not) to that many generations, e.g.
    ``evolve(load_run(run_dir).config.replace(generations=30), run_dir)`` or
    ``star-jax evolve --run-dir RUN --generations 30``. The run draws the same seed stream and
    ends exactly as a run started with that many generations; ``config.json`` is updated and
    ``extensions.jsonl`` records each extension (from, to, seed, time).

    Hypervolume is computed in raw objective units w.r.t. a reference point fixed for the run
    (``config.reference_point``, or derived once from generation 0 as nadir + 10% of the range
    and stored in the checkpoint), over the feasible finite points: the archive's (logged as
    ``hypervolume``, non-decreasing) and the current population's.

    Arguments:
        config: the run config.
        run_dir: the run directory (created; an existing run with the same config is resumed).
        progress: show progress (``star_jax.evolve.display``) and print the final Pareto front.
            JAX's persistent compilation cache is turned on (``star_jax.compile_cache``).
        evaluator: training function (default ``train_candidates``); see ``Evaluator``.
        resume: if False, an existing run in ``run_dir`` is an error.
        workers: candidates the default evaluator trains at once (default
            ``star_jax.train.many.default_workers()``: 2 on a CPU of 2 or more cores, 1 on a
            GPU/TPU, or ``STAR_JAX_WORKERS``). Results do not depend on it, so it is not part
            of the config and a run may resume with another value.

    Returns:
        The ``EvolveResult``.

    Raises:
        RunConfigMismatch: ``run_dir`` holds a run started with a different config (other than
            a larger ``generations``, which extends it).
        CheckpointError: no checkpoint is readable and no record is left to rebuild the run from.

    For users who evaluate candidates themselves, ``NSGA2`` is the ask/tell interface::

        from star_jax.evolve import NSGA2
        from star_jax.genome import flat_operators, random_genome, Genome
        mutate, crossover, repair = flat_operators(n_liv=8)
        strategy = NSGA2(pop_size=16, n_objectives=2, mutate=mutate, crossover=crossover, repair=repair)
        state = strategy.init(0, np.stack([random_genome(8, s).to_array() for s in range(16)]))
        for generation in range(1 + 18):
            flat, state = strategy.ask(state)
            genomes = [Genome.from_array(f) for f in flat]
            state = strategy.tell(state, flat, my_objectives(genomes))   # [16, 2], minimised
    """
    if not isinstance(config, EvolveConfig):
        raise TypeError(f"config must be an EvolveConfig, got {type(config).__name__}")
    enable_compilation_cache()  # off with STAR_JAX_CACHE_DIR=off
    if workers is None:
        default_workers()  # a bad STAR_JAX_WORKERS is an error now, before the run directory is touched
    else:
        check_workers(workers)
        if evaluator is not None:
            raise ValueError("workers applies to the default evaluator; a custom evaluator sets its own")
        evaluator = functools.partial(train_candidates, workers=workers)
    if evaluator is None or getattr(evaluator, "func", None) is train_candidates:
        check_objectives_measured(config)
    evaluator = evaluator or train_candidates
    rd = RunDir(run_dir)
    new_dir = not rd.path.exists()
    with rd.lock():  # one writer per run directory; taken before any data is built
        try:
            task = config.make_task()
        except ConfigFieldError:  # a bad task field: nothing written, a directory made here goes again
            if new_dir:
                _remove_if_only_the_lock(rd.path)
            raise
        if resume:
            complete_config(rd)
            adopt_reevaluate_seeds(rd, config)
            extend_run(rd, config)
        check_classes(rd, rd.init(config.to_dict(), resume=resume))
        strategy = _make_strategy(config)
        run = Run.open(rd, config, lambda: strategy.init(config.seed, _initial_population(config)))
        total = config.generations + 1
        with Display(progress, total, run.start) as display, MetricLogger(rd, purge_step=run.start) as logger, \
                rd.checkpoint_manager(keep=3) as manager:
            for gen in range(run.start, total):
                t0 = time.perf_counter()
                flat, run.nsga2 = strategy.ask(run.nsga2)                                          # ask
                genomes = [Genome.from_array(f) for f in flat]
                to_train, replayed, n_cached = run.plan(gen, genomes)
                display.start_generation(gen, len(to_train), n_cached)
                records = evaluate(to_train, config, task, evaluator, display.candidate) + replayed  # evaluate
                generation_records = run.add(genomes, records)
                run.nsga2 = strategy.tell(run.nsga2, flat, *objective_matrix(generation_records, config))  # tell
                metrics = run.score(generation_records, time.perf_counter() - t0)
                logger.log(gen, metrics)
                run.save(manager, gen + 1)                                                           # save
                display.end_generation(gen, metrics, time.perf_counter() - t0)
        result = run.result(max(run.start, total))
    if progress:
        print_front(result)
    if config.reevaluate_seeds:  # resumable: seeds already in reevaluation.jsonl are not retrained
        reevaluation = reevaluate(run_dir, config.reevaluate_seeds, evaluator=evaluator, progress=progress)
        if progress:
            print(f"re-evaluated over {config.reevaluate_seeds} training seeds: "
                  f"{pathlib.Path(run_dir) / 'reevaluation.md'}")
        result = dataclasses.replace(result, reevaluation=reevaluation)
    return result
