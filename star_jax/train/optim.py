"""The optimizer every candidate trains with: AdamW, warm-up + cosine schedule, norm clipping.
Written as explicit formulas so the population engine can reproduce it step for step."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
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
