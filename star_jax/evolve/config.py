"""The configuration of one evolution run: a frozen, validated record that round-trips through JSON.
Everything that changes a run's results lives here, so a run directory resumes only with the same one."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

from star_jax.evolve.objectives import Constraint, get_objective
from star_jax.model.config import ModelConfig
from star_jax.train.config import TrainConfig

__all__ = ["EvolveConfig", "ConfigFieldError", "STRATEGIES", "PRESETS", "quick", "preset", "commented_config"]

COMMENT_PREFIX = "_"
"""Keys that start with ``_`` are comments in a config file (JSON has no comment syntax): the
loader drops them at the top level and inside ``model``, ``train`` and ``task``. No field name
starts with ``_``, so prefixing a field with ``_`` also switches it off (it takes its default)."""

STRATEGIES = ("auto", "static", "data", "sequential")
"""Population-engine strategies (see ``star_jax.population.train_population``); "auto" picks
"sequential": candidates one by one through ``star_jax.train``'s part programs, which compile once
per LIV kind and never again for a new genome (``benchmarks/results/peer_job*.md``). "static"
compiles once per call and "data" once per run, each a whole-population program that takes
minutes to compile on CPU. On GPU/TPU the choice is not measured yet: ``benchmarks/gpu_check.sh``
times all three."""


class ConfigFieldError(ValueError):
    """An evolution config field is unknown or has an invalid value (the message names it)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class EvolveConfig:
    """One evolution run: search space, fitness task and budget, NSGA-II settings, objectives.

    Fields:
        model: the ``ModelConfig`` every candidate is built with (its vocabulary must cover the
            task's, its ``max_len`` the task's sequence length).
        task: ``{"name": registered task name, **task config fields}``.
        train: the ``TrainConfig`` of every candidate (same seed: same init and batches).
        train_seeds: training seeds per candidate, r >= 1: each candidate (and baseline) is
            trained with seeds ``train.seed ... train.seed + r - 1`` and scored by the mean of
            its metrics; the per-seed accuracies and their sd are recorded, and the report flags
            front genomes whose advantage over a baseline is within the seeds' noise. r > 1
            costs r trainings per genome and makes selection less prone to keeping lucky seeds.
        n_liv: backbone length (LIVs per genome), fixed during a run.
        pop_size: NSGA-II population size (paper: 16).
        generations: offspring generations after the initial population (paper: 18); a run
            evaluates ``generations + 1`` batches of genomes.
        mutation_prob: per-gene mutation probability (paper: 0.1).
        crossover_points: cut points of the k-point crossover (paper: 2).
        elitism: best parents that always survive (paper: 2).
        objectives: registered objective names, all minimised (see ``objective_names()``).
        constraints: ``({"objective": name, "max_value": float}, ...)`` upper bounds, handled
            feasibility-first.
        cache_seq_len: sequence length at which the ``cache_bytes`` objective is counted.
        cache_bytes_per_elem: bytes per cache element (2: 16-bit).
        seed: seed of the evolution (initial population, variation); training uses ``train.seed``.
        strategy: population-engine strategy, one of ``STRATEGIES``; used when the engine (and
            the strategy) is available, otherwise candidates are trained one by one with
            ``star_jax.train`` (every strategy gives each candidate the metrics of training it
            alone, so results do not depend on it beyond float rounding).
        seed_genomes: genome texts placed first in the initial population (the rest is random).
        seed_baselines: also seed the initial population with the baselines of this ``n_liv``.
        baselines: evaluate Transformer++, StripedMamba and LFM2-like of this ``n_liv`` once per
            run with the same budget (``baselines.jsonl``; they are marked in the plots).
        reference_point: fixed hypervolume reference point (one value per objective, raw units);
            None derives it once from generation 0 (nadir + 10% of the range) and stores it.
        measure_latency: measure decode latency for every candidate (always on when the
            ``latency`` objective is requested).
        latency_tokens: decode steps timed per latency measurement.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    task: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"name": "in_context_recall"})
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    train_seeds: int = 1
    n_liv: int = 24
    pop_size: int = 16
    generations: int = 18
    mutation_prob: float = 0.1
    crossover_points: int = 2
    elitism: int = 2
    objectives: tuple[str, ...] = ("error", "cache_bytes")
    constraints: tuple[Mapping[str, Any], ...] = ()
    cache_seq_len: int = 4096
    cache_bytes_per_elem: int = 2
    seed: int = 0
    strategy: str = "auto"
    seed_genomes: tuple[str, ...] = ()
    seed_baselines: bool = False
    baselines: bool = True
    reference_point: tuple[float, ...] | None = None
    measure_latency: bool = False
    latency_tokens: int = 32

    def __post_init__(self) -> None:
        def fail(name: str, valid: str) -> None:
            raise ConfigFieldError(f"EvolveConfig.{name} = {getattr(self, name)!r} is invalid: expected {valid}")

        if not isinstance(self.model, ModelConfig):
            fail("model", "a ModelConfig")
        if not isinstance(self.train, TrainConfig):
            fail("train", "a TrainConfig")
        if not isinstance(self.task, Mapping) or not isinstance(self.task.get("name"), str):
            fail("task", 'a mapping {"name": task name, **task fields}')
        object.__setattr__(self, "task", dict(self.task))
        for name, lo in (("train_seeds", 1), ("n_liv", 1), ("pop_size", 2), ("generations", 0),
                         ("crossover_points", 0), ("elitism", 0), ("cache_seq_len", 1), ("cache_bytes_per_elem", 1),
                         ("latency_tokens", 1)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < lo:
                fail(name, f"an integer >= {lo}")
        if self.elitism > self.pop_size:
            fail("elitism", f"an integer in [0, pop_size={self.pop_size}]")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            fail("seed", "an integer in [0, 2**32)")
        if not _is_real(self.mutation_prob) or not 0.0 <= self.mutation_prob <= 1.0:
            fail("mutation_prob", "a number in [0, 1]")
        if self.strategy not in STRATEGIES:
            fail("strategy", f"one of {list(STRATEGIES)}")
        for name in ("seed_baselines", "baselines", "measure_latency"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")
        objectives = tuple(self.objectives) if isinstance(self.objectives, (list, tuple)) else None
        if not objectives or len(set(objectives)) != len(objectives):
            fail("objectives", "a non-empty list of distinct objective names")
        for name in objectives:
            try:
                get_objective(name)
            except KeyError as e:
                raise ConfigFieldError(f"EvolveConfig.objectives: {e.args[0]}") from None
        object.__setattr__(self, "objectives", objectives)
        constraints = []
        for c in self.constraints if isinstance(self.constraints, (list, tuple)) else [None]:
            if isinstance(c, Constraint):
                c = {"objective": c.objective_name, "max_value": c.max_value}
            if not isinstance(c, Mapping) or set(c) != {"objective", "max_value"}:
                fail("constraints", 'a list of {"objective": name, "max_value": number}')
            try:
                Constraint(c["objective"], float(c["max_value"]))
            except (KeyError, ValueError, TypeError) as e:
                raise ConfigFieldError(f"EvolveConfig.constraints: {e.args[0] if e.args else e}") from None
            constraints.append({"objective": c["objective"], "max_value": float(c["max_value"])})
        object.__setattr__(self, "constraints", tuple(constraints))
        if not isinstance(self.seed_genomes, (list, tuple)) or not all(isinstance(s, str) for s in self.seed_genomes):
            fail("seed_genomes", "a list of genome texts")
        object.__setattr__(self, "seed_genomes", tuple(self.seed_genomes))
        self._check_seed_genomes()
        if self.reference_point is not None:
            ref = self.reference_point
            if (not isinstance(ref, (list, tuple)) or len(ref) != len(objectives)
                    or not all(_is_real(x) and math.isfinite(x) for x in ref)):
                fail("reference_point", f"null or {len(objectives)} finite numbers (one per objective)")
            object.__setattr__(self, "reference_point", tuple(float(x) for x in ref))

    def _check_seed_genomes(self) -> None:
        """Each seed genome parses, is valid and has ``n_liv`` LIVs (checked before a run writes anything)."""
        from star_jax.genome import Genome, GenomeError

        for i, text in enumerate(self.seed_genomes):
            where = f"EvolveConfig.seed_genomes[{i}] = {text!r}"
            try:
                g = Genome.from_string(text).validate()
            except GenomeError as e:
                raise ConfigFieldError(f"{where} is not a valid genome: {e}") from None
            if len(g) != self.n_liv:
                raise ConfigFieldError(f"{where} has {len(g)} LIVs; this run's backbones have "
                                       f"n_liv = {self.n_liv}")

    # ------------------------------------------------------------------ derived objects
    def constraint_objects(self) -> tuple[Constraint, ...]:
        """Returns:
        The constraints as ``Constraint`` objects.
        """
        return tuple(Constraint(c["objective"], c["max_value"]) for c in self.constraints)

    def make_task(self):
        """Builds the fitness task and checks the model config fits it.

        Returns:
            The ``Task``.

        Raises:
            ConfigFieldError: the task is unknown, a task field is invalid, or the model's
                vocabulary / ``max_len`` cannot cover the task.
        """
        from star_jax import tasks

        fields = {k: v for k, v in self.task.items() if k != "name"}
        try:
            task = tasks.make(self.task["name"], **fields)
        except KeyError as e:
            raise ConfigFieldError(f"EvolveConfig.task: {e.args[0]}") from None
        except ValueError as e:
            raise ConfigFieldError(f"EvolveConfig.task: {e}") from None
        if self.model.vocab_size < task.vocab_size:
            raise ConfigFieldError(f"EvolveConfig.model.vocab_size = {self.model.vocab_size} is smaller than "
                                   f"the task's vocabulary {task.vocab_size}")
        if self.model.max_len < task.seq_len:
            raise ConfigFieldError(f"EvolveConfig.model.max_len = {self.model.max_len} is shorter than the "
                                   f"task's sequence length {task.seq_len}")
        return task

    def needs_latency(self) -> bool:
        """Returns:
        Whether decode latency is measured (toggle on, or a latency objective/constraint).
        """
        return (self.measure_latency or "latency" in self.objectives
                or any(c["objective"] == "latency" for c in self.constraints))

    # ------------------------------------------------------------------ JSON
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Returns:
        The names of all fields, in declaration order.
        """
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Returns:
        A JSON-ready dict (the inverse of ``from_dict``).
        """
        out: dict[str, Any] = {}
        for name in self.field_names():
            v = getattr(self, name)
            if name in ("model", "train"):
                v = v.to_dict()
            elif name in ("task",):
                v = dict(v)
            elif name in ("constraints",):
                v = [dict(c) for c in v]
            elif isinstance(v, tuple):
                v = list(v)
            out[name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvolveConfig":
        """Builds a config from a mapping (e.g. parsed JSON); missing fields take their defaults.

        Arguments:
            data: field name -> value; ``model`` and ``train`` are dicts of their config fields.
                Keys starting with ``_`` (comments, see ``commented_config``) are ignored, at
                the top level and inside ``model``, ``train`` and ``task``.

        Returns:
            The validated config.

        Raises:
            ConfigFieldError: an unknown key (the message lists the valid ones) or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigFieldError(f"an evolution config must be a JSON object, got {type(data).__name__}")
        data = _drop_comments(data)
        for name in ("model", "train", "task"):
            if isinstance(data.get(name), Mapping):
                data[name] = _drop_comments(data[name])
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ConfigFieldError(f"unknown EvolveConfig field(s) {unknown}; valid fields: {list(cls.field_names())}")
        kwargs = dict(data)
        try:
            if "model" in kwargs and not isinstance(kwargs["model"], ModelConfig):
                kwargs["model"] = ModelConfig.from_dict(kwargs["model"])
            if "train" in kwargs and not isinstance(kwargs["train"], TrainConfig):
                kwargs["train"] = TrainConfig.from_dict(kwargs["train"])
        except (ValueError, TypeError) as e:
            raise ConfigFieldError(str(e)) from None
        for name in ("objectives", "seed_genomes", "constraints", "reference_point"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)

    def to_json(self) -> str:
        """Returns:
        Indented JSON text of ``to_dict()``.
        """
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "EvolveConfig":
        """Parses JSON text written by ``to_json`` (or by hand).

        Arguments:
            text: JSON object text.

        Returns:
            The validated config.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigFieldError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "EvolveConfig":
        """Reads a JSON config file; missing fields take the dataclass defaults.

        Arguments:
            path: the JSON file.

        Returns:
            The validated config.
        """
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigFieldError(f"cannot read config file {path}: {e.strerror}") from None
        return cls.from_json(text)

    def replace(self, **changes: Any) -> "EvolveConfig":
        """A copy with some fields changed (validated; unknown names rejected).

        Arguments:
            **changes: field name -> new value.

        Returns:
            The new config.
        """
        return self.from_dict({**self.to_dict(), **changes})

    @classmethod
    def quick(cls, **changes: Any) -> "EvolveConfig":
        """The small default run of ``star-jax evolve`` (meant for minutes on a laptop CPU).

        In-context recall at vocabulary 16 and sequence 32, 4-LIV backbones at width 32,
        population 8 over 2 offspring generations, 100 AdamW steps of 16 sequences per candidate
        (about 7 minutes on 2 CPU cores from a cold compilation cache).

        Arguments:
            **changes: fields to change.

        Returns:
            The config.
        """
        base = cls(
            model=ModelConfig(width=32, vocab_size=16, max_len=31, head_dim=8, window=16),
            task={"name": "in_context_recall", "vocab_size": 16, "seq_len": 32,
                  "num_train": 4096, "num_test": 256},
            train=TrainConfig(steps=100, batch_size=16, lr=3e-3, weight_decay=0.0, warmup_steps=10,
                              eval_batch_size=256, seed=0),
            n_liv=4, pop_size=8, generations=2, seed=0,
        )
        return base.replace(**changes) if changes else base


def quick(**changes: Any) -> EvolveConfig:
    """Shorthand for ``EvolveConfig.quick(**changes)``.

    Arguments:
        **changes: fields to change.

    Returns:
        The quick config.
    """
    return EvolveConfig.quick(**changes)


def _drop_comments(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` without its comment keys (strings starting with ``COMMENT_PREFIX``)."""
    return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith(COMMENT_PREFIX))}


# ---------------------------------------------------------------------- presets and templates
def _study() -> EvolveConfig:
    base = EvolveConfig.quick()
    return base.replace(n_liv=8, generations=4, strategy="sequential", task={**base.task, "seed": 0},
                        train={**base.train.to_dict(), "steps": 200})


PRESETS = {
    "quick": ("the quick default run of `star-jax evolve` (minutes on a laptop CPU)", EvolveConfig.quick),
    "study": ("the CPU-scale study of experiments/configs/cpu_recall_cache.json: 8-LIV backbones, "
              "population 8, 4 offspring generations, 200 steps per candidate (26-35 min on 2 shared "
              "CPU cores when last measured, with earlier code)", _study),
}
"""Preset name -> (description, factory) for ``star-jax init-config --preset``."""


def preset(name: str) -> EvolveConfig:
    """A preset config by name (see ``PRESETS``).

    Arguments:
        name: "quick" or "study".

    Returns:
        The config.

    Raises:
        ConfigFieldError: unknown preset name.
    """
    if name not in PRESETS:
        raise ConfigFieldError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name][1]()


def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> one-line description, parsed from the ``Fields:``/``Attributes:`` sections of
    the docstrings of ``cls`` and its bases (a subclass's text wins unless it defers with "see")."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        item_indent, names, in_section = None, [], False
        for line in (klass.__doc__ or "").splitlines():
            stripped, indent = line.strip(), len(line) - len(line.lstrip())
            if stripped.startswith(("Fields", "Attributes")) and stripped.endswith(":"):
                item_indent, names, in_section = None, [], True
                continue
            if not in_section:
                continue
            if not stripped or (item_indent is not None and indent < item_indent):
                in_section = False  # a blank or less indented line ends the section
                continue
            item_indent = indent if item_indent is None else item_indent
            if indent == item_indent:
                head, _, text = stripped.partition(":")
                names = [n.strip() for n in head.split(",")]
                if not _ or not all(n.isidentifier() for n in names):
                    names = []
                    continue
                for n in names:  # "num_train, seed: see `TaskConfig`" keeps the base's text
                    if not (text.strip().startswith("see ") and n in docs):
                        docs[n] = text.strip()
            else:
                for n in names:
                    docs[n] = f"{docs[n]} {stripped}"
    return docs


def _commented(values: Mapping[str, Any], docs: Mapping[str, str], about: list[str] | None = None) -> dict[str, Any]:
    """``values`` with ``"_<field>": doc`` before each documented field (and ``"_about"`` first)."""
    out: dict[str, Any] = {}
    if about:
        out[COMMENT_PREFIX + "about"] = about
    for name, value in values.items():
        if docs.get(name):
            out[COMMENT_PREFIX + name] = docs[name].replace("``", "")
        out[name] = value
    return out


def commented_config(config: EvolveConfig | str = "quick") -> dict[str, Any]:
    """A config as a JSON-ready dict with a comment before every field.

    JSON has no comments, so a comment is a key starting with ``_`` (``"_pop_size": "NSGA-II
    population size ..."`` before ``"pop_size": 8``); ``from_dict``/``from_file`` ignore such keys,
    so the file loads unchanged, and editing a value needs no other change.

    Arguments:
        config: a config, or a preset name (see ``PRESETS``).

    Returns:
        The dict (``EvolveConfig.from_dict`` of it equals ``config``).
    """
    from star_jax import tasks
    from star_jax.model.config import ModelConfig
    from star_jax.train.config import TrainConfig

    name = config if isinstance(config, str) else None
    if name is not None:
        config = preset(name)
    about = [f"star-jax evolution config" + (f", preset {name!r}: {PRESETS[name][0]}." if name else "."),
             "Keys starting with '_' are comments (JSON has none) and are ignored; a field left out "
             "takes its default; help(star_jax.EvolveConfig) documents every field.",
             "Run: star-jax evolve --config THIS_FILE --run-dir runs/NAME. Rerun the same command to "
             "resume; add --generations N (N larger than the recorded one) to extend a finished run."]
    data = config.to_dict()
    try:
        task_docs = _field_docs(tasks.config_class(config.task["name"]))
    except KeyError:
        task_docs = {}
    task_docs = {**task_docs, "name": f"registered task name, one of {list(tasks.task_names())}"}
    data["model"] = _commented(data["model"], _field_docs(ModelConfig))
    data["train"] = _commented(data["train"], _field_docs(TrainConfig))
    data["task"] = _commented(data["task"], task_docs)
    top_docs = _field_docs(EvolveConfig)
    top_docs["strategy"] = top_docs.get("strategy", "").replace("one of ``STRATEGIES``", f"one of {list(STRATEGIES)}")
    return _commented(data, top_docs, about)
