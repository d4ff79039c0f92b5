"""Evaluation of candidates: sizes, training (over seeds, through the population engine), objectives,
and the scores of records (objective matrix, Pareto front, hypervolume) the loop and reports share."""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np

from star_jax.evolve.config import ConfigFieldError, EvolveConfig
from star_jax.evolve.hypervolume import hypervolume
from star_jax.evolve.latency import measure_decode_latency
from star_jax.evolve.nsga2 import non_dominated_sort
from star_jax.evolve.objectives import get_objective
from star_jax.evolve.records import Candidate, EvalRecord
from star_jax.genome import Genome, GenomeError, baselines
from star_jax.io.jsonutil import finite_or_none
from star_jax.metrics import cache_bytes, param_count
from star_jax.model import ConfigError, compile_genome
from star_jax.train.many import train_many

from star_jax.population import STRATEGIES, train_population

__all__ = ["Evaluator", "train_candidates", "check_objectives_measured", "evaluate", "evaluate_per_seed",
           "record_failure", "baseline_genomes", "batch_size", "objective_matrix", "pareto_front", "derive_reference", "front_hypervolume"]

Evaluator = Callable[..., list]
"""``evaluator(genomes, config, task, *, on_candidate=None) -> [metrics dict per genome]`` with the
keys of ``star_jax.train``'s final metrics (``train_loss``, ``test_loss``, ``test_accuracy``,
``diverged``, ...). It must be deterministic per genome.

With ``config.train_seeds > 1`` it is called once per training seed. An evaluator that also takes
a ``seeds`` keyword (as ``train_candidates`` does) is called once for all of them instead:
``evaluator(genomes, config, task, on_candidate=..., seeds=[s0, s1, ...])`` returns one such list
per seed, each as if called with ``config.train.seed`` set to that seed. If it also takes
``on_run``, it calls ``on_run(seed index, genome index, metrics)`` as each run finishes (a
re-evaluation then stores every finished run at once)."""


# ---------------------------------------------------------------------------------- genomes
def baseline_genomes(n_liv: int) -> dict[str, Genome]:
    """The baselines of a backbone length: Transformer++, StripedMamba, LFM2-like.

    StripedMamba puts one attention mixer in ``min(4, n_liv // 2)`` (so even a 4-LIV backbone
    has one); LFM2-like has ``n_liv // 2`` mixers. Odd lengths have no baselines.

    Arguments:
        n_liv: backbone length.

    Returns:
        name -> genome (empty for odd ``n_liv``).
    """
    return baselines.roster(n_liv)


def batch_size(config: EvolveConfig) -> int:
    """The most candidates one generation trains in one call: the initial population plus the
    baselines (generation 0), or the offspring of a later generation."""
    first = config.pop_size + (len(baseline_genomes(config.n_liv)) if config.baselines else 0)
    return max(first, config.n_offspring or config.pop_size)


# ---------------------------------------------------------------------------------- training
_WARNED: set = set()


def train_candidates(genomes: Sequence[Genome], config: EvolveConfig, task, *,
                     on_candidate: Callable[[int], None] | None = None, workers: int | None = None,
                     seeds: Sequence[int] | None = None,
                     on_run: Callable[[int, int, dict], None] | None = None) -> list:
    """The default evaluator: trains genomes with the population engine in one call, or with
    ``star_jax.train`` per genome, several at a time (``star_jax.train.many.train_many``).

    Uses ``star_jax.population.train_population`` with ``config.strategy`` ("auto":
    "sequential", see ``star_jax.evolve.config.STRATEGIES``); a strategy that cannot run on
    this platform (``NotImplementedError``) falls back, with one warning, to ``star_jax.train``
    per genome. Both give each candidate the same metrics as training it alone.

    Arguments:
        genomes: the genomes to train.
        config: the run config (model, train and strategy are used).
        task: the fitness task.
        on_candidate: called with the number of candidates done so far, as they finish (with
            ``seeds``: runs done so far divided by the number of seeds, rounded down).
        workers: ``"sequential"``: candidates in training at once (default
            ``star_jax.train.many.default_workers()``); results do not depend on it.
        seeds: train every genome with each of these training seeds (instead of
            ``config.train.seed``). ``"sequential"`` trains all the (seed, genome) runs in one
            ``train_many`` call, so its workers stay busy from one seed to the next.
        on_run: with ``seeds``: called on the calling thread with ``(seed index, genome index,
            metrics)`` as each run finishes.

    Returns:
        One metrics dict per genome (``star_jax.train`` final metrics); with ``seeds``, one such
        list per seed.
    """
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        return _train_seeds(list(genomes), config, task, seeds, on_candidate, workers, on_run)
    if not genomes:
        return []
    strategy = _strategy(config)
    if strategy != "sequential":
        if strategy in STRATEGIES:
            # "data" reuses its compiled step only for one number of candidates: every call is
            # padded to the largest batch of the run (padding candidates cost no training).
            pad_to = max(batch_size(config), len(genomes)) if strategy == "data" else None
            try:
                result = train_population(list(genomes), config.model, task, config.train, strategy=strategy,
                                          pad_to=pad_to)
            except NotImplementedError as e:
                if strategy not in _WARNED:
                    _WARNED.add(strategy)
                    warnings.warn(f"population strategy {strategy!r} is unavailable ({e}); training "
                                  f"candidates with star_jax.train", RuntimeWarning, stacklevel=2)
            else:
                if on_candidate is not None:
                    on_candidate(len(genomes))
                return [dict(m) for m in result.metrics[: len(genomes)]]
    done = [0]

    def tick(_i, _result):
        done[0] += 1
        if on_candidate is not None:
            on_candidate(done[0])

    results = train_many(genomes, config.model, task, config.train, workers=workers, on_result=tick)
    return [dict(r.metrics) for r in results]


def _strategy(config: EvolveConfig) -> str:
    """The population strategy ``config.strategy`` stands for ("auto": "sequential", through the
    part programs, several at a time: nothing compiles for a genome of known LIV kinds)."""
    return "sequential" if config.strategy == "auto" else config.strategy


def _train_seeds(genomes: list, config: EvolveConfig, task, seeds: list[int], on_candidate, workers, on_run) -> list:
    """``train_candidates`` over several training seeds: one list of metrics per seed."""
    if not genomes or not seeds:
        return [[] for _ in seeds]
    n, r = len(genomes), len(seeds)
    if _strategy(config) != "sequential":  # a population strategy: one call per seed
        out = []
        for i, seed in enumerate(seeds):
            tick = None if on_candidate is None else (lambda k, i=i: on_candidate((i * n + k) // r))
            out.append(train_candidates(genomes, config.replace(train=config.train.replace(seed=seed)), task,
                                        on_candidate=tick, workers=workers))
            if on_run is not None:
                for k, m in enumerate(out[-1]):
                    on_run(i, k, m)
        return out
    done = [0]

    def tick(i, result):
        done[0] += 1
        if on_run is not None:
            on_run(i // n, i % n, dict(result.metrics))
        if on_candidate is not None:
            on_candidate(done[0] // r)

    cfgs = [config.train.replace(seed=seed) for seed in seeds for _ in genomes]
    results = train_many(list(genomes) * r, config.model, task, cfgs, workers=workers, on_result=tick)
    return [[dict(res.metrics) for res in results[i * n:(i + 1) * n]] for i in range(r)]


def _takes(evaluator, keyword: str) -> bool:
    """Whether the evaluator takes this keyword argument."""
    try:
        return keyword in inspect.signature(evaluator).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


def _check_runs(runs: list, n_seeds: int, n_genomes: int) -> None:
    if len(runs) != n_seeds or any(len(run) != n_genomes for run in runs):
        raise ValueError(f"the evaluator returned {[len(run) for run in runs]} results for {n_seeds} seeds of "
                         f"{n_genomes} genomes")


_MEAN_KEYS = ("train_loss", "test_loss", "test_accuracy")


def _train_over_seeds(genomes: Sequence[Genome], config: EvolveConfig, task, evaluator: Evaluator,
                      on_candidate=None) -> list[dict]:
    """Metrics of each genome over ``config.train_seeds`` training seeds (seeds ``train.seed``,
    ``train.seed + 1``, ...; one evaluator call for all of them when it takes ``seeds``, else one
    per seed): losses and accuracy averaged, ``diverged`` if any seed diverged, and the per-seed
    accuracies (``seed_test_accuracy``) with their sd (``test_accuracy_sd``) recorded."""
    r = config.train_seeds
    if r == 1:
        return list(evaluator(genomes, config, task, on_candidate=on_candidate))
    seeds = [config.train.seed + i for i in range(r)]
    if _takes(evaluator, "seeds"):
        runs = [list(run) for run in evaluator(genomes, config, task, on_candidate=on_candidate, seeds=seeds)]
        _check_runs(runs, r, len(genomes))
    else:
        runs = []
        for i, seed in enumerate(seeds):
            cfg = config.replace(train=config.train.replace(seed=seed))
            tick = None if on_candidate is None else (lambda k, i=i: on_candidate((i * len(genomes) + k) // r))
            runs.append(list(evaluator(genomes, cfg, task, on_candidate=tick)))
    out = []
    for j in range(len(genomes)):
        per_seed = [run[j] for run in runs]
        merged = dict(per_seed[0])
        for key in _MEAN_KEYS:
            vals = [m.get(key) for m in per_seed]
            ok = all(v is not None and math.isfinite(float(v)) for v in vals)
            merged[key] = float(np.mean([float(v) for v in vals])) if ok else math.nan
        merged["diverged"] = any(bool(m.get("diverged")) for m in per_seed)
        accs = [finite_or_none(m.get("test_accuracy")) for m in per_seed]
        merged["seed_test_accuracy"] = accs
        finite = [a for a in accs if a is not None]
        merged["test_accuracy_sd"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
        out.append(merged)
    return out


# ---------------------------------------------------------------------------------- records
def _size_metrics(genome: Genome, config: EvolveConfig) -> tuple[dict, str | None]:
    """Analytic params and cache bytes, or the error that makes the genome unbuildable."""
    try:
        program = compile_genome(genome, config.model)
        return {"params": param_count(program),
                "cache_bytes": cache_bytes(program, seq_len=config.cache_seq_len,
                                           bytes_per_elem=config.cache_bytes_per_elem)}, None
    except (GenomeError, ConfigError, ValueError) as e:
        return {"params": None, "cache_bytes": None}, f"{type(e).__name__}: {e}"


def record_failure(record: Mapping) -> str | None:
    """Why an evaluation record's genome could not be built or evaluated (None: it was).

    The top-level field is ``failure``; records written before it was renamed call it
    ``error`` (not to be confused with ``objectives["error"]``, 1 - accuracy), and both are read.

    Arguments:
        record: an ``EvalRecord``, or a record's JSON object.

    Returns:
        The failure message, or None.
    """
    if isinstance(record, EvalRecord):
        return record.failure
    return record.get("failure", record.get("error") if isinstance(record.get("error"), str) else None)


def _finish_record(record: dict, config: EvolveConfig) -> dict:
    """Adds objectives and the total constraint violation (None stands for non-finite); the
    objectives and constraints read the record's JSON object."""
    objectives = {}
    for name in config.objectives:
        value = get_objective(name)(record) if record.get("failure") is None else math.nan
        objectives[name] = finite_or_none(value)
    violation = 0.0
    if record.get("failure") is not None:
        violation = math.inf
    else:
        for c in config.constraint_objects():
            violation += c.violation(record)
    record["objectives"] = objectives
    record["violation"] = finite_or_none(violation)
    return record


def evaluate(candidates: Sequence[Candidate], config: EvolveConfig, task, evaluator: Evaluator,
             on_candidate: Callable[[int], None] | None = None) -> list[EvalRecord]:
    """Evaluation records of candidates: sizes, training in one evaluator call per training seed
    (``config.train_seeds``; genomes that cannot be built are not trained and record why),
    optional decode latency, objectives and constraint violation.

    Arguments:
        candidates: what to evaluate (each record gets its candidate's generation).
        config: the run config.
        task: the fitness task.
        evaluator: the training function (see ``Evaluator``).
        on_candidate: progress callback, the number of candidates trained so far.

    Returns:
        One ``EvalRecord`` per candidate, in order (``baseline`` is not set here).
    """
    genomes = [c.to_genome() for c in candidates]
    sized = [_size_metrics(g, config) for g in genomes]
    trainable = [g for g, (_, err) in zip(genomes, sized) if err is None]
    metrics = iter(_train_over_seeds(trainable, config, task, evaluator, on_candidate) if trainable else [])
    return [_record(c, g, size, err, next(metrics) if err is None else {}, config)
            for c, g, (size, err) in zip(candidates, genomes, sized)]


DEFAULT_METRICS = ("train_loss", "test_loss", "test_accuracy", "diverged", "steps_run")
"""The metrics every record holds (``train_candidates`` reports exactly these; an evaluator of
your own may report more, e.g. ``mad_score``)."""


def check_objectives_measured(config: EvolveConfig) -> None:
    """Refuses, before anything is trained, an objective or constraint that reads a record key
    the default evaluator never writes (``mad_error`` reads ``mad_score``, which only an evaluator
    of your own can report): otherwise the first generation would train, then fail to score.

    Raises:
        ConfigFieldError: naming the objective or constraint and the missing keys.
    """
    keys = {"hash", "genome", "short", "generation", "failure", "params", "cache_bytes", "loss", "accuracy",
            *DEFAULT_METRICS}  # what ``_record`` writes for every candidate
    if config.needs_latency():
        keys.add("latency_ms")
    uses = [(f"objectives[{i}]", name) for i, name in enumerate(config.objectives)]
    uses += [(f"constraints[{i}]", c.objective_name) for i, c in enumerate(config.constraints)]
    for where, name in uses:
        missing = [k for k in get_objective(name).needs if k not in keys]
        if missing:
            raise ConfigFieldError(field_path=f"EvolveConfig.{where}", value=name, reason=(
                f"{name!r} reads the record key(s) {missing}, which the default evaluator does not measure (it "
                f"records {sorted(keys)}); pass an evaluator that reports them (evolve(..., evaluator=...)) or "
                f"choose another objective"))


def _record(c: Candidate, g: Genome, size: dict, err: str | None, m: Mapping, config: EvolveConfig) -> EvalRecord:
    """The record of one candidate from its sizes, its build error (or None) and its metrics."""
    record = {"hash": c.hash, "genome": c.genome, "short": g.short(), "generation": int(c.generation),
              **size, "failure": err}
    for key in DEFAULT_METRICS:
        record[key] = finite_or_none(m.get(key))
    for key, value in m.items():  # extra keys an evaluator reports (e.g. mad_score)
        if key not in record and key != "params":
            record[key] = [finite_or_none(v) for v in value] if isinstance(value, list) else finite_or_none(value)
    record["loss"] = record["test_loss"]
    record["accuracy"] = None if record.get("diverged") else record["test_accuracy"]
    if config.needs_latency():
        latency = None
        if err is None:
            latency = measure_decode_latency(g, config.model, n_tokens=config.latency_tokens)
        record["latency_ms"] = latency
    return EvalRecord.from_json(_finish_record(record, config))


def evaluate_per_seed(candidates: Sequence[Candidate], config: EvolveConfig, task, evaluator: Evaluator,
                      seeds: Sequence[int],
                      on_record: Callable[[int, int, EvalRecord], None] | None = None) -> list[list[EvalRecord]]:
    """The record of every candidate at each training seed, kept apart (what a re-evaluation
    needs), rather than averaged as ``evaluate`` does with ``config.train_seeds`` > 1.

    Each record is the one ``evaluate`` gives with ``config.train.seed`` set to that seed and one
    training seed. An evaluator that takes a ``seeds`` keyword (``train_candidates``) trains all
    the runs in one call; if it also takes ``on_run``, ``on_record`` is called as each run
    finishes, so a caller can store every finished run at once. Another evaluator is called once
    per seed, and ``on_record`` after each call.

    Arguments:
        candidates: what to evaluate.
        config: the run config (``train_seeds`` is ignored).
        task: the fitness task.
        evaluator: the training function (see ``Evaluator``).
        seeds: the training seeds.
        on_record: called on the calling thread with ``(seed, candidate index, record)`` as each
            record is ready (candidates that cannot be built first).

    Returns:
        ``records[i][j]``: candidate ``j`` at ``seeds[i]``.
    """
    seeds = [int(s) for s in seeds]
    config = config.replace(train_seeds=1)
    at_seed = [config.replace(train=config.train.replace(seed=s)) for s in seeds]
    genomes = [c.to_genome() for c in candidates]
    sized = [_size_metrics(g, config) for g in genomes]
    built = [j for j, (_, err) in enumerate(sized) if err is None]
    out: list[list] = [[None] * len(candidates) for _ in seeds]

    def emit(i: int, j: int, m: Mapping) -> None:
        if out[i][j] is not None:  # already stored as it finished
            return
        out[i][j] = _record(candidates[j], genomes[j], sized[j][0], sized[j][1], m, at_seed[i])
        if on_record is not None:
            on_record(seeds[i], j, out[i][j])

    for i in range(len(seeds)):
        for j, (_, err) in enumerate(sized):
            if err is not None:
                emit(i, j, {})
    trainable = [genomes[j] for j in built]
    if trainable and seeds:
        if _takes(evaluator, "seeds"):
            extra = {"on_run": lambda i, k, m: emit(i, built[k], m)} if _takes(evaluator, "on_run") else {}
            runs = [list(run) for run in evaluator(trainable, config, task, seeds=seeds, **extra)]
            _check_runs(runs, len(seeds), len(trainable))
            for i, run in enumerate(runs):
                for k, m in enumerate(run):
                    emit(i, built[k], m)
        else:
            for i in range(len(seeds)):
                for k, m in enumerate(evaluator(trainable, at_seed[i], task)):
                    emit(i, built[k], m)
    return out


# ---------------------------------------------------------------------------------- scores
def objective_matrix(records: Sequence[EvalRecord], config: EvolveConfig) -> tuple[np.ndarray, np.ndarray]:
    """[n, n_objectives] objectives (NaN for None) and [n] violations (inf for None)."""
    records = [EvalRecord.coerce(r) for r in records]
    f = np.array([[np.nan if r.objectives[k] is None else r.objectives[k] for k in config.objectives]
                  for r in records], dtype=np.float64).reshape(len(records), len(config.objectives))
    cv = np.array([np.inf if r.violation is None else r.violation for r in records], dtype=np.float64)
    return f, cv


def _feasible_finite(records, config) -> tuple[np.ndarray, np.ndarray]:
    """The objective matrix and the mask of feasible records with finite objectives."""
    f, cv = objective_matrix(records, config)
    return f, np.all(np.isfinite(f), axis=1) & (cv <= 0)


def pareto_front(records: Sequence[EvalRecord], config: EvolveConfig) -> list[EvalRecord]:
    """The non-dominated feasible records with finite objectives, sorted by objectives.

    Arguments:
        records: evaluation records.
        config: the run config (objective names).

    Returns:
        The front's records (duplicates of one objective vector all kept).
    """
    records = list(records)
    if not records:
        return []
    f, ok = _feasible_finite(records, config)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return []
    rank = non_dominated_sort(f[idx])
    front = idx[rank == 0]
    order = np.lexsort(tuple(f[front, j] for j in reversed(range(f.shape[1]))))
    return [records[i] for i in front[order]]


def derive_reference(records: Sequence[EvalRecord], config: EvolveConfig) -> tuple[float, ...] | None:
    """Nadir + 10% of the range of the feasible finite records (None when there is none)."""
    f, ok = _feasible_finite(records, config)
    if not ok.any():
        return None
    lo, hi = f[ok].min(axis=0), f[ok].max(axis=0)
    span = hi - lo
    pad = np.where(span > 0, 0.1 * span, np.maximum(0.1 * np.abs(hi), 1e-9))
    return tuple(float(x) for x in hi + pad)


def front_hypervolume(records: Sequence[EvalRecord], config: EvolveConfig, ref) -> float:
    """The hypervolume of the feasible finite records w.r.t. ``ref`` (0 without ``ref``)."""
    if ref is None or not records:
        return 0.0
    f, ok = _feasible_finite(records, config)
    return hypervolume(f[ok], np.asarray(ref)) if ok.any() else 0.0
