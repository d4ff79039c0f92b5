"""Typed records passed between the stages of an evolution: a `Candidate` to evaluate, its
`EvalRecord`, and the `RunState` a checkpoint holds; each reads and writes the run directory's JSON."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from star_jax.evolve.ask_tell import NSGA2State, state_from_dict, state_to_dict
from star_jax.genome import Genome, GenomeError

__all__ = ["Candidate", "EvalRecord", "RunState", "RUN_FORMAT", "RUN_FORMATS"]

RUN_FORMAT = "star_jax.evolve_run/2"
"""The checkpoint format written: the run state only; the archive lives in the JSONL files."""
RUN_FORMATS = ("star_jax.evolve_run/1", RUN_FORMAT)
"""Formats read. ``/1`` checkpoints also held a copy of every record, which is ignored."""

ORIGINS = ("initial", "offspring", "baseline")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A genome to evaluate in one generation.

    Fields:
        genome: the genome string (``Genome.to_string()``).
        hash: its ``Genome.content_hash()`` (the archive key).
        generation: the generation that asked for it.
        origin: "initial" (generation 0's population), "offspring" (bred by NSGA-II) or
            "baseline" (a reference architecture trained beside generation 0).
        baseline: the baseline's name (``origin == "baseline"`` only).
    """

    genome: str
    hash: str
    generation: int
    origin: str = "offspring"
    baseline: str | None = None

    def __post_init__(self):
        if self.origin not in ORIGINS:
            raise ValueError(f"Candidate.origin must be one of {ORIGINS}, got {self.origin!r}")
        if (self.baseline is not None) != (self.origin == "baseline"):
            raise ValueError(f"Candidate {self.genome}: a baseline name goes with origin 'baseline' "
                             f"(got origin {self.origin!r}, baseline {self.baseline!r})")

    @classmethod
    def of(cls, genome, generation: int, origin: str = "offspring", baseline: str | None = None) -> "Candidate":
        """The candidate of a ``Genome``."""
        return cls(genome.to_string(), genome.content_hash(), int(generation), origin, baseline)

    def to_genome(self):
        """The ``Genome``."""
        return Genome.from_string(self.genome)

    def to_json(self) -> dict[str, Any]:
        """The candidate as JSON values (``baseline`` only when set)."""
        out = {"genome": self.genome, "hash": self.hash, "generation": self.generation, "origin": self.origin}
        if self.baseline is not None:
            out["baseline"] = self.baseline
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Candidate":
        """Inverse of `to_json` (unknown keys are ignored)."""
        _require(data, ("genome", "hash", "generation"), "candidate")
        return cls(data["genome"], data["hash"], int(data["generation"]), data.get("origin", "offspring"),
                   data.get("baseline"))


# JSON key order of an evaluation record, as the evaluation writes it; evaluator-reported metrics
# the record has no field for (``extra``) go after ``steps_run``.
_HEAD = ("hash", "genome", "short", "generation", "params", "cache_bytes", "failure", "train_loss", "test_loss",
         "test_accuracy", "diverged", "steps_run")
_TAIL = ("seed_test_accuracy", "test_accuracy_sd", "loss", "accuracy", "latency_ms", "objectives", "violation",
         "baseline")
_ABSENT_WHEN_NONE = ("seed_test_accuracy", "baseline")     # never written as null
_OPTIONAL = ("test_accuracy_sd", "latency_ms")             # written (maybe as null) only when measured
_FIELDS = _HEAD + _TAIL


def current_hash(genome: Any, recorded: str) -> str:
    """The archive key of a recorded genome: its ``content_hash()`` now, or ``recorded`` when the
    text does not parse. They differ for a genome whose sharing group id held several
    incompatible sharing sets, recorded before the canonical form told them apart (then the same
    plan spelled with one group id per set had another hash)."""
    if not isinstance(genome, str):
        return recorded
    try:
        return Genome.from_string(genome).content_hash()
    except GenomeError:
        return recorded


def _require(data: Any, keys: Sequence[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{what} has no {', '.join(map(repr, missing))} (keys: {sorted(data)})")


@dataclasses.dataclass(frozen=True, eq=False)
class EvalRecord(Mapping):
    """One evaluated genome: a line of ``evaluations.jsonl`` (or ``baselines.jsonl``).

    Non-finite numbers are stored as None (null). ``to_json``/``from_json`` read and write the
    run directory's lines; a record read and written back is the same line (keys in their
    order, unknown keys kept in ``extra``). The record is also a read-only ``Mapping`` over that
    JSON (``record["objectives"]["error"]``), which is what objectives and constraints read.

    Fields:
        hash, genome, short: the genome's content hash (the only field a record must have),
            string and short class names.
        generation: the generation that first evaluated it (None for a baseline's record).
        params, cache_bytes: analytic sizes (None when the genome cannot be built).
        failure: why the genome could not be built or evaluated, else None (records of older
            runs call it ``error``; it is read under its current name).
        train_loss, test_loss, test_accuracy, diverged, steps_run: the training metrics (the
            mean over seeds with ``train_seeds`` > 1; ``diverged`` if any seed diverged).
        extra: other metrics the evaluator reported (e.g. ``mad_score``), in its order.
        seed_test_accuracy: per-seed test accuracies (``train_seeds`` > 1 only).
        test_accuracy_sd: their sd (ddof 1; None when not finite).
        loss, accuracy: what the objectives read (``accuracy`` is None when training diverged).
        latency_ms: measured decode latency (only when an objective needs it).
        objectives: objective name -> value (None: not finite, the worst).
        violation: total constraint violation (0: feasible; None: infinite).
        baseline: the baseline's name, for a record of ``baselines.jsonl``.
    """

    hash: str
    genome: str | None = None
    short: str | None = None
    generation: int | None = None
    params: int | None = None
    cache_bytes: int | None = None
    failure: str | None = None
    train_loss: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    diverged: bool | None = None
    steps_run: int | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed_test_accuracy: tuple[float | None, ...] | None = None
    test_accuracy_sd: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    objectives: Mapping[str, float | None] = dataclasses.field(default_factory=dict)
    violation: float | None = None
    baseline: str | None = None
    keys_order: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    """The JSON keys in the order read (empty: the canonical order); not compared."""

    def __post_init__(self):
        if self.seed_test_accuracy is not None and not isinstance(self.seed_test_accuracy, tuple):
            object.__setattr__(self, "seed_test_accuracy", tuple(self.seed_test_accuracy))
        object.__setattr__(self, "extra", dict(self.extra))
        object.__setattr__(self, "objectives", dict(self.objectives))
        object.__setattr__(self, "_json", self._build_json())

    def __eq__(self, other) -> bool:
        """Equal when the JSON objects are (an ``EvalRecord`` also equals a dict of its JSON)."""
        if isinstance(other, EvalRecord):
            return self._json == other._json
        if isinstance(other, Mapping):
            return self._json == dict(other)
        return NotImplemented

    __hash__ = None  # records hold dicts; compare them, do not hash them

    # ------------------------------------------------------------------ JSON
    def _present(self, key: str) -> bool:
        """Whether the JSON has ``key``: the keys read (``keys_order``) and every field set since
        (not None); without ``keys_order``, every field but the optional ones left None."""
        if key in _ABSENT_WHEN_NONE or (self.keys_order and key not in self.keys_order):
            return getattr(self, key) is not None
        return key not in _OPTIONAL or getattr(self, key) is not None or key in self.keys_order

    def _build_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key in _HEAD:
            if self._present(key):
                values[key] = getattr(self, key)
        values.update(self.extra)
        for key in _TAIL:
            if self._present(key):
                value = getattr(self, key)
                values[key] = list(value) if isinstance(value, tuple) else value
        if not self.keys_order:
            return values
        ordered = {k: values[k] for k in self.keys_order if k in values}
        ordered.update((k, v) for k, v in values.items() if k not in ordered)
        return ordered

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON object of its line (a new dict)."""
        return copy.deepcopy(self._json)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EvalRecord":
        """A record from a line of ``evaluations.jsonl``/``baselines.jsonl`` or a v1 checkpoint.

        A top-level ``error`` of an older record (a failure message or null, not
        ``objectives["error"]``) is read as ``failure``, in its place. Unknown keys go to ``extra``.

        Raises:
            ValueError: ``data`` is not an object or has no ``hash``.
        """
        _require(data, ("hash",), "evaluation record")
        if "failure" not in data and "error" in data:
            data = {("failure" if k == "error" else k): v for k, v in data.items()}
        known = {k: data[k] for k in _FIELDS if k in data}
        extra = {k: v for k, v in data.items() if k not in known}
        known["hash"] = current_hash(known.get("genome"), known["hash"])
        return cls(**known, extra=extra, keys_order=tuple(data))

    @classmethod
    def coerce(cls, record: Mapping[str, Any]) -> "EvalRecord":
        """``record`` itself when it is an ``EvalRecord``, else ``from_json(record)``."""
        return record if isinstance(record, EvalRecord) else cls.from_json(record)

    def replace(self, **changes) -> "EvalRecord":
        """A copy with some fields changed (key order kept; ``baseline=None`` drops the key)."""
        return dataclasses.replace(self, **changes)

    # -------------------------------------------------------------- Mapping
    def __getitem__(self, key: str) -> Any:
        value = self._json[key]
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)

    # ------------------------------------------------------------- helpers
    def objective(self, name: str) -> float | None:
        """The recorded value of one objective (None: missing or not finite)."""
        return self.objectives.get(name)

    def value(self, key: str) -> float | None:
        """An objective of the record, else the record's own field (``params``, ``cache_bytes``):
        what a plot axis named ``key`` shows."""
        return self.objectives[key] if key in self.objectives else self.get(key)

    @property
    def feasible(self) -> bool:
        """No constraint is violated (and the genome was built)."""
        return self.violation is not None and self.violation <= 0


@dataclasses.dataclass(frozen=True, eq=False)
class RunState:
    """What an evolution checkpoint holds: the state the archive (``evaluations.jsonl`` and
    ``baselines.jsonl``) cannot be rebuilt from.

    Fields:
        generation: the next generation to evaluate (= the checkpoint step).
        nsga2: the NSGA-II state (population, its objectives, rank, crowding and the RNG state).
        hypervolume: per generation done, the hypervolume of the archive's front.
        population_hypervolume: per generation done, the hypervolume of the population.
        reference_point: the fixed hypervolume reference point (None until derived).
        evaluations: how many records of ``evaluations.jsonl`` the archive holds (None: not
            recorded, a ``/1`` checkpoint).
        baselines: baseline name -> genome hash, the records ``baselines.jsonl`` must hold.
    """

    generation: int
    nsga2: NSGA2State
    hypervolume: tuple[float, ...] = ()
    population_hypervolume: tuple[float, ...] = ()
    reference_point: tuple[float, ...] | None = None
    evaluations: int | None = None
    baselines: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """The checkpoint's arrays: ``{"nsga2": {...}}``."""
        return {"nsga2": state_to_dict(self.nsga2)[0]}

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's JSON metadata (format ``RUN_FORMAT``)."""
        return {"format": RUN_FORMAT, "generation": int(self.generation), "nsga2": state_to_dict(self.nsga2)[1],
                "hypervolume": [float(v) for v in self.hypervolume],
                "population_hypervolume": [float(v) for v in self.population_hypervolume],
                "reference_point": None if self.reference_point is None else [float(v) for v in self.reference_point],
                "evaluations": self.evaluations, "baselines": dict(self.baselines)}

    @classmethod
    def from_json(cls, meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> "RunState":
        """A state from a checkpoint's metadata and arrays, of any format in ``RUN_FORMATS``.

        A ``/1`` checkpoint's copy of the records (``archive``) is ignored; its baseline
        records give the baseline hashes.

        Raises:
            ValueError: not an evolution run state, or a field is missing or malformed (what and where).
        """
        if not isinstance(meta, Mapping) or meta.get("format") not in RUN_FORMATS:
            got = meta.get("format") if isinstance(meta, Mapping) else type(meta).__name__
            raise ValueError(f"not an evolution run state (format {got!r}; readable: {list(RUN_FORMATS)})")
        _require(meta, ("generation", "nsga2", "hypervolume", "population_hypervolume", "reference_point"),
                 f"run state of format {meta['format']!r}")
        if not isinstance(arrays, Mapping) or "nsga2" not in arrays:
            raise ValueError("run state has no 'nsga2' arrays")
        baselines = meta.get("baselines", {})
        if meta["format"] == RUN_FORMATS[0]:  # records, not names: keep only what identifies them
            baselines = {r["baseline"]: r["hash"] for r in baselines}
        ref = meta["reference_point"]
        return cls(generation=int(meta["generation"]), nsga2=state_from_dict(arrays["nsga2"], meta["nsga2"]),
                   hypervolume=tuple(float(v) for v in meta["hypervolume"]),
                   population_hypervolume=tuple(float(v) for v in meta["population_hypervolume"]),
                   reference_point=None if ref is None else tuple(float(v) for v in ref),
                   evaluations=meta.get("evaluations"), baselines=dict(baselines))

    def __eq__(self, other) -> bool:
        if not isinstance(other, RunState):
            return NotImplemented
        a, b = self.nsga2, other.nsga2
        same_state = (a.generation == b.generation and a.rng_state == b.rng_state
                      and all(np.array_equal(getattr(a, k), getattr(b, k), equal_nan=k not in ("population", "rank"))
                              for k in ("population", "objectives", "violations", "rank", "crowding")))
        return same_state and (self.generation, self.hypervolume, self.population_hypervolume, self.reference_point,
                               self.evaluations, dict(self.baselines)) == (
            other.generation, other.hypervolume, other.population_hypervolume, other.reference_point,
            other.evaluations, dict(other.baselines))

    __hash__ = None
