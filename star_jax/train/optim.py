"""The optimizer every candidate trains with: AdamW, warm-up + cosine schedule, norm clipping.
Written as explicit formulas so the population engine can reproduce it step for step."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from star_jax.train.config import TrainConfig


def make_schedule(cfg: TrainConfig):
    """The learning rate as a function of the 0-based step index.

    With ``W = warmup_steps``, ``S = steps``, ``r = min_lr_ratio``:

    - warm-up, ``s < W``: ``lr * (s + 1) / W`` (the first step already moves; step ``W - 1``
      runs at the peak);
    - decay, ``s >= W``: ``t = clip((s - W) / max(S - W - 1, 1), 0, 1)`` and
      ``lr * (r + (1 - r) * (1 + cos(pi * t)) / 2)``, so step ``W`` runs at the peak and the last
      step ``S - 1`` runs at the floor ``lr * r``; later steps stay at the floor.

    Arguments:
        cfg: the training config.

    Returns:
        ``schedule(step) -> lr``: step is an int scalar (array or Python int), lr a float32
        scalar array. Pure and jittable.
    """
    peak = float(cfg.lr)
    floor_ratio = float(cfg.min_lr_ratio)
    warmup = int(cfg.warmup_steps)
    decay_len = float(max(cfg.steps - warmup - 1, 1))

    def schedule(step):
        s = jnp.asarray(step).astype(jnp.float32)
        warm = peak * (s + 1.0) / float(max(warmup, 1))
        t = jnp.clip((s - float(warmup)) / decay_len, 0.0, 1.0)
        cosine = peak * (floor_ratio + (1.0 - floor_ratio) * 0.5 * (1.0 + jnp.cos(math.pi * t)))
        return jnp.where(s < float(warmup), warm, cosine)

    return schedule


def decay_mask(params):
    """Which parameters receive weight decay: matrices and higher (ndim >= 2).

    Norm scales, biases and scalars (ndim < 2, e.g. a differential LIV's lambda) are not decayed:
    pulling them to zero changes what the layer computes rather than regularising it. Embedding
    and head matrices are decayed.

    Arguments:
        params: any parameter pytree.

    Returns:
        A pytree of Python bools with the structure of ``params``.
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with the schedule of ``make_schedule``, global-norm clipping and masked decay.

    The chain, applied to the raw gradients g at 0-based step s:
    1. if ``clip_norm`` is set: ``g <- g * min(1, clip_norm / ||g||_2)`` (global norm over all
       leaves, ``optax.clip_by_global_norm``);
    2. Adam moments with ``b1``, ``b2``, ``eps = 1e-8`` and bias correction;
    3. ``update = -lr(s) * (adam_direction + weight_decay * param * decay_mask)``
       (``optax.adamw``: the decay is decoupled from the moments but scaled by lr(s)).

    Arguments:
        cfg: the training config.

    Returns:
        An ``optax.GradientTransformation``; ``update`` needs ``params`` (for the decay).
    """
    adamw = optax.adamw(
        learning_rate=make_schedule(cfg),
        b1=float(cfg.b1),
        b2=float(cfg.b2),
        eps=1e-8,
        weight_decay=float(cfg.weight_decay),
        mask=decay_mask,
    )
    if cfg.clip_norm is not None:
        adamw = optax.chain(optax.clip_by_global_norm(float(cfg.clip_norm)), adamw)
    return _with_standard_promotion(adamw)


def _with_standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run an optax transformation under standard dtype promotion.

    optax's Adam bias correction computes ``python_float ** int32_count``, which strict dtype
    promotion (on in our tests, and a reasonable user choice) rejects. The numbers are unchanged.
    """

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------------------------
# The same optimizer over one flat vector
# ----------------------------------------------------------------------------------------------
class FlatLayout:
    """Where every leaf of a float32 parameter pytree sits in one flat vector.

    Leaves are laid out in ``jax.tree.leaves`` order, each raveled in C order. The optimizer
    then runs as a handful of whole-vector operations instead of a dozen per leaf, which keeps
    the compiled program small (XLA's compile time grows with the number of operations; for a
    population of models the per-leaf optimizer was most of it).

    Arguments:
        params: an example pytree (arrays or shape/dtype structs); every leaf must be float32.

    Raises:
        TypeError: a leaf is not float32 (its path is named).
    """

    def __init__(self, params: Any):
        leaves_with_path, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        for path, leaf in leaves_with_path:
            if jnp.dtype(leaf.dtype) != jnp.float32:
                raise TypeError(f"parameter {jax.tree_util.keystr(path)} is {leaf.dtype}; the flat "
                                "optimizer layout needs float32 parameters")
        self.shapes = tuple(tuple(leaf.shape) for _, leaf in leaves_with_path)
        self.sizes = tuple(int(math.prod(s)) for s in self.shapes)
        self.offsets = tuple(int(x) for x in np.cumsum((0,) + self.sizes[:-1]))
        self.decayed = tuple(len(s) >= 2 for s in self.shapes)  # as ``decay_mask``
        self.size = int(sum(self.sizes))

    def ravel(self, tree: Any) -> jax.Array:
        """The tree as one float32 vector [size] (jittable)."""
        leaves = self.treedef.flatten_up_to(tree)
        if not leaves:
            return jnp.zeros((0,), jnp.float32)
        if not any(isinstance(x, jax.core.Tracer) for x in leaves):
            # concrete values (e.g. fresh parameters): join them on the host; an eager
            # jnp.concatenate would compile once per distinct number and shapes of leaves
            return jnp.asarray(np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in leaves]))
        return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])

    def unravel(self, flat: jax.Array) -> Any:
        """The inverse of ``ravel`` (jittable; numpy in, numpy out on the host)."""
        xp = np if isinstance(flat, np.ndarray) else jnp
        # one split (its gradient is one concatenate), not a slice per leaf (a pad each)
        pieces = xp.split(flat, list(self.offsets[1:])) if self.sizes else []
        leaves = [xp.reshape(x, s) for x, s in zip(pieces, self.shapes)]
        return jax.tree.unflatten(self.treedef, leaves)

    def decay_vector(self) -> jax.Array:
        """``decay_mask`` as a float32 vector [size] of ones and zeros (built inside a trace
        from a few broadcasts, not embedded as a constant)."""
        parts, run, flag = [], 0, None
        for n, d in zip(self.sizes, self.decayed):  # merge runs of equal flags
            if flag is None or d == flag:
                run, flag = run + n, d
            else:
                parts.append(jnp.full((run,), float(flag), jnp.float32))
                run, flag = n, d
        if run:
            parts.append(jnp.full((run,), float(flag), jnp.float32))
        return jnp.concatenate(parts) if parts else jnp.zeros((0,), jnp.float32)


def _masked_decay(weight_decay: float, layout: FlatLayout) -> optax.GradientTransformation:
    """``optax.add_decayed_weights(weight_decay, mask=decay_mask)`` for a flat vector."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("the flat optimizer's weight decay needs params")
        if weight_decay == 0.0:
            return updates, state
        return updates + weight_decay * layout.decay_vector() * params, state

    return optax.GradientTransformation(init, update)


def make_flat_optimizer(cfg: TrainConfig, layout: FlatLayout) -> optax.GradientTransformation:
    """``make_optimizer(cfg)`` for parameters flattened by ``layout`` (one float32 vector).

    The chain is the same (global-norm clipping, Adam with bias correction, decoupled weight
    decay on ``decay_mask``'s leaves, the schedule), so a step on ``layout.ravel(params)`` gives
    ``layout.ravel`` of the tree step, up to float summation order in the global norm.

    Arguments:
        cfg: the training config.
        layout: the ``FlatLayout`` of the parameters.

    Returns:
        An ``optax.GradientTransformation`` on [layout.size] vectors; ``update`` needs ``params``.
    """
    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
    parts += [
        optax.scale_by_adam(b1=float(cfg.b1), b2=float(cfg.b2), eps=1e-8),
        _masked_decay(float(cfg.weight_decay), layout),
        optax.scale_by_learning_rate(make_schedule(cfg)),
    ]
    return _with_standard_promotion(optax.chain(*parts))
