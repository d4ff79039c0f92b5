"""A run's state in memory and in its run directory: the archive rebuilt from the JSONL records, the
checkpointed NSGA-II state, resume, extension and ``load_run``. The loop itself is in ``loop.py``."""

# Resume design (what makes an interrupted run end exactly like an uninterrupted one):
# - The archive is the records: ``evaluations.jsonl`` (one line per genome, in evaluation order)
#   and ``baselines.jsonl``. A checkpoint holds only what they cannot give back (`RunState`): the
#   NSGA-II state (arrays + the numpy RNG state), the hypervolume history, the reference point,
#   how many records the archive holds and the baselines' hashes.
# - After generation g (0 = the initial population) is evaluated and told, its records are
#   appended (baselines.jsonl in generation 0 first), then checkpoint step g + 1 is written.
# - On start, the newest good checkpoint (a corrupt one is skipped with a warning) gives the next
#   generation s; the archive is the records of generations < s, checked against the checkpoint
#   (a mismatch is a CheckpointError: the run is then rebuilt from the records). Records of
#   generations >= s and log lines of steps >= s are dropped, so the files read as if the run had
#   stopped right after the checkpoint. Checkpoints of format /1 also hold a copy of every record:
#   it is ignored.
# - Which genomes a generation evaluates depends only on the NSGA-II state (asks are drawn from
#   its RNG state); the archive only decides which of them need training. Evaluating a genome is
#   deterministic and independent of the other genomes trained in the same call (the population
#   engine reproduces `star_jax.train` per candidate), so re-evaluating the interrupted
#   generation gives the same records. Decode latency is measured, not computed, so a run with
#   the latency objective is only reproducible up to timing noise.
# - Baselines are evaluated once per run, in generation 0's training call, and never enter the
#   NSGA-II population unless seeded; a run resumed before checkpoint 1 trains them again, so
#   every training call holds the same genomes in an interrupted run as in an uninterrupted one.
# - A rebuild (no readable checkpoint) first writes every record it will replay to
#   ``replay.jsonl``, then clears the record files it replays into; a later start (a rebuild or a
#   checkpoint written by the rebuild) serves genomes from that file before training any, so a
#   rebuild killed half-way loses no recorded training.

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from star_jax.evolve.ask_tell import NSGA2State
from star_jax.evolve.config import EvolveConfig
from star_jax.evolve.evaluation import (baseline_genomes, derive_reference, front_hypervolume,
                                        objective_matrix, pareto_front)
from star_jax.evolve.records import RUN_FORMAT, Candidate, EvalRecord, RunState
from star_jax.genome import Genome, class_table
from star_jax.io import CheckpointError, RunConfigMismatch, RunDir, RunDirError
from star_jax.io.atomic import atomic_write_text
from star_jax.io.jsonutil import (append_jsonl, jsonl_line, read_jsonl, rewrite_jsonl, to_jsonable,
                                  write_json_atomic)
from star_jax.io.rundir import config_diff

__all__ = ["EvolveResult", "Run", "load_run", "extend_run", "complete_config", "RUN_FORMAT", "BASELINES_FILE", "EXTENSIONS_FILE"]

BASELINES_FILE = "baselines.jsonl"
CLASSES_FILE = "classes.json"
"""The LIV classes registered when the run started (``star_jax.genome.class_table``)."""
REPLAY_FILE = "replay.jsonl"
"""The records a rebuild replays, kept until the run directory is deleted (see the design notes)."""
EXTENSIONS_FILE = "extensions.jsonl"
"""One line per extension of a finished run by more generations (see ``evolve``)."""


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
        baselines: evaluation records of the baselines (``baseline`` holds their name).
        reevaluation: the re-evaluation over training seeds (``config.reevaluate_seeds``) when
            ``evolve`` ran one; None otherwise (``star_jax.evolve.reevaluate`` reads or makes it).
    """

    config: EvolveConfig
    run_dir: pathlib.Path
    generations_done: int
    population: tuple[Genome, ...]
    population_records: tuple[EvalRecord, ...]
    pareto_front: tuple[Genome, ...]
    front_records: tuple[EvalRecord, ...]
    archive: dict[str, EvalRecord]
    hypervolume: tuple[float, ...]
    population_hypervolume: tuple[float, ...]
    reference_point: tuple[float, ...] | None
    baselines: tuple[EvalRecord, ...]
    reevaluation: Any = None

    @property
    def finished(self) -> bool:
        """Whether every configured generation was evaluated."""
        return self.generations_done >= self.config.generations + 1


def _checkpoint_error(message: str):
    return CheckpointError(message)


def _records(path: pathlib.Path) -> list[EvalRecord]:
    """The records of a JSONL file (lines that are not records, e.g. without a hash, skipped)."""
    out = []
    for r in read_jsonl(path) if path.exists() else []:
        if isinstance(r, dict) and "hash" in r:
            out.append(EvalRecord.from_json(r))
    return out


def _before(generation: int) -> Callable[[Any], bool]:
    """Whether a record (or its JSON) belongs to the run as of checkpoint step ``generation``."""
    def keep(r) -> bool:
        g = r.get("generation") if hasattr(r, "get") else None
        return not (isinstance(g, int) and not isinstance(g, bool) and g >= generation)
    return keep


def check_classes(rd, resumed: bool) -> None:
    """Records the LIV classes a new run searches over (``classes.json``), or refuses to go on
    with a run whose classes this process defines otherwise.

    Genomes are stored as class ids and the search draws from every registered class, so a run
    continued in a process that registers other user classes (or the same ones in another order,
    so under other ids) would build other models for its recorded genomes, or breed other
    offspring, without a word. A run directory written before the table existed adopts the
    current one.

    Raises:
        RunConfigMismatch: the registered classes differ from the run's (the message names each
            differing id and says what to register).
    """
    path = rd.path / CLASSES_FILE
    current = json.loads(json.dumps(class_table()))  # as it reads back (tuples become lists)
    if not resumed or not path.exists():
        write_json_atomic(path, current)
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is unreadable ({e}); it records the run's LIV classes: restore it, or "
                          f"delete it to adopt the classes registered now") from None
    if recorded == current:
        return

    def name(table, cid):
        c = table[cid]
        return f"{c.get('name')} [{c.get('operator')}]" if isinstance(c, dict) else repr(c)

    lines = [f"class {cid}: the run's is {name(recorded, cid)}, this process's {name(current, cid)}"
             for cid in recorded if cid in current and recorded[cid] != current[cid]]
    lines += [f"class {cid} ({name(recorded, cid)}) is not registered here" for cid in recorded if cid not in current]
    lines += [f"class {cid} ({name(current, cid)}) is registered here but not in the run (the search would draw it)"
              for cid in current if cid not in recorded]
    raise RunConfigMismatch(f"run directory {rd.path} was made with other LIV classes than this process "
                            f"registers ({path}):\n  " + "\n  ".join(lines)
                            + "\nRegister the run's classes under the same ids, and no others, before "
                              "continuing it; or pass another --run-dir.")


@dataclasses.dataclass
class Run:
    """A run in memory: the NSGA-II state, the archive (hash -> record, in evaluation order), the
    baselines, the hypervolume history, and where to write them.

    Built by ``Run.open`` (fresh, resumed from a checkpoint, or rebuilt from the records);
    ``evolve`` moves it through ask -> ``plan`` -> evaluate -> ``add`` -> tell -> ``score`` ->
    ``save``.
    """

    rd: Any
    config: EvolveConfig
    start: int
    nsga2: NSGA2State
    archive: dict[str, EvalRecord]
    baselines: list[EvalRecord]
    hypervolume: list[float]
    population_hypervolume: list[float]
    reference_point: tuple[float, ...] | None
    replay: dict[str, EvalRecord] = dataclasses.field(default_factory=dict)
    """hash -> recorded record, when the run is rebuilt from its records (nothing is trained again)."""
    new: list[EvalRecord] = dataclasses.field(default_factory=list)
    """The records the last ``add`` put into the archive."""

    # ------------------------------------------------------------------ open
    @classmethod
    def restore(cls, rd, config: EvolveConfig) -> "Run | None":
        """The run as of the newest good checkpoint, its archive rebuilt from the records; None
        when there is no checkpoint. Writes nothing.

        Raises:
            CheckpointError: the checkpoint is not an evolution run state, or the records do
                not hold what it needs (the message says what is missing).
        """
        with rd.checkpoint_manager(keep=3) as manager:
            if manager.latest_step() is None:
                return None
            arrays, meta, step = manager.restore()
            where = f"checkpoint step {step} in {manager.directory}"
        try:
            state = RunState.from_json(meta, arrays)
        except (ValueError, KeyError, TypeError) as e:
            raise _checkpoint_error(f"{where} is not a readable evolution run state: {e}") from None
        keep = _before(step)
        archive: dict[str, EvalRecord] = {}
        for r in _records(rd.evaluations_path):
            if keep(r):
                archive[r.hash] = r
        baselines = {r.baseline: r for r in _records(rd.path / BASELINES_FILE)}
        missing = [f"population genome {Genome.from_array(g).to_string()}" for g in state.nsga2.population
                   if Genome.from_array(g).content_hash() not in archive]
        missing += [f"baseline {name}" for name, h in state.baselines.items()
                    if name not in baselines or baselines[name].hash != h]
        if state.evaluations is not None and state.evaluations != len(archive):
            missing.append(f"{state.evaluations} records of generations < {step} (it holds {len(archive)})")
        if missing:
            raise _checkpoint_error(f"{where} does not match the run's records: {rd.evaluations_path.name} / "
                                    f"{BASELINES_FILE} lack {'; '.join(missing[:3])}"
                                    + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        return cls(rd, config, int(step), state.nsga2, archive, [baselines[name] for name in state.baselines],
                   list(state.hypervolume), list(state.population_hypervolume), state.reference_point)

    @classmethod
    def open(cls, rd, config: EvolveConfig, fresh: Callable[[], NSGA2State]) -> "Run":
        """The run to continue in ``rd`` (which holds ``config``), and its files set to match.

        From the newest good checkpoint; when none is readable but records exist, rebuilt by
        replaying the seeded search with the recorded records (a ``RuntimeWarning``); else a
        fresh run from ``fresh()``. Records of generations not yet checkpointed are dropped.

        Raises:
            CheckpointError: no checkpoint is readable and there is no record to rebuild from.
        """
        try:
            run = cls.restore(rd, config)
        except CheckpointError as e:
            pending = rd.path / REPLAY_FILE
            replay = {r.hash: r for r in _records(pending) + _records(rd.path / BASELINES_FILE)
                      + _records(rd.evaluations_path)}
            if not replay:
                raise CheckpointError(f"{e}\n{rd.evaluations_path} holds no records to rebuild the run from; "
                                      f"start a fresh run with another --run-dir") from None
            warnings.warn(f"no checkpoint in {rd.checkpoints_dir} is readable; rebuilding the run from the "
                          f"{len(replay)} records of {rd.evaluations_path} (the seeded search is replayed with "
                          f"the recorded objectives; nothing recorded is trained again)", RuntimeWarning,
                          stacklevel=3)
            # on disk before the record files are cleared below: a rebuild killed half-way loses nothing
            atomic_write_text(pending, "".join(jsonl_line(r.to_json()) for r in replay.values()))
            run = cls(rd, config, 0, fresh(), {}, [], [], [], None, replay)
        if run is None:
            run = cls(rd, config, 0, fresh(), {}, [], [], [], None)
        elif not run.replay and (rd.path / REPLAY_FILE).exists():  # a rebuild that checkpointed, then stopped
            run.replay = {r.hash: r for r in _records(rd.path / REPLAY_FILE)}
        if run.reference_point is None and config.reference_point is not None:
            run.reference_point = tuple(config.reference_point)
        rd.filter_evaluations(_before(run.start))
        path = rd.path / BASELINES_FILE
        if run.start == 0:  # baselines are trained (again) in generation 0
            rewrite_jsonl(path, lambda r: False)
            path.touch()
        return run

    # ------------------------------------------------------------ a generation
    def plan(self, generation: int, genomes: Sequence[Genome]) -> tuple[list[Candidate], list[EvalRecord], int]:
        """What generation ``generation`` must evaluate for the asked ``genomes``.

        Returns:
            (candidates to train: genomes not in the archive, then the baselines in generation
            0; records replayed from a rebuild instead of training; how many asked genomes are
            served without training).
        """
        origin = "initial" if generation == 0 else "offspring"
        todo: dict[str, Candidate] = {}
        for g in genomes:
            h = g.content_hash()
            if h not in self.archive and h not in todo:
                todo[h] = Candidate.of(g, generation, origin)
        for name, g in self.missing_baselines().items():
            todo.setdefault(g.content_hash(), Candidate.of(g, generation, "baseline", name))
        reused = [self.replay[h].replace(generation=int(generation), baseline=None) for h in todo if h in self.replay]
        train = [c for h, c in todo.items() if h not in self.replay]
        n_new = sum(1 for c in todo.values() if c.origin != "baseline")
        return train, reused, len(genomes) - n_new + len(reused)

    def missing_baselines(self) -> dict[str, Genome]:
        """The baselines still to evaluate: all of them in generation 0, when the run has any."""
        if not self.config.baselines or self.start != 0 or self.baselines:
            return {}
        return baseline_genomes(self.config.n_liv)

    def add(self, genomes: Sequence[Genome], records: Sequence[EvalRecord]) -> list[EvalRecord]:
        """Adds a generation's records: the baselines (to ``baselines.jsonl``), then the asked
        genomes new to the archive (to ``evaluations.jsonl``, in order).

        Returns:
            The asked genomes' records, in ``genomes`` order (one per asked genome).
        """
        by_hash = {r.hash: r for r in records}
        missing = self.missing_baselines()
        for name, g in missing.items():
            record = by_hash[g.content_hash()].replace(generation=None, baseline=name)
            self.baselines.append(record)
            append_jsonl(self.rd.path / BASELINES_FILE, record.to_json())
        self.new = []
        for g in genomes:
            h = g.content_hash()
            if h not in self.archive:
                self.archive[h] = by_hash[h]
                self.rd.append_evaluation(by_hash[h].to_json())
                self.new.append(by_hash[h])
        return [self.archive[g.content_hash()] for g in genomes]

    def score(self, generation_records: Sequence[EvalRecord], seconds: float) -> dict[str, float]:
        """After a tell: the hypervolume history grows by one; the generation's metrics."""
        config = self.config
        if self.reference_point is None:
            self.reference_point = derive_reference(generation_records, config)
        population = self.population_records()
        archive = list(self.archive.values())
        self.hypervolume.append(front_hypervolume(archive, config, self.reference_point))
        self.population_hypervolume.append(front_hypervolume(population, config, self.reference_point))
        metrics = {"evaluated": len(self.new), "archive_size": len(self.archive),
                   "front_size": len(pareto_front(archive, config)), "hypervolume": self.hypervolume[-1],
                   "population_hypervolume": self.population_hypervolume[-1], "seconds": seconds}
        pop_f, _ = objective_matrix(population, config)
        for j, name in enumerate(config.objectives):
            col = pop_f[:, j][np.isfinite(pop_f[:, j])]
            if col.size:
                metrics[f"best/{name}"] = float(col.min())
        return metrics

    def population_records(self) -> list[EvalRecord]:
        return [self.archive[Genome.from_array(g).content_hash()] for g in self.nsga2.population]

    def save(self, manager, step: int) -> None:
        """Writes checkpoint ``step`` (the next generation to evaluate)."""
        state = RunState(generation=step, nsga2=self.nsga2, hypervolume=tuple(self.hypervolume),
                         population_hypervolume=tuple(self.population_hypervolume),
                         reference_point=self.reference_point, evaluations=len(self.archive),
                         baselines={r.baseline: r.hash for r in self.baselines})
        manager.save(step, state.to_arrays(), meta=state.to_json())

    def result(self, generations_done: int) -> EvolveResult:
        """The ``EvolveResult`` of the run as it stands."""
        pop = tuple(Genome.from_array(g) for g in self.nsga2.population) if generations_done else ()
        front = pareto_front(list(self.archive.values()), self.config)
        return EvolveResult(
            config=self.config, run_dir=self.rd.path, generations_done=int(generations_done), population=pop,
            population_records=tuple(self.archive[g.content_hash()] for g in pop),
            pareto_front=tuple(Genome.from_string(r.genome) for r in front), front_records=tuple(front),
            archive=dict(self.archive), hypervolume=tuple(self.hypervolume),
            population_hypervolume=tuple(self.population_hypervolume),
            reference_point=None if self.reference_point is None else tuple(self.reference_point),
            baselines=tuple(self.baselines))


def load_run(run_dir) -> EvolveResult:
    """Reads a run directory as of its latest good checkpoint (no training, nothing written).

    Arguments:
        run_dir: the run directory.

    Returns:
        The ``EvolveResult`` as of the last completed generation.

    Raises:
        RunDirError: no run, or no checkpoint yet.
        CheckpointError: no checkpoint is readable, or the records do not match it.
    """
    rd = RunDir(run_dir)
    config = EvolveConfig.from_dict(rd.read_config())
    try:
        run = Run.restore(rd, config)
    except CheckpointError as e:
        raise CheckpointError(f"{e}\nRun `star-jax evolve` on {rd.path} with its config to rebuild the run from "
                              f"{rd.evaluations_path.name} (nothing recorded is trained again).") from None
    if run is None:
        raise RunDirError(f"{rd.path} has no checkpoint yet (the first generation did not finish)")
    return run.result(run.start)


def complete_config(rd) -> bool:
    """Completes the ``config.json`` of a run recorded before ``EvolveConfig`` had some of its
    fields: the missing fields are written with the defaults the run used. Anything else (an
    unreadable or invalid config) is left for ``RunDir.init`` to report.

    Returns:
        Whether ``config.json`` was rewritten.
    """
    if not rd.exists():
        return False
    try:
        old = rd.read_config()
        full = json.loads(json.dumps(to_jsonable(EvolveConfig.from_dict(old).to_dict())))
    except Exception:  # noqa: BLE001 - reported by RunDir.init with its own message
        return False
    if not isinstance(old, dict) or full == old or any(full.get(k) != v for k, v in old.items()):
        return False
    write_json_atomic(rd.config_path, full)
    return True


def adopt_reevaluate_seeds(rd, config: EvolveConfig) -> bool:
    """Records ``config.reevaluate_seeds`` in the run's ``config.json`` when that (with, at most,
    a larger ``generations``, which ``extend_run`` then handles) is all that differs: the
    re-evaluation after a run does not change the search, so a finished run can be re-evaluated
    by running it again with the field set.

    Returns:
        Whether ``config.json`` was rewritten.
    """
    if not rd.exists():
        return False
    old = rd.read_config()
    new = json.loads(json.dumps(to_jsonable(config.to_dict())))
    if not isinstance(old, dict) or old.get("reevaluate_seeds", 0) == new["reevaluate_seeds"]:
        return False
    updated = {**old, "reevaluate_seeds": new["reevaluate_seeds"]}
    if any(not d.startswith("generations:") for d in config_diff(updated, new)):
        return False
    write_json_atomic(rd.config_path, updated)
    return True


def extend_run(rd, config: EvolveConfig) -> bool:
    """Extends the run in ``rd`` to ``config.generations`` when its recorded config differs from
    ``config`` only by fewer generations: records the extension in ``extensions.jsonl`` and
    rewrites ``config.json`` (in that order; a kill between the two repeats nothing).

    Returns:
        Whether the run was extended.

    Raises:
        RunConfigMismatch: only ``generations`` differs and it is smaller than the recorded one.
    """
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
