"""Pure training and evaluation functions: the loss, the key derivation, one step, a scanned chunk.
The population engine reuses these, so a candidate trained there matches one trained alone."""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

IGNORE_INDEX = -100
"""Target value of positions that neither count in the loss nor in the accuracy."""

TRAIN_LOSS_WINDOW = 10
"""The final ``train_loss`` of a run is the mean training loss over its last this-many steps."""

ApplyFn = Callable[[Any, jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------
def masked_sums(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed cross-entropy and counts over the counted positions (``targets != -100``).

    Arguments:
        logits: [batch, length, vocab], any float dtype; computed in float32.
        targets: [batch, length] integer class ids, ``-100`` where ignored.

    Returns:
        ``(loss_sum, n_correct, n_counted)``: float32 sum of the negative log-likelihood over
        counted positions, int32 number of counted positions where ``argmax(logits) == target``,
        int32 number of counted positions. All scalars.
    """
    chex.assert_rank(logits, 3)
    chex.assert_rank(targets, 2)
    chex.assert_equal_shape_prefix((logits, targets), 2)
    mask = targets != IGNORE_INDEX  # [B, L]
    safe_targets = jnp.where(mask, targets, 0).astype(jnp.int32)  # [B, L]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, L, V]
    nll = -jnp.take_along_axis(log_probs, safe_targets[..., None], axis=-1)[..., 0]  # [B, L]
    loss_sum = jnp.sum(jnp.where(mask, nll, 0.0))
    predictions = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [B, L]
    n_correct = jnp.sum(mask & (predictions == safe_targets), dtype=jnp.int32)
    n_counted = jnp.sum(mask, dtype=jnp.int32)
    return loss_sum, n_correct, n_counted


def masked_loss_and_accuracy(
    logits: jax.Array, targets: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Mean cross-entropy over counted positions, with the accuracy counts as auxiliary output.

    Arguments:
        logits: [batch, length, vocab], any float dtype; computed in float32.
        targets: [batch, length] integer class ids, ``-100`` where ignored.

    Returns:
        ``(loss, (n_correct, n_counted))``: ``loss`` is the float32 mean negative log-likelihood
        over counted positions (0.0 when nothing is counted, with zero gradient); the counts are
        int32 scalars as in ``masked_sums``. Accuracy = ``n_correct / n_counted``.
    """
    loss_sum, n_correct, n_counted = masked_sums(logits, targets)
    loss = loss_sum / jnp.maximum(n_counted, 1).astype(jnp.float32)
    return loss, (n_correct, n_counted)


def _ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    return numerator.astype(jnp.float32) / jnp.maximum(denominator, 1).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Randomness
# ----------------------------------------------------------------------------------------------
def batch_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The run's two root keys: ``init_key, data_key = jax.random.split(jax.random.key(seed))``.

    ``init_key`` initialises the parameters (a genome's backbone: part ``k`` from
    ``fold_in(init_key, k)``, see ``star_jax.train.parts``; another flax module:
    ``model.init(init_key, zeros[1, seq_len] int32)``);
    the batch of 0-based step ``s`` is ``task.sample(jax.random.fold_in(data_key, s), batch_size)``
    (see ``step_batch_key``). Batches therefore depend on the seed and the step only, never on
    chunking, resumption or the model.

    Arguments:
        seed: the run's integer seed.

    Returns:
        ``(init_key, data_key)``, new-style typed PRNG keys.
    """
    init_key, data_key = jax.random.split(jax.random.key(seed))
    return init_key, data_key


def step_batch_key(data_key: jax.Array, step) -> jax.Array:
    """The key of the batch of 0-based step ``step``: ``jax.random.fold_in(data_key, step)``.

    Arguments:
        data_key: the second key of ``batch_keys(seed)``.
        step: int scalar (Python int or traced int32).

    Returns:
        A typed PRNG key.
    """
    return jax.random.fold_in(data_key, step)


# ----------------------------------------------------------------------------------------------
# One step and a scanned chunk of steps
# ----------------------------------------------------------------------------------------------
def apply_update(optimizer: optax.GradientTransformation, params, opt_state, grads, loss,
                 n_correct, n_counted, active=True):
    """Steps 2-4 of ``make_train_step`` given the gradients: the update every trainer applies.

    The population engine calls this once per candidate, so a candidate trained there takes
    exactly the steps it would take alone.

    Arguments:
        optimizer: e.g. ``make_optimizer(cfg)`` (or ``make_flat_optimizer`` for flat params).
        params, opt_state, grads: the model's pytrees (or flat vectors).
        loss: float32 scalar, the mean training loss of the batch.
        n_correct, n_counted: int32 scalars (accuracy counts).
        active: bool scalar; the update is applied only where active and finite.

    Returns:
        ``(params, opt_state, metrics)``; metrics hold float32 scalars ``loss``, ``accuracy``,
        ``grad_norm`` (before clipping) and the bool scalar ``finite``.
    """
    grad_norm = optax.tree.norm(grads).astype(jnp.float32)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    ok = jnp.logical_and(active, finite)
    keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
    params = jax.tree.map(keep, new_params, params)
    opt_state = jax.tree.map(keep, new_opt_state, opt_state)
    metrics = {"loss": loss, "accuracy": _ratio(n_correct, n_counted), "grad_norm": grad_norm, "finite": finite}
    return params, opt_state, metrics


def make_train_step(apply_fn: ApplyFn, optimizer: optax.GradientTransformation):
    """One optimizer step, pure and un-jitted (jit, scan or vmap it as needed).

    ``step(params, opt_state, inputs, targets, active=True) -> (params, opt_state, metrics)``:
    1. ``(loss, (n_correct, n_counted)), grads = value_and_grad(masked_loss_and_accuracy o
       apply_fn)(params)``;
    2. ``grad_norm = optax.tree.norm(grads)`` (before clipping);
    3. ``updates, new_state = optimizer.update(grads, opt_state, params)``;
       ``new_params = optax.apply_updates(params, updates)``;
    4. ``ok = active & isfinite(loss) & isfinite(grad_norm)``; params and optimizer state
       (including its step count) advance only where ``ok``, else the old ones are returned
       unchanged. A diverging step therefore never writes NaN into the state.

    Arguments:
        apply_fn: ``apply_fn(params, tokens [B, L] int32) -> logits [B, L, V]``.
        optimizer: e.g. ``make_optimizer(cfg)``.

    Returns:
        The step function. Its ``metrics`` dict holds float32 scalars ``loss``, ``accuracy``,
        ``grad_norm`` and a bool scalar ``finite`` (= isfinite(loss) & isfinite(grad_norm)).
    """

    def loss_fn(params, inputs, targets):
        logits = apply_fn(params, inputs)
        return masked_loss_and_accuracy(logits, targets)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, opt_state, inputs, targets, active=True):
        (loss, (n_correct, n_counted)), grads = grad_fn(params, inputs, targets)
        return apply_update(optimizer, params, opt_state, grads, loss, n_correct, n_counted, active)

    return step


def make_chunk(train_step, sample_fn=None, constrain=None):
    """A chunk of steps as one ``lax.scan``: the one chunk builder of every trainer (one
    candidate, or a population whose step maps over candidates).

    ``train_step(params, opt_state, inputs [B, L], targets [B, L], active) -> (params,
    opt_state, metrics)`` (from ``make_train_step``, or a population step whose ``active`` and
    metrics carry a candidate axis [P]). Step i runs with ``active = alive & active[i]``; after a
    non-finite step ``alive`` turns False (per candidate) and the rest of the chunk changes
    nothing of it.

    Arguments:
        train_step: the step.
        sample_fn: None: the chunk is ``chunk(params, opt_state, inputs [S, B, L], targets
            [S, B, L], active [S], alive)`` over pre-sampled batches. Otherwise ``sample_fn(key)
            -> (inputs, targets)``, traceable, and the chunk is ``chunk(params, opt_state,
            data_key, steps [S], active [S], alive)``: step ``steps[i]`` trains on
            ``sample_fn(fold_in(data_key, steps[i]))`` inside the scan, exactly the batch it
            would get pre-sampled.
        constrain: None, or ``constrain(inputs, targets) -> (inputs, targets)`` placing each
            batch (e.g. a sharding constraint).

    Returns:
        The chunk function, returning ``(params, opt_state, alive, metrics)`` with every metric
        stacked over the chunk's S steps.
    """

    def run(params, opt_state, xs, get_batch, alive):
        def body(carry, x):
            params, opt_state, alive = carry
            inputs, targets, step_active = get_batch(x)
            if constrain is not None:
                inputs, targets = constrain(inputs, targets)
            params, opt_state, metrics = train_step(params, opt_state, inputs, targets, alive & step_active)
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


def make_scan_chunk(train_step):
    """``make_chunk(train_step)``: a chunk over pre-sampled batches."""
    return make_chunk(train_step)


def make_sampled_scan_chunk(train_step, sample_fn):
    """``make_chunk(train_step, sample_fn)``: a chunk that samples each batch inside the scan."""
    return make_chunk(train_step, sample_fn)


def final_train_loss(train_losses) -> float:
    """The summary training loss of a run: mean of its last ``TRAIN_LOSS_WINDOW`` step losses.

    Arguments:
        train_losses: [steps_run] per-step training losses, all finite.

    Returns:
        A Python float (``inf`` for an empty sequence).
    """
    losses = np.asarray(train_losses, dtype=np.float64)
    if losses.size == 0:
        return float("inf")
    return float(np.mean(losses[-TRAIN_LOSS_WINDOW:]))


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def stack_test_batches(task, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The task's whole fixed test set as stacked, padded batches.

    Arguments:
        task: a task with ``test_batches(batch_size)`` yielding equal-shape padded batches
            ``(inputs [B, L], targets [B, L])`` (padding rows have all targets -100).
        batch_size: sequences per batch.

    Returns:
        ``(inputs, targets)``: int32 numpy arrays of shape [num_batches, batch_size, seq_len].
    """
    batches = [(np.asarray(x), np.asarray(y)) for x, y in task.test_batches(batch_size)]
    if not batches:
        raise ValueError(f"task {task!r} yielded no test batches")
    shapes = {(x.shape, y.shape) for x, y in batches}
    if len(shapes) != 1:
        raise ValueError(f"test batches must all have one shape (padded); got {sorted(shapes)}")
    inputs = np.stack([x for x, _ in batches]).astype(np.int32)
    targets = np.stack([y for _, y in batches]).astype(np.int32)
    return inputs, targets


def eval_sums(apply_fn: ApplyFn, params, inputs: jax.Array, targets: jax.Array):
    """Summed test loss and counts over stacked batches (``lax.scan``, one batch at a time).

    Arguments:
        apply_fn: ``apply_fn(params, tokens [B, L]) -> logits [B, L, V]``.
        params: the model parameters.
        inputs: [num_batches, B, L] int32.
        targets: [num_batches, B, L] int32, -100 where ignored.

    Returns:
        ``(loss_sum, n_correct, n_counted)`` scalars, as ``masked_sums`` over all batches.
    """

    def body(carry, xs):
        loss_sum, n_correct, n_counted = carry
        batch_inputs, batch_targets = xs
        s, c, n = masked_sums(apply_fn(params, batch_inputs), batch_targets)
        return (loss_sum + s, n_correct + c, n_counted + n), None

    zero_i = jnp.zeros((), jnp.int32)
    init = (jnp.zeros((), jnp.float32), zero_i, zero_i)
    sums, _ = jax.lax.scan(body, init, (inputs, targets))
    return sums


_eval_sums_jit = jax.jit(eval_sums, static_argnums=0)


def evaluate_stacked(apply_fn: ApplyFn, params, inputs, targets) -> dict[str, float]:
    """``evaluate`` on batches already stacked by ``stack_test_batches`` (one jitted call).

    Arguments:
        apply_fn: hashable ``apply_fn(params, tokens) -> logits`` (e.g. ``model.apply``); it is a
            static argument of the jitted computation, so reuse the same object to avoid retracing.
        params: the model parameters.
        inputs: [num_batches, B, L] int32.
        targets: [num_batches, B, L] int32.

    Returns:
        ``{"loss": float, "accuracy": float}``: token-level mean cross-entropy and accuracy
        over every counted test position.
    """
    loss_sum, n_correct, n_counted = jax.device_get(_eval_sums_jit(apply_fn, params, inputs, targets))
    n_counted = int(n_counted)
    if n_counted == 0:
        raise ValueError("the test set has no counted targets (all are -100)")
    return {"loss": float(loss_sum) / n_counted, "accuracy": int(n_correct) / n_counted}


def evaluate(apply_fn: ApplyFn, params, task, batch_size: int) -> dict[str, float]:
    """Loss and accuracy over the task's whole fixed test set, in one jitted call.

    Every batch has the same (padded) shape, so the computation compiles once per
    ``(apply_fn, shapes)``. Padding rows carry targets -100 and do not count.

    Arguments:
        apply_fn: ``apply_fn(params, tokens [B, L] int32) -> logits [B, L, V]``, hashable
            (``model.apply`` is).
        params: the model parameters.
        task: the task (``test_batches(batch_size)``).
        batch_size: sequences per evaluation batch.

    Returns:
        ``{"loss": float, "accuracy": float}`` (token-level, over counted test positions).
    """
    inputs, targets = stack_test_batches(task, batch_size)
    return evaluate_stacked(apply_fn, params, inputs, targets)
