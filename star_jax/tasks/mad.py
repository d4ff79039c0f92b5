"""The six MAD synthetic tasks as pure jnp generators (key, config) -> (inputs [L], targets [L]).
They follow MAD's own token layout, shifts and train/test target conventions, so scores compare."""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .base import (IGNORE_INDEX, TaskConfig, _MAP_STREAM, _stream_key, bits_to_int, bits_to_score,
                   bits_to_unit, draw_bits, register_task)

# ========================================================================================
# Configs
# ========================================================================================


@dataclasses.dataclass(frozen=True, kw_only=True)
class InContextRecallConfig(TaskConfig):
    """In-context recall (MAD, multi-query). Baseline vocab 16, seq_len 128, 12,800 train.

    Layout: `seq_len // 2` key-value pairs (the last one a probe of an earlier key); keys are
    tokens [0, V//2), values [V//2, V). Arrays have length L = seq_len - 1 (MAD's shift).

    Fields:
        vocab_size: V (keys and values split it in halves).
        seq_len: even number of tokens before the shift.
        num_train, num_test, seed: see `TaskConfig`.
    """

    split_dependent: ClassVar[bool] = True

    vocab_size: int = 16
    seq_len: int = 128

    def __post_init__(self):
        super().__post_init__()
        self._check_int("vocab_size", lo=2)
        self._check_int("seq_len", lo=4)
        if self.seq_len % 2:
            self._fail("seq_len", "an even integer >= 4 (the sequence is made of 2-token key-value pairs)")

    @property
    def length(self) -> int:
        return self.seq_len - 1

    @property
    def noise_vocab_size_(self) -> int:
        return 0

    @property
    def frac_noise_(self) -> float:
        return 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoisyInContextRecallConfig(TaskConfig):
    """Noisy in-context recall (MAD). Baseline vocab 32 (16 noise), seq_len 128, noise 0.2.

    Keys [0, K), values [K, 2K') with K = (V - noise)//2, noise tokens [V - noise, V). Each
    non-probe pair becomes two noise tokens with probability `frac_noise` (at least one real
    pair is kept). Arrays have length L = seq_len - 1.

    Fields:
        vocab_size: V, including the noise tokens.
        noise_vocab_size: number of noise tokens (the top of the vocabulary).
        frac_noise: probability in [0, 1) that a pair is replaced by noise.
        seq_len: even number of tokens before the shift.
        num_train, num_test, seed: see `TaskConfig`.
    """

    split_dependent: ClassVar[bool] = True

    vocab_size: int = 32
    noise_vocab_size: int = 16
    frac_noise: float = 0.2
    seq_len: int = 128

    def __post_init__(self):
        super().__post_init__()
        self._check_int("vocab_size", lo=3)
        self._check_int("noise_vocab_size", lo=0)
        self._check_float("frac_noise", 0.0, 1.0)
        self._check_int("seq_len", lo=4)
        if self.seq_len % 2:
            self._fail("seq_len", "an even integer >= 4 (the sequence is made of 2-token key-value pairs)")
        if self.vocab_size - self.noise_vocab_size < 2:
            self._fail("vocab_size", f"an integer >= noise_vocab_size + 2 = "
                       f"{self.noise_vocab_size + 2} "
                       "(at least one key and one value token besides the noise tokens)")
        if self.frac_noise > 0 and self.noise_vocab_size < 1:
            self._fail("noise_vocab_size", "an integer >= 1 when frac_noise > 0")

    @property
    def length(self) -> int:
        return self.seq_len - 1

    @property
    def noise_vocab_size_(self) -> int:
        return self.noise_vocab_size

    @property
    def frac_noise_(self) -> float:
        return self.frac_noise


@dataclasses.dataclass(frozen=True, kw_only=True)
class FuzzyInContextRecallConfig(TaskConfig):
    """Fuzzy in-context recall (MAD, multi-query). Baseline vocab 16, seq_len 128, motifs 1-3.

    Keys are motifs of 1..k_motif_size distinct tokens from [0, K), values motifs of
    1..v_motif_size distinct tokens from [K, V - 1) with K = (V - 1)//2; the pad token is V - 1
    (the sequence is left-padded). At test time every key has the maximum motif size, as in MAD.
    Arrays have length L = seq_len.

    Fields:
        vocab_size: V (keys, values and one pad token).
        seq_len: tokens per example.
        k_motif_size: largest key motif.
        v_motif_size: largest value motif.
        num_train, num_test, seed: see `TaskConfig`.
    """

    split_dependent: ClassVar[bool] = True

    vocab_size: int = 16
    seq_len: int = 128
    k_motif_size: int = 3
    v_motif_size: int = 3

    def __post_init__(self):
        super().__post_init__()
        self._check_int("vocab_size", lo=3)
        self._check_int("k_motif_size", lo=1)
        self._check_int("v_motif_size", lo=1)
        self._check_int("seq_len", lo=1)
        n_key = (self.vocab_size - 1) // 2
        n_val = self.vocab_size - 1 - n_key
        if n_key < self.k_motif_size or n_val < self.v_motif_size:
            need = 1 + 2 * max(self.k_motif_size, self.v_motif_size)
            self._fail("vocab_size", f"an integer >= {need} (motifs of distinct tokens: here key "
                       f"tokens {n_key} < k_motif_size {self.k_motif_size} or value tokens {n_val} < "
                       f"v_motif_size {self.v_motif_size})")
        if (n_key + 1) ** self.k_motif_size >= 2**31:
            self._fail("vocab_size", "an integer with (vocab_size - 1) // 2 + 1 to the power k_motif_size "
                       "below 2**31 (key-motif codes are int32)")
        need_len = 3 * (self.k_motif_size + self.v_motif_size)
        if self.seq_len < need_len:
            self._fail("seq_len", f"an integer >= 3 * (k_motif_size + v_motif_size) = {need_len}")

    @property
    def length(self) -> int:
        return self.seq_len


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectiveCopyingConfig(TaskConfig):
    """Selective copying (MAD). Baseline vocab 16, seq_len 256, copy 16 tokens.

    Data tokens [0, V - 2), blank V - 2, copy token V - 1. Arrays have length L = seq_len.

    Fields:
        vocab_size: V.
        seq_len: tokens per example; must exceed 2 * num_tokens_to_copy + 1.
        num_tokens_to_copy: number of data tokens to reproduce after the copy token.
        num_train, num_test, seed: see `TaskConfig`.
    """

    vocab_size: int = 16
    seq_len: int = 256
    num_tokens_to_copy: int = 16

    def __post_init__(self):
        super().__post_init__()
        self._check_int("vocab_size", lo=3)
        self._check_int("num_tokens_to_copy", lo=1)
        self._check_int("seq_len", lo=1)
        if self.seq_len <= 2 * self.num_tokens_to_copy + 1:
            self._fail("seq_len", f"an integer > 2 * num_tokens_to_copy + 1 = "
                       f"{2 * self.num_tokens_to_copy + 1}")

    @property
    def length(self) -> int:
        return self.seq_len


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressionConfig(TaskConfig):
    """Compression (MAD). Baseline vocab 16, seq_len 32.

    Data tokens [0, V - 1) and the compression token V - 1 at the last position; targets equal
    the inputs. `readout = "last"`: MAD's encoder-decoder reads the last position only.

    Fields:
        vocab_size: V.
        seq_len: tokens per example (L = seq_len).
        num_train, num_test, seed: see `TaskConfig`.
    """

    readout: ClassVar[str] = "last"
    vocab_size: int = 16
    seq_len: int = 32

    def __post_init__(self):
        super().__post_init__()
        self._check_int("vocab_size", lo=2)
        self._check_int("seq_len", lo=2)

    @property
    def length(self) -> int:
        return self.seq_len


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemorizationConfig(TaskConfig):
    """Memorization (MAD). Baseline vocab 256, seq_len 32, 256 training examples.

    Keys [0, K) with K = (V - 1)//2, values [K, V - 1), insert token V - 1. The key->value map
    is an injection drawn once from `seed` (identical on every call); sequences are
    `seq_len // 2` (key, insert) pairs. Arrays have length L = seq_len.

    Fields:
        vocab_size: V.
        seq_len: even number of tokens.
        num_train, num_test, seed: see `TaskConfig` (defaults 256 / 1280 / 0).
    """

    seed_in_generator: ClassVar[bool] = True

    vocab_size: int = 256
    seq_len: int = 32
    num_train: int = 256

    def __post_init__(self):
        super().__post_init__()
        self._check_int("vocab_size", lo=3)
        self._check_int("seq_len", lo=2)
        if self.seq_len % 2:
            self._fail("seq_len", "an even integer >= 2 (the sequence is made of (key, insert) pairs)")

    @property
    def length(self) -> int:
        return self.seq_len


# ========================================================================================
# Generators
# ========================================================================================


def _recall(key, config, *, training: bool):
    """In-context recall with optional noise pairs (MAD's multi-query generator).

    Arguments:
        key: PRNG key.
        config: InContextRecallConfig or NoisyInContextRecallConfig.
        training: training-form targets (next token everywhere) or test-form (values of keys
            seen before, the probe value, -100 elsewhere and on noise).

    Returns:
        (inputs, targets): int32 [seq_len - 1] each.
    """
    n_pairs = config.seq_len // 2
    n_body = n_pairs - 1  # the last pair is the probe
    noise_v = config.noise_vocab_size_
    frac = config.frac_noise_
    n_plain = config.vocab_size - noise_v
    n_keys = n_plain // 2
    n_vals = n_plain - n_keys
    b_key, b_map, b_noise, b_keep, b_ntok, b_probe = draw_bits(
        key, (n_body, n_keys, n_body, 1, 2 * n_body, n_keys))

    keys = bits_to_int(b_key, 0, n_keys)
    kv_map = bits_to_int(b_map, n_keys, n_keys + n_vals)  # this sequence's key->value map
    values = kv_map[keys]
    if frac > 0:
        keep = bits_to_int(b_keep[0], 0, n_body)  # at least one real pair before the probe
        is_noise = bits_to_unit(b_noise) < frac
        is_noise = is_noise & (jnp.arange(n_body, dtype=jnp.int32) != keep)
        noise_tok = bits_to_int(b_ntok, n_plain, n_plain + noise_v).reshape(n_body, 2)
    else:
        is_noise = jnp.zeros((n_body,), bool)
        noise_tok = jnp.zeros((n_body, 2), jnp.int32)

    # keys presented before pair i: cumulative one-hot counts over real pairs
    real = (~is_noise).astype(jnp.int32)
    onehot = jax.nn.one_hot(keys, n_keys, dtype=jnp.int32) * real[:, None]
    seen_after = jnp.cumsum(onehot, axis=0)  # [n_body, n_keys], counts including pair i
    count_incl = jnp.take_along_axis(seen_after, keys[:, None], axis=1)[:, 0]
    seen_before = (count_incl - real) > 0

    presented = seen_after[-1] > 0  # [n_keys]; the probe is uniform over presented keys
    k_p = jnp.argmax(jnp.where(presented, bits_to_score(b_probe), -1)).astype(jnp.int32)
    v_p = kv_map[k_p]

    pair_tok = jnp.where(is_noise[:, None], noise_tok, jnp.stack([keys, values], axis=1))
    raw = jnp.concatenate([pair_tok.reshape(-1), jnp.stack([k_p, v_p])])  # [seq_len]
    if training:
        return raw[:-1], raw[1:]
    ign = jnp.full((n_body,), IGNORE_INDEX, jnp.int32)
    val_t = jnp.where(seen_before & ~is_noise, values, IGNORE_INDEX)
    raw_t = jnp.concatenate([jnp.stack([ign, val_t], axis=1).reshape(-1),
                             jnp.stack([jnp.int32(IGNORE_INDEX), v_p])])
    return raw[:-1], raw_t[1:]


def in_context_recall(key, config: InContextRecallConfig, *, training: bool = True):
    """In-context recall: key-value pairs, values of repeated keys must be recalled.

    Keys are tokens [0, V//2), values [V//2, V); each sequence draws its own key->value map;
    `seq_len//2 - 1` pairs with uniform keys, then a probe pair whose key was shown before. The
    sequence is shifted (inputs = seq[:-1]). Training targets: the next token everywhere. Test
    targets: at each key position whose key appeared earlier, the value; at the probe key, its
    value; -100 elsewhere.

    Arguments:
        key: PRNG key.
        config: an InContextRecallConfig.
        training: which target convention to produce.

    Returns:
        (inputs, targets): int32 [seq_len - 1] each.
    """
    return _recall(key, config, training=training)


def noisy_in_context_recall(key, config: NoisyInContextRecallConfig, *, training: bool = True):
    """Noisy in-context recall: in-context recall where pairs become 2 noise tokens w.p. frac.

    Noise tokens are the top `noise_vocab_size` ids. Training targets: next token everywhere,
    noise included. Test targets: as in-context recall, -100 on every noise position.

    Arguments:
        key: PRNG key.
        config: a NoisyInContextRecallConfig.
        training: which target convention to produce.

    Returns:
        (inputs, targets): int32 [seq_len - 1] each.
    """
    return _recall(key, config, training=training)


def fuzzy_in_context_recall(key, config: FuzzyInContextRecallConfig, *, training: bool = True):
    """Fuzzy in-context recall: keys and values are motifs of 1..k (1..v) distinct tokens.

    Generative process (MAD's): draw a probe pair (k*, v*) and a probe index; emit key-value
    items with motif sizes uniform in 1..k_motif_size (keys; always k_motif_size at test time)
    and 1..v_motif_size (values; a repeated key reuses its first value; the probe key always
    maps to v*); once the length reaches the probe index, insert the probe pair unless its key
    already appeared; stop when the length reaches seq_len - |k*v*| - (k+v); append the probe
    pair; left-pad with the pad token to seq_len + 1; shift. Training targets: next token
    everywhere (pads included). Test targets: the value tokens of keys already shown and the
    final probe value; -100 elsewhere.
    One deliberate deviation: the probe index is drawn from [0, limit - (k + v)] rather than
    MAD's [0, seq_len - 2|k*v*|), which guarantees the probe key is shown before it is queried
    (in MAD it can fall past the end, making the final query unanswerable).

    Arguments:
        key: PRNG key.
        config: a FuzzyInContextRecallConfig.
        training: which target convention (and key motif sizes) to produce.

    Returns:
        (inputs, targets): int32 [seq_len] each.
    """
    S = config.seq_len
    kmax, vmax = config.k_motif_size, config.v_motif_size
    width = kmax + vmax
    n_key = (config.vocab_size - 1) // 2
    n_val = config.vocab_size - 1 - n_key
    pad = config.vocab_size - 1
    T = S // 2 + 1  # enough items: each has >= 2 tokens
    b_ks, b_kps, b_vs, b_vps, b_kmot, b_vmot, b_kp, b_vp, b_idx = draw_bits(
        key, (T, 1, T, 1, T * n_key, T * n_val, n_key, n_val, 1))

    def motifs(bits, count, size):  # [rows, size]: distinct tokens per row, a random permutation
        scores = bits_to_score(bits).reshape(-1, count)
        return jax.lax.top_k(scores, size)[1].astype(jnp.int32)

    ar_k = jnp.arange(kmax, dtype=jnp.int32)
    if training:
        ksize = bits_to_int(b_ks, 1, kmax + 1)
        kp_size = bits_to_int(b_kps[0], 1, kmax + 1)
    else:
        ksize = jnp.full((T,), kmax, jnp.int32)
        kp_size = jnp.int32(kmax)
    vsize = bits_to_int(b_vs, 1, vmax + 1)
    vp_size = bits_to_int(b_vps[0], 1, vmax + 1)
    kmot = jnp.where(ar_k[None] < ksize[:, None], motifs(b_kmot, n_key, kmax), -1)
    vmot = motifs(b_vmot, n_val, vmax) + n_key
    kp = jnp.where(ar_k < kp_size, motifs(b_kp, n_key, kmax)[0], -1)
    vp = motifs(b_vp, n_val, vmax)[0] + n_key
    kvp = kp_size + vp_size
    limit = S - kvp - width
    probe_idx = bits_to_int(b_idx[0], 0, limit - width + 1)

    base = n_key + 1
    weights = jnp.asarray([base**j for j in range(kmax)], jnp.int32)
    code = jnp.sum((kmot + 1) * weights[None], axis=1)  # [T] unique per motif (size included)
    code_p = jnp.sum((kp + 1) * weights)
    first = jnp.argmax(code[:, None] == code[None, :], axis=1).astype(jnp.int32)  # first occurrence
    is_probe = code == code_p
    val = jnp.where(is_probe[:, None], vp[None], vmot[first])
    vlen = jnp.where(is_probe, vp_size, vsize[first])
    length = ksize + vlen
    start = jnp.cumsum(length) - length
    t_idx = jnp.arange(T, dtype=jnp.int32)
    t_nat = jnp.min(jnp.where(is_probe, t_idx, T))
    t_ins = jnp.argmax(start >= probe_idx).astype(jnp.int32)
    inserted = t_ins <= t_nat
    start2 = start + jnp.where(inserted & (t_idx >= t_ins), kvp, 0)
    included = start2 < limit
    probe_start = start[t_ins]
    n_body = jnp.maximum(jnp.max(jnp.where(included, start2 + length, 0)),
                         jnp.where(inserted, probe_start + kvp, 0))
    n_pad = S + 1 - (n_body + kvp)
    shown_before = (first < t_idx) | (is_probe & inserted & (t_idx >= t_ins))

    slot = jnp.arange(width, dtype=jnp.int32)

    def item_tokens(kmotif, ks_, value, vl):  # -> tokens [width], is_value [width], valid [width]
        is_key = slot < ks_
        vi = jnp.clip(slot - ks_, 0, vmax - 1)
        tok = jnp.where(is_key, kmotif[jnp.minimum(slot, kmax - 1)], value[vi])
        return tok, ~is_key, slot < ks_ + vl

    tok, is_val, valid = jax.vmap(item_tokens)(kmot, ksize, val, vlen)  # [T, width]
    pos = jnp.where(valid & included[:, None], n_pad + start2[:, None] + slot[None], S + 1)
    tgt = jnp.where(is_val & shown_before[:, None], tok, IGNORE_INDEX)
    p_tok, p_isval, p_valid = item_tokens(kp, kp_size, vp, vp_size)
    pos_ins = jnp.where(p_valid & inserted, n_pad + probe_start + slot, S + 1)
    pos_fin = jnp.where(p_valid, n_pad + n_body + slot, S + 1)
    tgt_fin = jnp.where(p_isval, p_tok, IGNORE_INDEX)

    all_pos = jnp.concatenate([pos.reshape(-1), pos_ins, pos_fin])
    all_tok = jnp.concatenate([tok.reshape(-1), p_tok, p_tok])
    ignore_w = jnp.full((width,), IGNORE_INDEX, jnp.int32)
    all_tgt = jnp.concatenate([tgt.reshape(-1), ignore_w, tgt_fin])
    raw = jnp.full((S + 1,), pad, jnp.int32).at[all_pos].set(all_tok, mode="drop")
    if training:
        return raw[:-1], raw[1:]
    raw_t = jnp.full((S + 1,), IGNORE_INDEX, jnp.int32).at[all_pos].set(all_tgt, mode="drop")
    return raw[:-1], raw_t[1:]


def selective_copying(key, config: SelectiveCopyingConfig, *, training: bool = True):
    """Selective copying: data tokens scattered among blanks, reproduce them after a copy token.

    As in MAD: `n = num_tokens_to_copy` data tokens (uniform over [0, V - 2), with repetition)
    with `seq_len - 2n - 1` blanks inserted before uniformly chosen data tokens (so the last
    data token always directly precedes the copy token, as MAD's np.insert does), then the copy
    token V - 1, then n blanks. Targets (train = test, no shift): the n data tokens in order at
    the n positions after the copy token, -100 elsewhere.

    Arguments:
        key: PRNG key.
        config: a SelectiveCopyingConfig.
        training: unused (train and test targets coincide).

    Returns:
        (inputs, targets): int32 [seq_len] each.
    """
    del training
    S, n, V = config.seq_len, config.num_tokens_to_copy, config.vocab_size
    n_blank = S - 2 * n - 1
    blank, copy = V - 2, V - 1
    b_data, b_bins = draw_bits(key, (n, n_blank))
    data = bits_to_int(b_data, 0, V - 2)
    bins = bits_to_int(b_bins, 0, n)
    counts = jnp.zeros((n,), jnp.int32).at[bins].add(1)
    pos = jnp.cumsum(counts) + jnp.arange(n, dtype=jnp.int32)
    inputs = jnp.full((S,), blank, jnp.int32).at[pos].set(data).at[n + n_blank].set(copy)
    targets = jnp.full((S,), IGNORE_INDEX, jnp.int32).at[S - n:].set(data)
    return inputs, targets


def compression(key, config: CompressionConfig, *, training: bool = True):
    """Compression: reconstruct a random sequence that ends in the compression token.

    `seq_len - 1` tokens uniform over [0, V - 1), then the compression token V - 1. Targets
    equal the inputs (train = test). The task's readout is "last" (MAD's encoder-decoder).

    Arguments:
        key: PRNG key.
        config: a CompressionConfig.
        training: unused (train and test targets coincide).

    Returns:
        (inputs, targets): int32 [seq_len] each.
    """
    del training
    V = config.vocab_size
    (b_data,) = draw_bits(key, (config.seq_len - 1,))
    data = bits_to_int(b_data, 0, V - 1)
    inputs = jnp.concatenate([data, jnp.full((1,), V - 1, jnp.int32)])
    return inputs, inputs


def memorization_map(config: MemorizationConfig) -> jax.Array:
    """The fixed key->value map of a memorization config (a function of `config.seed` only).

    Computed once per (vocab_size, seed), eagerly (also when called while tracing), so it
    enters generated programs as a constant.

    Arguments:
        config: a MemorizationConfig.

    Returns:
        int32 [K], K = (vocab_size - 1)//2: the value token of each key token (all distinct).
    """
    return jnp.asarray(_memorization_map_np(config.vocab_size, config.seed))


@functools.lru_cache(maxsize=64)
def _memorization_map_np(vocab_size: int, seed: int) -> np.ndarray:
    n_key = (vocab_size - 1) // 2
    n_val = vocab_size - 1 - n_key
    with jax.ensure_compile_time_eval():
        perm = jax.random.permutation(_stream_key(seed, _MAP_STREAM), n_val)
        out = np.asarray(perm[:n_key]).astype(np.int32) + n_key
    out.setflags(write=False)
    return out


def memorization(key, config: MemorizationConfig, *, training: bool = True):
    """Memorization: recall a fixed key->value map that must be stored in the weights.

    `seq_len // 2` pairs (key uniform over [0, K), insert token V - 1); the target at each
    insert position is the key's value under `memorization_map(config)`, -100 at keys (no
    shift; train = test).

    Arguments:
        key: PRNG key.
        config: a MemorizationConfig.
        training: unused (train and test targets coincide).

    Returns:
        (inputs, targets): int32 [seq_len] each.
    """
    del training
    n_key = (config.vocab_size - 1) // 2
    n_pairs = config.seq_len // 2
    kv = memorization_map(config)
    (b_keys,) = draw_bits(key, (n_pairs,))
    keys = bits_to_int(b_keys, 0, n_key)
    inputs = jnp.stack([keys, jnp.full((n_pairs,), config.vocab_size - 1, jnp.int32)], 1)
    targets = jnp.stack([jnp.full((n_pairs,), IGNORE_INDEX, jnp.int32), kv[keys]], 1)
    return inputs.reshape(-1), targets.reshape(-1)


register_task("in_context_recall", InContextRecallConfig, in_context_recall)
register_task("noisy_in_context_recall", NoisyInContextRecallConfig, noisy_in_context_recall)
register_task("fuzzy_in_context_recall", FuzzyInContextRecallConfig, fuzzy_in_context_recall)
register_task("selective_copying", SelectiveCopyingConfig, selective_copying)
register_task("compression", CompressionConfig, compression)
register_task("memorization", MemorizationConfig, memorization)
