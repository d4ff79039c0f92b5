"""Array-level building blocks shared by the LIV operators.

Chosen for speed on CPU and for clean XLA lowering on GPU/TPU (see benchmarks/ops.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rows(fn, x: jax.Array) -> jax.Array:
    """Apply a per-row map (a dense layer, a matrix product) to x [..., d] as one [N, d] matrix.

    XLA on CPU computes a weight gradient that contracts two axes ([batch, length]) about 2x
    slower than the same product over one flattened axis (SwiGLU forward + backward at batch 16,
    length 127, width 64: 4.4 vs 2.1 ms); reshaping is free on every backend.
    """
    lead = x.shape[:-1]
    y = fn(x.reshape((-1, x.shape[-1])))
    return y.reshape(lead + y.shape[1:])


def rms_norm(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
    """RMSNorm over the last axis. x: [..., d], scale: [d]."""
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(var + eps) * jnp.reshape(scale, (1,) * (x.ndim - 1) + scale.shape)


def causal_short_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """Depthwise causal convolution as a sum of shifted slices.

    Arguments:
      x: [batch, length, channels]
      w: [kernel, channels]; w[0] multiplies the current token, w[i] the token i steps back.
    Returns:
      y: [batch, length, channels], y[t] = sum_i w[i] * x[t - i] (zero before the start).
    """
    k = w.shape[0]
    length = x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
    w3 = w[:, None, None, :]  # [kernel, 1, 1, channels]: explicit rank for strict promotion
    y = x * w3[0]
    for i in range(1, k):
        y = y + xp[:, k - 1 - i : k - 1 - i + length, :] * w3[i]
    return y


def causal_short_conv_step(x_t: jax.Array, history: jax.Array, w: jax.Array):
    """One decoding step of `causal_short_conv`.

    Arguments:
      x_t: [batch, channels], the new token.
      history: [batch, kernel - 1, channels], the previous kernel-1 inputs, oldest first.
      w: [kernel, channels].
    Returns:
      (y_t [batch, channels], new history [batch, kernel - 1, channels]).
    """
    k = w.shape[0]
    if k == 1:
        return x_t * w[0][None, :], history
    window = jnp.concatenate([history, x_t[:, None, :]], axis=1)  # [b, k, c], oldest first
    y_t = jnp.einsum("bkc,kc->bc", window, w[::-1])
    return y_t, window[:, 1:, :]


def fft_causal_conv(u: jax.Array, h: jax.Array) -> jax.Array:
    """Causal long convolution by FFT, padded to n >= 2L - 1 (so no wrap-around).

    n is the smallest power of two >= 2L - 1. At MAD's L = 127, n = 2L = 254 = 2 x 127 made
    every FFT take the slow path for a prime factor: with n = 256 the convolution (batch 16, 64
    channels) ran 3x faster on CPU, forward 2.0 -> 0.6 ms and forward + backward 3.6 -> 1.1 ms,
    and a GConv-2 part's forward + backward 6.9 -> 3.2 ms (benchmarks/part_kinds.py).

    Arguments:
      u: [batch, length, channels]
      h: [length, channels], h[i] multiplies the token i steps back.
    Returns:
      y: [batch, length, channels], y[t] = sum_{j<=t} h[t-j] u[j].
    """
    length = u.shape[1]
    n = 1 << max(2 * length - 2, 1).bit_length()  # the smallest power of two >= 2L - 1
    uf = jnp.fft.rfft(u, n=n, axis=1)
    hf = jnp.fft.rfft(h, n=n, axis=0)
    y = jnp.fft.irfft(uf * hf[None], n=n, axis=1)[:, :length, :]
    return y.astype(u.dtype)


def rope_angles(positions, head_dim: int, base: float = 10000.0):
    """cos/sin tables for rotary embeddings. positions: [length] -> ([length, head_dim/2] x 2).

    Static positions (a numpy array, as in the parallel forward) give numpy float32 tables
    computed in float64 on the host: XLA then reads them as constants. Computed in the graph,
    the cos and sin were fused into every consumer and evaluated again for every element of q
    and k (128 times per table entry at batch 16 and 4 heads), which made an SA-1 block's
    forward + backward about 20% slower on CPU. Traced positions (one decoding step) are
    computed in float32 in the graph.
    """
    half = head_dim // 2
    if isinstance(positions, np.ndarray):
        inv_freq = 1.0 / (float(base) ** (np.arange(half, dtype=np.float64) / half))
        ang = positions.astype(np.float64)[:, None] * inv_freq[None, :]
        return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
    ang = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate pairs (first half, second half) of the last axis.

    x: [batch, length, heads, head_dim]; cos, sin: [length, head_dim/2].
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1).astype(x.dtype)
