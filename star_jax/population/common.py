"""Pieces every population strategy shares: the chunk of scanned steps, the host loop that
mirrors single-candidate training, and the result record."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from star_jax.train.config import TrainConfig
from star_jax.train.loop import chunk_plan, is_eval_point, sampling_is_traceable
from star_jax.train.optim import make_schedule
from star_jax.train.step import final_train_loss, stack_test_batches, step_batch_key


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


def make_population_chunk(pop_step: Callable, sample_fn: Callable | None, constrain: Callable):
    """A chunk of population steps as one ``lax.scan``.

    ``pop_step(params, opt_state, inputs [B, L], targets [B, L], active [P]) -> (params,
    opt_state, metrics)`` with every metric of shape [P]. With ``sample_fn`` the chunk is
    ``chunk(params, opt_state, data_key, steps [S], active [S], alive [P])`` and samples each
    batch inside the scan; without, ``chunk(params, opt_state, inputs [S, B, L], targets
    [S, B, L], active [S], alive [P])``. ``constrain(inputs, targets)`` places the batch (e.g.
    a sharding constraint). Returns ``(params, opt_state, alive [P], metrics [S, P])``.
    """

    def run(params, opt_state, xs, get_batch, alive):
        def body(carry, x):
            params, opt_state, alive = carry
            inputs, targets, step_active = get_batch(x)
            inputs, targets = constrain(inputs, targets)
            params, opt_state, metrics = pop_step(params, opt_state, inputs, targets, alive & step_active)
            alive = alive & (metrics["finite"] | ~step_active)
            return (params, opt_state, alive), metrics

        (params, opt_state, alive), metrics = jax.lax.scan(body, (params, opt_state, alive), xs)
        return params, opt_state, alive, metrics

    if sample_fn is not None:
        def chunk(params, opt_state, data_key, steps, active, alive):
            def get(x):
                step, step_active = x
                inputs, targets = sample_fn(step_batch_key(data_key, step))
                return inputs, targets, step_active

            return run(params, opt_state, (steps, active), get, alive)
    else:
        def chunk(params, opt_state, inputs, targets, active, alive):
            return run(params, opt_state, (inputs, targets, active), lambda x: x, alive)

    return chunk


@dataclasses.dataclass
class Engine:
    """A strategy's compiled pieces for one population, as the host loop drives them.

    Fields:
        n: number of candidates P.
        state: ``(params, opt_state)`` in the strategy's layout.
        chunk_fn: jitted chunk (see ``make_population_chunk``), donating the state.
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


def sample_in_scan(task, batch_size: int) -> bool:
    """Whether ``task.sample`` can be traced (then batches are sampled inside the scan)."""
    return sampling_is_traceable(task, batch_size)


def run_population(engine: Engine, task, train_cfg: TrainConfig, data_key, *, progress=None):
    """Drive a population through ``train_cfg.steps`` steps exactly as ``star_jax.train`` drives
    one candidate: the same chunk plan, eval points, divergence rule and final metrics.

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
    p = engine.n
    n_real = p if engine.n_real is None else engine.n_real
    cfg = train_cfg
    bs = cfg.batch_size
    test_inputs, test_targets = stack_test_batches(task, cfg.eval_batch_size)
    test_inputs, test_targets = engine.place_batch(jnp.asarray(test_inputs)), engine.place_batch(jnp.asarray(test_targets))
    chunk_len, plan = chunk_plan(cfg)
    records = [{"train_loss": [], "train_accuracy": [], "grad_norm": []} for _ in range(p)]
    evals = [{"eval_step": [], "test_loss": [], "test_accuracy": []} for _ in range(p)]
    diverged = [c >= n_real for c in range(p)]  # padding candidates start (and stay) stopped
    steps_run = [0] * p
    last_eval = [{"loss": math.inf, "accuracy": 0.0} for _ in range(p)]
    params, opt_state = engine.state
    t_train = t_eval = 0.0
    for start, stop in plan:
        t0 = time.perf_counter()
        steps = np.arange(start, start + chunk_len, dtype=np.int32)
        active = steps < stop
        alive = jnp.asarray(np.logical_not(np.asarray(diverged)))
        if engine.sample_in_scan:
            args = (jnp.asarray(steps), jnp.asarray(active), alive)
            params, opt_state, _, metrics = engine.chunk_fn(params, opt_state, data_key, *args)
        else:
            batches = [task.sample(step_batch_key(data_key, int(s)), bs) for s in steps]
            inputs = jnp.stack([jnp.asarray(x, jnp.int32) for x, _ in batches])
            targets = jnp.stack([jnp.asarray(y, jnp.int32) for _, y in batches])
            params, opt_state, _, metrics = engine.chunk_fn(params, opt_state, inputs, targets,
                                                             jnp.asarray(active), alive)
        metrics = jax.device_get(metrics)  # each [S, P]
        t_train += time.perf_counter() - t0
        n = stop - start
        for c in range(p):
            if diverged[c]:
                continue
            finite = np.asarray(metrics["finite"][:n, c])
            nc = n
            if not finite.all():
                nc = int(np.argmin(finite)) + 1
                diverged[c] = True
            for name, source in (("train_loss", "loss"), ("train_accuracy", "accuracy"), ("grad_norm", "grad_norm")):
                records[c][name].append(np.asarray(metrics[source][:nc, c], np.float64))
            steps_run[c] = start + nc
        if is_eval_point(cfg, stop) and not all(diverged):
            t0 = time.perf_counter()
            loss_sum, n_correct, n_counted = jax.device_get(engine.eval_fn(params, test_inputs, test_targets))
            t_eval += time.perf_counter() - t0
            for c in range(p):
                if diverged[c]:
                    continue
                counted = int(n_counted[c])
                if counted == 0:
                    raise ValueError("the test set has no counted targets (all are -100)")
                ev = {"loss": float(loss_sum[c]) / counted, "accuracy": int(n_correct[c]) / counted}
                last_eval[c] = ev
                if not math.isfinite(ev["loss"]):
                    diverged[c] = True
                evals[c]["eval_step"].append(stop)
                evals[c]["test_loss"].append(ev["loss"])
                evals[c]["test_accuracy"].append(ev["accuracy"])
        if progress is not None:
            progress(stop, n_real - sum(diverged[:n_real]), n_real)
        if all(diverged):
            break

    schedule = make_schedule(cfg)
    lr_all = np.asarray(jax.device_get(schedule(jnp.arange(max(steps_run), dtype=jnp.int32))), np.float64)
    metrics_out, curves = [], []
    for c in range(n_real):
        curve = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in records[c].items()}
        curve["train_loss"] = np.where(np.isfinite(curve["train_loss"]), curve["train_loss"], np.inf)
        curve["step"] = np.arange(1, steps_run[c] + 1, dtype=np.int64)
        curve["lr"] = lr_all[: steps_run[c]]
        curve["eval_step"] = np.asarray(evals[c]["eval_step"], np.int64)
        tl = np.asarray(evals[c]["test_loss"], np.float64).reshape(-1)
        curve["test_loss"] = np.where(np.isfinite(tl), tl, np.inf)
        curve["test_accuracy"] = np.asarray(evals[c]["test_accuracy"], np.float64).reshape(-1)
        if diverged[c]:
            m = {"train_loss": math.inf, "test_loss": math.inf, "test_accuracy": 0.0}
        else:
            m = {"train_loss": final_train_loss(curve["train_loss"]),
                 "test_loss": float(last_eval[c]["loss"]),
                 "test_accuracy": float(last_eval[c]["accuracy"])}
        m.update(diverged=diverged[c], steps_run=int(steps_run[c]))
        metrics_out.append(m)
        curves.append(curve)
    return metrics_out, curves, engine.unpack_params(params), {"train": t_train, "eval": t_eval}
