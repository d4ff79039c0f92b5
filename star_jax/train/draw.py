"""Initialise any part kind's parameter vector with one compiled program per vector length.

Compiling a part kind's flax initialisation costs more on a CPU than compiling its forward and
backward programs together (every parameter's threefry loop and erf_inv polynomial is its own
code), and each new LIV kind needs one. Here a kind's initialisation is *traced once* with the
initialisers of ``star_jax.ops.init`` recording instead of drawing (``InitPlan``): that gives
every parameter's key, as a small graph of threefry key operations on ``(seed, index)``, and
its draw (``Draw``). A call then

1. evaluates the key graph on the host (``KeyGraph``: a few vectorised numpy threefry hashes;
   integer arithmetic, so exactly what JAX computes), and
2. runs ``draw_vector``: one elementwise program that hashes every element's counter under its
   parameter's key and maps the bits to the parameter's distribution, the steps of
   ``jax.random.uniform`` / ``normal`` / ``truncated_normal`` written once for all families.

The result equals the kind's flax initialisation bit for bit (tests compare every LIV class),
and the program is shared by every kind whose vector has the same bucketed length. A parameter
whose initialiser has no ``Draw`` (``draw`` returns None) is drawn by its own small program, one
per initialiser and shape, and handed in. A kind with a parameter from another initialiser, a
non-float32 parameter, or a key operation the host graph does not know (another PRNG
implementation, or ``jax_threefry_partitionable`` off) keeps its own compiled initialisation
(``InitPlan.build`` returns None).

Public API:
  InitPlan.build(kind, seq_len, layout, size) -> InitPlan | None
  InitPlan(seed, index) -> (vec, zeros, zeros)      the part's padded vector and Adam moments
  threefry2x32(k1, k2, x1, x2) -> (y1, y2)           the Threefry-2x32 hash (numpy or jnp)
"""
from __future__ import annotations

import functools
import math
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from star_jax.ops import init as I

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 (20 rounds) of counters ``(x1, x2)`` under key ``(k1, k2)``; uint32
    arrays (numpy or jax), broadcast together."""
    u = (lambda v: np.uint32(v)) if isinstance(x1, np.ndarray) else (lambda v: jnp.uint32(v))
    ks = (k1, k2, k1 ^ k2 ^ u(_PARITY))
    a, b = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            a = a + b
            b = (b << u(r)) | (b >> u(32 - r))
            b = a ^ b
        a = a + ks[(i + 1) % 3]
        b = b + ks[(i + 2) % 3] + u(i + 1)
    return a, b


# ----------------------------------------------------------------------------------------------
# Keys: the traced key graph evaluated on the host
# ----------------------------------------------------------------------------------------------
class _Unsupported(Exception):
    """The key graph uses something the host evaluator does not know."""


def _is_key(aval) -> bool:
    return jax.dtypes.issubdtype(getattr(aval, "dtype", None), jax.dtypes.prng_key)


def _threefry_impl(impl) -> bool:
    return getattr(impl, "name", None) == "threefry2x32"


class KeyGraph:
    """A jaxpr of threefry key operations, evaluated on the host with numpy.

    Keys are held as their uint32 data (shape ``key_shape + (2,)``). Consecutive ``fold_in``s
    are hashed together in one vectorised call. Raises ``_Unsupported`` at construction for
    an operation it does not know.
    """

    _SIMPLE = {"slice", "squeeze", "reshape", "convert_element_type", "random_wrap", "random_unwrap",
               "random_seed", "random_split", "random_fold_in", "jit", "pjit", "closed_call"}

    def __init__(self, closed: Any):
        self.closed = closed
        self._live: dict[int, list] = {}
        self._check(closed.jaxpr)

    def live(self, jaxpr) -> list:
        """The equations the outputs depend on (the traced forward pass is dead code here)."""
        eqns = self._live.get(id(jaxpr))
        if eqns is None:
            need = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
            eqns = []
            for eqn in reversed(jaxpr.eqns):
                if any(v in need for v in eqn.outvars):
                    eqns.append(eqn)
                    need.update(v for v in eqn.invars if not isinstance(v, Literal))
            self._live[id(jaxpr)] = eqns = eqns[::-1]
        return eqns

    def _check(self, jaxpr) -> None:
        for eqn in self.live(jaxpr):
            name = eqn.primitive.name
            if name not in self._SIMPLE:
                raise _Unsupported(name)
            if name in ("random_seed", "random_wrap") and not _threefry_impl(eqn.params.get("impl")):
                raise _Unsupported(f"{name} with {eqn.params.get('impl')}")
            if name in ("random_split", "random_fold_in") and eqn.invars[0].aval.shape != ():
                raise _Unsupported(f"{name} of a key array")
            if name in ("jit", "pjit", "closed_call"):
                self._check(eqn.params.get("jaxpr", eqn.params.get("call_jaxpr")).jaxpr)

    def __call__(self, *args) -> list[np.ndarray]:
        return self._eval(self.closed.jaxpr, list(self.closed.consts), [np.asarray(a) for a in args])

    def _eval(self, jaxpr, consts, args) -> list[np.ndarray]:
        env: dict = {}
        pending: list = []  # (outvar, key data [2], fold-in data) hashed together at the next flush

        def read(v):
            if isinstance(v, Literal):
                return np.asarray(v.val)
            if any(p[0] is v for p in pending):
                flush()
            return env[v]

        def flush():
            if not pending:
                return
            k = np.stack([p[1] for p in pending])
            d = np.array([p[2] for p in pending], np.uint32)
            y1, y2 = threefry2x32(k[:, 0], k[:, 1], np.zeros_like(d), d)
            for (v, _, _), a, b in zip(pending, y1, y2):
                env[v] = np.array([a, b], np.uint32)
            pending.clear()

        for v, x in zip(jaxpr.constvars, consts):
            env[v] = np.asarray(x)
        for v, x in zip(jaxpr.invars, args):
            env[v] = x
        for eqn in self.live(jaxpr):
            name, p = eqn.primitive.name, eqn.params
            if name == "random_fold_in":
                key, data = read(eqn.invars[0]), read(eqn.invars[1])
                pending.append((eqn.outvars[0], key, np.asarray(data).astype(np.uint32).item()))
                continue
            ins = [read(v) for v in eqn.invars]
            if name in ("jit", "pjit", "closed_call"):
                sub = p.get("jaxpr", p.get("call_jaxpr"))
                outs = self._eval(sub.jaxpr, list(sub.consts), ins)
            else:
                outs = [self._apply(name, p, eqn, ins)]
            for v, x in zip(eqn.outvars, outs):
                env[v] = x
        return [read(v) for v in jaxpr.outvars]

    def _apply(self, name: str, p: dict, eqn, ins: list) -> np.ndarray:
        x = ins[0]
        if name == "random_seed":
            s = np.asarray(x)
            hi = (s.astype(np.uint64) >> np.uint64(32)).astype(np.uint32) if s.dtype.itemsize > 4 else np.uint32(0)
            lo = (s.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
            return np.array([hi, lo], np.uint32)
        if name in ("random_wrap", "random_unwrap"):
            return np.asarray(x, np.uint32)
        if name == "random_split":
            n = int(np.prod(p["shape"]))
            y1, y2 = threefry2x32(x[0], x[1], np.zeros(n, np.uint32), np.arange(n, dtype=np.uint32))
            return np.stack([y1, y2], axis=-1).reshape(tuple(p["shape"]) + (2,))
        key = _is_key(eqn.invars[0].aval)
        tail = ((slice(None),) if key else ())
        if name == "slice":
            strides = p["strides"] or (1,) * len(p["start_indices"])
            return x[tuple(slice(a, b, s) for a, b, s in zip(p["start_indices"], p["limit_indices"], strides)) + tail]
        if name == "squeeze":
            return np.squeeze(x, axis=tuple(p["dimensions"]))
        if name == "reshape":
            return x.reshape(tuple(p["new_sizes"]) + ((2,) if key else ()))
        if name == "convert_element_type":
            return np.asarray(x).astype(p["new_dtype"])
        raise _Unsupported(name)  # pragma: no cover - refused by _check


# ----------------------------------------------------------------------------------------------
# Values: one elementwise program for every family
# ----------------------------------------------------------------------------------------------
# XLA's backend optimisation level 0, as the per-kind initialisations it replaces were compiled
# (its float rounding is what the recorded runs used; the default level rounds some erf_inv
# results differently in the last bit)
INIT_OPTIONS = {"xla_backend_optimization_level": 0}
"""XLA options of every initialisation program (shared draw, own programs, per-kind fallback)."""


@functools.partial(jax.jit, static_argnames=("size",), compiler_options=INIT_OPTIONS)
def draw_vector(keys, rows, extra, *, size):
    """``(vec, zeros, zeros)``: element ``i`` of the parameter whose span holds it, drawn as its
    ``Draw`` says.

    keys: uint32 [M, 4]: each parameter's key, its first element in the vector (ascending; the
    spare rows after the last parameter start where the parameters end) and how many of its
    first elements take the scalar shift; rows: float32 [M, 8]: lo, hi, clip_lo, clip_hi, scale,
    family, shift mode (0 none, 1 the scalar in column 8, 2 ``extra``'s elements), scalar shift;
    extra: float32 [size] (the values of parameters drawn by their own program, else zeros). Only these small tables are kept per part kind (no per-element
    array: a vector of a scaled-up model has millions of elements); which parameter an element
    belongs to is found by a binary search over the starts (about 20% of a call's time).
    """
    i = jax.lax.iota(jnp.uint32, size)
    leaf = jnp.searchsorted(keys[:, 2], i, side="right") - 1  # the last parameter starting at or before i
    k = keys[leaf]
    ctr = i - k[:, 2]
    b1, b2 = threefry2x32(k[:, 0], k[:, 1], jnp.zeros_like(ctr), ctr)
    bits = b1 ^ b2
    # jax.random.uniform: 23 random mantissa bits under exponent 0, minus 1, scaled to [lo, hi)
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = jax.lax.bitcast_convert_type((bits >> jnp.uint32(9)) | jnp.uint32(one), jnp.float32) - jnp.float32(1.0)
    pr = rows[leaf]
    lo, hi, clip_lo, clip_hi, scale, fam, mode, row_shift = (pr[:, j] for j in range(8))
    u = jax.lax.max(lo, floats * (hi - lo) + lo)
    normal = jax.lax.erf_inv(u)  # jax.random.normal / truncated_normal, less the sqrt(2) (see Draw)
    base = jnp.where(fam == I.NORMAL, normal,
                     jnp.where(fam == I.TRUNCATED, jnp.clip(jnp.float32(np.sqrt(2)) * normal, clip_lo, clip_hi),
                               jnp.where(fam == I.CONSTANT, jnp.float32(0.0), u)))
    shift = jnp.where(mode == 2, extra, jnp.where(ctr < k[:, 3], row_shift, jnp.float32(0.0)))
    vec = jnp.where(mode > 0, base * scale + shift, base * scale)
    return vec, jnp.zeros_like(vec), jnp.zeros_like(vec)


_ZEROS: dict = {}


def _device_zeros(size: int):
    """One device vector of zeros per length, shared by every plan without own-program draws."""
    z = _ZEROS.get(size)
    if z is None:
        z = _ZEROS[size] = jax.device_put(np.zeros(size, np.float32))
    return z


_OWN: dict = {}
_OWN_LOCK = threading.Lock()


def _own_program(init: Any, shape: tuple[int, ...]):
    """A jitted ``init(key, shape)`` from key data, for a parameter whose draw the shared program
    does not describe (compiled once per initialiser and shape, at the initialisations' XLA
    optimisation level)."""
    k = (init, shape)
    with _OWN_LOCK:
        prog = _OWN.get(k)
        if prog is None:
            prog = _OWN[k] = jax.jit(lambda kd: init(jax.random.wrap_key_data(kd), shape, jnp.float32),
                                     compiler_options=INIT_OPTIONS)
        return prog


class InitPlan:
    """A part kind's initialisation as a key graph and a table of draws (see the module doc)."""

    def __init__(self, keys: KeyGraph, key_of: list[int], draws: list, layout: Any, size: int):
        n = len(draws)
        m = 16
        while m < n + 1:  # spare rows: they start where the parameters end and draw the padding's 0
            m *= 2
        self.keys, self.size = keys, size
        # draw_vector's keys table without the keys: the starts and shift reaches are fixed
        self.key_table = np.zeros((m, 4), np.uint32)
        self.key_table[:, 2] = layout.size
        self.keyed = np.array([j for j, k in enumerate(key_of) if k >= 0], np.int64)  # rows with a key
        self.key_rows = np.array([k for k in key_of if k >= 0], np.int64)  # ... and which one
        rows = np.zeros((m, 8), np.float32)  # see draw_vector
        rows[:, 5] = I.CONSTANT
        self.own = []  # (key row, initialiser, shape, offset) of parameters with their own program
        for j, (d, off, shape) in enumerate(zip(draws, layout.offsets, layout.shapes)):
            self.key_table[j, 2] = off
            if isinstance(d, I.Draw):
                rows[j, :6] = (d.lo, d.hi, d.clip_lo, d.clip_hi, d.scale, d.family)
                if d.shift is not None:
                    rows[j, 6:] = (1, d.shift)
                    self.key_table[j, 3] = math.prod(shape) if d.shift_first is None else d.shift_first
            else:  # its values arrive through ``extra`` (family CONSTANT: 0 * scale + shift)
                rows[j, 6] = 2
                self.own.append((key_of[j], d, tuple(shape), off))
        self.table = jax.device_put(rows)

    @classmethod
    def build(cls, kind: Any, seq_len: int, layout: Any, size: int) -> "InitPlan | None":
        """The plan of ``kind.init_tree(fold_in(split(key(seed))[0], index), seq_len)``, or None
        when some parameter cannot be drawn this way."""
        if not jax.config.jax_threefry_partitionable:  # jax's other layout of bits and splits
            return None
        found: dict[str, Any] = {}

        def plannable(entries) -> bool:  # every parameter float32, from an initialiser here
            return all(e is not None and e[3] == jnp.float32 for e in entries)

        def traced(seed, index):
            with I.capture() as seen:
                init_key = jax.random.split(jax.random.key(seed))[0]
                tree = kind.init_tree(jax.random.fold_in(init_key, index), seq_len)
            by_id = {id(z): (key, init, shape, dtype) for z, key, init, shape, dtype in seen}
            entries = found["entries"] = [by_id.get(id(x)) for x in layout.treedef.flatten_up_to(tree)]
            return [jax.random.key_data(e[0]) for e in entries if e[0] is not None] if plannable(entries) else []

        closed = jax.make_jaxpr(traced)(np.uint32(0), np.int32(0))
        entries = found["entries"]
        if not plannable(entries):
            return None
        try:
            graph = KeyGraph(closed)
        except _Unsupported:
            return None
        key_of, n_keys, draws = [], 0, []
        for key, init, shape, _ in entries:
            key_of.append(-1 if key is None else n_keys)
            n_keys += key is not None
            d = init.draw(shape)
            if d is None and key is None:
                return None
            draws.append(d if d is not None else init)
        return cls(graph, key_of, draws, layout, size)

    def __call__(self, seed, index):
        data = self.keys(np.uint32(seed), np.int32(index))
        keys = self.key_table.copy()
        if len(self.keyed):
            keys[self.keyed, :2] = np.stack(data)[self.key_rows]
        if not self.own:
            return draw_vector(keys, self.table, _device_zeros(self.size), size=self.size)
        drawn = [(off, _own_program(init, shape)(data[k])) for k, init, shape, off in self.own]  # dispatched first
        extra = np.zeros(self.size, np.float32)
        for off, values in drawn:
            values = np.asarray(values, np.float32).ravel()
            extra[off: off + values.size] = values
        return draw_vector(keys, self.table, extra, size=self.size)


