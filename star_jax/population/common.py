"""Pieces every population strategy shares: the engine record, the result record, and the
host loop (``star_jax.train.driver.drive``, the one single-candidate training uses)."""
from __future__ import annotations

import dataclasses
import time
import collections
from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from star_jax.genome import Genome
from star_jax.model.config import ModelConfig
from star_jax.model.model import build_model
from star_jax.train import parts
from star_jax.train.config import TrainConfig
from star_jax.train.driver import TrainState, chunk_plan, drive
from star_jax.train.loop import sampling_is_traceable
from star_jax.train.step import stack_test_batches, step_batch_key


@dataclasses.dataclass(frozen=True)
class PopulationResult:
    """What training a population produced, candidate by candidate (in the order given).

    Fields:
        metrics: per candidate, the final metrics of ``star_jax.train`` (``train_loss``,
            ``test_loss``, ``test_accuracy``, ``diverged``, ``steps_run``).
        curves: per candidate, the curve of ``star_jax.train`` (numpy arrays ``step``,
            ``train_loss``, ``train_accuracy``, ``grad_norm``, ``lr``, ``eval_step``,
            ``test_loss``, ``test_accuracy``).
        params: per candidate, the final parameters (the last finite ones for a diverged
            candidate), or None when not kept.
        n_compiles: how many times the population's jitted step and eval functions were traced
            (each trace is one XLA compile) during this call.
        timings: seconds: ``total`` (end to end, compile included), ``init``, ``train``
            (chunks, compile included), ``eval``; and ``n_chunks`` (memory chunks run).
        strategy: the strategy that ran.
    """

    metrics: list[dict[str, Any]]
    curves: list[dict[str, np.ndarray]]
    params: list[Any] | None
    n_compiles: int
    timings: dict[str, float]
    strategy: str


class TraceCounter:
    """Counts traces of the functions it wraps (a trace of a jitted function = one compile)."""

    def __init__(self) -> None:
        self.count = 0

    def wrap(self, fn: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)

        return wrapped


@dataclasses.dataclass
class Engine:
    """A strategy's compiled pieces for one population, as the host loop drives them.

    Fields:
        n: number of candidates P.
        state: ``(params, opt_state)`` in the strategy's layout.
        chunk_fn: jitted chunk (``star_jax.train.step.make_chunk`` of the population step), donating the state.
        eval_fn: jitted ``eval_fn(params, inputs [N, B, L], targets [N, B, L]) -> (loss_sum [P],
            n_correct [P], n_counted [P])``.
        unpack_params: strategy layout -> list of per-candidate ``{'params': ...}`` trees.
        sample_in_scan: whether ``chunk_fn`` samples batches itself.
        n_real: the first ``n_real`` candidates are the population; any after them are padding
            (never trained, evaluated or returned). None: all ``n``.
    """

    n: int
    state: tuple
    chunk_fn: Callable
    eval_fn: Callable
    unpack_params: Callable
    sample_in_scan: bool
    place_batch: Callable = lambda x: x
    n_real: int | None = None


def batch_placement(mesh):
    """(constrain(inputs, targets) inside jit, place(stacked test array [N, B, L]) outside)."""
    if mesh is None or "data" not in mesh.axis_names:
        return (lambda i, t: (i, t)), (lambda x: x)
    rows = NamedSharding(mesh, P("data"))

    def constrain(i, t):
        return jax.lax.with_sharding_constraint(i, rows), jax.lax.with_sharding_constraint(t, rows)

    return constrain, (lambda x: jax.device_put(x, NamedSharding(mesh, P(None, "data"))))


def init_candidates(genomes: Sequence[Genome], cfg: ModelConfig, task, train_cfg: TrainConfig,
                    init_params: Sequence[Any] | None = None):
    """Each candidate's initial parameters, exactly as ``star_jax.train`` makes them.

    Arguments:
        genomes: the population.
        cfg: the model config.
        task: the task (for ``seq_len``).
        train_cfg: the training config (its seed).
        init_params: optional per-candidate starting parameters (None entries are initialised).

    Returns:
        ``(models, params_list)``.
    """
    models = [build_model(g, cfg) for g in genomes]
    params = []
    for c, m in enumerate(models):
        given = None if init_params is None else init_params[c]
        if given is None:
            params.append(parts.init_params(m.program, task.seq_len, train_cfg.seed))
        else:
            params.append(jax.tree.map(jnp.array, given))
    return models, params


class LRUCache:
    """A small least-recently-used map (compiled functions and base trees kept across calls,
    at most ``size`` of them)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: "collections.OrderedDict[Hashable, Any]" = collections.OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value under ``key``, made by ``make()`` when missing."""
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        value = self._data[key] = make()
        while len(self._data) > self.size:
            self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


def sample_in_scan(task, batch_size: int) -> bool:
    """Whether ``task.sample`` can be traced (then batches are sampled inside the scan)."""
    return sampling_is_traceable(task, batch_size)


def run_population(engine: Engine, task, train_cfg: TrainConfig, data_key, *, progress=None):
    """Drive a population through ``train_cfg.steps`` steps with the host loop that drives one
    candidate (``star_jax.train.driver.drive``): the same chunk plan, eval points, divergence
    rule and final metrics.

    Arguments:
        engine: the strategy's compiled pieces.
        task: the task.
        train_cfg: the training config.
        data_key: the second key of ``batch_keys(train_cfg.seed)``.
        progress: None, or ``progress(steps_done, n_alive, n_candidates)`` called after each
            chunk of steps (``train_population`` moves its bar with it).

    Returns:
        ``(metrics, curves, params_list, timings)`` per candidate.
    """
    n_real = engine.n if engine.n_real is None else engine.n_real
    cfg = train_cfg
    bs = cfg.batch_size
    test_inputs, test_targets = stack_test_batches(task, cfg.eval_batch_size)
    test_inputs, test_targets = engine.place_batch(jnp.asarray(test_inputs)), engine.place_batch(jnp.asarray(test_targets))
    chunk_len, _ = chunk_plan(cfg)
    params, opt_state = engine.state
    box = [TrainState(params, opt_state, None)]  # alive: the driver's, passed to every chunk
    times = {"train": 0.0, "eval": 0.0}

    def run_chunk(start: int, stop: int, alive: np.ndarray) -> dict:
        t0 = time.perf_counter()
        steps = np.arange(start, start + chunk_len, dtype=np.int32)
        active = steps < stop
        if engine.sample_in_scan:
            args = (data_key, jnp.asarray(steps))
        else:
            batches = [task.sample(step_batch_key(data_key, int(s)), bs) for s in steps]
            args = (jnp.stack([jnp.asarray(x, jnp.int32) for x, _ in batches]),
                    jnp.stack([jnp.asarray(y, jnp.int32) for _, y in batches]))
        *new_state, metrics = engine.chunk_fn(box[0].params, box[0].opt_state, *args, jnp.asarray(active),
                                              jnp.asarray(alive))
        box[0] = TrainState(*new_state)
        metrics = jax.device_get(metrics)  # each [S, P]
        times["train"] += time.perf_counter() - t0
        return metrics

    def evaluate():
        t0 = time.perf_counter()
        sums = jax.device_get(engine.eval_fn(box[0].params, test_inputs, test_targets))
        times["eval"] += time.perf_counter() - t0
        return sums

    def on_chunk(stop, steps_run, diverged, info):
        if progress is not None:
            progress(stop, n_real - sum(diverged), n_real)

    curves, metrics = drive(cfg, run_chunk, evaluate, n=engine.n, n_real=n_real, on_chunk=on_chunk)
    return metrics, curves, engine.unpack_params(box[0].params), times
