"""Config validation: one error family (`ConfigError`) whose errors name the full field path and
the accepted range, whichever config they come from (model, train, tasks, evolve, NSGA-II), nested
configs included; the old error names still catch them; constraints are held as `Constraint`s."""
import json
import subprocess
import sys

import numpy as np
import pytest

from star_jax import tasks
from star_jax.evolve import EvolveConfig
from star_jax.evolve.ask_tell import NSGA2, uniform_mutation
from star_jax.evolve.config import ConfigFieldError
from star_jax.evolve.nsga2 import OPTION_DEFAULTS
from star_jax.evolve.objectives import Constraint
from star_jax.model.config import ModelConfig
from star_jax.tasks import TaskConfigError
from star_jax.train.config import TrainConfig
from star_jax._util.validate import ConfigError

# task name -> (config field, a bad value, the accepted range the error states)
TASK_CASES = {
    "in_context_recall": ("seq_len", 31, "an even integer >= 4 (the sequence is made of 2-token key-value pairs)"),
    "noisy_in_context_recall": ("frac_noise", 1.5, "a number in [0, 1)"),
    "fuzzy_in_context_recall": ("k_motif_size", 0, "an integer >= 1"),
    "selective_copying": ("num_tokens_to_copy", -2, "an integer >= 1"),
    "compression": ("vocab_size", 1, "an integer >= 2"),
    "memorization": ("seq_len", 7, "an even integer >= 2 (the sequence is made of (key, insert) pairs)"),
    "mqar": ("power_a", 0.0, "a number in (0, 1]"),
    "bytes_lm": ("val_fraction", 0.75, "a number in (0, 0.5]"),
}


def _nsga2(**kw):
    return NSGA2(n_objectives=2, mutate=uniform_mutation(0, 10), **kw)


def _evolve_json(**changes):
    data = EvolveConfig.quick().to_dict()
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return EvolveConfig.from_json(json.dumps(data))


# (case id, a call that must fail, expected error class, field path, accepted range)
CASES = [
    ("model", lambda: ModelConfig(width=0), ConfigError, "ModelConfig.width", "an integer >= 1"),
    ("model.scan_impl", lambda: ModelConfig(scan_impl="fast"), ConfigError, "ModelConfig.scan_impl",
     "one of ['scan', 'associative']"),
    ("train", lambda: TrainConfig(lr=-1.0), ConfigError, "TrainConfig.lr", "a finite number > 0"),
    ("train.b2", lambda: TrainConfig.from_dict({"b2": 1.0}), ConfigError, "TrainConfig.b2", "a number in [0, 1)"),
    *[(f"task:{name}", (lambda name=name, f=f, v=v: tasks.make(name, **{f: v})), TaskConfigError,
       f"{tasks.config_class(name).__name__}.{f}", accepted) for name, (f, v, accepted) in TASK_CASES.items()],
    ("evolve", lambda: EvolveConfig(pop_size=1), ConfigFieldError, "EvolveConfig.pop_size", "an integer >= 2"),
    ("evolve.strategy", lambda: EvolveConfig.quick(strategy="fast"), ConfigFieldError, "EvolveConfig.strategy",
     "one of ['auto', 'static', 'data', 'sequential']"),
    ("evolve.nsga2.crossover_prob", lambda: EvolveConfig.quick(crossover_prob=1.5), ConfigFieldError,
     "EvolveConfig.crossover_prob", "a number in [0, 1]"),
    ("evolve.nsga2.tournament_size", lambda: EvolveConfig.quick(tournament_size=0), ConfigFieldError,
     "EvolveConfig.tournament_size", "an integer >= 1"),
    ("evolve.nsga2.elitism", lambda: EvolveConfig.quick(elitism=9), ConfigFieldError, "EvolveConfig.elitism",
     "an integer in [0, pop_size=8]"),
    ("nsga2.tournament_size", lambda: _nsga2(tournament_size=0), ConfigError, "NSGA2.tournament_size",
     "an integer >= 1"),
    ("nsga2.crossover_prob", lambda: _nsga2(crossover_prob=-0.5), ConfigError, "NSGA2.crossover_prob",
     "a number in [0, 1]"),
    ("nsga2.elitism", lambda: _nsga2(pop_size=4, elitism=5), ConfigError, "NSGA2.elitism",
     "an integer in [0, pop_size=4]"),
    ("evolve.train", lambda: EvolveConfig.quick(train={"lr": -1.0}), ConfigFieldError, "EvolveConfig.train.lr",
     "a finite number > 0"),
    ("evolve.train.json", lambda: _evolve_json(train={"lr": -1.0}), ConfigFieldError, "EvolveConfig.train.lr",
     "a finite number > 0"),
    ("evolve.train.steps.json", lambda: _evolve_json(train={"warmup_steps": 500}), ConfigFieldError,
     "EvolveConfig.train.warmup_steps", "an integer in [0, steps=100]"),
    ("evolve.model.json", lambda: _evolve_json(model={"head_dim": 5}), ConfigFieldError,
     "EvolveConfig.model.width", "an integer divisible by head_dim (5)"),
    ("evolve.constraint", lambda: EvolveConfig.quick(constraints=[{"objective": "params", "max_value": "big"}]),
     ConfigFieldError, "EvolveConfig.constraints[0].max_value", "a finite number"),
    ("evolve.task", lambda: EvolveConfig.quick(task={"name": "in_context_recall", "seq_len": 31}).make_task(),
     ConfigFieldError, "EvolveConfig.task.seq_len",
     "an even integer >= 4 (the sequence is made of 2-token key-value pairs)"),
    ("evolve.task.fit", lambda: EvolveConfig.quick(task={"name": "in_context_recall", "vocab_size": 64}).make_task(),
     ConfigFieldError, "EvolveConfig.model.vocab_size", "an integer >= 64 (the task's vocabulary)"),
]


@pytest.mark.parametrize("make, error, path, accepted", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_config_error_names_its_field_path_and_accepted_range(make, error, path, accepted):
    with pytest.raises(ConfigError) as info:
        make()
    err = info.value
    assert type(err) is error and isinstance(err, ValueError)
    assert err.field_path == path and err.field == path.rsplit(".", 1)[-1]
    assert err.accepted == accepted
    assert str(err).startswith(f"{path} = {err.value!r} is invalid: expected {accepted}"), str(err)


def test_the_cases_cover_every_registered_task():
    assert set(TASK_CASES) == set(tasks.task_names())


def test_unknown_fields_name_the_path_and_the_valid_fields():
    with pytest.raises(ConfigFieldError) as info:
        EvolveConfig.from_dict({"train": {"learning_rate": 1e-3}})
    err = info.value
    assert err.field_path == "EvolveConfig.train.learning_rate" and err.value == 1e-3
    assert str(err).startswith("EvolveConfig.train.learning_rate: unknown TrainConfig field(s) ['learning_rate']")
    assert "'lr'" in str(err)
    with pytest.raises(TaskConfigError) as info:
        tasks.make("mqar", num_pairs=3)
    assert info.value.field_path == "MQARConfig.num_pairs" and info.value.field == "num_pairs"
    with pytest.raises(ConfigFieldError) as info:
        EvolveConfig.quick(task={"name": "mqar", "num_pairs": 3}).make_task()
    assert info.value.field_path == "EvolveConfig.task.num_pairs"
    with pytest.raises(ConfigFieldError) as info:
        EvolveConfig.quick(task={"name": "recall"}).make_task()
    assert info.value.field_path == "EvolveConfig.task.name" and "in_context_recall" in str(info.value)
    with pytest.raises(ConfigFieldError) as info:
        EvolveConfig.quick(objectives=["error", "speed"])
    assert info.value.field_path == "EvolveConfig.objectives[1]" and "valid objectives" in str(info.value)


def test_old_error_names_are_one_family():
    import star_jax.model
    import star_jax.model.config

    assert star_jax.ConfigError is star_jax.model.ConfigError is star_jax.model.config.ConfigError is ConfigError
    assert issubclass(ConfigFieldError, ConfigError) and issubclass(TaskConfigError, ConfigError)
    assert issubclass(ConfigError, ValueError)
    # the old constructors still work
    assert str(ConfigError("LIV #1 does not fit")) == "LIV #1 does not fit"
    err = TaskConfigError("bad", field="seq_len", value=3)
    assert str(err) == "bad" and err.field == "seq_len" and err.value == 3
    # a ValueError-catching caller still catches a TrainConfig error
    with pytest.raises(ValueError, match=r"TrainConfig\.steps = 0 is invalid"):
        TrainConfig(steps=0)


def test_validation_module_needs_no_jax():
    code = ("import sys; from star_jax._util.validate import ConfigError; import star_jax; "
            "star_jax.ConfigError; assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nsga2_options_reachable_from_evolve_config_with_todays_defaults():
    config = EvolveConfig()
    strategy = _nsga2()
    for name, default in OPTION_DEFAULTS.items():
        assert getattr(config, name) == default == getattr(strategy, name), name
    changed = EvolveConfig.quick(tournament_size=3, crossover_prob=0.9, n_offspring=6, merge_parents=False,
                                 duplicate_retries=5)
    assert EvolveConfig.from_json(changed.to_json()) == changed
    assert (changed.tournament_size, changed.crossover_prob, changed.n_offspring, changed.merge_parents,
            changed.duplicate_retries) == (3, 0.9, 6, False, 5)
    # numpy integers are fine for the NSGA2 strategy itself (not JSON), not for the config
    assert _nsga2(tournament_size=np.int64(3)).tournament_size == 3
    with pytest.raises(ConfigFieldError, match="EvolveConfig.merge_parents"):
        EvolveConfig.quick(merge_parents=1)


def test_constraints_are_constraint_objects_and_round_trip_as_dicts():
    config = EvolveConfig.quick(objectives=["error", "params"],
                                constraints=[{"objective": "params", "max_value": 5e4},
                                             Constraint("cache_bytes", 6e5)])
    assert config.constraints == (Constraint("params", 5e4), Constraint("cache_bytes", 6e5))
    assert config.constraint_objects() == config.constraints
    data = config.to_dict()
    assert data["constraints"] == [{"objective": "params", "max_value": 5e4},
                                   {"objective": "cache_bytes", "max_value": 6e5}]
    assert EvolveConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["constraints"] == data["constraints"]
    with pytest.raises(ConfigFieldError) as info:
        EvolveConfig.quick(constraints=[{"objective": "speed", "max_value": 1.0}])
    assert info.value.field_path == "EvolveConfig.constraints[0].objective"
    with pytest.raises(ConfigFieldError) as info:
        EvolveConfig.quick(constraints=[{"objective": "params"}])
    assert info.value.field_path == "EvolveConfig.constraints[0]"


def test_nsga2_options_are_keyword_arguments_of_the_strategy():
    config = EvolveConfig.quick(tournament_size=3, crossover_prob=0.5, duplicate_retries=2)
    strategy = NSGA2(pop_size=config.pop_size, n_objectives=len(config.objectives), **config.nsga2_options(),
                     mutate=uniform_mutation(0, 10))
    for name, value in config.nsga2_options().items():
        assert getattr(strategy, name) == value


def test_the_evolution_loop_uses_every_nsga2_option():
    from star_jax.evolve import loop

    config = EvolveConfig.quick(tournament_size=3, crossover_prob=0.5, n_offspring=6, merge_parents=False,
                                duplicate_retries=2)
    strategy = loop._make_strategy(config)
    for name, value in config.nsga2_options().items():
        assert getattr(strategy, name) == value, name


def test_settings_that_only_fail_mid_run_are_refused_at_construction():
    import numpy as np

    # the population would shrink for good: the next one is the elites plus the offspring
    with pytest.raises(ConfigFieldError, match=r"n_offspring: .* n_offspring \+ elitism must be >= pop_size=8"):
        EvolveConfig.quick(n_offspring=4, elitism=2, merge_parents=False)
    with pytest.raises(ConfigError, match=r"NSGA2.n_offspring"):
        _nsga2(pop_size=8, n_offspring=1, elitism=0, merge_parents=False)
    assert EvolveConfig.quick(n_offspring=6, elitism=2, merge_parents=False).pop_size == 8
    # training (then re-evaluation) seeds past 2**32 - 1
    with pytest.raises(ConfigFieldError, match=r"train_seeds: training seeds run from .* to 4294967296"):
        EvolveConfig.quick(train={"seed": 2**32 - 1}, train_seeds=2)
    with pytest.raises(ConfigFieldError, match=r"then reevaluate_seeds=5"):
        EvolveConfig.quick(train={"seed": 2**32 - 3}, reevaluate_seeds=5)
    # an objective written as an object (as constraints are): named, not a TypeError
    with pytest.raises(ConfigFieldError, match=r"objectives\[0\] = \{'name': 'error'\} is invalid"):
        EvolveConfig.quick(objectives=[{"name": "error"}, "cache_bytes"])
    # numpy bools where numbers are allowed (numpy 2 names the type "bool")
    assert bool(_nsga2(pop_size=np.int64(8), merge_parents=np.bool_(True), elitism=np.int32(2)).merge_parents)


def test_ask_tell_refuses_a_generator_whose_state_is_not_json():
    import numpy as np

    strategy = _nsga2(pop_size=4)
    with pytest.raises(TypeError, match="PCG64 or PCG64DXSM"):
        strategy.init(np.random.Generator(np.random.MT19937(0)), np.zeros((4, 5), np.int64))
    state = strategy.init(np.random.Generator(np.random.PCG64DXSM(0)), np.zeros((4, 5), np.int64))
    from star_jax.evolve.ask_tell import state_from_json, state_to_json
    assert state_to_json(state_from_json(state_to_json(state))) == state_to_json(state)
