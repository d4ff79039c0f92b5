"""The configuration of one evolution run: a frozen, validated record that round-trips through JSON.
Everything that changes a run's results lives here, so a run directory resumes only with the same one."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

from star_jax import tasks
from star_jax._util.validate import ConfigError, Fields, is_real, unknown_fields
from star_jax.evolve.nsga2 import OPTION_DEFAULTS, check_options
from star_jax.evolve.objectives import Constraint, first_quality_objective, get_objective, objective_names
from star_jax.genome import Genome, GenomeError
from star_jax.model.config import ModelConfig
from star_jax.train.config import TrainConfig

__all__ = ["EvolveConfig", "ConfigFieldError", "STRATEGIES", "PRESETS", "quick", "preset", "commented_config"]

COMMENT_PREFIX = "_"
"""Keys that start with ``_`` are comments in a config file (JSON has no comment syntax): the
loader drops them at the top level and inside ``model``, ``train`` and ``task``. No field name
starts with ``_``, so prefixing a field with ``_`` also switches it off (it takes its default)."""

STRATEGIES = ("auto", "static", "data", "sequential")
"""Population-engine strategies (see ``star_jax.population.train_population``); "auto" picks
"sequential": candidates through ``star_jax.train``'s part programs (several at a time on a CPU, see
``evolve``'s ``workers``), which compile once per LIV kind and never again for a new genome (``benchmarks/results/peer_job*.md``). "static"
compiles once per call and "data" once per run, each a whole-population program that takes
minutes to compile on CPU. On GPU/TPU the choice is not measured yet: ``benchmarks/gpu_check.sh``
times all three."""


class ConfigFieldError(ConfigError):
    """An evolution config field is unknown or has an invalid value: a `ConfigError` whose
    ``field_path`` starts at ``EvolveConfig`` (``EvolveConfig.train.lr`` for an error of the
    nested ``TrainConfig``, ``EvolveConfig.task.seq_len`` for one of the task config)."""


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
        reevaluate_seeds: 0 (off), or K >= 2: when the last generation is done, retrain the
            front and the baselines with K fresh training seeds and compare them by paired
            intervals (``star_jax.evolve.reevaluate``; ``reevaluation.jsonl`` and ``.md`` in the
            run directory, resumable). It does not change the search: a finished run given
            another value re-evaluates without retraining anything else. The comparisons need
            the baselines, so they are trained here even when ``baselines`` is False.
        n_liv: backbone length (LIVs per genome), fixed during a run.
        pop_size: NSGA-II population size (paper: 16).
        generations: offspring generations after the initial population (paper: 18); a run
            evaluates ``generations + 1`` batches of genomes.
        mutation_prob: per-gene mutation probability (paper: 0.1).
        crossover_points: cut points of the k-point crossover (paper: 2).
        elitism: best parents that always survive (paper: 2), in [0, pop_size].
        tournament_size: contestants per parent tournament (2: binary tournament, the paper's).
        crossover_prob: probability that a pair of parents is crossed (else copied) before
            mutation, in [0, 1] (1: always, the paper's).
        n_offspring: offspring bred per generation, >= 1; null breeds pop_size (the paper's).
        merge_parents: true (NSGA-II): survivors are chosen from parents + offspring; false:
            generational replacement, survivors are chosen from offspring + the elites.
        duplicate_retries: times a child equal to a population member or an earlier child of
            the same generation is bred again (0: keep duplicates; they cost no training, the
            archive serves them).
        objectives: registered objective names, all minimised (see ``objective_names()``).
        constraints: upper bounds on objectives, handled feasibility-first: ``Constraint``
            objects, or ``{"objective": name, "max_value": number}`` mappings (as in JSON), held
            as ``Constraint`` objects.
        cache_seq_len: sequence length at which the ``cache_bytes`` objective is counted.
        cache_bytes_per_elem: bytes per cache element (2: 16-bit).
        seed: seed of the evolution (initial population, variation); training uses ``train.seed``.
        strategy: population-engine strategy, one of ``STRATEGIES``; used when the engine (and
            the strategy) is available, otherwise candidates are trained with
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
    reevaluate_seeds: int = 0
    n_liv: int = 24
    pop_size: int = 16
    generations: int = 18
    mutation_prob: float = OPTION_DEFAULTS["mutation_prob"]
    crossover_points: int = OPTION_DEFAULTS["crossover_points"]
    elitism: int = OPTION_DEFAULTS["elitism"]
    tournament_size: int = OPTION_DEFAULTS["tournament_size"]
    crossover_prob: float = OPTION_DEFAULTS["crossover_prob"]
    n_offspring: int | None = OPTION_DEFAULTS["n_offspring"]
    merge_parents: bool = OPTION_DEFAULTS["merge_parents"]
    duplicate_retries: int = OPTION_DEFAULTS["duplicate_retries"]
    objectives: tuple[str, ...] = ("error", "cache_bytes")
    constraints: tuple[Constraint, ...] = ()
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
        check = Fields("EvolveConfig", self, error=ConfigFieldError)
        check.instance("model", ModelConfig)
        check.instance("train", TrainConfig)
        if not isinstance(self.task, Mapping) or not isinstance(self.task.get("name"), str):
            check.fail("task", 'a mapping {"name": task name, **task fields}')
        object.__setattr__(self, "task", dict(self.task))
        for name, lo in (("train_seeds", 1), ("n_liv", 1), ("pop_size", 2), ("generations", 0),
                         ("cache_seq_len", 1), ("cache_bytes_per_elem", 1), ("latency_tokens", 1)):
            check.int(name, lo=lo)
        check.int("reevaluate_seeds", lo=0)
        if self.reevaluate_seeds == 1:
            check.fail("reevaluate_seeds", "0 (off) or an integer >= 2 (one seed resolves nothing)")
        check_options(check, self.pop_size)
        check.int("seed", lo=0, hi=2**32 - 1, accepted="an integer in [0, 2**32)")
        last_seed = self.train.seed + self.train_seeds - 1 + self.reevaluate_seeds  # re-evaluation follows
        if last_seed > 2**32 - 1:
            check.fail_reason("train_seeds", f"training seeds run from train.seed={self.train.seed} to {last_seed} "
                              f"(train_seeds={self.train_seeds}, then reevaluate_seeds={self.reevaluate_seeds}), "
                              f"past the largest seed 2**32 - 1; lower train.seed", value=self.train_seeds)
        check.choice("strategy", STRATEGIES)
        for name in ("seed_baselines", "baselines", "measure_latency"):
            check.bool(name)
        objectives = tuple(self.objectives) if isinstance(self.objectives, (list, tuple)) else None
        if objectives:
            for i, name in enumerate(objectives):
                if not isinstance(name, str):
                    check.fail(f"objectives[{i}]", f"an objective name (one of {objective_names()})", value=name)
        if not objectives or len(set(objectives)) != len(objectives):
            check.fail("objectives", "a non-empty list of distinct objective names")
        for i, name in enumerate(objectives):
            try:
                get_objective(name)
            except (KeyError, TypeError) as e:
                check.fail_reason(f"objectives[{i}]", e.args[0] if isinstance(e, KeyError) else str(e),
                                  value=name, accepted=f"one of {objective_names()}")
        object.__setattr__(self, "objectives", objectives)
        if self.reevaluate_seeds and first_quality_objective(objectives) is None:
            check.fail_reason("reevaluate_seeds", f"the objectives {list(objectives)} have no quality objective to "
                              f"re-evaluate over training seeds (sizes do not depend on the seed); use 0, or add "
                              f"one such as 'error'", value=self.reevaluate_seeds)
        object.__setattr__(self, "constraints", self._check_constraints(check))
        if not isinstance(self.seed_genomes, (list, tuple)) or not all(isinstance(s, str) for s in self.seed_genomes):
            check.fail("seed_genomes", "a list of genome texts")
        object.__setattr__(self, "seed_genomes", tuple(self.seed_genomes))
        self._check_seed_genomes(check)
        if self.reference_point is not None:
            ref = self.reference_point
            if (not isinstance(ref, (list, tuple)) or len(ref) != len(objectives)
                    or not all(is_real(x) and math.isfinite(x) for x in ref)):
                check.fail("reference_point", f"null or {len(objectives)} finite numbers (one per objective)")
            object.__setattr__(self, "reference_point", tuple(float(x) for x in ref))

    def _check_constraints(self, check: Fields) -> tuple[Constraint, ...]:
        """The constraints as ``Constraint`` objects (mappings converted), each checked."""
        shape = '{"objective": name, "max_value": number}'
        if not isinstance(self.constraints, (list, tuple)):
            check.fail("constraints", f"a list of {shape}")
        out = []
        for i, c in enumerate(self.constraints):
            where = f"constraints[{i}]"
            if isinstance(c, Constraint):
                name, max_value = c.objective_name, c.max_value
            elif isinstance(c, Mapping) and set(c) == {"objective", "max_value"}:
                name, max_value = c["objective"], c["max_value"]
            else:
                check.fail(where, f"a Constraint or a mapping {shape}", value=c)
            try:
                get_objective(name)
            except (KeyError, TypeError) as e:
                check.fail_reason(f"{where}.objective", e.args[0] if isinstance(e, KeyError) else str(e),
                                  value=name, accepted=f"one of {objective_names()}")
            try:
                max_value = float(max_value)
            except (TypeError, ValueError):
                check.fail(f"{where}.max_value", "a finite number", value=max_value)
            if not math.isfinite(max_value):
                check.fail(f"{where}.max_value", "a finite number", value=max_value)
            out.append(Constraint(name, max_value))
        return tuple(out)

    def _check_seed_genomes(self, check: Fields) -> None:
        """Each seed genome parses, is valid and has ``n_liv`` LIVs (checked before a run writes anything)."""
        accepted = f"a valid genome text of n_liv = {self.n_liv} LIVs"
        for i, text in enumerate(self.seed_genomes):
            name = f"seed_genomes[{i}]"
            where = f"EvolveConfig.{name} = {text!r}"
            try:
                g = Genome.from_string(text).validate()
            except GenomeError as e:
                check.fail(name, accepted, value=text, message=f"{where} is not a valid genome: {e}")
            if len(g) != self.n_liv:
                check.fail(name, accepted, value=text,
                           message=f"{where} has {len(g)} LIVs; this run's backbones have n_liv = {self.n_liv}")

    # ------------------------------------------------------------------ derived objects
    def constraint_objects(self) -> tuple[Constraint, ...]:
        """Returns:
        The constraints (``Constraint`` objects; the same as ``constraints``).
        """
        return self.constraints

    def nsga2_options(self) -> dict[str, Any]:
        """Returns:
        The NSGA-II settings of this run as keyword arguments of
        ``star_jax.evolve.ask_tell.NSGA2`` (every name of ``nsga2.OPTION_DEFAULTS``).
        """
        return {name: getattr(self, name) for name in OPTION_DEFAULTS}

    def make_task(self):
        """Builds the fitness task and checks the model config fits it.

        Returns:
            The ``Task``.

        Raises:
            ConfigFieldError: the task is unknown, a task field is invalid, or the model's
                vocabulary / ``max_len`` cannot cover the task.
        """
        check = Fields("EvolveConfig", error=ConfigFieldError)
        fields = {k: v for k, v in self.task.items() if k != "name"}
        try:
            task = tasks.make(self.task["name"], **fields)
        except KeyError as e:
            check.fail_reason("task.name", e.args[0], value=self.task["name"],
                              accepted=f"one of {list(tasks.task_names())}")
        except ConfigError as e:
            raise e.within("EvolveConfig.task", ConfigFieldError) from None
        except ValueError as e:
            check.fail_reason("task", str(e), value=self.task)
        check.int("model.vocab_size", lo=task.vocab_size, value=self.model.vocab_size,
                  accepted=f"an integer >= {task.vocab_size} (the task's vocabulary)")
        check.int("model.max_len", lo=task.seq_len, value=self.model.max_len,
                  accepted=f"an integer >= {task.seq_len} (the task's sequence length)")
        return task

    def needs_latency(self) -> bool:
        """Returns:
        Whether decode latency is measured (toggle on, or a latency objective/constraint).
        """
        return (self.measure_latency or "latency" in self.objectives
                or any(c.objective_name == "latency" for c in self.constraints))

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
                v = [{"objective": c.objective_name, "max_value": c.max_value} for c in v]
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
            raise ConfigFieldError(f"an evolution config must be a JSON object, got {type(data).__name__}",
                                   field_path="EvolveConfig", value=data, accepted="a JSON object")
        data = _drop_comments(data)
        for name in ("model", "train", "task"):
            if isinstance(data.get(name), Mapping):
                data[name] = _drop_comments(data[name])
        error = unknown_fields("EvolveConfig", data, cls.field_names(), ConfigFieldError)
        if error is not None:
            raise error
        kwargs = dict(data)
        for name, sub in (("model", ModelConfig), ("train", TrainConfig)):
            if name in kwargs and not isinstance(kwargs[name], sub):
                if not isinstance(kwargs[name], Mapping):
                    Fields("EvolveConfig", error=ConfigFieldError).fail(
                        name, f"a {sub.__name__} or a mapping of its fields", value=kwargs[name])
                try:
                    kwargs[name] = sub.from_dict(kwargs[name])
                except ConfigError as e:
                    raise e.within(f"EvolveConfig.{name}", ConfigFieldError) from None
                except TypeError as e:
                    raise ConfigFieldError(field_path=f"EvolveConfig.{name}", value=kwargs[name],
                                           reason=str(e)) from None
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
            raise ConfigFieldError(f"config is not valid JSON: {e}", field_path="EvolveConfig",
                                   accepted="a JSON object") from None
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
            raise ConfigFieldError(f"cannot read config file {path}: {e.strerror}", field_path="EvolveConfig",
                                   accepted="a readable JSON file") from None
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
        (about half a minute on 2 CPU cores from a cold compilation cache).

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
                        train={**base.train.to_dict(), "steps": 200}, reevaluate_seeds=5)


PRESETS = {
    "quick": ("the quick default run of `star-jax evolve` (minutes on a laptop CPU)", EvolveConfig.quick),
    "study": ("the CPU-scale study of experiments/configs/cpu_recall_cache.json: 8-LIV backbones, "
              "population 8, 4 offspring generations, 200 steps per candidate, then the front and the "
              "baselines re-evaluated over 5 training seeds (the search alone: about 6 min on 2 CPU cores)", _study),
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
        raise ConfigFieldError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}", field_path="preset",
                               value=name, accepted=f"one of {list(PRESETS)}")
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
    name = config if isinstance(config, str) else None
    if name is not None:
        config = preset(name)
    about = ["star-jax evolution config" + (f", preset {name!r}: {PRESETS[name][0]}." if name else "."),
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
