"""Parameter initialisers that also describe their draw, so one program can make any of them.

Each initialiser here is a frozen dataclass that returns, when called as ``init(key, shape,
dtype)``, exactly what the flax/jax initialiser it names returns (it calls that initialiser; the
tests check it bit for bit). It also says how its values come from the key's random bits
(``draw(shape)``: a ``Draw``, or None for the few whose compiled rounding that program cannot
reproduce; those get a small program per initialiser and shape). With every parameter of a part
from these initialisers, ``star_jax.train.parts`` initialises any part kind with one compiled
program per vector length (``star_jax.train.draw``) instead of compiling the flax initialisation
of every kind, which on a CPU cost more compile time than the part's forward and backward
programs together.

Public API:
  LecunNormal(), VarianceScaling(scale, distribution)  fan-in variance scaling (flax's)
  Normal(stddev), Uniform(scale), Centered(bound)      N(0, s^2); U[0, s); U[-b, b) as s - b
  UniformRange(lo, hi)                                  jax.random.uniform(key, shape, lo, hi)
  ConvPassThrough(noise)                                delta at tap 0 + noise * N(0, 1)
  DtBias(dt_min, dt_max)                                inverse softplus of a log-uniform dt
  S4DReal()                                             log(1..e) on every row (no randomness)
  Constant(value)                                       ones/zeros
  Draw                                                  the description a program draws from
  capture() -> list                                     context: initialisers record, not draw

Inside ``with capture() as seen:`` a call returns zeros and appends ``(array, key, init,
shape, dtype)`` to ``seen``; ``star_jax.train.parts`` traces a kind's initialisation that way to learn
which key and draw every parameter has.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

F32 = np.float32

# draw families (``Draw.family``)
CONSTANT, UNIFORM, NORMAL, TRUNCATED = 0, 1, 2, 3
_TRUNC_STD = F32(0.87962566103423978)  # std of a standard normal truncated to [-2, 2] (flax)


@dataclasses.dataclass(frozen=True)
class Draw:
    """How one parameter's values come from its key's random bits (all float32).

    ``u = max(lo, f * (hi - lo) + lo)`` with ``f`` in [0, 1) from the bits (jax.random.uniform);
    family UNIFORM takes ``u``, NORMAL ``erf_inv(u)``, TRUNCATED ``sqrt(2) erf_inv(u)`` clipped
    to ``[clip_lo, clip_hi]``, CONSTANT 0; then ``value = base * scale (+ shift)``. ``shift`` is
    a scalar (``None`` adds nothing); with ``shift_first = n`` it goes to the first ``n``
    elements only, and the others add 0.

    A NORMAL draw's ``scale`` includes the ``sqrt(2)`` of ``jax.random.normal``: in a compiled
    initialisation XLA folds the two constant factors of ``sqrt(2) erf_inv(u) * stddev`` into
    one float32 constant, and the draw rounds the same way.
    """

    family: int
    lo: float = 0.0
    hi: float = 1.0
    clip_lo: float = 0.0
    clip_hi: float = 0.0
    scale: float = 1.0
    shift: float | None = None
    shift_first: int | None = None


_STATE = threading.local()


@contextlib.contextmanager
def capture() -> Iterator[list]:
    """Within the block (this thread only), initialisers here return zeros and record
    ``(array, key, init, shape, dtype)``."""
    prev = getattr(_STATE, "seen", None)
    _STATE.seen = seen = []
    try:
        yield seen
    finally:
        _STATE.seen = prev


class _Init:
    """Base: ``__call__`` records under ``capture()``, else returns ``self.values(...)``."""

    def __call__(self, key, shape, dtype=jnp.float32):
        seen = getattr(_STATE, "seen", None)
        if seen is not None:
            z = jnp.zeros(shape, dtype)
            seen.append((z, key, self, tuple(shape), jnp.dtype(dtype)))
            return z
        return self.values(key, tuple(shape), dtype)

    def values(self, key, shape, dtype):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def draw(self, shape: tuple[int, ...]) -> Draw | None:
        """How the shared program draws this parameter; None: it is drawn by its own compiled
        program (``values``), once per initialiser and shape."""
        return None


def _fan_in(shape: tuple[int, ...]) -> float:
    """flax's fan-in (in_axis -2, out_axis -1): shape[-2] times the receptive field."""
    receptive = math.prod(shape) / shape[-2] / shape[-1]
    return shape[-2] * receptive


_NORMAL_LO = np.nextafter(F32(-1.0), F32(0.0))  # jax.random.normal's uniform draw: (-1, 1)
_SQRT2 = F32(np.sqrt(2))


def _normal(stddev) -> Draw:
    return Draw(NORMAL, _NORMAL_LO, F32(1.0), scale=_SQRT2 * F32(stddev))


def _truncated(stddev) -> Draw:
    # jax.random.truncated_normal(key, -2, 2) draws u in [erf(-2/sqrt 2), erf(2/sqrt 2)]
    a = F32(math.erf(float(F32(-2.0) / _SQRT2)))
    return Draw(TRUNCATED, a, -a, np.nextafter(F32(-2.0), F32(np.inf)), np.nextafter(F32(2.0), F32(-np.inf)),
                F32(stddev))


_DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")


@dataclasses.dataclass(frozen=True)
class VarianceScaling(_Init):
    """``flax.linen.initializers.variance_scaling(scale, "fan_in", distribution)``."""

    scale: float
    distribution: str  # one of _DISTRIBUTIONS

    def __post_init__(self):
        if self.distribution not in _DISTRIBUTIONS:
            raise ValueError(f"VarianceScaling: distribution must be one of {_DISTRIBUTIONS}, "
                             f"got {self.distribution!r}")
        if not self.scale > 0:
            raise ValueError(f"VarianceScaling: scale must be positive, got {self.scale!r}")

    def values(self, key, shape, dtype):
        return nn.initializers.variance_scaling(self.scale, "fan_in", self.distribution)(key, shape, dtype)

    def draw(self, shape):
        variance = F32(self.scale / _fan_in(shape))
        if self.distribution == "truncated_normal":
            return _truncated(np.sqrt(variance) / _TRUNC_STD)
        if self.distribution == "normal":
            return _normal(np.sqrt(variance))
        return Draw(UNIFORM, F32(-1.0), F32(1.0), scale=np.sqrt(F32(3) * variance))  # "uniform"


def LecunNormal() -> VarianceScaling:  # noqa: N802 - named like flax's initialiser
    """``flax.linen.initializers.lecun_normal()``."""
    return VarianceScaling(1.0, "truncated_normal")


@dataclasses.dataclass(frozen=True)
class Normal(_Init):
    """``flax.linen.initializers.normal(stddev)``."""

    stddev: float

    def values(self, key, shape, dtype):
        return nn.initializers.normal(self.stddev)(key, shape, dtype)

    def draw(self, shape):
        return _normal(self.stddev)


@dataclasses.dataclass(frozen=True)
class Uniform(_Init):
    """``flax.linen.initializers.uniform(scale)``: U[0, scale)."""

    scale: float

    def values(self, key, shape, dtype):
        return nn.initializers.uniform(self.scale)(key, shape, dtype)

    def draw(self, shape):
        return Draw(UNIFORM, F32(0.0), F32(1.0), scale=F32(self.scale))


@dataclasses.dataclass(frozen=True)
class Centered(_Init):
    """U[-bound, bound) drawn as ``uniform(2 bound) - bound`` (PyTorch Conv1d's default)."""

    bound: float

    def values(self, key, shape, dtype):
        return nn.initializers.uniform(2 * self.bound)(key, shape, dtype) - jnp.asarray(self.bound, dtype)

    def draw(self, shape):
        return Draw(UNIFORM, F32(0.0), F32(1.0), scale=F32(2 * self.bound), shift=-F32(self.bound))


@dataclasses.dataclass(frozen=True)
class UniformRange(_Init):
    """``jax.random.uniform(key, shape, dtype, lo, hi)``."""

    lo: float
    hi: float

    def values(self, key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, self.lo, self.hi)

    def draw(self, shape):
        # f * (hi - lo) + lo rounds once or twice depending on how XLA fuses it, unless the
        # product is exact (hi - lo a power of two); otherwise: its own program
        if np.frexp(F32(self.hi) - F32(self.lo))[0] != 0.5:
            return None
        return Draw(UNIFORM, F32(self.lo), F32(self.hi))


@dataclasses.dataclass(frozen=True)
class ConvPassThrough(_Init):
    """Short-conv taps ``[kernel, channels]``: pass-through of the current token (1 at tap 0)
    plus ``noise * N(0, 1)``."""

    noise: float = 0.1

    def values(self, key, shape, dtype):
        delta = jnp.zeros(shape, dtype).at[0].set(1.0)
        return delta + self.noise * jax.random.normal(key, shape, dtype)

    def draw(self, shape):
        return dataclasses.replace(_normal(self.noise), shift=F32(1.0), shift_first=math.prod(shape[1:]))


@dataclasses.dataclass(frozen=True)
class DtBias(_Init):
    """Bias of a dt projection: ``softplus(bias) = dt`` with dt log-uniform in [dt_min, dt_max]
    (Mamba)."""

    dt_min: float
    dt_max: float

    def values(self, key, shape, dtype):
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(self.dt_max) - math.log(self.dt_min)) + math.log(self.dt_min))
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    # draw: None. The compiled initialisation fuses u * c1 + c2 into one rounding (an FMA),
    # which the shared program's select between families does not reproduce bit for bit.


@dataclasses.dataclass(frozen=True)
class S4DReal(_Init):
    """``A_log [d, e]`` with ``A = -exp(A_log) = -(1, 2, ..., e)`` on every row (S4D-real); the
    key is not used."""

    def values(self, key, shape, dtype):
        d, e = shape
        return jnp.log(jnp.broadcast_to(jnp.arange(1, e + 1, dtype=jnp.float32), (d, e))).astype(dtype)

    # draw: None (its own program, as it was compiled in the flax initialisation: XLA's log
    # there rounds log(7) differently from a log compiled at other settings)


@dataclasses.dataclass(frozen=True)
class Constant(_Init):
    """Every entry ``value`` (``nn.initializers.ones`` / ``zeros``); the key is not used."""

    value: float

    def values(self, key, shape, dtype):
        return jnp.full(shape, self.value, dtype)

    def draw(self, shape):
        return Draw(CONSTANT, shift=F32(self.value))


ONES = Constant(1.0)
ZEROS = Constant(0.0)
