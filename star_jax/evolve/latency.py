"""Measured decode latency of a genome's model on the current device (the optional "latency" objective).
Static proxies (parameters, cache bytes) do not always transfer to hardware, so this times real decode steps."""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from star_jax.model import StarModel, build_model

__all__ = ["measure_decode_latency"]


def measure_decode_latency(genome, cfg, *, batch: int = 1, n_tokens: int = 32, n_repeats: int = 5,
                           warmup: int = 1, params=None, seed: int = 0) -> float:
    """Milliseconds per decoded token of ``genome`` under ``cfg``, on the default device.

    The model's recurrent ``step`` is jitted inside a ``lax.scan`` over ``n_tokens`` steps
    (weights and decode state as a real decoder carries them); after ``warmup`` untimed runs
    (which also compile), ``n_repeats`` runs are timed and the median is reported.

    Arguments:
        genome: a ``Genome`` or its text.
        cfg: the ``ModelConfig``; ``n_tokens`` must not exceed ``cfg.max_len``.
        batch: sequences decoded together.
        n_tokens: decode steps per timed run.
        n_repeats: timed runs (the median is taken).
        warmup: untimed runs before timing (>= 1 so compilation is never timed).
        params: model parameters (default: freshly initialised; latency does not depend on values).
        seed: seed of the initialisation when ``params`` is None.

    Returns:
        Median wall-clock milliseconds per token per step (a step decodes ``batch`` tokens).
    """
    if n_tokens < 1 or n_repeats < 1 or warmup < 1 or batch < 1:
        raise ValueError("batch, n_tokens, n_repeats and warmup must all be >= 1")
    n_tokens = min(int(n_tokens), int(cfg.max_len))
    model = build_model(genome, cfg)
    if params is None:
        params = model.init(jax.random.key(seed), jnp.zeros((1, cfg.max_len), jnp.int32))
    state = model.init_decode_state(batch, cfg.max_len)

    @jax.jit
    def decode(params, state, tok):
        def body(carry, _):
            tok, state = carry
            logits, state = model.apply(params, tok, state, method=StarModel.step)
            return (jnp.argmax(logits, axis=-1).astype(jnp.int32), state), None

        (tok, state), _ = jax.lax.scan(body, (tok, state), None, length=n_tokens)
        return tok, state

    tok = jnp.zeros((batch,), jnp.int32)
    for _ in range(warmup):
        jax.block_until_ready(decode(params, state, tok))
    times = []
    for _ in range(n_repeats):
        start = time.perf_counter()
        jax.block_until_ready(decode(params, state, tok))
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / n_tokens
