"""The evolution loop: NSGA-II over genomes, every genome trained once, checkpointed each generation.
A run lives in a run directory; killing it and running the same call again resumes to the same result."""

# Resume design (what makes an interrupted run end exactly like an uninterrupted one):
# - After generation g (0 = the initial population) is evaluated and told, the checkpoint step
#   g + 1 holds the NSGA-II state (arrays + the numpy RNG state), the whole archive (every
#   evaluation record, in evaluation order), the hypervolume history and the reference point.
#   Evaluation records are appended to evaluations.jsonl *before* that checkpoint is written.
# - On start, the newest good checkpoint (a corrupt one is skipped with a warning) gives the next
#   generation s; evaluations.jsonl records of generations >= s and log lines of steps >= s are
#   dropped, so the files read as if the run had stopped right after the checkpoint.
# - Which genomes a generation evaluates depends only on the NSGA-II state (asks are drawn from
#   its RNG state); the archive only decides which of them need training. Evaluating a genome is
#   deterministic and independent of the other genomes trained in the same call (the population
#   engine reproduces `star_jax.train` per candidate), so re-evaluating the interrupted
#   generation gives the same records. Decode latency is measured, not computed, so a run with
#   the latency objective is only reproducible up to timing noise.
# - Baselines are evaluated once per run, in generation 0's training call, and never enter the
#   NSGA-II population unless seeded. Their records are part of the checkpoint (baselines.jsonl
#   is rewritten from it on resume), so every training call holds the same genomes in an
#   interrupted run as in an uninterrupted one.

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from star_jax.evolve.ask_tell import NSGA2, state_from_dict, state_to_dict
from star_jax.evolve.config import EvolveConfig
from star_jax.evolve.hypervolume import hypervolume
from star_jax.evolve.nsga2 import non_dominated_sort
from star_jax.evolve.objectives import get_objective
from star_jax.genome import Genome, GenomeError, baselines, flat_operators, random_genome
from star_jax.io.jsonutil import finite_or_none

__all__ = ["EvolveResult", "evolve", "load_run", "train_candidates", "baseline_genomes", "pareto_front",
           "record_failure", "RUN_FORMAT"]

RUN_FORMAT = "star_jax.evolve_run/1"
BASELINES_FILE = "baselines.jsonl"
EXTENSIONS_FILE = "extensions.jsonl"
"""One line per extension of a finished run by more generations (see ``evolve``)."""

Evaluator = Callable[..., list]
"""``evaluator(genomes, config, task, *, on_candidate=None) -> [metrics dict per genome]`` with the
keys of ``star_jax.train``'s final metrics (``train_loss``, ``test_loss``, ``test_accuracy``,
``diverged``, ...). It must be deterministic per genome."""


@dataclasses.dataclass(frozen=True)
class EvolveResult:
    """What an evolution run produced (also what ``load_run`` reads back from a run directory).

    Fields:
        config: the run's ``EvolveConfig``.
        run_dir: the run directory.
        generations_done: generations evaluated so far (``config.generations + 1`` when finished).
        population: the final NSGA-II population, best first.
        population_records: the evaluation record of each population member.
        pareto_front: genomes of the run's Pareto front: the non-dominated feasible records with
            finite objectives among *all* evaluated genomes (the archive), sorted by objectives.
        front_records: their evaluation records.
        archive: genome content hash -> evaluation record, in evaluation order.
        hypervolume: per generation, the hypervolume of the archive's front so far (raw objective
            units, fixed reference point; non-decreasing by construction).
        population_hypervolume: per generation, the hypervolume of the population.
        reference_point: the fixed hypervolume reference point (None until one was derived).
        baselines: evaluation records of the baselines (``"baseline"`` holds their name).
    """

    config: EvolveConfig
    run_dir: pathlib.Path
    generations_done: int
    population: tuple[Genome, ...]
    population_records: tuple[dict, ...]
    pareto_front: tuple[Genome, ...]
    front_records: tuple[dict, ...]
    archive: dict[str, dict]
    hypervolume: tuple[float, ...]
    population_hypervolume: tuple[float, ...]
    reference_point: tuple[float, ...] | None
    baselines: tuple[dict, ...]

    @property
    def finished(self) -> bool:
        """Whether every configured generation was evaluated."""
        return self.generations_done >= self.config.generations + 1


# ---------------------------------------------------------------------------------- evaluation
_WARNED: set = set()


def train_candidates(genomes: Sequence[Genome], config: EvolveConfig, task, *,
                     on_candidate: Callable[[int], None] | None = None) -> list[dict]:
    """The default evaluator: trains genomes with the population engine in one call, or one by one.

    Uses ``star_jax.population.train_population`` with ``config.strategy`` ("auto":
    "sequential", see ``star_jax.evolve.config.STRATEGIES``) when the engine and the strategy are
    available (checked at call time), else ``star_jax.train`` per genome. Both give each
    candidate the same metrics as training it alone.

    Arguments:
        genomes: the genomes to train.
        config: the run config (model, train and strategy are used).
        task: the fitness task.
        on_candidate: called with the number of candidates done so far, as they finish.

    Returns:
        One metrics dict per genome (``star_jax.train`` final metrics).
    """
    if not genomes:
        return []
    strategy = config.strategy
    if strategy == "auto":
        # one by one through the part programs: nothing compiles for a genome of known LIV kinds
        strategy = "sequential"
    if strategy != "sequential":
        try:
            from star_jax.population import STRATEGIES, train_population
        except ImportError:
            train_population, STRATEGIES = None, ()
        if train_population is not None and strategy in STRATEGIES:
            batch = list(genomes)
            pad_to = None
            if strategy == "data":
                # The compiled step is reused only for the same number of candidates: pad every
                # call to one size (padding candidates are skipped, they cost no training).
                size = config.pop_size + (len(baseline_genomes(config.n_liv)) if config.baselines else 0)
                pad_to = max(size, len(batch))
            try:
                result = train_population(batch, config.model, task, config.train, strategy=strategy,
                                          pad_to=pad_to)
            except (ImportError, NotImplementedError) as e:
                if strategy not in _WARNED:
                    _WARNED.add(strategy)
                    warnings.warn(f"population strategy {strategy!r} is unavailable ({e}); training "
                                  f"candidates one by one", RuntimeWarning, stacklevel=2)
            else:
                if on_candidate is not None:
                    on_candidate(len(genomes))
                return [dict(m) for m in result.metrics[: len(genomes)]]
    from star_jax.train import train
    from star_jax.train.parts import warm_up_genomes

    warm_up_genomes(genomes, config.model, task, config.train.batch_size)  # new LIV kinds, side by side
    out = []
    for i, g in enumerate(genomes):
        out.append(dict(train(g, config.model, task, config.train, progress=False).metrics))
        if on_candidate is not None:
            on_candidate(i + 1)
    return out


def _size_metrics(genome: Genome, config: EvolveConfig) -> tuple[dict, str | None]:
    """Analytic params and cache bytes, or the error that makes the genome unbuildable."""
    from star_jax.metrics import cache_bytes, param_count
    from star_jax.model import ConfigError, compile_genome

    try:
        program = compile_genome(genome, config.model)
        return {"params": param_count(program),
                "cache_bytes": cache_bytes(program, seq_len=config.cache_seq_len,
                                           bytes_per_elem=config.cache_bytes_per_elem)}, None
    except (GenomeError, ConfigError, ValueError) as e:
        return {"params": None, "cache_bytes": None}, f"{type(e).__name__}: {e}"


def record_failure(record: dict) -> str | None:
    """Why an evaluation record's genome could not be built or evaluated (None: it was).

    The top-level field is ``failure``; records written before it was renamed call it
    ``error`` (not to be confused with ``objectives["error"]``, 1 - accuracy), and both are read.

    Arguments:
        record: an evaluation record.

    Returns:
        The failure message, or None.
    """
    return record.get("failure", record.get("error") if isinstance(record.get("error"), str) else None)


def _upgrade_record(record: dict) -> dict:
    """A record with the current field names: an old top-level ``error`` (a failure message or
    null) becomes ``failure``, in the same place."""
    if not isinstance(record, dict) or "failure" in record or "error" not in record:
        return record
    return {("failure" if k == "error" else k): v for k, v in record.items()}


def _finish_record(record: dict, config: EvolveConfig) -> dict:
    """Adds objectives and the total constraint violation (None stands for non-finite)."""
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


_MEAN_KEYS = ("train_loss", "test_loss", "test_accuracy")


def _train_over_seeds(genomes: Sequence[Genome], config: EvolveConfig, task, evaluator: Evaluator,
                      on_candidate=None) -> list[dict]:
    """Metrics of each genome over ``config.train_seeds`` training seeds (one evaluator call per
    seed): losses and accuracy averaged, ``diverged`` if any seed diverged, and the per-seed
    accuracies (``seed_test_accuracy``) with their sd (``test_accuracy_sd``) recorded."""
    r = config.train_seeds
    if r == 1:
        return list(evaluator(genomes, config, task, on_candidate=on_candidate))
    runs = []
    for i in range(r):
        cfg = config.replace(train=config.train.replace(seed=config.train.seed + i))
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


def _evaluate(genomes: Sequence[Genome], config: EvolveConfig, task, generation: int,
              evaluator: Evaluator, on_candidate=None) -> list[dict]:
    """Evaluation records of genomes: sizes, training (over ``config.train_seeds`` seeds),
    optional latency, objectives."""
    sizes, errors = [], []
    for g in genomes:
        s, err = _size_metrics(g, config)
        sizes.append(s)
        errors.append(err)
    trainable = [g for g, e in zip(genomes, errors) if e is None]
    metrics = iter(_train_over_seeds(trainable, config, task, evaluator, on_candidate) if trainable else [])
    records = []
    for g, size, err in zip(genomes, sizes, errors):
        record = {"hash": g.content_hash(), "genome": g.to_string(), "short": g.short(),
                  "generation": int(generation), **size, "failure": err}
        m = next(metrics) if err is None else {}
        for key in ("train_loss", "test_loss", "test_accuracy", "diverged", "steps_run"):
            record[key] = finite_or_none(m.get(key))
        for key, value in m.items():  # extra keys an evaluator reports (e.g. mad_score)
            if key not in record and key != "params":
                record[key] = [finite_or_none(v) for v in value] if isinstance(value, list) else finite_or_none(value)
        record["loss"] = record["test_loss"]
        record["accuracy"] = None if record.get("diverged") else record["test_accuracy"]
        if config.needs_latency():
            latency = None
            if err is None:
                from star_jax.evolve.latency import measure_decode_latency

                latency = measure_decode_latency(g, config.model, n_tokens=config.latency_tokens)
            record["latency_ms"] = latency
        records.append(_finish_record(record, config))
    return records


def _objective_matrix(records: Sequence[dict], config: EvolveConfig) -> tuple[np.ndarray, np.ndarray]:
    """[n, n_objectives] objectives (NaN for None) and [n] violations (inf for None)."""
    f = np.array([[np.nan if r["objectives"][k] is None else r["objectives"][k] for k in config.objectives]
                  for r in records], dtype=np.float64).reshape(len(records), len(config.objectives))
    cv = np.array([np.inf if r["violation"] is None else r["violation"] for r in records], dtype=np.float64)
    return f, cv


def pareto_front(records: Sequence[dict], config: EvolveConfig) -> list[dict]:
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
    f, cv = _objective_matrix(records, config)
    ok = np.all(np.isfinite(f), axis=1) & (cv <= 0)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return []
    rank = non_dominated_sort(f[idx])
    front = idx[rank == 0]
    order = np.lexsort(tuple(f[front, j] for j in reversed(range(f.shape[1]))))
    return [records[i] for i in front[order]]


def _derive_reference(records: Sequence[dict], config: EvolveConfig) -> tuple[float, ...] | None:
    """Nadir + 10% of the range of the feasible finite records (None when there is none)."""
    f, cv = _objective_matrix(records, config)
    ok = np.all(np.isfinite(f), axis=1) & (cv <= 0)
    if not ok.any():
        return None
    lo, hi = f[ok].min(axis=0), f[ok].max(axis=0)
    span = hi - lo
    pad = np.where(span > 0, 0.1 * span, np.maximum(0.1 * np.abs(hi), 1e-9))
    return tuple(float(x) for x in hi + pad)


def _hv(records: Sequence[dict], config: EvolveConfig, ref) -> float:
    if ref is None or not records:
        return 0.0
    f, cv = _objective_matrix(records, config)
    ok = np.all(np.isfinite(f), axis=1) & (cv <= 0)
    return hypervolume(f[ok], np.asarray(ref)) if ok.any() else 0.0


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
    if n_liv < 2 or n_liv % 2:
        return {}
    return {
        "Transformer++": baselines.transformer_pp(n_liv),
        "StripedMamba": baselines.striped_mamba(n_liv, attention_every=min(4, n_liv // 2)),
        "LFM2-like": baselines.lfm2_like(n_liv // 2),
    }


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
    return NSGA2(pop_size=config.pop_size, n_objectives=len(config.objectives),
                 mutation_prob=config.mutation_prob, crossover_points=config.crossover_points,
                 elitism=config.elitism, mutate=mutate, crossover=crossover, repair=repair)


# ---------------------------------------------------------------------------------- run state
def _write_baselines(path: pathlib.Path, records: Sequence[dict]) -> None:
    """Rewrites baselines.jsonl atomically with exactly these records."""
    import json

    from star_jax.io.jsonutil import fsync_dir

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _result(config, rd, gen_done, state, archive, hv, pop_hv, ref, baseline_records) -> EvolveResult:
    pop = tuple(Genome.from_array(g) for g in state.population) if gen_done else ()
    pop_records = tuple(archive[g.content_hash()] for g in pop)
    front = pareto_front(list(archive.values()), config)
    return EvolveResult(
        config=config, run_dir=rd.path, generations_done=int(gen_done), population=pop,
        population_records=pop_records, pareto_front=tuple(Genome.from_string(r["genome"]) for r in front),
        front_records=tuple(front), archive=dict(archive), hypervolume=tuple(hv),
        population_hypervolume=tuple(pop_hv), reference_point=None if ref is None else tuple(ref),
        baselines=tuple(baseline_records),
    )


def _recorded(rd) -> dict[str, dict]:
    """Every evaluation the run directory records (``evaluations.jsonl``, then baselines not in
    it), by genome hash: what a rebuild replays instead of training again."""
    out: dict[str, dict] = {}
    baselines_path = rd.path / BASELINES_FILE
    from star_jax.io.jsonutil import read_jsonl

    for r in read_jsonl(baselines_path) if baselines_path.exists() else []:
        if isinstance(r, dict) and "hash" in r:
            out[r["hash"]] = _upgrade_record(r)
    for r in rd.read_evaluations():
        if isinstance(r, dict) and "hash" in r:
            out[r["hash"]] = _upgrade_record(r)
    return out


def _replayed(record: dict, generation: int) -> dict:
    """A recorded evaluation as the loop would have made it in ``generation``."""
    out = {k: v for k, v in record.items() if k != "baseline"}
    out["generation"] = int(generation)
    return out


def _restore(rd, strategy: NSGA2, config: EvolveConfig):
    """Latest good checkpoint -> (next generation, state, archive, hv, pop_hv, ref, baselines)."""
    manager = rd.checkpoint_manager(keep=3)
    if manager.latest_step() is None:
        return None
    arrays, meta, step = manager.restore()
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        from star_jax.io import CheckpointError

        raise CheckpointError(f"checkpoint step {step} in {manager.directory} is not an evolution run state")
    state = state_from_dict(arrays["nsga2"], meta["nsga2"])
    archive = {r["hash"]: _upgrade_record(r) for r in meta["archive"]}
    ref = meta["reference_point"]
    return (int(step), state, archive, list(meta["hypervolume"]), list(meta["population_hypervolume"]),
            None if ref is None else tuple(ref), [_upgrade_record(r) for r in meta["baselines"]])


def load_run(run_dir) -> EvolveResult:
    """Reads a run directory's latest good checkpoint (no training).

    Arguments:
        run_dir: the run directory.

    Returns:
        The ``EvolveResult`` as of the last completed generation.

    Raises:
        RunDirError: no run, or no checkpoint yet.
    """
    from star_jax.io import RunDir, RunDirError

    from star_jax.io import CheckpointError

    rd = RunDir(run_dir)
    config = EvolveConfig.from_dict(rd.read_config())
    try:
        restored = _restore(rd, _make_strategy(config), config)
    except CheckpointError as e:
        raise CheckpointError(f"{e}\nRun `star-jax evolve` on {rd.path} with its config to rebuild the run from "
                              f"{rd.evaluations_path.name} (nothing recorded is trained again).") from None
    if restored is None:
        raise RunDirError(f"{rd.path} has no checkpoint yet (the first generation did not finish)")
    return _result(config, rd, *restored)


def _extend(rd, config: EvolveConfig) -> bool:
    """Extends the run in ``rd`` to ``config.generations`` when its recorded config differs from
    ``config`` only by fewer generations: records the extension in ``extensions.jsonl`` and
    rewrites ``config.json`` (in that order; a kill between the two repeats nothing).

    Returns:
        Whether the run was extended.

    Raises:
        RunConfigMismatch: only ``generations`` differs and it is smaller than the recorded one.
    """
    import datetime
    import json

    from star_jax.io import RunConfigMismatch
    from star_jax.io.jsonutil import append_jsonl, read_jsonl, to_jsonable, write_json_atomic
    from star_jax.io.rundir import config_diff

    if not rd.exists():
        return False
    old = rd.read_config()
    new = json.loads(json.dumps(to_jsonable(config.to_dict())))
    diff = config_diff(old, new)
    if len(diff) != 1 or not diff[0].startswith("generations:") or not _is_count(old.get("generations")):
        return False
    before = old["generations"]
    if config.generations < before:
        raise RunConfigMismatch(
            f"run directory {rd.path} was started with generations = {before}; a run can be extended "
            f"(a larger value) but not shortened. load_run reads it as it is; to stop earlier, start a "
            f"fresh run with another --run-dir")
    path = rd.path / EXTENSIONS_FILE
    done = [r for r in (read_jsonl(path) if path.exists() else []) if isinstance(r, dict)]
    if not (done and done[-1].get("from_generations") == before
            and done[-1].get("to_generations") == config.generations):
        append_jsonl(path, {"from_generations": before, "to_generations": config.generations,
                            "seed": config.seed,
                            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    write_json_atomic(rd.config_path, new)
    return True


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _eta(gen_seconds: dict[int, float], left: int) -> str:
    """The time the ``left`` next generations should take, from this process's generations so far:
    the mean of its offspring generations (generation 0 also trains the baselines and compiles
    most programs), or generation 0's time when it is the only one."""
    if left <= 0:
        return "done"
    offspring = [t for g, t in gen_seconds.items() if g > 0]
    per_gen = sum(offspring) / len(offspring) if offspring else gen_seconds[0]
    return f"ETA {_clock(left * per_gen)} for {left} more generation{'s' if left > 1 else ''}"


# ---------------------------------------------------------------------------------- the loop
class _Display:
    """Rich progress on stderr: generation bar (with ETA) and candidate bar, and one line per finished
    generation (with the ETA of the rest: the bars are not drawn where stderr is not a terminal);
    a no-op when disabled."""

    def __init__(self, enabled: bool, total_generations: int, done: int):
        self.progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.progress.start()
        self.gen_task = self.progress.add_task("generation", total=total_generations, completed=done)
        self.cand_task = self.progress.add_task("candidates", total=1)

    def start_generation(self, gen: int, n_new: int, n_cached: int) -> None:
        if self.progress:
            self.progress.update(self.gen_task, description=f"generation {gen}")
            self.progress.reset(self.cand_task, total=max(n_new, 1),
                                description=f"training {n_new} new ({n_cached} cached)")
            if n_new == 0:
                self.progress.update(self.cand_task, completed=1)

    def candidate(self, done: int) -> None:
        if self.progress:
            self.progress.update(self.cand_task, completed=done)

    def end_generation(self, message: str) -> None:
        if self.progress:
            self.progress.advance(self.gen_task)
            self.progress.console.print(message, soft_wrap=True, highlight=False, markup=False)

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()


def evolve(config: EvolveConfig, run_dir, *, progress: bool = True, evaluator: Evaluator | None = None,
           resume: bool = True) -> EvolveResult:
    """Runs (or resumes) a multi-objective evolution of genomes with NSGA-II.

    Generation 0 evaluates the initial population; each of the ``config.generations`` next ones
    breeds ``pop_size`` offspring (tournament, k-point crossover, per-gene mutation, repair),
    evaluates the genomes never seen before in one training call, and keeps ``pop_size``
    survivors (constrained rank and crowding, elitism). Every genome is trained at most once
    per run: the archive maps ``genome.content_hash()`` to its record, and is restored on resume.

    Records (``evaluations.jsonl``, one per new genome) hold ``hash``, ``genome``, ``short``,
    ``generation``, ``params``, ``cache_bytes``, the training metrics (``train_loss``,
    ``test_loss``, ``test_accuracy``, ``diverged``, ``steps_run``; ``loss``/``accuracy`` as the
    objectives read them; non-finite values stored as null), ``failure`` (why a genome could not
    be built, else null; records of older runs call it ``error`` and are read with it renamed,
    see ``record_failure``), ``objectives`` (name -> value, null = worst; ``objectives["error"]``
    is 1 - accuracy) and ``violation``.

    Extending a run: a config that differs from the run's recorded one only by a larger
    ``generations`` continues it (finished or not) to that many generations, e.g.
    ``evolve(load_run(run_dir).config.replace(generations=30), run_dir)`` or
    ``star-jax evolve --run-dir RUN --generations 30``. The NSGA-II state, with its random
    generator, is restored from the last checkpoint, so the run draws the same seed stream and
    ends exactly as a run started with that many generations; ``config.json`` is updated and
    ``extensions.jsonl`` records each extension (from, to, seed, time).

    Hypervolume is computed in raw objective units w.r.t. a reference point fixed for the run
    (``config.reference_point``, or derived once from generation 0 as nadir + 10% of the range
    and stored in the checkpoint), over the feasible finite points: the archive's (logged as
    ``hypervolume``, non-decreasing) and the current population's.

    Arguments:
        config: the run config.
        run_dir: the run directory (created; an existing run with the same config is resumed).
        progress: show progress bars and print the final Pareto front table.
            JAX's persistent compilation cache is turned on (``star_jax.compile_cache``).
        evaluator: training function (default ``train_candidates``); see ``Evaluator``.
        resume: if False, an existing run in ``run_dir`` is an error.

    Returns:
        The ``EvolveResult``.

    Raises:
        RunConfigMismatch: ``run_dir`` holds a run started with a different config (other than
            a larger ``generations``, which extends it).

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
    from star_jax.compile_cache import enable_compilation_cache
    from star_jax.io import CheckpointError, MetricLogger, RunDir

    if not isinstance(config, EvolveConfig):
        raise TypeError(f"config must be an EvolveConfig, got {type(config).__name__}")
    enable_compilation_cache()  # off with STAR_JAX_CACHE_DIR=off
    evaluator = evaluator or train_candidates
    task = config.make_task()
    rd = RunDir(run_dir)
    with rd.lock():  # one writer per run directory
        if resume:
            _extend(rd, config)
        rd.init(config.to_dict(), resume=resume)
        strategy = _make_strategy(config)
        replay: dict[str, dict] = {}  # hash -> recorded record, when rebuilding from the records
        try:
            restored = _restore(rd, strategy, config)
        except CheckpointError as e:
            replay = _recorded(rd)
            if not replay:
                raise CheckpointError(f"{e}\n{rd.evaluations_path} holds no records to rebuild the run from; "
                                      f"start a fresh run with another --run-dir") from None
            warnings.warn(f"no checkpoint in {rd.checkpoints_dir} is readable; rebuilding the run from the "
                          f"{len(replay)} records of {rd.evaluations_path} (the seeded search is replayed with "
                          f"the recorded objectives; nothing recorded is trained again)", RuntimeWarning,
                          stacklevel=2)
            restored = None
        if restored is None:
            state = strategy.init(config.seed, _initial_population(config))
            start, archive, hv, pop_hv, ref, baseline_records = 0, {}, [], [], None, []
        else:
            start, state, archive, hv, pop_hv, ref, baseline_records = restored
        if ref is None and config.reference_point is not None:
            ref = config.reference_point
        rd.filter_evaluations(lambda r: not (isinstance(r, dict) and isinstance(r.get("generation"), int)
                                             and r["generation"] >= start))
        baselines_path = rd.path / BASELINES_FILE
        _write_baselines(baselines_path, baseline_records)
        missing_baselines = {} if not (config.baselines and start == 0) else {
            name: g for name, g in baseline_genomes(config.n_liv).items()
            if name not in {r["baseline"] for r in baseline_records}}
        total = config.generations + 1
        logger = MetricLogger(rd, purge_step=start)
        display = _Display(progress, total, start)
        manager = rd.checkpoint_manager(keep=3)
        gen_seconds: dict[int, float] = {}
        try:
            for gen in range(start, total):
                t0 = time.perf_counter()
                flat, state = strategy.ask(state)
                genomes = [Genome.from_array(f) for f in flat]
                new: dict[str, Genome] = {}
                for g in genomes:
                    h = g.content_hash()
                    if h not in archive and h not in new:
                        new[h] = g
                extra = {}  # baselines trained in the same call, once per run
                for name, g in missing_baselines.items():
                    if g.content_hash() not in new:
                        extra[name] = g
                batch = list(new.values()) + list(extra.values())
                reused = [_replayed(replay[g.content_hash()], gen) for g in batch if g.content_hash() in replay]
                batch = [g for g in batch if g.content_hash() not in replay]
                display.start_generation(gen, len(batch), len(genomes) - len(new) + len(reused))
                records = _evaluate(batch, config, task, gen, evaluator, on_candidate=display.candidate) + reused
                by_hash = {r["hash"]: r for r in records}
                for name, g in missing_baselines.items():
                    rec = dict(by_hash[g.content_hash()], baseline=name)
                    rec["generation"] = None
                    baseline_records.append(rec)
                if missing_baselines:
                    _write_baselines(baselines_path, baseline_records)
                missing_baselines = {}
                for h in new:
                    archive[h] = by_hash[h]
                    rd.append_evaluation(by_hash[h])
                gen_records = [archive[g.content_hash()] for g in genomes]
                f, cv = _objective_matrix(gen_records, config)
                state = strategy.tell(state, flat, f, cv)
                if ref is None:
                    ref = _derive_reference(gen_records, config)
                pop_records = [archive[Genome.from_array(g).content_hash()] for g in state.population]
                hv.append(_hv(list(archive.values()), config, ref))
                pop_hv.append(_hv(pop_records, config, ref))
                front = pareto_front(list(archive.values()), config)
                seconds = time.perf_counter() - t0
                metrics = {"evaluated": len(new), "archive_size": len(archive), "front_size": len(front),
                           "hypervolume": hv[-1], "population_hypervolume": pop_hv[-1], "seconds": seconds}
                pop_f, _ = _objective_matrix(pop_records, config)
                for j, name in enumerate(config.objectives):
                    col = pop_f[:, j][np.isfinite(pop_f[:, j])]
                    if col.size:
                        metrics[f"best/{name}"] = float(col.min())
                logger.log(gen, metrics)
                arrays, nsga_meta = state_to_dict(state)
                manager.save(gen + 1, {"nsga2": arrays}, meta={
                    "format": RUN_FORMAT, "generation": gen + 1, "nsga2": nsga_meta,
                    "archive": list(archive.values()), "hypervolume": hv, "population_hypervolume": pop_hv,
                    "reference_point": None if ref is None else list(ref), "baselines": baseline_records})
                best = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("best/"))
                gen_seconds[gen] = time.perf_counter() - t0
                display.end_generation(f"generation {gen}/{total - 1}: {len(new)} new, front {len(front)}, "
                                       f"hypervolume {hv[-1]:.4g}, {best}, {gen_seconds[gen]:.1f}s, "
                                       f"{_eta(gen_seconds, total - gen - 1)}")
        finally:
            display.stop()
            logger.close()
            manager.close()
        result = _result(config, rd, max(start, total), state, archive, hv, pop_hv, ref, baseline_records)
        if progress:
            from star_jax.evolve.report import print_front

            print_front(result)
        return result
