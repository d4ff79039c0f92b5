"""The attention LIV family: softmax, linear and relu attention, GQA, sliding windows, differential.

Low-rank token mixing (T_ij = phi(q_i . k_j)) split into a featurizer (q/k/v projections) and a
mixer (the attention itself), so K/V weights and computed K/V can be shared across LIVs.

Design choices (where the paper is silent):
- Features are `[batch, length, heads, head_dim]` (a step drops the length axis). Query groups
  (q, q1, q2) have `n_heads` heads, key/value groups (k, k1, k2, v) have `n_kv_heads`; query head
  h reads kv head h // (n_heads // n_kv_heads) (grouped-query attention).
- Scores are scaled by 1/sqrt(head_dim) for every kind.
- RoPE applies to softmax attention only; linear/relu attention ignores the `rope` field (they
  carry no positional scheme beyond causality), and the odd-head_dim check only fires when RoPE
  is in effect.
- Linear/relu attention is normalised by the number of attended tokens (a causal mean,
  count = min(i + 1, window)): no learnable parameters, no sign problems with phi = identity,
  and outputs do not grow with position. Parallel form: masked scores, no softmax. Decode without
  a window: S = sum_j phi(k_j) v_j^T per kv head, state `s` [batch, n_kv_heads, hd, hd].
- Softmax, or any kind with a window, decodes with a KV cache `k`, `v` [batch, slots, n_kv, hd]
  holding keys after RoPE; slots = max_len, or min(window, max_len) as a ring buffer. `pos`
  (int32 scalar, the number of tokens seen; not counted in state_elems) drives both.
- Differential (after the Differential Transformer): y = (A1 - lambda A2) v, then a per-head
  RMSNorm times (1 - lambda_init) (see differential.py). The value path is shared and keeps
  head_dim (the paper doubles it; we keep the cache formula comparable). Caches/states then hold
  k1, k2, v (or s1, s2).
- `step_readonly` needs the owner's cache in the same layout: same kind, window, rope and
  differential flag (the compiler only shares K/V between compatible LIVs).
"""
from __future__ import annotations

import numbers

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from star_jax.ops.base import CacheSharingMixerBase, FeaturizerBase
from star_jax.ops.differential import LAMBDA_INIT, DiffHeadNorm, DiffLambda, diff_combine
from star_jax.ops import init as init_lib
from star_jax.ops.primitives import apply_rope, causal_short_conv, causal_short_conv_step, rope_angles, rows

KINDS = ("softmax", "linear", "relu")
_NEG = float(jnp.finfo(jnp.float32).min)
UNBLOCKED_UP_TO = 128
"""Longest sequence whose parallel (training) attention runs as one block (``causal_blocks``)."""
QUERY_BLOCK = 64
"""Fewest query rows per block above ``UNBLOCKED_UP_TO``."""
MAX_QUERY_BLOCKS = 8
"""Most query blocks: each block is its own products in the compiled program, so compile time
grows with their number while the work saved shrinks (n blocks skip (n - 1) / 2n of the scores)."""


def causal_blocks(length: int, window: int = 0) -> tuple[tuple[int, int, int, int], ...]:
    """``(q0, q1, k0, k1)`` per query block: rows ``q0:q1`` of a causal attention over
    ``length`` positions see only keys ``k0:k1`` (``k1 = q1``; with a ``window`` > 0, ``k0`` is
    the first key the block's first row sees).

    Up to ``UNBLOCKED_UP_TO`` positions: one block, the whole masked [l, l] scores, bit for bit
    what the attention computed before blocks existed. There, blocks did not pay for their
    compile time: at L 127, four blocks ran the attention alone in 0.77-0.95x the time but
    compiled it in 2.5-2.7x, and a Transformer++ step trained no faster (1.00x, one four-round
    comparison). Longer: ``min(MAX_QUERY_BLOCKS, ceil(length / QUERY_BLOCK))`` blocks of equal
    size (the last one shorter), which skip most of the masked triangle: neither computed nor
    stored. Forward + backward of the attention alone (b 16, 4 heads of 16, alternated calls in
    one process): L 255 in 0.34x the time, L 1023 0.50x, L 2047 0.52x with 0.43x the scratch
    memory; a Transformer++ step at L 255 0.52-0.54x (``benchmarks/results/attention_blocks.md``).
    """
    if not _is_int(length) or length < 1:
        raise ValueError(f"causal_blocks: length must be an int >= 1, got {length!r}")
    if not _is_int(window) or window < 0:
        raise ValueError(f"causal_blocks: window must be an int >= 0 (0 = full), got {window!r}")
    n = 1 if length <= UNBLOCKED_UP_TO else min(MAX_QUERY_BLOCKS, -(-length // QUERY_BLOCK))
    size = -(-length // n)
    blocks = []
    for q0 in range(0, length, size):
        q1 = min(q0 + size, length)
        k0 = max(0, q0 - window + 1) if window > 0 else 0
        blocks.append((q0, q1, k0, q1))
    return tuple(blocks)


def _check_heads(where: str, n_heads: int, n_kv_heads: int, head_dim: int, width: int) -> None:
    """Raise ValueError naming the fields when the head layout is invalid."""
    for name, val in (("width", width), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads),
                      ("head_dim", head_dim)):
        if not _is_int(val) or val < 1:
            raise ValueError(f"{where}: {name} must be a positive int, got {val!r}")
    if n_heads % n_kv_heads != 0:
        raise ValueError(
            f"{where}: n_heads ({n_heads}) must be divisible by n_kv_heads ({n_kv_heads}); "
            f"valid n_kv_heads divide n_heads, e.g. "
            f"{[d for d in range(1, n_heads + 1) if n_heads % d == 0]}"
        )


def _is_int(val) -> bool:
    return isinstance(val, numbers.Integral) and not isinstance(val, bool)


class AttentionFeaturizer(FeaturizerBase):
    """Q/K/V projections (differential: q1, k1, q2, k2, v), each optionally short-convolved.

    Attributes:
      width: model width d.
      n_heads: query heads; q groups have n_heads * head_dim channels.
      n_kv_heads: key/value heads; k and v groups have n_kv_heads * head_dim channels.
      head_dim: channels per head.
      qkv_conv: kernel of a depthwise causal short conv on each projected group (0 = none).
      differential: compute (q1, k1, q2, k2, v) instead of (q, k, v).

    Params (created only for computed groups): `{group}_proj` [width, channels] (lecun normal),
    `{group}_conv` [qkv_conv, channels] when qkv_conv > 0 (delta at the current token + N(0, 0.1^2)).
    """

    width: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    qkv_conv: int = 0
    differential: bool = False

    def __post_init__(self):
        _check_heads("AttentionFeaturizer", self.n_heads, self.n_kv_heads, self.head_dim, self.width)
        if not _is_int(self.qkv_conv) or self.qkv_conv < 0:
            raise ValueError(f"AttentionFeaturizer: qkv_conv must be an int >= 0, got {self.qkv_conv!r}")
        super().__post_init__()

    # ---- static description -------------------------------------------------------------
    @nn.nowrap
    def groups(self) -> tuple[str, ...]:
        """All feature groups: ("q", "k", "v") or, differential, ("q1", "k1", "q2", "k2", "v")."""
        return ("q1", "k1", "q2", "k2", "v") if self.differential else ("q", "k", "v")

    @nn.nowrap
    def shareable(self) -> tuple[str, ...]:
        """Groups another attention LIV may reuse: the key/value groups."""
        return ("k1", "k2", "v") if self.differential else ("k", "v")

    @nn.nowrap
    def _describe(self) -> str:
        return f"AttentionFeaturizer(differential={self.differential})"

    @nn.nowrap
    def _heads(self, group: str) -> int:
        return self.n_heads if group.startswith("q") else self.n_kv_heads

    @nn.nowrap
    def _channels(self, group: str) -> int:
        return self._heads(group) * self.head_dim

    @nn.nowrap
    def param_count(self, groups=None) -> int:
        """Number of parameters the featurizer creates when computing `groups` (None = all)."""
        return sum(self._channels(g) * (self.width + self.qkv_conv) for g in self._resolve(groups))

    @nn.nowrap
    def state_elems(self, groups=None) -> int:
        """Floating elements of the decode state (conv history) per sequence, batch 1."""
        if self.qkv_conv == 0:
            return 0
        return sum(self._channels(g) * (self.qkv_conv - 1) for g in self._resolve(groups))

    @nn.nowrap
    def init_state(self, batch: int, groups=None, dtype=jnp.float32) -> dict:
        """Zero decode state: {group: history [batch, qkv_conv - 1, channels]}, or {} without conv."""
        if self.qkv_conv == 0:
            return {}
        return {
            g: jnp.zeros((batch, self.qkv_conv - 1, self._channels(g)), dtype)
            for g in self._resolve(groups)
        }

    # ---- params ---------------------------------------------------------------------------
    @nn.compact
    def _weights(self, groups: tuple[str, ...]) -> dict:
        """Create/fetch {group: (proj [width, ch], conv [k, ch] | None)} for the given groups."""
        out = {}
        for g in groups:
            ch = self._channels(g)
            proj = self.param(f"{g}_proj", init_lib.LecunNormal(), (self.width, ch), jnp.float32)
            conv = None
            if self.qkv_conv > 0:
                conv = self.param(f"{g}_conv", init_lib.ConvPassThrough(0.1), (self.qkv_conv, ch), jnp.float32)
            out[g] = (proj, conv)
        return out

    # ---- compute ----------------------------------------------------------------------------
    def __call__(self, h: jax.Array, groups=None) -> dict:
        """Parallel features.

        Arguments:
          h: [batch, length, width], the normalised block input.
          groups: the groups to compute (None = all).
        Returns:
          {group: [batch, length, heads, head_dim]} (heads = n_heads for q groups, else n_kv_heads).
        """
        chex.assert_rank(h, 3)
        groups = self._resolve(groups)
        b, l, _ = h.shape
        feats = {}
        for g, (proj, conv) in self._weights(groups).items():
            x = rows(lambda r, w=proj.astype(h.dtype): r @ w, h)
            if conv is not None:
                x = causal_short_conv(x, conv.astype(h.dtype))
            feats[g] = x.reshape(b, l, self._heads(g), self.head_dim)
        return feats

    def step(self, h_t: jax.Array, state: dict, groups=None):
        """One decoding step.

        Arguments:
          h_t: [batch, width].
          state: from init_state (with the same groups) or a previous step.
          groups: the groups to compute (None = all).
        Returns:
          ({group: [batch, heads, head_dim]}, new_state).
        """
        chex.assert_rank(h_t, 2)
        groups = self._resolve(groups)
        b = h_t.shape[0]
        feats, new_state = {}, {}
        for g, (proj, conv) in self._weights(groups).items():
            x = jnp.einsum("bd,dc->bc", h_t, proj.astype(h_t.dtype))
            if conv is not None:
                x, new_state[g] = causal_short_conv_step(x, state[g], conv.astype(h_t.dtype))
            feats[g] = x.reshape(b, self._heads(g), self.head_dim)
        return feats, new_state


class AttentionMixer(CacheSharingMixerBase):
    """Causal (grouped-query) attention over featurizer outputs, plus the output projection.

    Attributes:
      width: model width d (output channels).
      n_heads, n_kv_heads, head_dim: head layout; n_heads % n_kv_heads == 0.
      kind: "softmax", "linear" (phi = identity) or "relu" (phi = relu).
      window: 0 = full causal; > 0: position i sees j in (i - window, i].
      rope: rotary embeddings on q, k (softmax only; ignored for linear/relu).
      differential: y = (A1 - lambda A2) v with a per-head norm (features q1, k1, q2, k2, v).
      rope_base: RoPE frequency base.

    Params: `out_proj` [n_heads * head_dim, width] (lecun normal); differential adds
    `lambda` (DiffLambda over head_dim) and `head_norm` (DiffHeadNorm over head_dim).
    """

    width: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    kind: str = "softmax"
    window: int = 0
    rope: bool = True
    differential: bool = False
    rope_base: float = 10000.0

    def __post_init__(self):
        _check_heads("AttentionMixer", self.n_heads, self.n_kv_heads, self.head_dim, self.width)
        if self.kind not in KINDS:
            raise ValueError(f"AttentionMixer: kind must be one of {KINDS}, got {self.kind!r}")
        if not _is_int(self.window) or self.window < 0:
            raise ValueError(f"AttentionMixer: window must be an int >= 0 (0 = full), got {self.window!r}")
        if self._uses_rope() and self.head_dim % 2 != 0:
            raise ValueError(
                f"AttentionMixer: head_dim ({self.head_dim}) must be even when rope=True with "
                f"kind='softmax'; use an even head_dim or rope=False"
            )
        super().__post_init__()

    # ---- static description -------------------------------------------------------------
    @nn.nowrap
    def _uses_rope(self) -> bool:
        return self.rope and self.kind == "softmax"

    @nn.nowrap
    def _recurrent(self) -> bool:
        """Linear/relu attention without a window decodes with the S state, not a cache."""
        return self.kind != "softmax" and self.window == 0

    @nn.nowrap
    def _branches(self) -> tuple[tuple[str, str], ...]:
        return (("q1", "k1"), ("q2", "k2")) if self.differential else (("q", "k"),)

    @nn.nowrap
    def _repeat(self) -> int:
        return self.n_heads // self.n_kv_heads

    @nn.nowrap
    def cache_groups(self) -> tuple[str, ...]:
        """Feature groups whose history is this mixer's state: ("k", "v") or ("k1", "k2", "v")."""
        return ("k1", "k2", "v") if self.differential else ("k", "v")

    @nn.nowrap
    def param_count(self) -> int:
        """Number of parameters (output projection, plus lambda and head norm if differential)."""
        n = self.n_heads * self.head_dim * self.width
        if self.differential:
            n += DiffLambda.count(self.head_dim) + DiffHeadNorm.count(self.head_dim)
        return n

    @nn.nowrap
    def _slots(self, max_len: int) -> int:
        return min(self.window, max_len) if self.window > 0 else max_len

    @nn.nowrap
    def state_elems(self, seq_len: int) -> int:
        """Floating elements of the decode state after seq_len tokens (max_len = seq_len), batch 1.

        KV cache: n_cache_groups * n_kv_heads * head_dim * slots; recurrent linear/relu:
        n_branches * n_kv_heads * head_dim^2 (independent of seq_len).
        """
        if self._recurrent():
            return len(self._branches()) * self.n_kv_heads * self.head_dim * self.head_dim
        return len(self.cache_groups()) * self.n_kv_heads * self.head_dim * self._slots(seq_len)

    @nn.nowrap
    def init_state(self, batch: int, max_len: int, dtype=jnp.float32) -> dict:
        """Zero decode state.

        Returns:
          recurrent linear/relu: {"s" | "s1", "s2": [batch, n_kv_heads, head_dim, head_dim], "pos"};
          otherwise {"k" | "k1", "k2", "v": [batch, slots, n_kv_heads, head_dim], "pos"}, where
          slots = max_len, or min(window, max_len) (ring buffer). "pos": int32 scalar, tokens seen.
        """
        kv, hd = self.n_kv_heads, self.head_dim
        state: dict = {"pos": jnp.zeros((), jnp.int32)}
        if self._recurrent():
            for kn in [k for _, k in self._branches()]:
                state["s" + kn[1:]] = jnp.zeros((batch, kv, hd, hd), dtype)
        else:
            for g in self.cache_groups():
                state[g] = jnp.zeros((batch, self._slots(max_len), kv, hd), dtype)
        return state

    # ---- pieces ---------------------------------------------------------------------------
    def setup(self):
        self.out_proj = self.param(
            "out_proj", init_lib.LecunNormal(), (self.n_heads * self.head_dim, self.width),
            jnp.float32,
        )
        if self.differential:
            self.lam = DiffLambda(self.head_dim, LAMBDA_INIT, name="lambda")
            self.head_norm = DiffHeadNorm(self.head_dim, LAMBDA_INIT, name="head_norm")

    @nn.nowrap
    def _prep(self, x: jax.Array, positions: jax.Array, is_query: bool) -> jax.Array:
        """RoPE (softmax) or the feature map phi (linear/relu); queries get 1/sqrt(hd).

        x: [batch, length, heads, head_dim]; positions: [length] int (numpy when static).
        """
        if self._uses_rope():
            cos, sin = rope_angles(positions, self.head_dim, self.rope_base)
            x = apply_rope(x, cos.astype(x.dtype), sin.astype(x.dtype))
        elif self.kind == "relu":
            x = jax.nn.relu(x)
        if is_query:
            x = x * (self.head_dim ** -0.5)
        return x

    @nn.nowrap
    def _mix_parallel(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """q: [b, l, H, hd], k, v: [b, l, K, hd] (prepared) -> [b, l, H, hd].

        The contractions run heads-first on 4-d arrays ([b, H, l, hd] x [b, H, m, hd]; grouped
        K/V heads are repeated to H first): batch dimensions leading, so neither product nor its
        gradients needs a transpose of the [l, m] scores. On CPU, forward + backward of one
        attention (b 16, l 127, 4 heads of 16) took 3.5 ms this way against 7.0 ms for the same
        contraction with a separate K/V-group axis ([b, K, r, l, hd]), and that one was 1.5x
        faster than contracting in the [b, l, H, hd] layout.

        The queries run in blocks (``causal_blocks``): a block of query rows scores only the keys
        that its rows can see, so the masked triangle above the diagonal (and, with a window, the
        keys before it) is mostly never computed. Each row still sums exactly the terms it did
        with the whole [l, l] scores (a masked score contributed an exact 0), in another order.
        """
        b, l, _, hd = q.shape
        r = self._repeat()
        qh = q.transpose(0, 2, 1, 3)  # [b, H, l, hd]
        kh = k.transpose(0, 2, 1, 3)  # [b, K, m, hd]
        vh = v.transpose(0, 2, 1, 3)
        if r > 1:  # query head h reads K/V head h // r
            kh = jnp.repeat(kh, r, axis=1)
            vh = jnp.repeat(vh, r, axis=1)
        outs = [self._mix_block(qh[:, :, q0:q1], kh[:, :, k0:k1], vh[:, :, k0:k1], q0, k0)
                for q0, q1, k0, k1 in causal_blocks(l, self.window)]
        o = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)  # [b, H, l, hd]
        return o.transpose(0, 2, 1, 3)

    @nn.nowrap
    def _mix_block(self, qh: jax.Array, kh: jax.Array, vh: jax.Array, q0: int, k0: int) -> jax.Array:
        """Query rows q0.. ([b, H, n, hd]) against key rows k0.. ([b, H, m, hd]) -> [b, H, n, hd]."""
        s = jnp.einsum("bhld,bhmd->bhlm", qh, kh)
        i = jnp.arange(q0, q0 + qh.shape[2])[:, None]
        j = jnp.arange(k0, k0 + kh.shape[2])[None, :]
        mask = j <= i
        if self.window > 0:
            mask = mask & (j > i - self.window)
        mask = mask[None, None]
        if self.kind == "softmax":
            s = jnp.where(mask, s.astype(jnp.float32), _NEG)
            w = _softmax(s).astype(vh.dtype)
        else:
            count = jnp.arange(q0 + 1, q0 + qh.shape[2] + 1)
            if self.window > 0:
                count = jnp.minimum(count, self.window)
            inv = (1.0 / count.astype(jnp.float32)).astype(s.dtype)[None, None, :, None]
            w = jnp.where(mask, s, jnp.zeros((), s.dtype)) * inv
        return jnp.einsum("bhlm,bhmd->bhld", w, vh)

    @nn.nowrap
    def _mix_cache(self, q: jax.Array, kc: jax.Array, vc: jax.Array, pos: jax.Array) -> jax.Array:
        """One query over a cache whose slots < pos + 1 are filled (ring buffer when windowed).

        q: [b, H, hd] (prepared); kc, vc: [b, S, K, hd]; pos: int32 scalar, the query's position.
        Returns [b, H, hd].
        """
        b, _, hd = q.shape
        n_slots = kc.shape[1]
        q4 = q.reshape(b, self.n_kv_heads, self._repeat(), hd)
        s = jnp.einsum("bkrd,bskd->bkrs", q4, kc)
        # Slot s holds a token within the window iff it has been written: s <= pos. With a ring of
        # min(window, max_len) slots every written slot is within the window.
        valid = (jnp.arange(n_slots) <= pos)[None, None, None, :]
        if self.kind == "softmax":
            s = jnp.where(valid, s.astype(jnp.float32), _NEG)
            w = _softmax(s).astype(vc.dtype)
        else:
            count = pos + 1
            if self.window > 0:
                count = jnp.minimum(count, self.window)
            inv = (1.0 / count.astype(jnp.float32)).astype(s.dtype)
            w = jnp.where(valid, s, jnp.zeros((), s.dtype)) * inv
        o = jnp.einsum("bkrs,bskd->bkrd", w, vc)
        return o.reshape(b, self.n_heads, hd)

    @nn.nowrap
    def _mix_recurrent(self, q: jax.Array, s_state: jax.Array, pos: jax.Array) -> jax.Array:
        """q: [b, H, hd] (prepared), s_state: [b, K, hd, hd] -> [b, H, hd] (causal mean)."""
        b, _, hd = q.shape
        q4 = q.reshape(b, self.n_kv_heads, self._repeat(), hd)
        inv = (1.0 / (pos + 1).astype(jnp.float32)).astype(q.dtype)
        o = jnp.einsum("bkrd,bkde->bkre", q4, s_state) * inv
        return o.reshape(b, self.n_heads, hd)

    def _combine_out(self, outs: list[jax.Array]) -> jax.Array:
        """Combine the branch outputs [..., H, hd] and project to [..., width]."""
        if self.differential:
            o = diff_combine(outs[0], outs[1], self.lam())
            o = self.head_norm(o)
        else:
            o = outs[0]
        o = o.reshape(o.shape[:-2] + (self.n_heads * self.head_dim,))
        return rows(lambda r: r @ self.out_proj.astype(o.dtype), o)

    # ---- compute ----------------------------------------------------------------------------
    def __call__(self, feats: dict) -> jax.Array:
        """Parallel causal attention.

        Arguments:
          feats: {"q", "k", "v"} (differential {"q1", "k1", "q2", "k2", "v"}); queries
            [batch, length, n_heads, head_dim], keys/values [batch, length, n_kv_heads, head_dim].
        Returns:
          y: [batch, length, width].
        """
        v = feats["v"]
        chex.assert_rank(v, 4)
        positions = np.arange(v.shape[1])  # static: RoPE tables become constants (see rope_angles)
        outs = []
        for qn, kn in self._branches():
            q = self._prep(feats[qn], positions, True)
            k = self._prep(feats[kn], positions, False)
            outs.append(self._mix_parallel(q, k, v))
        return self._combine_out(outs)

    @nn.nowrap
    def _prep_t(self, x: jax.Array, pos: jax.Array, is_query: bool) -> jax.Array:
        """_prep for one token: x [b, heads, hd], pos int32 scalar."""
        return self._prep(x[:, None], pos[None], is_query)[:, 0]

    def _read(self, feats_t: dict, state: dict, pos: jax.Array) -> jax.Array:
        """Attend with the queries of feats_t over `state`, already holding token `pos`."""
        outs = []
        for qn, kn in self._branches():
            q = self._prep_t(feats_t[qn], pos, True)
            if self._recurrent():
                outs.append(self._mix_recurrent(q, state["s" + kn[1:]], pos))
            else:
                outs.append(self._mix_cache(q, state[kn], state["v"], pos))
        return self._combine_out(outs)

    def step(self, feats_t: dict, state: dict):
        """Append this token's keys/values to the state, then attend.

        Arguments:
          feats_t: as in __call__ without the length axis ([batch, heads, head_dim]).
          state: from init_state or a previous step.
        Returns:
          (y_t [batch, width], new_state).
        """
        pos = state["pos"]
        new_state = dict(state)
        v = feats_t["v"]
        chex.assert_rank(v, 3)
        if self._recurrent():
            for _, kn in self._branches():
                k = self._prep_t(feats_t[kn], pos, False)
                sk = "s" + kn[1:]
                new_state[sk] = state[sk] + jnp.einsum("bkd,bke->bkde", k, v).astype(state[sk].dtype)
        else:
            slot = pos % state["v"].shape[1] if self.window > 0 else pos
            for _, kn in self._branches():
                k = self._prep_t(feats_t[kn], pos, False)
                new_state[kn] = _write(state[kn], k, slot)
            new_state["v"] = _write(state["v"], v, slot)
        new_state["pos"] = pos + 1
        return self._read(feats_t, new_state, pos), new_state

    def step_readonly(self, feats_t: dict, state: dict) -> jax.Array:
        """Attend over a cache another LIV owns and has already updated for this token.

        Arguments:
          feats_t: needs only the query groups ("q" or "q1", "q2"), [batch, n_heads, head_dim].
          state: the owner's state as returned by its `step` for this token (its "pos" already
            advanced); the owner must have the same kind, window, rope and differential flag.
        Returns:
          y_t: [batch, width].
        """
        return self._read(feats_t, state, state["pos"] - 1)


@jax.custom_vjp
def _softmax(s: jax.Array) -> jax.Array:
    """Softmax over the last axis, written out (max, exp, sum, divide), with the usual
    backward ``y * (g - sum(g * y))``.

    Same maths as ``jax.nn.softmax``, but XLA on CPU fused ``jax.nn.softmax`` into the following
    product with the values and ran that about 2x slower: the forward of one attention (b 16,
    l 127, 4 heads of 16) took 1.9 ms with it against 1.0 ms written out. The explicit backward
    keeps autodiff of the division from materialising broadcasts of the [l, l] scores.
    """
    return _softmax_fwd(s)[0]


def _softmax_fwd(s):
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    y = e / jnp.sum(e, axis=-1, keepdims=True)
    return y, y


def _softmax_bwd(y, g):
    return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _write(cache: jax.Array, x: jax.Array, slot: jax.Array) -> jax.Array:
    """cache [b, S, K, hd] with x [b, K, hd] written at `slot`."""
    zero = jnp.zeros((), jnp.int32)
    return jax.lax.dynamic_update_slice(cache, x[:, None].astype(cache.dtype), (zero, slot, zero, zero))
