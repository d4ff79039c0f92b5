"""Zoology's multi-query associative recall (MQAR) as a pure jnp generator.
Key-value pairs first, then queries of every key at power-law-distributed gaps."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .base import IGNORE_INDEX, TaskConfig, bits_to_int, bits_to_unit, draw_bits, register_task


@dataclasses.dataclass(frozen=True, kw_only=True)
class MQARConfig(TaskConfig):
    """MQAR (Arora, Eyuboglu et al. 2023, "Zoology"), following zoology's generator.

    Keys are distinct tokens from [1, V//2), values distinct tokens from [V//2, V); the context
    holds `num_kv_pairs` (key, value) pairs, then each key is queried once at query slot
    `context + 2 * gap`, with distinct gaps drawn from p(g) ~ a * (g + 1)^(a - 1) over
    g in [0, (seq_len - context)//2) (power_a = 1 is uniform). Non-query positions are random
    tokens (`random_non_queries`) or 0. Arrays have length L = seq_len.

    Fields:
        vocab_size: V (default 8192, zoology's).
        seq_len: even length of the sequence.
        num_kv_pairs: number of key-value pairs (each key queried once).
        power_a: power-law exponent a in (0, 1].
        random_non_queries: fill non-query positions with uniform random tokens.
        num_train, num_test, seed: see `TaskConfig` (defaults 100,000 / 3,000 / 0, zoology's).
    """

    vocab_size: int = 8192
    seq_len: int = 64
    num_kv_pairs: int = 8
    power_a: float = 0.01
    random_non_queries: bool = True
    num_train: int = 100_000
    num_test: int = 3_000

    def __post_init__(self):
        super().__post_init__()
        self._check_int("vocab_size", lo=4)
        self._check_int("seq_len", lo=4)
        self._check_int("num_kv_pairs", lo=1)
        self._check_float("power_a", 0.0, 1.0, lo_open=True, hi_open=False)
        self._check_bool("random_non_queries")
        if self.seq_len % 2:
            self._fail("seq_len", "an even integer >= 4")
        if 4 * self.num_kv_pairs > self.seq_len:
            self._fail("num_kv_pairs", f"an integer in [1, seq_len // 4 = {self.seq_len // 4}] "
                       f"(context and queries need 4 * num_kv_pairs <= seq_len = {self.seq_len})")
        max_pairs = min(self.vocab_size // 2 - 1, self.vocab_size - self.vocab_size // 2)
        if self.num_kv_pairs > max_pairs:
            self._fail("vocab_size", f"an integer >= {2 * self.num_kv_pairs + 2} "
                       f"({self.num_kv_pairs} distinct keys in [1, V//2) and values in [V//2, V))")

    @property
    def length(self) -> int:
        return self.seq_len


def _distinct(bits_pick: jax.Array, bits_order: jax.Array, m: int) -> jax.Array:
    """n distinct integers from [0, m) in uniformly random order (Floyd's algorithm + shuffle).

    Arguments:
        bits_pick: uint32 [n] words for the picks.
        bits_order: uint32 [n] words for the order.
        m: size of the range (>= n).

    Returns:
        int32 [n].
    """
    n = bits_pick.shape[0]

    def body(j, chosen):
        hi = m - n + j + 1  # pick from [0, m - n + j]; on a repeat take m - n + j itself
        t = bits_to_int(bits_pick[j], 0, hi)
        t = jnp.where(jnp.any(chosen == t), hi - 1, t)
        return chosen.at[j].set(t)

    chosen = jax.lax.fori_loop(0, n, body, jnp.full((n,), -1, jnp.int32))
    return chosen[jnp.argsort(bits_order)]


def mqar(key, config: MQARConfig, *, training: bool = True):
    """One MQAR example (zoology's layout; train and test targets coincide).

    Arguments:
        key: PRNG key.
        config: an MQARConfig.
        training: unused.

    Returns:
        (inputs, targets): int32 [seq_len] each. targets[p] is the value of the key queried at
        input position p, -100 at every non-query position.
    """
    del training
    V, S, n = config.vocab_size, config.seq_len, config.num_kv_pairs
    half = V // 2
    context = 2 * n
    space = (S - context) // 2
    b_key, b_korder, b_val, b_vorder, b_gap, b_fill = draw_bits(key, (n, n, n, n, space, S))
    keys = _distinct(b_key, b_korder, half - 1) + 1
    values = _distinct(b_val, b_vorder, V - half) + half
    a = config.power_a
    logp = (a - 1.0) * jnp.log(jnp.arange(1, space + 1, dtype=jnp.float32))
    # distinct gaps, sampled sequentially proportional to p (as numpy's choice without
    # replacement): the Gumbel top-k trick
    gumbel = -jnp.log(-jnp.log(bits_to_unit(b_gap)))
    _, gaps = jax.lax.top_k(logp + gumbel, n)
    gaps = gaps.astype(jnp.int32)
    qpos = context + 2 * gaps  # query positions in the (S + 1)-long raw sequence
    kv = jnp.stack([keys, values], axis=1).reshape(-1)
    raw = jnp.zeros((S + 1,), jnp.int32).at[:context].set(kv).at[qpos].set(keys)
    labels = jnp.full((S + 1,), IGNORE_INDEX, jnp.int32).at[qpos + 1].set(values)
    inputs, targets = raw[:-1], labels[1:]
    if config.random_non_queries:
        fill = bits_to_int(b_fill, 0, V)
        inputs = jnp.where(inputs == 0, fill, inputs)
    return inputs, targets


register_task("mqar", MQARConfig, mqar)
