"""The gated-convolution LIV family: short causal conv (the LFM2 block) and implicit long conv (Hyena).

It gives STAR its scaled-Toeplitz operators, T_ij = C_i K_{i-j} B_j: a k-tap short conv with a
d x (k-1) decode cache, and an FFT long conv whose decode cache is the input history (d x L).
"""
from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from star_jax.ops.base import FeaturizerBase, MixerBase
from star_jax.ops.groups import branch_suffixes
from star_jax.ops.differential import DiffLambda, diff_combine
from star_jax.ops import init as init_lib
from star_jax.ops.primitives import causal_short_conv, causal_short_conv_step, fft_causal_conv, rows

FILTER_BANDS = 8  # sin/cos frequency bands of the implicit filter's positional features
FILTER_FEATURES = 1 + 2 * FILTER_BANDS  # [t / max_len, sin(2 pi k t / max_len), cos(...)]
# Per-channel decay exp(-delta_c * t / max_len): the slowest channel falls to 1e-2 over 1.5
# max_len, the fastest over 0.3 max_len (Hyena's ExponentialModulation defaults).
_DECAY_TARGET, _SLOW_PCT, _FAST_PCT = 1e-2, 1.5, 0.3


def _channel(v: jax.Array, like: jax.Array) -> jax.Array:
    """Reshape a per-channel vector [d] to broadcast against `like` [..., d] without rank promotion."""
    return v.astype(like.dtype).reshape((1,) * (like.ndim - 1) + (-1,))


def short_conv(u: jax.Array, w: jax.Array) -> jax.Array:
    """Depthwise causal short conv (primitives.causal_short_conv, shifted slices).

    Arguments:
      u: [batch, length, channels]; w: [kernel, channels], w[0] on the current token.
    Returns:
      [batch, length, channels].
    """
    return causal_short_conv(u, w)


class GatedConvFeaturizer(FeaturizerBase):
    """Featurizer of the gated convolutions: (B, C, x) = Linear(h), each [..., inner], optionally
    followed by a depthwise causal short convolution on each projection (Hyena's short filters).

    Attributes:
      width: model width d.
      short_conv: kernel of the depthwise causal short conv on each projected group (0 = none).
        Hyena runs one of length 3 on every input projection before its long convolution and
        gates; it is what lets the long filter align a key with the value that follows it.
      expansion: channels of every group / d (inner = expansion * d).
      repeat: each group's projection has inner / repeat outputs, tiled `repeat` times across
        the inner channels before the short conv (the featurizer genome's `repeat`). The copies
        then differ through their own short-conv taps and long filters: mad-lab's Hyena layer
        (inner_factor 4, proj_groups 4) is expansion 4, repeat 4, with projections no larger
        than at expansion 1.
      differential: duplicate the gates (b1, c1, b2, c2; x shared).

    Groups: b, c, x (differential b1, c1, b2, c2, x); each a bias-free Linear d -> inner / repeat
    named by the group, created only when computed, plus `{group}_conv` [short_conv, inner] when
    short_conv > 0 (PyTorch Conv1d's default init, U(-1/sqrt(k), 1/sqrt(k)), as Hyena's short
    filter).
    State (short_conv > 0): {group: [batch, short_conv - 1, inner / repeat]} the last projected
    inputs, oldest first (the tiled copies are the same inputs, so they are kept once).
    """

    width: int
    short_conv: int = 0
    expansion: int = 1
    repeat: int = 1
    differential: bool = False

    def __post_init__(self):
        for name in ("short_conv", "expansion", "repeat"):
            v, lo = getattr(self, name), 0 if name == "short_conv" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"GatedConvFeaturizer: {name} must be an int >= {lo}, got {v!r}")
        if (self.expansion * self.width) % self.repeat:
            raise ValueError(f"GatedConvFeaturizer: repeat ({self.repeat}) must divide the inner width "
                             f"expansion * width = {self.expansion * self.width}")
        super().__post_init__()

    @property
    def inner(self) -> int:
        """Channels of every feature group: expansion * width."""
        return self.expansion * self.width

    @property
    def projected(self) -> int:
        """Outputs of every group's projection: inner / repeat."""
        return self.inner // self.repeat

    def _tile(self, x: jax.Array) -> jax.Array:
        """[..., inner / repeat] -> [..., inner]: the projection repeated across the inner channels."""
        if self.repeat == 1:
            return x
        return jnp.tile(x, (1,) * (x.ndim - 1) + (self.repeat,))

    @nn.nowrap
    def groups(self) -> tuple[str, ...]:
        """All feature groups this featurizer can compute."""
        return self.shareable() + ("x",)

    @nn.nowrap
    def shareable(self) -> tuple[str, ...]:
        """Groups another gated-conv LIV may reuse: the gates b, c (b1, c1, b2, c2 differential)."""
        return tuple(f"{g}{s}" for s in branch_suffixes(self.differential) for g in ("b", "c"))

    @nn.compact
    def _weights(self, groups: tuple[str, ...]) -> dict:
        """Create/fetch {group: (projection Dense, conv [k, d] | None)} for the given groups."""
        out = {}
        for g in groups:
            dense = nn.Dense(self.projected, use_bias=False, kernel_init=init_lib.LecunNormal(), name=g)
            conv = None
            if self.short_conv > 0:
                bound = 1.0 / math.sqrt(self.short_conv)
                init = init_lib.Centered(bound)
                conv = self.param(f"{g}_conv", init, (self.short_conv, self.inner), jnp.float32)
            out[g] = (dense, conv)
        return out

    def __call__(self, h: jax.Array, groups: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
        """Compute the requested feature groups.

        Arguments:
          h: [batch, length, width].
          groups: names to compute; None = all of `groups()`.
        Returns:
          dict group -> [batch, length, inner].
        """
        chex.assert_axis_dimension(h, -1, self.width)
        feats = {}
        for g, (dense, conv) in self._weights(self._resolve(groups)).items():
            x = self._tile(rows(dense, h))
            if conv is not None:
                chex.assert_rank(h, 3)
                x = causal_short_conv(x, conv.astype(x.dtype))
            feats[g] = x
        return feats

    def step(self, h_t: jax.Array, state: dict, groups: tuple[str, ...] | None = None):
        """One token: (features {group: [batch, inner]}, new state)."""
        chex.assert_rank(h_t, 2)
        feats, new_state = {}, {}
        for g, (dense, conv) in self._weights(self._resolve(groups)).items():
            x = self._tile(dense(h_t))
            if conv is not None:
                x, history = causal_short_conv_step(x, self._tile(state[g]), conv.astype(x.dtype))
                new_state[g] = history[..., : self.projected]
            feats[g] = x
        return feats, new_state

    @nn.nowrap
    def init_state(self, batch: int, groups=None, dtype=jnp.float32) -> dict:
        """Zero decode state: {group: [batch, short_conv - 1, inner / repeat]}, or {} without a
        short conv."""
        if self.short_conv == 0:
            return {}
        return {g: jnp.zeros((batch, self.short_conv - 1, self.projected), dtype) for g in self._resolve(groups)}

    @nn.nowrap
    def param_count(self, groups=None) -> int:
        """Analytic number of parameters created when computing `groups` (None = all)."""
        return len(self._resolve(groups)) * (self.projected * self.width + self.short_conv * self.inner)

    @nn.nowrap
    def state_elems(self, groups=None) -> int:
        """Featurizer state per sequence: inner / repeat * (short_conv - 1) per computed group (0
        without a short conv)."""
        if self.short_conv == 0:
            return 0
        return len(self._resolve(groups)) * self.projected * (self.short_conv - 1)


class ShortConvMixer(MixerBase):
    """Gated short convolution (the LFM2 block): out(C * conv_k(B * x)).

    The conv is depthwise and causal with k taps; differential: two gated paths with their own
    filters on the shared x, y = out(C1 * conv1(B1 * x) - lambda * C2 * conv2(B2 * x)).

    Attributes:
      width: model width d.
      kernel_size: k (>= 1).
      differential: the differential variant.

    State: {"u": [batch, k - 1, d]} the last k-1 values of B*x, oldest first
    (differential {"u1", "u2"}).
    Params: conv [k, d] (conv1, conv2), out (Linear d -> d, no bias), diff_lambda.
    """

    width: int
    kernel_size: int = 3
    expansion: int = 1
    differential: bool = False

    @property
    def inner(self) -> int:
        """Channels of the gated path: expansion * width."""
        return self.expansion * self.width

    def setup(self):
        if self.kernel_size < 1:
            raise ValueError(f"ShortConvMixer: kernel_size must be >= 1, got {self.kernel_size}")
        bound = 1.0 / math.sqrt(self.kernel_size)
        init = init_lib.Centered(bound)  # U(-1/sqrt(k), 1/sqrt(k))
        self.convs = [
            self.param(f"conv{s}", init, (self.kernel_size, self.inner), jnp.float32)
            for s in branch_suffixes(self.differential)
        ]
        self.out = nn.Dense(self.width, use_bias=False, kernel_init=init_lib.LecunNormal())
        if self.differential:
            self.diff_lambda = DiffLambda(self.width)

    def _combine(self, paths: list[jax.Array]) -> jax.Array:
        y = diff_combine(paths[0], paths[1], self.diff_lambda()) if self.differential else paths[0]
        return rows(self.out, y)

    def __call__(self, feats: dict[str, jax.Array]) -> jax.Array:
        """Parallel forward.

        Arguments:
          feats: b, c, x [batch, length, d] (differential b1, c1, b2, c2, x).
        Returns:
          y: [batch, length, width].
        """
        x = feats["x"]
        chex.assert_rank(x, 3)
        paths = []
        for s, w in zip(branch_suffixes(self.differential), self.convs):
            u = feats[f"b{s}"] * x
            paths.append(feats[f"c{s}"] * short_conv(u, w.astype(x.dtype)))
        return self._combine(paths)

    def step(self, feats_t: dict[str, jax.Array], state: dict):
        """One decoding step.

        Arguments:
          feats_t: b, c, x [batch, d] (suffixed when differential).
          state: from `init_state` or a previous step.
        Returns:
          (y_t [batch, width], new state).
        """
        x = feats_t["x"]
        paths, new_state = [], {}
        for s, w in zip(branch_suffixes(self.differential), self.convs):
            u = feats_t[f"b{s}"] * x
            v, new_state[f"u{s}"] = causal_short_conv_step(u, state[f"u{s}"], w.astype(x.dtype))
            paths.append(feats_t[f"c{s}"] * v)
        return self._combine(paths), new_state

    @nn.nowrap
    def init_state(self, batch: int, max_len: int = 0, dtype=jnp.float32) -> dict:
        """Zero history {"u": [batch, k - 1, d]} ({"u1", "u2"} differential); max_len is unused."""
        return {
            f"u{s}": jnp.zeros((batch, self.kernel_size - 1, self.inner), dtype)
            for s in branch_suffixes(self.differential)
        }

    @nn.nowrap
    def param_count(self) -> int:
        """Analytic parameter count."""
        n = len(branch_suffixes(self.differential))
        total = n * self.kernel_size * self.inner + self.inner * self.width
        return total + (DiffLambda.count(self.width) if self.differential else 0)

    @nn.nowrap
    def state_elems(self, seq_len: int = 0) -> int:
        """Decode state per sequence: d * (k - 1) (x2 differential), independent of seq_len."""
        return len(branch_suffixes(self.differential)) * self.inner * (self.kernel_size - 1)


def filter_features(max_len: int) -> np.ndarray:
    """Positional features of the implicit filter: [max_len, FILTER_FEATURES] float32.

    Columns: t / max_len, then sin and cos of 2 pi k t / max_len for k = 1..FILTER_BANDS.
    """
    t = np.arange(max_len, dtype=np.float64) / max_len
    ang = 2 * np.pi * t[:, None] * np.arange(1, FILTER_BANDS + 1)[None, :]
    return np.concatenate([t[:, None], np.sin(ang), np.cos(ang)], axis=1).astype(np.float32)


def filter_decay(max_len: int, width: int) -> np.ndarray:
    """Fixed per-channel exponential decay window exp(-delta_c t / max_len): [max_len, width]."""
    deltas = np.linspace(math.log(1 / _DECAY_TARGET) / _SLOW_PCT, math.log(1 / _DECAY_TARGET) / _FAST_PCT, width)
    t = np.arange(max_len, dtype=np.float64) / max_len
    return np.exp(-t[:, None] * deltas[None, :]).astype(np.float32)


class ImplicitFilter(nn.Module):
    """Hyena-style implicit long filter h[t, c] generated by a small MLP over positions.

    h = normalise_t(MLP(features(t)) * exp(-delta_c t / max_len)), with MLP = Dense(order), sin,
    Dense(order), sin, Dense(width, no bias). Each channel is scaled to unit L2 norm over the
    max_len taps, so the conv keeps the input's scale at init whatever max_len.

    Attributes:
      width: channels d.
      max_len: number of taps generated.
      order: hidden width of the MLP.

    Returns (from __call__): [max_len, width] float32.
    Params: in (F x order + order), hidden (order^2 + order), proj (order x d), F = FILTER_FEATURES.
    """

    width: int
    max_len: int
    order: int = 16

    @staticmethod
    def count(width: int, order: int) -> int:
        """Analytic parameter count of an ImplicitFilter."""
        return FILTER_FEATURES * order + order + order * order + order + order * width

    @nn.compact
    def __call__(self) -> jax.Array:
        z = jnp.asarray(filter_features(self.max_len))
        uni = init_lib.VarianceScaling(1.0, "uniform")
        bias = init_lib.Normal(1.0)
        z = jnp.sin(nn.Dense(self.order, kernel_init=uni, bias_init=bias, name="in")(z))
        z = jnp.sin(nn.Dense(self.order, kernel_init=uni, bias_init=bias, name="hidden")(z))
        h = nn.Dense(self.width, use_bias=False, kernel_init=init_lib.LecunNormal(), name="proj")(z)
        h = h * jnp.asarray(filter_decay(self.max_len, self.width))
        return h * jax.lax.rsqrt(jnp.sum(jnp.square(h), axis=0, keepdims=True) + 1e-12)


class LongConvMixer(MixerBase):
    """Gated implicit long convolution (Hyena-style): out(C * (h conv (B*x) + D * B*x)), by FFT.

    The filter is generated for max_len taps and sliced to the input length. Differential: two
    gated paths with their own filters and skips on the shared x, y = out(path_1 - lambda path_2).

    Attributes:
      width: model width d.
      max_len: longest sequence (number of filter taps).
      filter_order: hidden width of the filter MLP.
      differential: the differential variant.

    State: {"u": [batch, T, d] input history B*x (T = init_state's max_len <= max_len),
    "pos": int32 [] tokens seen} (differential {"u1", "u2", "pos"}). Decoding past T tokens is
    not supported (the history buffer is full).
    Params: filter (filter1, filter2; see ImplicitFilter), D [d] (D1, D2), out, diff_lambda.
    """

    width: int
    max_len: int
    filter_order: int = 16
    expansion: int = 1
    differential: bool = False

    @property
    def inner(self) -> int:
        """Channels of the gated path: expansion * width."""
        return self.expansion * self.width

    def setup(self):
        if self.max_len < 1 or self.filter_order < 1:
            raise ValueError(
                f"LongConvMixer: max_len and filter_order must be >= 1, got {self.max_len}, {self.filter_order}"
            )
        sfx = branch_suffixes(self.differential)
        self.filters = [ImplicitFilter(self.inner, self.max_len, self.filter_order, name=f"filter{s}") for s in sfx]
        self.skips = [
            self.param(f"D{s}", init_lib.Normal(1.0), (self.inner,), jnp.float32) for s in sfx
        ]
        self.out = nn.Dense(self.width, use_bias=False, kernel_init=init_lib.LecunNormal())
        if self.differential:
            self.diff_lambda = DiffLambda(self.width)

    def filter_response(self) -> tuple[jax.Array, ...]:
        """The generated filters, one per path: each [max_len, width]."""
        return tuple(f() for f in self.filters)

    def _combine(self, paths: list[jax.Array]) -> jax.Array:
        y = diff_combine(paths[0], paths[1], self.diff_lambda()) if self.differential else paths[0]
        return rows(self.out, y)

    def __call__(self, feats: dict[str, jax.Array]) -> jax.Array:
        """Parallel forward (FFT long conv).

        Arguments:
          feats: b, c, x [batch, length, d] (differential b1, c1, b2, c2, x); length <= max_len.
        Returns:
          y: [batch, length, width].
        """
        x = feats["x"]
        chex.assert_rank(x, 3)
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"LongConvMixer: input length {length} exceeds max_len {self.max_len}")
        paths = []
        for s, filt, skip in zip(branch_suffixes(self.differential), self.filters, self.skips):
            u = feats[f"b{s}"] * x
            v = fft_causal_conv(u, filt()[:length].astype(x.dtype)) + u * _channel(skip, u)
            paths.append(feats[f"c{s}"] * v)
        return self._combine(paths)

    def step(self, feats_t: dict[str, jax.Array], state: dict):
        """One decoding step: y_t = C_t * (sum_{j<=t} h[t-j] u_j + D u_t), u = B*x.

        Arguments:
          feats_t: b, c, x [batch, d] (suffixed when differential).
          state: from `init_state` or a previous step.
        Returns:
          (y_t [batch, width], new state).
        """
        x = feats_t["x"]
        pos = state["pos"]
        new_state = {"pos": pos + jnp.int32(1)}
        paths = []
        for s, filt, skip in zip(branch_suffixes(self.differential), self.filters, self.skips):
            buf = state[f"u{s}"]
            taps = buf.shape[1]
            u = feats_t[f"b{s}"] * x
            buf = jax.lax.dynamic_update_slice(buf, u[:, None, :].astype(buf.dtype), (jnp.int32(0), pos, jnp.int32(0)))
            lag = pos - jnp.arange(taps, dtype=jnp.int32)  # lag of buffer slot j
            h = filt()[:taps].astype(x.dtype)[jnp.clip(lag, 0, taps - 1)]
            h = jnp.where((lag >= 0)[:, None], h, jnp.zeros_like(h))
            v = jnp.einsum("bjd,jd->bd", buf.astype(x.dtype), h) + u * _channel(skip, u)
            new_state[f"u{s}"] = buf
            paths.append(feats_t[f"c{s}"] * v)
        return self._combine(paths), new_state

    @nn.nowrap
    def init_state(self, batch: int, max_len: int | None = None, dtype=jnp.float32) -> dict:
        """Zero history {"u": [batch, max_len, d], "pos": int32 0} ({"u1", "u2", "pos"} differential).

        max_len defaults to the module's max_len and must not exceed it.
        """
        taps = self.max_len if max_len is None else max_len
        if not 1 <= taps <= self.max_len:
            raise ValueError(f"LongConvMixer.init_state: max_len must be in [1, {self.max_len}], got {taps}")
        state = {f"u{s}": jnp.zeros((batch, taps, self.inner), dtype) for s in branch_suffixes(self.differential)}
        state["pos"] = jnp.zeros((), jnp.int32)
        return state

    @nn.nowrap
    def param_count(self) -> int:
        """Analytic parameter count."""
        n = len(branch_suffixes(self.differential))
        total = n * (ImplicitFilter.count(self.inner, self.filter_order) + self.inner) + self.inner * self.width
        return total + (DiffLambda.count(self.width) if self.differential else 0)

    @nn.nowrap
    def state_elems(self, seq_len: int) -> int:
        """Decode state per sequence after seq_len tokens: d * seq_len (x2 differential)."""
        return len(branch_suffixes(self.differential)) * self.inner * seq_len


__all__ = [
    "GatedConvFeaturizer",
    "ShortConvMixer",
    "LongConvMixer",
    "ImplicitFilter",
    "short_conv",
    "filter_features",
    "filter_decay",
]
