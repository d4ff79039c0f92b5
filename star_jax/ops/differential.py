"""Shared pieces of the differential LIV variants (after the Differential Transformer).

Every family's differential mixer forms y = (T_a - lambda * T_b) v with the same learnable lambda
and, optionally, the same per-head normalisation; keeping them here keeps the variants consistent.

Design (documented choice): lambda is re-parameterised as in the Differential Transformer,
    lambda = exp(<lq1, lk1>) - exp(<lq2, lk2>) + lambda_init,
with four learnable vectors of length `dim`, each initialised N(0, 0.1^2), so lambda starts near
`lambda_init`. The Differential Transformer makes lambda_init depend on the layer index; operators
here know nothing of their depth, so lambda_init is a fixed field (default 0.8, the value the
paper's schedule approaches for deep layers). After mixing, `DiffHeadNorm` applies a per-head
RMSNorm with a learnable scale and the fixed (1 - lambda_init) factor, as in the paper.

Public API (stable):
  LAMBDA_INIT: float                       default lambda_init (0.8)
  DiffLambda(dim, lambda_init=LAMBDA_INIT)  linen module; __call__() -> scalar lambda (float32)
  DiffLambda.count(dim) -> int              analytic parameter count (4 * dim)
  DiffHeadNorm(dim, lambda_init=LAMBDA_INIT) linen module; __call__(y [..., dim]) -> [..., dim]
  DiffHeadNorm.count(dim) -> int            analytic parameter count (dim)
  diff_combine(a, b, lam) -> a - lam * b    dtype-safe combination of the two branches
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from star_jax.ops import init as init_lib
from star_jax.ops.primitives import rms_norm

LAMBDA_INIT = 0.8
_LAMBDA_VEC_STD = 0.1


class DiffLambda(nn.Module):
    """Learnable scalar lambda of a differential operator.

    Attributes:
      dim: length of each of the four re-parameterisation vectors (attention uses head_dim).
      lambda_init: the constant offset; lambda starts close to this value.

    Returns (from __call__): a float32 scalar, lambda = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init.
    Params: lambda_q1, lambda_k1, lambda_q2, lambda_k2, each [dim], initialised N(0, 0.1^2).
    """

    dim: int
    lambda_init: float = LAMBDA_INIT

    @staticmethod
    def count(dim: int) -> int:
        """Number of parameters of a DiffLambda of length `dim`."""
        return 4 * dim

    @nn.compact
    def __call__(self) -> jax.Array:
        init = init_lib.Normal(_LAMBDA_VEC_STD)
        vecs = [
            self.param(n, init, (self.dim,), jnp.float32)
            for n in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")
        ]
        lq1, lk1, lq2, lk2 = vecs
        return (
            jnp.exp(jnp.sum(lq1 * lk1))
            - jnp.exp(jnp.sum(lq2 * lk2))
            + jnp.float32(self.lambda_init)
        )


class DiffHeadNorm(nn.Module):
    """Per-head RMSNorm with a learnable scale, times the fixed (1 - lambda_init) factor.

    Attributes:
      dim: size of the normalised (last) axis, e.g. head_dim.
      lambda_init: as in DiffLambda; the output is scaled by (1 - lambda_init).

    Arguments (__call__):
      y: [..., dim] (e.g. [batch, length, heads, head_dim]).
    Returns:
      [..., dim], same dtype as y.
    Params: scale [dim], initialised to ones.
    """

    dim: int
    lambda_init: float = LAMBDA_INIT

    @staticmethod
    def count(dim: int) -> int:
        """Number of parameters of a DiffHeadNorm over `dim` channels."""
        return dim

    @nn.compact
    def __call__(self, y: jax.Array) -> jax.Array:
        scale = self.param("scale", init_lib.ONES, (self.dim,), jnp.float32)
        out = rms_norm(y, scale.astype(y.dtype)) * jnp.asarray(1.0 - self.lambda_init, y.dtype)
        return out.astype(y.dtype)


def diff_combine(a: jax.Array, b: jax.Array, lam: jax.Array) -> jax.Array:
    """a - lam * b, with the scalar lam cast to a's dtype (safe under strict promotion).

    Arguments:
      a, b: arrays of the same shape and dtype (the two branches).
      lam: scalar.
    Returns:
      array shaped like a.
    """
    return a - lam.astype(a.dtype) * b
