"""Tests of the attention LIV family: decode == parallel, causality, analytic sizes, configs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.ops import attention
from star_jax.ops.attention import AttentionFeaturizer, AttentionMixer, _softmax
from star_jax.ops.differential import DiffHeadNorm, DiffLambda
from star_jax.ops.primitives import rope_angles

WIDTH, BATCH, LENGTH = 16, 2, 9

# name -> fields of both modules. Each decode check compiles once, so variants combine features
# (GQA repeat 4 + qkv_conv 3; relu + window: the ring-buffer path of non-softmax kinds; the
# differential relu variant: the recurrent s1/s2 state with phi = relu).
VARIANTS = {
    "mha_rope": dict(n_heads=4, n_kv_heads=4, head_dim=4),
    "gqa_rep2": dict(n_heads=4, n_kv_heads=2, head_dim=4),
    "gqa_rep4_conv3": dict(n_heads=4, n_kv_heads=1, head_dim=4, qkv_conv=3),
    "window3": dict(n_heads=4, n_kv_heads=2, head_dim=4, window=3),
    "linear": dict(n_heads=4, n_kv_heads=2, head_dim=4, kind="linear"),
    "relu_window4": dict(n_heads=2, n_kv_heads=1, head_dim=4, kind="relu", window=4),
    "diff_softmax": dict(n_heads=4, n_kv_heads=2, head_dim=4, differential=True, qkv_conv=2),
    "diff_relu": dict(n_heads=2, n_kv_heads=2, head_dim=4, differential=True, kind="relu"),
}
_FEAT_KEYS = ("n_heads", "n_kv_heads", "head_dim", "qkv_conv", "differential")
_MIX_KEYS = ("n_heads", "n_kv_heads", "head_dim", "kind", "window", "rope", "differential")


def make(cfg: dict):
    feat = AttentionFeaturizer(WIDTH, **{k: v for k, v in cfg.items() if k in _FEAT_KEYS})
    mix = AttentionMixer(WIDTH, **{k: v for k, v in cfg.items() if k in _MIX_KEYS})
    return feat, mix


def init(feat, mix, h, seed=0):
    kf, km = jax.random.split(jax.random.key(seed))
    fp = feat.init(kf, h)
    mp = mix.init(km, feat.apply(fp, h))
    return fp, mp


def count_floats(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating))


def rel_err(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def inputs(seed=1, length=LENGTH):
    return jax.random.normal(jax.random.key(seed), (BATCH, length, WIDTH), jnp.float32)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_decode_matches_parallel(name):
    feat, mix = make(VARIANTS[name])
    h = inputs()
    fp, mp = init(feat, mix, h)

    @jax.jit
    def run(fp, mp, h):
        y_par = mix.apply(mp, feat.apply(fp, h))

        def body(carry, h_t):
            fs, ms = carry
            f_t, fs = feat.apply(fp, h_t, fs, method=feat.step)
            y_t, ms = mix.apply(mp, f_t, ms, method=mix.step)
            return (fs, ms), y_t

        init_states = (feat.init_state(BATCH), mix.init_state(BATCH, LENGTH))
        (fs, ms), ys = jax.lax.scan(body, init_states, jnp.swapaxes(h, 0, 1))
        return y_par, jnp.swapaxes(ys, 0, 1), fs, ms

    y_par, y_dec, fs, ms = run(fp, mp, h)
    assert y_par.shape == (BATCH, LENGTH, WIDTH)
    assert float(jnp.linalg.norm(y_par)) > 0.1  # a test that cannot fail is a bug
    assert rel_err(y_dec, y_par) < 1e-4
    # the state after decoding LENGTH tokens has exactly the analytic size (per sequence)
    assert count_floats(ms) == BATCH * mix.state_elems(LENGTH)
    assert count_floats(fs) == BATCH * feat.state_elems()
    assert int(ms["pos"]) == LENGTH


@pytest.mark.parametrize("name", ["gqa_rep2", "linear", "window3", "diff_softmax"])
def test_step_readonly_reads_leaders_cache(name):
    """A member LIV computes only its queries and attends over the leader's K/V cache."""
    cfg = VARIANTS[name]
    feat_lead, mix_lead = make(cfg)
    feat_mem, mix_mem = make(cfg)
    h_lead, h_mem = inputs(1), inputs(2)
    fp_lead, mp_lead = init(feat_lead, mix_lead, h_lead, seed=0)
    q_groups = tuple(g for g in feat_mem.groups() if g.startswith("q"))
    kf, km = jax.random.split(jax.random.key(5))
    fp_mem = feat_mem.init(kf, h_mem, q_groups)
    assert set(fp_mem["params"]) == {f"{g}_{p}" for g in q_groups for p in ("proj", "conv")
                                     if p == "proj" or cfg.get("qkv_conv", 0) > 0}
    mp_mem = mix_mem.init(km, feat_lead.apply(fp_lead, h_lead))
    assert mix_mem.cache_groups() == feat_mem.shareable()

    @jax.jit
    def run(fp_lead, mp_lead, fp_mem, mp_mem, h_lead, h_mem):
        f_lead = feat_lead.apply(fp_lead, h_lead)
        f_mem = feat_mem.apply(fp_mem, h_mem, q_groups)
        shared = {g: f_lead[g] for g in mix_mem.cache_groups()}
        y_par = mix_mem.apply(mp_mem, {**f_mem, **shared})

        def body(carry, hs):
            fs_l, fs_m, ms = carry
            h_l, h_m = hs
            f_l, fs_l = feat_lead.apply(fp_lead, h_l, fs_l, method=feat_lead.step)
            _, ms = mix_lead.apply(mp_lead, f_l, ms, method=mix_lead.step)
            f_m, fs_m = feat_mem.apply(fp_mem, h_m, fs_m, q_groups, method=feat_mem.step)
            y_t = mix_mem.apply(mp_mem, f_m, ms, method=mix_mem.step_readonly)
            return (fs_l, fs_m, ms), y_t

        carry = (feat_lead.init_state(BATCH), feat_mem.init_state(BATCH, q_groups),
                 mix_lead.init_state(BATCH, LENGTH))
        _, ys = jax.lax.scan(body, carry, (jnp.swapaxes(h_lead, 0, 1), jnp.swapaxes(h_mem, 0, 1)))
        return y_par, jnp.swapaxes(ys, 0, 1)

    y_par, y_dec = run(fp_lead, mp_lead, fp_mem, mp_mem, h_lead, h_mem)
    assert float(jnp.linalg.norm(y_par)) > 0.1
    assert rel_err(y_dec, y_par) < 1e-4


@pytest.mark.parametrize("name", ["mha_rope", "gqa_rep4_conv3", "window3", "linear", "relu_window4", "diff_relu"])
def test_causality(name):
    feat, mix = make(VARIANTS[name])
    h = inputs()
    fp, mp = init(feat, mix, h)
    t = 4
    noise = jax.random.normal(jax.random.key(9), h.shape, h.dtype)
    h2 = h.at[:, t + 1:].add(noise[:, t + 1:])
    f = jax.jit(lambda x: mix.apply(mp, feat.apply(fp, x)))
    y, y2 = f(h), f(h2)
    np.testing.assert_allclose(np.asarray(y2[:, : t + 1]), np.asarray(y[:, : t + 1]), rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(y2[:, t + 1:] - y[:, t + 1:]))) > 1e-3  # later outputs do move
    window = VARIANTS[name].get("window", 0)
    if window and not VARIANTS[name].get("qkv_conv", 0):
        # position i sees j in (i - window, i]: token 0 leaves outputs at >= window unchanged
        y3 = f(h.at[:, 0].add(noise[:, 0]))
        np.testing.assert_allclose(np.asarray(y3[:, window:]), np.asarray(y[:, window:]), rtol=1e-6, atol=1e-6)
        assert float(jnp.max(jnp.abs(y3[:, window - 1] - y[:, window - 1]))) > 1e-3


def _subsets(groups):
    return [None, groups[:1], groups[-1:], tuple(g for g in groups if g.startswith("q")),
            tuple(g for g in groups if not g.startswith("q"))]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_analytic_sizes_match_pytrees(name):
    feat, mix = make(VARIANTS[name])
    h = jax.ShapeDtypeStruct((1, 5, WIDTH), jnp.float32)
    for groups in _subsets(feat.groups()):
        shapes = jax.eval_shape(lambda x, g=groups: feat.init(jax.random.key(0), x, g), h)
        assert count_floats(shapes) == feat.param_count(groups), groups
        expected = {f"{g}_proj" for g in (groups or feat.groups())}
        assert expected <= set(shapes["params"]), groups
        assert count_floats(feat.init_state(1, groups)) == feat.state_elems(groups), groups
    f_shapes = jax.eval_shape(lambda x: feat.apply(feat.init(jax.random.key(0), x), x), h)
    m_shapes = jax.eval_shape(lambda f: mix.init(jax.random.key(0), f), f_shapes)
    assert count_floats(m_shapes) == mix.param_count()
    for seq_len in (1, 3, 7, 16):
        assert count_floats(mix.init_state(1, seq_len)) == mix.state_elems(seq_len)


def test_state_elems_formulas():
    m = AttentionMixer(64, 8, 2, 16)
    assert m.state_elems(100) == 2 * 2 * 16 * 100
    assert AttentionMixer(64, 8, 2, 16, window=32).state_elems(100) == 2 * 2 * 16 * 32
    assert AttentionMixer(64, 8, 2, 16, window=32).state_elems(10) == 2 * 2 * 16 * 10
    assert AttentionMixer(64, 8, 2, 16, kind="linear").state_elems(10**6) == 2 * 16 * 16
    assert AttentionMixer(64, 8, 2, 16, differential=True).state_elems(100) == 3 * 2 * 16 * 100
    assert AttentionMixer(64, 8, 2, 16, differential=True).param_count() == (
        8 * 16 * 64 + DiffLambda.count(16) + DiffHeadNorm.count(16))
    f = AttentionFeaturizer(64, 8, 2, 16, qkv_conv=3)
    assert f.param_count() == (8 + 2 + 2) * 16 * (64 + 3)
    assert f.state_elems(("k",)) == 2 * 16 * 2


def test_transformer_pp_cache_bytes():
    """The paper's figure: Transformer++ at d=2048, head_dim 64, 24 attention LIVs, L=4096, 2 B."""
    mix = AttentionMixer(2048, n_heads=32, n_kv_heads=32, head_dim=64)
    assert 24 * mix.state_elems(4096) * 2 == 805_306_368


def test_gradients_reach_every_param():
    feat, mix = make(VARIANTS["diff_softmax"])
    h = inputs()
    fp, mp = init(feat, mix, h)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.square(mix.apply(p[1], feat.apply(p[0], h))))))((fp, mp))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.max(jnp.abs(g))) > 0.0, jax.tree_util.keystr(path)


@pytest.mark.parametrize(
    "build, fields",
    [
        (lambda: AttentionMixer(16, n_heads=4, n_kv_heads=3, head_dim=4), ("n_heads", "n_kv_heads")),
        (lambda: AttentionFeaturizer(16, n_heads=6, n_kv_heads=4, head_dim=4), ("n_heads", "n_kv_heads")),
        (lambda: AttentionMixer(16, n_heads=4, n_kv_heads=2, head_dim=5), ("head_dim", "rope")),
        (lambda: AttentionMixer(16, 4, 2, 4, kind="sigmoid"), ("kind",)),
        (lambda: AttentionMixer(16, 4, 2, 4, window=-1), ("window",)),
        (lambda: AttentionFeaturizer(16, 4, 2, 4, qkv_conv=-2), ("qkv_conv",)),
        (lambda: AttentionFeaturizer(16, 0, 1, 4), ("n_heads",)),
    ],
)
def test_bad_configs_raise(build, fields):
    with pytest.raises(ValueError) as err:
        build()
    for field in fields:
        assert field in str(err.value)


def test_odd_head_dim_without_rope_is_fine():
    AttentionMixer(16, 4, 2, 5, rope=False)
    AttentionMixer(16, 4, 2, 5, kind="linear")  # rope is ignored for linear attention


def test_unknown_group_raises():
    feat = AttentionFeaturizer(16, 4, 2, 4)
    with pytest.raises(ValueError, match="q1"):
        feat.param_count(("q1",))
    assert feat.shareable() == ("k", "v")
    assert AttentionFeaturizer(16, 4, 2, 4, differential=True).groups() == ("q1", "k1", "q2", "k2", "v")


def test_written_out_softmax_matches_jax_softmax_and_its_gradient():
    """The attention's softmax (max, exp, sum, divide, explicit backward) is jax.nn.softmax."""
    k1, k2 = jax.random.split(jax.random.key(5))
    s = 4.0 * jax.random.normal(k1, (2, 3, 7, 7))
    s = jnp.where(jnp.tril(jnp.ones((7, 7), bool)), s, jnp.finfo(jnp.float32).min)  # causal mask
    g = jax.random.normal(k2, s.shape)
    np.testing.assert_allclose(_softmax(s), jax.nn.softmax(s, axis=-1), rtol=1e-6, atol=1e-7)
    grad = jax.grad(lambda x: jnp.sum(g * _softmax(x)))(s)
    ref = jax.grad(lambda x: jnp.sum(g * jax.nn.softmax(x, axis=-1)))(s)
    np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-6)


def test_rope_tables_on_the_host_match_the_traced_ones():
    """Static positions give host float64-computed tables; a decoding step computes them in the
    graph in float32. Both are the same angles to float32 rounding."""
    host_cos, host_sin = rope_angles(np.arange(300), 16, 10000.0)
    assert isinstance(host_cos, np.ndarray) and host_cos.dtype == np.float32 and host_cos.shape == (300, 8)
    cos, sin = jax.jit(lambda p: rope_angles(p, 16, 10000.0))(jnp.arange(300))
    np.testing.assert_allclose(host_cos, cos, atol=3e-5)
    np.testing.assert_allclose(host_sin, sin, atol=3e-5)


def test_causal_blocks_cover_every_row_and_the_keys_it_sees():
    from star_jax.ops.attention import MAX_QUERY_BLOCKS, QUERY_BLOCK, UNBLOCKED_UP_TO, causal_blocks

    for length in (1, 5, UNBLOCKED_UP_TO, UNBLOCKED_UP_TO + 1, 255, 1023, 4096):
        for window in (0, 1, 3, 40):
            blocks = causal_blocks(length, window)
            n = 1 if length <= UNBLOCKED_UP_TO else min(MAX_QUERY_BLOCKS, -(-length // QUERY_BLOCK))
            assert len(blocks) == n
            assert max(q1 - q0 for q0, q1, _, _ in blocks) == -(-length // n)
            assert blocks[0][0] == 0 and blocks[-1][1] == length
            for (q0, q1, k0, k1), nxt in zip(blocks, blocks[1:] + ((length, None, None, None),)):
                assert q0 < q1 == nxt[0] and k1 == q1  # contiguous rows; keys up to the last row
                # the block's first row sees keys from max(0, q0 - window + 1) on, and no row
                # of the block sees a key before k0
                assert k0 == (max(0, q0 - window + 1) if window else 0)
    assert causal_blocks(127) == ((0, 127, 0, 127),)  # the MAD tasks' length: one block, as before
    assert len(causal_blocks(255)) == 4 and len(causal_blocks(2047)) == MAX_QUERY_BLOCKS
    for bad in ({"length": 0}, {"length": 2.5}, {"length": 8, "window": -1}):
        with pytest.raises(ValueError, match="causal_blocks: (length|window) must be"):
            causal_blocks(**bad)


@pytest.mark.parametrize("name", ["mha_rope", "gqa_rep4_conv3", "window3", "linear", "relu_window4",
                                  "diff_softmax"])
def test_query_blocks_match_one_block(name, monkeypatch):
    """Forced into blocks of 3 query rows (with windows, blocks that skip leading keys), the
    parallel attention gives the whole-[l, l] result and gradients up to rounding."""
    monkeypatch.setattr(attention, "UNBLOCKED_UP_TO", 4)
    feat, mix = make(VARIANTS[name])
    length = 14
    h = inputs(3, length)
    fp, mp = init(feat, mix, h)

    def run(block):
        monkeypatch.setattr(attention, "QUERY_BLOCK", block)

        def loss(fp, mp, h):
            y = mix.apply(mp, feat.apply(fp, h))
            return jnp.sum(jnp.sin(y)), y

        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(fp, mp, h)
        return y, grads

    y1, g1 = run(length)  # one block
    assert len(attention.causal_blocks(length, mix.window)) == 1
    monkeypatch.setattr(attention, "QUERY_BLOCK", 3)
    assert len(attention.causal_blocks(length, mix.window)) == 5
    yb, gb = run(3)
    assert float(jnp.linalg.norm(y1)) > 0.1
    assert rel_err(yb, y1) < 1e-5
    for a, b in zip(jax.tree.leaves(gb), jax.tree.leaves(g1)):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * (1.0 + float(jnp.max(jnp.abs(b))))
