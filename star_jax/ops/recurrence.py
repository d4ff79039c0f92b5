"""The linear-recurrence LIV family: a Mamba-like selective diagonal state-space model (S6).

It gives STAR its sequentially semi-separable operators, T_ij = C_i A_{i-1}...A_{j+1} B_j, whose
decode cache is a fixed-size state (width x state_expansion) however long the sequence.
"""
from __future__ import annotations

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from star_jax.ops.base import FeaturizerBase, MixerBase
from star_jax.ops.groups import branch_suffixes
from star_jax.ops.differential import DiffLambda, diff_combine
from star_jax.ops import init as init_lib
from star_jax.ops.primitives import causal_short_conv, causal_short_conv_step, rows

SCAN_IMPLS = ("scan", "associative")
DT_MIN, DT_MAX = 1e-3, 1e-1
_DT_KERNEL_SCALE = 0.01  # variance scale of the dt projection: the bias sets dt at init
# The S6 backward loop runs two steps per iteration when the length is even (24 -> 18 ms at b 16,
# L 128, d 64, e 16 when introduced; with the current XLA the two tie there). At an odd length
# (every MAD task: L = seq_len - 1) `lax.scan` would slice every per-step input, the stored
# [L, b, e, d] states included, into a [L // 2, 2, ...] part and a remainder, and those copies
# cost more than the unrolling saves (forward + backward of a Rec-1-Diff part at L 127, batch 16,
# width 64: 38.4 -> 27.6 ms, benchmarks/part_kinds.py); one step per iteration there. Same
# values either way.
_BWD_UNROLL = 2


# The scans are module-level jitted functions: inside a traced program they are inlined, and
# called eagerly (flax `init` runs the forward op by op) they compile once per shape instead of
# once per call (an eager `lax.scan` with a fresh body closure misses every cache).
@jax.jit
def _linear_scan(a: jax.Array, bx: jax.Array) -> jax.Array:
    def body(h, inp):
        a_t, bx_t = inp
        h = a_t * h + bx_t
        return h, h

    xs = (jnp.moveaxis(a, 1, 0), jnp.moveaxis(bx, 1, 0))
    _, hs = jax.lax.scan(body, jnp.zeros_like(bx[:, 0]), xs)
    return jnp.moveaxis(hs, 0, 1)


@functools.partial(jax.jit, static_argnames="keep_states")
def _selective_scan_loop(x, dt, A, b, c, keep_states: bool = False):
    """The fused S6 scan: y [batch, length, d]; with ``keep_states`` also every state before its
    update, h_{t-1}, time-major and state-major [length, batch, e, d] (what the backward pass
    needs).

    Inside the loop the state is [batch, e, d]: the channels d are the minor axis, so every
    elementwise step and the read-out's sum over e run along d. With e minor ([batch, d, e]) the
    loops XLA generates ran over e (2-16 entries), and forward + backward of a Rec-1 part took
    14.6 ms against 10.3 ms now, Rec-1-Diff 28.0 against 22.6 ms, at width 64, L 127, batch 16
    (``benchmarks/results/part_kinds_s6_before.md``, ``part_kinds_s6_after.md``)."""
    At = A.T  # [e, d]

    def body(h, inp):
        x_t, dt_t, b_t, c_t = inp
        h_new = jnp.exp(dt_t[:, None, :] * At[None]) * h + (dt_t * x_t)[:, None, :] * b_t[:, :, None]
        y_t = jnp.sum(h_new * c_t[:, :, None], axis=1)
        return h_new, ((y_t, h) if keep_states else y_t)

    xs = tuple(jnp.moveaxis(v, 1, 0) for v in (x, dt, b, c))
    h0 = jnp.zeros((x.shape[0],) + At.shape, x.dtype)
    _, out = jax.lax.scan(body, h0, xs)
    if keep_states:
        return jnp.moveaxis(out[0], 0, 1), out[1]
    return jnp.moveaxis(out, 0, 1)


@jax.jit
def _selective_scan_grads(x, dt, A, b, c, h_prev, dy):
    """Gradients of sum(dy * y) for the fused S6 scan, given h_{t-1} [length, batch, e, d].

    One reverse loop computes everything per step on [batch, e, d] (which stays in cache):
    the state cotangent g_t = dy_t c_t + a_{t+1} g_{t+1} and every input's gradient at t.
    """
    tm = lambda v: jnp.moveaxis(v, 1, 0)  # noqa: E731  [length, batch, ...]
    At = A.T  # [e, d]

    def body(carry, inp):  # carry: (a_{t+1} * g_{t+1}, dA^T so far)
        g_next, dAt = carry
        x_t, dt_t, b_t, c_t, dy_t, hp = inp
        a = jnp.exp(dt_t[:, None, :] * At[None])
        u = dt_t * x_t
        h = a * hp + u[:, None, :] * b_t[:, :, None]
        g = dy_t[:, None, :] * c_t[:, :, None] + g_next
        t_log = g * hp * a  # d loss / d(dt * A)
        g_u = jnp.sum(g * b_t[:, :, None], axis=1)  # d loss / d(dt * x)
        d_dt = jnp.sum(t_log * At[None], axis=1) + g_u * x_t
        dAt = dAt + jnp.sum(t_log * dt_t[:, None, :], axis=0)
        db = jnp.sum(g * u[:, None, :], axis=2)
        dc = jnp.sum(h * dy_t[:, None, :], axis=2)
        return (a * g, dAt), (g_u * dt_t, d_dt, db, dc)

    init = (jnp.zeros_like(h_prev[0]), jnp.zeros_like(At))
    (_, dAt), (dx, d_dt, db, dc) = jax.lax.scan(
        body, init, tuple(tm(v) for v in (x, dt, b, c, dy)) + (h_prev,), reverse=True,
        unroll=_BWD_UNROLL if x.shape[1] % _BWD_UNROLL == 0 else 1)
    back = lambda v: jnp.moveaxis(v, 0, 1)  # noqa: E731
    return back(dx), back(d_dt), dAt.T, back(db), back(dc)


@jax.custom_vjp
def _selective_scan_fused(x, dt, A, b, c):
    return _selective_scan_loop(x, dt, A, b, c)


def _selective_scan_fused_fwd(x, dt, A, b, c):
    y, hs = _selective_scan_loop(x, dt, A, b, c, keep_states=True)
    return y, (x, dt, A, b, c, hs)


def _selective_scan_fused_bwd(res, dy):
    return _selective_scan_grads(*res, dy)


_selective_scan_fused.defvjp(_selective_scan_fused_fwd, _selective_scan_fused_bwd)


def linear_recurrence(
    a: jax.Array, bx: jax.Array, impl: str = "scan", h0: jax.Array | None = None
) -> jax.Array:
    """First-order linear recurrence h_t = a_t * h_{t-1} + bx_t along axis 1 (time).

    `impl="scan"` runs `lax.scan` (fastest on CPU, cheap to compile); `impl="associative"` runs
    `lax.associative_scan` (log-depth, usually faster on GPU/TPU for long sequences). Both compute
    the same values and gradients.

    Arguments:
      a: [batch, length, ...] decay factors.
      bx: [batch, length, ...] inputs, same shape and dtype as `a`.
      impl: "scan" or "associative".
      h0: optional initial state [batch, ...] (h_{-1}); zeros when None.
    Returns:
      h: [batch, length, ...], every state h_0 .. h_{L-1}.
    """
    if a.shape != bx.shape:
        raise ValueError(f"linear_recurrence: a {a.shape} and bx {bx.shape} must have the same shape")
    if a.ndim < 2:
        raise ValueError(f"linear_recurrence: need [batch, length, ...], got shape {a.shape}")
    if h0 is not None:
        bx = bx.at[:, 0].add(a[:, 0] * h0)
    if impl == "scan":
        return _linear_scan(a, bx)
    if impl == "associative":

        def combine(left, right):
            a_l, b_l = left
            a_r, b_r = right
            return a_r * a_l, a_r * b_l + b_r

        _, hs = jax.lax.associative_scan(combine, (a, bx), axis=1)
        return hs
    raise ValueError(f"linear_recurrence: impl must be one of {SCAN_IMPLS}, got {impl!r}")


def selective_scan(
    x: jax.Array, dt: jax.Array, A: jax.Array, b: jax.Array, c: jax.Array, impl: str = "scan"
) -> jax.Array:
    """The S6 recurrence read out through c: y_t = h_t @ c_t with
    h_t = exp(dt_t * A) * h_{t-1} + (dt_t * x_t)[:, None] * b_t[None, :], h_{-1} = 0.

    `impl="scan"` fuses the whole step into one `lax.scan` body, so only y leaves the loop (on CPU
    about 10x faster forward and 5x faster forward+backward than materialising the [b, l, d, e]
    states), and has a hand-written backward pass (`_selective_scan_grads`: one reverse loop that
    computes every input's gradient step by step); `impl="associative"` builds the states with
    `linear_recurrence(..., "associative")` and is differentiated by JAX.

    Arguments:
      x, dt: [batch, length, d]; A: [d, e] (negative); b, c: [batch, length, e].
      impl: "scan" or "associative".
    Returns:
      y: [batch, length, d] (without the D skip).
    """
    if impl == "scan":
        return _selective_scan_fused(x, dt, A, b, c)
    if impl == "associative":
        a = jnp.exp(dt[..., None] * A[None, None])  # [b, l, d, e]
        bx = (dt * x)[..., None] * b[:, :, None, :]  # [b, l, d, e]
        hs = linear_recurrence(a, bx, "associative")
        return jnp.sum(hs * c[:, :, None, :], axis=-1)
    raise ValueError(f"selective_scan: impl must be one of {SCAN_IMPLS}, got {impl!r}")


class RecurrenceFeaturizer(FeaturizerBase):
    """Featurizer of the selective SSM: value x, output gate z, and the input-varying B, C, dt.

    Attributes:
      width: model width d (also the SSM's channel count).
      state_expansion: state size e per channel.
      expansion: SSM channels / d (Mamba's expand, 2 there): x, z and dt have expansion * d
        channels, and so do the mixer's state and skip.
      x_conv: kernel of Mamba's causal depthwise conv on x (0 = none, Mamba uses 4). With it,
        x = silu(conv(Linear(h)) + bias), and B, C and dt are computed from that convolved x
        rather than from h, as in the Mamba block; z still reads h.
      differential: duplicate the operator-defining groups (b1, c1, dt1, b2, c2, dt2).

    Groups (each a Linear named by the group; only computed groups get parameters), n =
    expansion * d channels:
      x: [..., n] value; z: [..., n] output gate; b, c: [..., e]; dt: [..., n] =
      softplus(Linear + bias), bias initialised so dt is log-uniform in [1e-3, 1e-1].
      With x_conv, computing any of x, b, c, dt computes x, so it also creates x's Linear and
      `x_conv` [x_conv, n] (PyTorch Conv1d's default init) and `x_conv_bias` [n].
    State: none without x_conv; with it {"x": [batch, x_conv - 1, n]}, the last projected x
      inputs, oldest first (whenever x is computed).
    """

    width: int
    state_expansion: int = 16
    x_conv: int = 0
    expansion: int = 1
    differential: bool = False

    def __post_init__(self):
        for name, lo in (("x_conv", 0), ("expansion", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"RecurrenceFeaturizer: {name} must be an int >= {lo}, got {v!r}")
        super().__post_init__()

    @property
    def inner(self) -> int:
        """SSM channels: expansion * width."""
        return self.expansion * self.width

    @nn.nowrap
    def groups(self) -> tuple[str, ...]:
        """All feature groups this featurizer can compute."""
        return ("x", "z") + self.shareable()

    @nn.nowrap
    def shareable(self) -> tuple[str, ...]:
        """Groups another recurrence LIV may reuse: b, c, dt (each pair when differential)."""
        return tuple(f"{g}{s}" for s in branch_suffixes(self.differential) for g in ("b", "c", "dt"))

    @nn.nowrap
    def _group_shape(self, group: str) -> tuple[int, bool]:
        kind = group.rstrip("12")
        if kind in ("b", "c"):
            return self.state_expansion, False
        return self.inner, kind == "dt"

    @nn.nowrap
    def _fan_in(self, group: str, groups: tuple[str, ...]) -> int:
        """Inputs of a group's Linear: the convolved x (inner) for b, c, dt with x_conv, else h."""
        return self.inner if (self._needs_x(groups) and group not in ("x", "z")) else self.width

    @nn.nowrap
    def _needs_x(self, groups: tuple[str, ...]) -> bool:
        """With x_conv, whether computing `groups` computes the convolved x."""
        return self.x_conv > 0 and any(g != "z" for g in groups)

    @nn.compact
    def _weights(self, groups: tuple[str, ...]) -> dict:
        """{group: Dense} for `groups` (plus x when it feeds them), and with x_conv ("x_conv":
        (taps [k, d], bias [d]))."""
        out = {}
        names = (("x",) + tuple(g for g in groups if g != "x")) if self._needs_x(groups) else groups
        for g in names:
            size, has_bias = self._group_shape(g)
            if g.startswith("dt"):
                out[g] = nn.Dense(
                    size,
                    use_bias=True,
                    kernel_init=init_lib.VarianceScaling(_DT_KERNEL_SCALE, "normal"),
                    bias_init=init_lib.DtBias(DT_MIN, DT_MAX),
                    name=g,
                )
            else:
                out[g] = nn.Dense(size, use_bias=False, kernel_init=init_lib.LecunNormal(), name=g)
        if self._needs_x(groups):
            bound = 1.0 / math.sqrt(self.x_conv)
            uniform = init_lib.UniformRange(-bound, bound)
            out["x_conv"] = (self.param("x_conv", uniform, (self.x_conv, self.inner), jnp.float32),
                             self.param("x_conv_bias", uniform, (self.inner,), jnp.float32))
        return out

    @nn.nowrap
    def _features(self, groups, weights, h, x) -> dict[str, jax.Array]:
        """The requested groups from h (z, and everything without x_conv) or the convolved x."""
        feats = {}
        for g in groups:
            if g == "x" and x is not None:
                feats[g] = x
                continue
            src = x if (x is not None and g != "z") else h
            y = rows(weights[g], src)
            feats[g] = jax.nn.softplus(y) if g.startswith("dt") else y
        return feats

    def __call__(self, h: jax.Array, groups: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
        """Compute the requested feature groups.

        Arguments:
          h: [batch, length, width] (or [batch, width] for one token without x_conv).
          groups: names to compute; None = all of `groups()`.
        Returns:
          dict group -> [batch, length, d or e] (same leading axes as h).
        """
        chex.assert_axis_dimension(h, -1, self.width)
        groups = self._resolve(groups)
        weights = self._weights(groups)
        x = None
        if self._needs_x(groups):
            chex.assert_rank(h, 3)
            taps, bias = weights["x_conv"]
            x = causal_short_conv(rows(weights["x"], h), taps.astype(h.dtype))
            x = jax.nn.silu(x + bias.astype(h.dtype).reshape(1, 1, -1))
        return self._features(groups, weights, h, x)

    def step(self, h_t: jax.Array, state: dict, groups: tuple[str, ...] | None = None):
        """One token: (features {group: [batch, d or e]}, new state)."""
        chex.assert_rank(h_t, 2)
        groups = self._resolve(groups)
        weights = self._weights(groups)
        x, new_state = None, {}
        if self._needs_x(groups):
            taps, bias = weights["x_conv"]
            x, new_state["x"] = causal_short_conv_step(weights["x"](h_t), state["x"], taps.astype(h_t.dtype))
            x = jax.nn.silu(x + bias.astype(h_t.dtype).reshape(1, -1))
        return self._features(groups, weights, h_t, x), new_state

    @nn.nowrap
    def init_state(self, batch: int, groups=None, dtype=jnp.float32) -> dict:
        """Zero state: {"x": [batch, x_conv - 1, d]} with x_conv (when x is computed), else {}."""
        if not self._needs_x(self._resolve(groups)):
            return {}
        return {"x": jnp.zeros((batch, self.x_conv - 1, self.inner), dtype)}

    @nn.nowrap
    def param_count(self, groups=None) -> int:
        """Analytic number of parameters created when computing `groups` (None = all)."""
        groups = self._resolve(groups)
        names = set(groups) | ({"x"} if self._needs_x(groups) else set())
        total = 0
        for g in names:
            size, has_bias = self._group_shape(g)
            total += self._fan_in(g, groups) * size + (size if has_bias else 0)
        if self._needs_x(groups):
            total += (self.x_conv + 1) * self.inner
        return total

    @nn.nowrap
    def state_elems(self, groups=None) -> int:
        """Featurizer state per sequence: n * (x_conv - 1) when x is computed with x_conv, else 0."""
        return self.inner * (self.x_conv - 1) if self._needs_x(self._resolve(groups)) else 0


class RecurrenceMixer(MixerBase):
    """Selective diagonal SSM (S6) mixer.

    Per channel i and state n: A = -exp(A_log) [d, e] (S4D-real init), and
      h_t = exp(dt_t * A) * h_{t-1} + (dt_t * x_t)[:, None] * b_t[None, :]   (h: [d, e])
      y_t = h_t @ c_t + D * x_t;  out = Linear(y * silu(z)).
    Differential: two SSMs (own A_log1/A_log2, b, c, dt) on the shared x,
      y = (ssm_1 - lambda * ssm_2) + D * x, lambda learnable (star_jax.ops.differential).

    Attributes:
      width: model width d.
      state_expansion: e.
      scan_impl: "scan" or "associative" (see `selective_scan`).
      expansion: SSM channels n = expansion * d (the featurizer's x, z, dt are n wide).
      differential: the differential variant.

    State: {"h": [batch, n, e]} (differential: {"h1", "h2"}).
    Params: A_log [n, e] (A_log1, A_log2), D [n], out (Linear n -> d, no bias), diff_lambda.
    """

    width: int
    state_expansion: int = 16
    scan_impl: str = "scan"
    expansion: int = 1
    differential: bool = False

    @property
    def inner(self) -> int:
        """SSM channels: expansion * width."""
        return self.expansion * self.width

    def setup(self):
        if self.scan_impl not in SCAN_IMPLS:
            raise ValueError(f"RecurrenceMixer: scan_impl must be one of {SCAN_IMPLS}, got {self.scan_impl!r}")
        shape = (self.inner, self.state_expansion)
        self.A_logs = [
            self.param(f"A_log{s}", init_lib.S4DReal(), shape, jnp.float32) for s in branch_suffixes(self.differential)
        ]
        self.D = self.param("D", init_lib.ONES, (self.inner,), jnp.float32)
        self.out = nn.Dense(self.width, use_bias=False, kernel_init=init_lib.LecunNormal())
        if self.differential:
            self.diff_lambda = DiffLambda(self.inner)

    def _combine(self, ys: list[jax.Array], x: jax.Array, z: jax.Array) -> jax.Array:
        y = diff_combine(ys[0], ys[1], self.diff_lambda()) if self.differential else ys[0]
        y = y + x * self.D.astype(x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))
        return rows(self.out, y * jax.nn.silu(z))

    def __call__(self, feats: dict[str, jax.Array]) -> jax.Array:
        """Parallel forward.

        Arguments:
          feats: x, z, dt [batch, length, d]; b, c [batch, length, e] (suffixed 1/2 when differential).
        Returns:
          y: [batch, length, width].
        """
        x = feats["x"]
        chex.assert_rank(x, 3)
        ys = []
        for s, A_log in zip(branch_suffixes(self.differential), self.A_logs):
            b, c, dt = feats[f"b{s}"], feats[f"c{s}"], feats[f"dt{s}"]
            A = -jnp.exp(A_log).astype(x.dtype)
            ys.append(selective_scan(x, dt, A, b, c, self.scan_impl))
        return self._combine(ys, x, feats["z"])

    def step(self, feats_t: dict[str, jax.Array], state: dict):
        """One decoding step.

        Arguments:
          feats_t: as in __call__ without the length axis ([batch, d] / [batch, e]).
          state: from `init_state` or a previous step.
        Returns:
          (y_t [batch, width], new state).
        """
        x = feats_t["x"]
        ys, new_state = [], {}
        for s, A_log in zip(branch_suffixes(self.differential), self.A_logs):
            b, c, dt = feats_t[f"b{s}"], feats_t[f"c{s}"], feats_t[f"dt{s}"]
            A = -jnp.exp(A_log).astype(x.dtype)
            h = jnp.exp(dt[..., None] * A[None]) * state[f"h{s}"] + (dt * x)[..., None] * b[:, None, :]
            new_state[f"h{s}"] = h
            ys.append(jnp.sum(h * c[:, None, :], axis=-1))
        return self._combine(ys, x, feats_t["z"]), new_state

    @nn.nowrap
    def init_state(self, batch: int, max_len: int = 0, dtype=jnp.float32) -> dict:
        """Zero state {"h": [batch, d, e]} ({"h1", "h2"} when differential); max_len is unused."""
        return {
            f"h{s}": jnp.zeros((batch, self.inner, self.state_expansion), dtype)
            for s in branch_suffixes(self.differential)
        }

    @nn.nowrap
    def param_count(self) -> int:
        """Analytic parameter count."""
        n = len(branch_suffixes(self.differential))
        total = n * self.inner * self.state_expansion + self.inner + self.inner * self.width
        return total + (DiffLambda.count(self.inner) if self.differential else 0)

    @nn.nowrap
    def state_elems(self, seq_len: int = 0) -> int:
        """Decode state size per sequence: n * e (x2 differential), independent of seq_len."""
        return len(branch_suffixes(self.differential)) * self.inner * self.state_expansion


__all__ = ["linear_recurrence", "selective_scan", "RecurrenceFeaturizer", "RecurrenceMixer", "SCAN_IMPLS"]
