"""Training one candidate end to end: init, scanned chunks of steps, periodic evaluation, result.
A diverging candidate ends early with the worst score instead of raising."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from star_jax.genome import Genome
from star_jax.model import compile_genome
from star_jax.model.model import StarModel
from star_jax.train import parts as P
from star_jax.train import threads
from star_jax.train.config import TrainConfig
from star_jax.train.driver import MAX_CHUNK, TrainState, chunk_plan, drive, is_eval_point  # noqa: F401 (re-exported)
from star_jax.train.optim import FlatLayout, make_flat_optimizer, make_optimizer
from star_jax.train.progress import progress_bar
from star_jax.train.step import (
    batch_keys,
    _eval_sums_jit,
    make_chunk,
    make_train_step,
    stack_test_batches,
    step_batch_key,
)

_TRACE_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What training one candidate produced.

    Fields:
        params: the final parameters (for a diverged run: the last finite ones).
        metrics: ``{"train_loss": float, "test_loss": float, "test_accuracy": float,
            "diverged": bool, "steps_run": int}``. ``train_loss`` is the mean over the last
            ``TRAIN_LOSS_WINDOW`` steps; test metrics are token-level over the whole test set
            after the last step. A diverged run reports ``train_loss = test_loss = inf`` and
            ``test_accuracy = 0.0``.
        curve: numpy arrays. Per step (length ``steps_run``): ``step`` (1-based: the k-th
            update), ``train_loss``, ``train_accuracy``, ``grad_norm`` (before clipping), ``lr``.
            Per evaluation: ``eval_step`` (updates done before it), ``test_loss``,
            ``test_accuracy``. Non-finite losses are recorded as ``inf``.
        config: the training config used.
        seconds: wall-clock time of the run, compile included.
    """

    params: Any
    metrics: dict[str, Any]
    curve: dict[str, np.ndarray]
    config: TrainConfig
    seconds: float


def sampling_is_traceable(task, batch_size: int) -> bool:
    """Whether ``task.sample(key, batch_size)`` can be traced by JAX (then every trainer samples
    its batches inside the compiled scan; otherwise they are sampled on the host)."""
    try:
        jax.eval_shape(lambda: task.sample(jax.random.key(0), batch_size))
    except _TRACE_ERRORS:
        return False
    return True


def _check_logits(apply_fn, params, task) -> None:
    dummy = jnp.zeros((1, task.seq_len), jnp.int32)
    shape = jax.eval_shape(apply_fn, params, dummy).shape
    if len(shape) != 3 or shape[:2] != (1, task.seq_len) or shape[2] < task.vocab_size:
        raise ValueError(
            f"the model maps tokens [1, {task.seq_len}] to logits of shape {tuple(shape)}; "
            f"expected [1, {task.seq_len}, vocab] with vocab >= the task's {task.vocab_size}"
        )


def _flat_layout_or_none(params):
    try:
        return FlatLayout(params)
    except TypeError:  # a non-float32 leaf
        return None


def _run(cfg: TrainConfig, bar, run_chunk, evaluate) -> tuple[dict, dict]:
    """``drive`` for one candidate, moving its progress bar."""
    def on_chunk(stop, steps_run, diverged, info):
        bar.phase("training")  # from the first chunk on (it compiled what was not compiled yet)
        bar.update(completed=steps_run[0], info=info)
        if diverged[0]:
            bar.update(info=info + "  [red]diverged")

    curves, metrics = drive(cfg, lambda start, stop, alive: run_chunk(start, stop), evaluate, on_chunk=on_chunk)
    return curves[0], metrics[0]


def _fit(apply_fn, init_fn, task, cfg: TrainConfig, params, progress: bool) -> TrainResult:
    # jit compiles inside the first chunk's call: the bar says so until that chunk returns
    with progress_bar(f"compiling, then steps 1-{chunk_plan(cfg)[1][0][1]}", cfg.steps, enabled=progress,
                      title="train") as bar:
        return _fit_on(apply_fn, init_fn, task, cfg, params, bar)


def _fit_on(apply_fn, init_fn, task, cfg: TrainConfig, params, bar) -> TrainResult:
    start_time = time.perf_counter()
    init_key, data_key = batch_keys(cfg.seed)
    if params is None:
        params = init_fn(init_key, jnp.zeros((1, task.seq_len), jnp.int32))
    else:
        params = jax.tree.map(jnp.array, params)  # a private copy: the chunks donate their input
    _check_logits(apply_fn, params, task)

    # The optimizer runs on one flat vector when every parameter is float32 (the compiled step
    # is then a few vector ops instead of a dozen per leaf); otherwise on the tree.
    layout = _flat_layout_or_none(params)
    if layout is not None:
        optimizer = make_flat_optimizer(cfg, layout)
        tree_apply_fn = apply_fn
        apply_fn = lambda flat, tokens: tree_apply_fn(layout.unravel(flat), tokens)  # noqa: E731
        params = layout.ravel(params)
    else:
        optimizer = make_optimizer(cfg)
    opt_state = optimizer.init(params)
    train_step = make_train_step(apply_fn, optimizer)
    batch_size = cfg.batch_size
    in_scan = sampling_is_traceable(task, batch_size)
    sample_fn = (lambda key: task.sample(key, batch_size)) if in_scan else None
    chunk_fn = jax.jit(make_chunk(train_step, sample_fn), donate_argnums=(0, 1))
    test_inputs, test_targets = stack_test_batches(task, cfg.eval_batch_size)

    chunk_len, _ = chunk_plan(cfg)
    box = [TrainState(params, opt_state, jnp.asarray(True))]

    def run_chunk(start: int, stop: int) -> dict:
        steps = np.arange(start, start + chunk_len, dtype=np.int32)  # padded to chunk_len
        active = steps < stop
        if in_scan:
            args = (data_key, jnp.asarray(steps), jnp.asarray(active), box[0].alive)
        else:
            batches = [task.sample(step_batch_key(data_key, int(s)), batch_size) for s in steps]
            inputs = jnp.stack([jnp.asarray(x, jnp.int32) for x, _ in batches])
            targets = jnp.stack([jnp.asarray(y, jnp.int32) for _, y in batches])
            args = (inputs, targets, jnp.asarray(active), box[0].alive)
        *new_state, metrics = chunk_fn(box[0].params, box[0].opt_state, *args)
        box[0] = TrainState(*new_state)
        return jax.device_get(metrics)

    def evaluate():
        return jax.device_get(_eval_sums_jit(apply_fn, box[0].params, test_inputs, test_targets))

    curve, metrics_out = _run(cfg, bar, run_chunk, evaluate)
    params = box[0].params
    return TrainResult(
        params=params if layout is None else layout.unravel(params),
        metrics=metrics_out,
        curve=curve,
        config=cfg,
        seconds=time.perf_counter() - start_time,
    )


def _fit_parts(program, task, cfg: TrainConfig, params, progress: bool) -> TrainResult:
    """``_fit`` for a genome's backbone, as a chain of cached part programs (``train.parts``):
    the same keys, batches, optimizer, chunk plan, evaluation and divergence rule, and nothing
    compiled for a part kind the process has already compiled."""
    start_time = time.perf_counter()
    if program.cfg.vocab_size < task.vocab_size:
        raise ValueError(f"the model's vocabulary ({program.cfg.vocab_size}) is smaller than the task's "
                         f"({task.vocab_size}): set ModelConfig.vocab_size >= {task.vocab_size}")
    model = P.PartModel(program, task.seq_len)
    n_new = len({id(p) for p in model.progs if cfg.batch_size not in p.warmed})  # what warm_up compiles
    first = f"compiling {n_new} part program{'s' if n_new != 1 else ''}" if n_new else "training"
    with progress_bar(first, cfg.steps, enabled=progress, title="train") as bar:
        return _fit_parts_on(model, task, cfg, params, bar, start_time)


def _fit_parts_on(model, task, cfg: TrainConfig, params, bar, start_time: float) -> TrainResult:
    t_compile = time.perf_counter()
    n_compiled = P.warm_up([model], cfg.batch_size)  # compiles the part kinds not seen yet, side by side
    if n_compiled:
        bar.log(f"compiled {n_compiled} part program{'s' if n_compiled != 1 else ''} "
                f"in {time.perf_counter() - t_compile:.1f}s")
    bar.phase("training")
    if params is None:
        vecs, mus, nus = model.init(cfg.seed)
    else:
        vecs = model.from_flax(params)
        mus = [jax.device_put(np.zeros(v.shape, np.float32)) for v in vecs]
        nus = [jax.device_put(np.zeros(v.shape, np.float32)) for v in vecs]
    decays = [p.decay for p in model.progs]
    hyper = P.hyper_vector(cfg)
    seed = np.uint32(cfg.seed)
    batch_size = cfg.batch_size
    traceable = sampling_is_traceable(task, batch_size)
    sampler = P.batch_sampler(task, batch_size) if traceable else None
    data_key = None if traceable else batch_keys(cfg.seed)[1]
    # evaluated at the training batch size: the training programs serve, nothing new compiles
    test_inputs, test_targets = (jax.device_put(list(a)) for a in stack_test_batches(task, batch_size))

    n_parts = model.n_parts
    state = TrainState(vecs, (mus, nus, np.int32(0)), np.bool_(True))  # lists updated in place
    held: list = []  # the last step's intermediates (see below)

    def run_chunk(start: int, stop: int) -> dict:
        nonlocal state
        chunk = []
        for s in range(start, stop):
            if sampler is not None:
                inputs, targets = sampler(seed, np.int32(s))
            else:
                x, y = task.sample(step_batch_key(data_key, s), batch_size)
                inputs, targets = np.asarray(x, np.int32), np.asarray(y, np.int32)
            count, alive = state.opt_state[2], state.alive
            # this step's intermediates stay referenced until the next step is queued: freeing
            # an array whose program has not run yet would block the host (see loss_and_grads)
            hold = [inputs, targets, count, alive]
            (loss, sums), grads, sq = model.loss_and_grads(vecs, inputs, targets, hold)
            ok, grad_norm, alive, new_count, metrics = P._step_tail(loss, sums, sq, alive, count)
            hold += [loss, sums, sq, ok, grad_norm]
            for k in range(n_parts):
                vecs[k], mus[k], nus[k] = P._adamw(vecs[k], grads[k], mus[k], nus[k], decays[k], count, ok,
                                                   grad_norm, hyper)
            state = TrainState(vecs, (mus, nus, new_count), alive)
            held[:] = hold
            chunk.append(metrics)
        host = jax.device_get(chunk)
        return {key: np.array([m[key] for m in host]) for key in host[0]}

    eval_threads = threads.eval_threads()  # 1 inside train_many's threads, which share the cores already

    def evaluate():
        return tuple(model.eval_sums(vecs, test_inputs, test_targets, eval_threads))

    curve, metrics_out = _run(cfg, bar, run_chunk, evaluate)
    return TrainResult(params=model.to_flax(vecs), metrics=metrics_out, curve=curve, config=cfg,
                       seconds=time.perf_counter() - start_time)


def fit(model, task, train_cfg: TrainConfig, *, params=None, progress: bool = True) -> TrainResult:
    """Train a Flax module on a task and evaluate it on the task's fixed test set.

    Keys: ``init_key, data_key = batch_keys(train_cfg.seed)``; step ``s`` trains on
    ``task.sample(fold_in(data_key, s), batch_size)``. A genome's ``StarModel`` trains through
    the cached part programs of ``star_jax.train.parts`` (nothing compiled for part kinds seen
    before in the process; part ``k`` initialised from ``fold_in(init_key, k)``; evaluated at
    ``batch_size``). Any other module is initialised with ``model.init(init_key, zeros[1,
    task.seq_len] int32)`` and trained with ``make_train_step`` in jitted ``lax.scan`` chunks
    (batches sampled inside the scan when ``task.sample`` is traceable, pre-sampled on the host
    otherwise: the same batches either way). The test set
    is evaluated every ``eval_every`` steps and after the last. A non-finite training or test
    loss stops the run: ``diverged=True``, losses ``inf``, accuracy 0. The same seed gives the
    same result.

    Arguments:
        model: a ``flax.linen.Module`` mapping tokens [B, L] int32 to logits [B, L, V] with
            ``V >= task.vocab_size``.
        task: the task (``sample``, ``test_batches``, ``seq_len``, ``vocab_size``).
        train_cfg: the training config.
        params: start from these parameters instead of initialising (they are copied).
        progress: show a progress bar.

    Returns:
        A ``TrainResult``.
    """
    if not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    if type(model) is StarModel:  # a genome's backbone: cached part programs
        return _fit_parts(model.program, task, train_cfg, params, progress)
    return _fit(model.apply, model.init, task, train_cfg, params, progress)


def fit_model(model, task, train_cfg: TrainConfig | None = None, *, params=None,
              progress: bool = True, **overrides) -> TrainResult:
    """``fit`` for any Flax module users bring, with the config built from defaults + overrides.

    Arguments:
        model: a ``flax.linen.Module``: tokens [B, L] int32 -> logits [B, L, V].
        task: the task.
        train_cfg: base config (default ``TrainConfig()``).
        params: optional starting parameters.
        progress: show a progress bar.
        **overrides: ``TrainConfig`` fields to change (unknown names raise ``ValueError``).

    Returns:
        A ``TrainResult``.
    """
    cfg = (train_cfg or TrainConfig()).replace(**overrides)
    return fit(model, task, cfg, params=params, progress=progress)


def train(genome, model_cfg, task, train_cfg: TrainConfig | None = None, *, params=None,
          progress: bool = True, **overrides) -> TrainResult:
    """Build the model of a genome and train it on a task (the public ``star_jax.train``).

    Arguments:
        genome: a ``Genome`` (or its text form).
        model_cfg: the ``ModelConfig`` (width, vocabulary, ...); its vocabulary must cover the
            task's.
        task: the task.
        train_cfg: base training config (default ``TrainConfig()``).
        params: optional starting parameters.
        progress: show a progress bar.
        **overrides: ``TrainConfig`` fields to change, e.g. ``steps=500, lr=1e-3``.

    Returns:
        A ``TrainResult`` (see ``fit``).
    """
    if isinstance(genome, str):
        genome = Genome.from_string(genome)
    program = compile_genome(genome, model_cfg)
    cfg = (train_cfg or TrainConfig()).replace(**overrides)
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train_cfg must be a TrainConfig, got {type(cfg).__name__}")
    return _fit_parts(program, task, cfg, params, progress)
