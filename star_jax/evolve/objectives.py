"""Objective registry (every objective is minimised) and upper-bound constraints on objectives.
An objective reads one candidate's evaluation record; the evolution loop decides what to measure."""

# An evaluation record is a plain dict such as ``{"loss": 1.9, "accuracy": 0.41, "params":
# 1.2e6, "cache_bytes": 8.4e5, "latency_ms": 3.1}``. A value that is None or non-finite gives a
# non-finite objective, which NSGA-II maps to the worst (a diverging candidate is a bad score).

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence


__all__ = [
    "is_size_objective",
    "first_quality_objective",
    "Objective",
    "Constraint",
    "register_objective",
    "get_objective",
    "objective_names",
]

Record = Mapping[str, object]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A named, minimised objective.

    Attributes:
        name: registry name.
        fn: ``fn(record) -> float``, smaller is better.
        needs: record keys the objective reads (named in the error when one is missing).
        description: one line for help texts and reports.
        size: it measures the genome's size or speed, not what it learned, so it does not
            depend on the training seed (re-evaluation and the report's quality plots use the
            first objective that is not a size).
    """

    name: str
    fn: Callable[[Record], float]
    needs: tuple[str, ...] = ()
    description: str = ""
    size: bool = False

    def __call__(self, record: Record) -> float:
        """Evaluates the objective on one record.

        Arguments:
            record: evaluation record of one candidate.

        Returns:
            The objective value as a float (NaN when a needed value is None).
        """
        try:
            value = self.fn(record)
        except KeyError as e:
            raise KeyError(
                f"objective {self.name!r} needs record keys {list(self.needs)}; "
                f"missing {e.args[0]!r}, the record has {sorted(record)}"
            ) from None
        return math.nan if value is None else float(value)


_REGISTRY: dict[str, Objective] = {}


def register_objective(name: str, fn: Callable[[Record], float], *, needs: Sequence[str] = (),
                       description: str = "", size: bool = False, overwrite: bool = False) -> Objective:
    """Adds an objective to the registry.

    Arguments:
        name: the name used in configs and on the command line.
        fn: ``fn(record) -> float`` to minimise (negate a score to maximise it).
        needs: record keys ``fn`` reads.
        description: one line saying what it measures.
        size: True for a measure of the genome's size or speed (independent of training), e.g.
            a count of attention layers; such an objective is never taken as the run's quality.
        overwrite: allow replacing an existing objective of the same name.

    Returns:
        The registered `Objective`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"objective name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"objective {name!r}: fn must be callable, got {type(fn).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"objective {name!r} is already registered; pass overwrite=True to replace it")
    if isinstance(needs, str):
        needs = (needs,)
    obj = Objective(name=name, fn=fn, needs=tuple(needs), description=description, size=bool(size))
    _REGISTRY[name] = obj
    return obj


def objective_names() -> list[str]:
    """Names of all registered objectives.

    Returns:
        Sorted list of names.
    """
    return sorted(_REGISTRY)


def get_objective(name: str) -> Objective:
    """Looks up a registered objective.

    Arguments:
        name: objective name.

    Returns:
        The `Objective`; raises KeyError listing the valid names when unknown.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; valid objectives: {', '.join(objective_names())}") from None


def _get(record: Record, key: str):
    """``record[key]`` as a float, None staying None."""
    value = record[key]
    return None if value is None else float(value)


def _one_minus(key: str) -> Callable[[Record], float | None]:
    def fn(record: Record):
        value = _get(record, key)
        return None if value is None else 1.0 - value
    return fn


def _perplexity(record: Record):
    if "perplexity" in record:
        return _get(record, "perplexity")
    loss = _get(record, "loss")
    if loss is None:
        return None
    return math.exp(loss) if loss < 700.0 else math.inf


def _bits_per_byte(record: Record):
    loss = _get(record, "loss")
    return None if loss is None else loss / math.log(2.0)


# Built-ins as data: name, record key(s), function, description.
_BUILTINS = (
    ("task_loss", ("loss",), lambda r: _get(r, "loss"), "validation loss of the task"),
    ("error", ("accuracy",), _one_minus("accuracy"), "1 - accuracy"),
    ("mad_error", ("mad_score",), _one_minus("mad_score"), "1 - MAD score (mean accuracy over the MAD tasks)"),
    ("perplexity", ("loss",), _perplexity, "perplexity (record 'perplexity', else exp(loss))"),
    ("bits_per_byte", ("loss",), _bits_per_byte,
     "test loss in bits per token (loss / ln 2; bits per byte on byte-level tasks such as bytes_lm)"),
    ("params", ("params",), lambda r: _get(r, "params"), "unique trainable parameters"),
    ("cache_bytes", ("cache_bytes",), lambda r: _get(r, "cache_bytes"), "inference cache bytes per sequence"),
    ("latency", ("latency_ms",), lambda r: _get(r, "latency_ms"), "decode latency on the current device, ms"),
)
for _name, _needs, _fn, _desc in _BUILTINS:
    register_objective(_name, _fn, needs=_needs, description=_desc, size=_name in ("params", "cache_bytes", "latency"))


def is_size_objective(name: str) -> bool:
    """Whether the registered objective ``name`` measures size or speed (``Objective.size``)."""
    return get_objective(name).size


def first_quality_objective(objectives: Sequence[str]) -> str | None:
    """The first of ``objectives`` that is not a size (what training seeds change), or None."""
    return next((name for name in objectives if not is_size_objective(name)), None)


@dataclasses.dataclass(frozen=True)
class Constraint:
    """An upper bound on a registered objective: violation = max(0, value - max_value).

    A non-finite objective value (a diverged candidate) counts as an infinite violation.

    Attributes:
        objective_name: name of a registered objective.
        max_value: largest feasible value.
    """

    objective_name: str
    max_value: float

    def __post_init__(self):
        get_objective(self.objective_name)  # readable error for unknown names
        if not math.isfinite(float(self.max_value)):
            raise ValueError(f"Constraint on {self.objective_name!r}: max_value must be finite, got {self.max_value}")

    def violation(self, record: Record) -> float:
        """Violation of the bound for one record.

        Arguments:
            record: evaluation record of one candidate.

        Returns:
            ``max(0, value - max_value)``; +inf when the value is not finite.
        """
        value = get_objective(self.objective_name)(record)
        if not math.isfinite(value):
            return math.inf
        return max(0.0, value - float(self.max_value))
