"""Tests of the gated-convolution family: decode = parallel, causality, sizes, conv references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.ops.conv import GatedConvFeaturizer, LongConvMixer, ShortConvMixer, short_conv
from star_jax.ops.primitives import fft_causal_conv

B, L, D = 2, 12, 8
MAX_LEN = 16


def _size(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating))


def _mixer(kind, differential, kernel_size=3):
    if kind == "short":
        return ShortConvMixer(D, kernel_size, differential=differential)
    return LongConvMixer(D, MAX_LEN, filter_order=4, differential=differential)


def _build(kind, differential, kernel_size=3, length=L):
    feat = GatedConvFeaturizer(D, differential=differential)
    mixer = _mixer(kind, differential, kernel_size)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (B, length, D))
    fp = feat.init(k2, h)
    mp = mixer.init(k3, feat.apply(fp, h))
    return feat, mixer, fp, mp, h


def _forward(feat, mixer, fp, mp, h):
    return mixer.apply(mp, feat.apply(fp, h))


def _decode(feat, mixer, fp, mp, h):
    def body(carry, h_t):
        fs, ms = carry
        f_t, fs = feat.apply(fp, h_t, fs, method="step")
        y_t, ms = mixer.apply(mp, f_t, ms, method="step")
        return (fs, ms), y_t

    init = (feat.init_state(h.shape[0]), mixer.init_state(h.shape[0], h.shape[1]))
    (_, state), ys = jax.lax.scan(body, init, jnp.moveaxis(h, 1, 0))
    return jnp.moveaxis(ys, 0, 1), state


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


CASES = [("short", False, 3), ("short", True, 3), ("short", False, 1), ("short", False, 4),
         ("long", False, 0), ("long", True, 0)]


@pytest.mark.parametrize("kind,differential,k", CASES)
def test_decode_matches_parallel_and_is_causal(kind, differential, k):
    # long conv: lengths shorter than and equal to max_len
    lengths = (L, MAX_LEN) if (kind, differential) == ("long", False) else (L,)
    for length in lengths:
        feat, mixer, fp, mp, h = _build(kind, differential, k, length)
        fwd = jax.jit(lambda h: _forward(feat, mixer, fp, mp, h))
        y = fwd(h)
        y_dec, state = jax.jit(lambda fp, mp, h: _decode(feat, mixer, fp, mp, h))(fp, mp, h)
        assert y.shape == (B, length, D)
        assert float(jnp.abs(y).max()) > 1e-3
        assert _rel(y_dec, y) < 1e-4
        assert _size(state) // B == mixer.state_elems(length)
        if kind == "long":
            assert int(state["pos"]) == length
    # causality: perturbing inputs after t leaves outputs up to t unchanged
    t = 4
    y2 = fwd(h.at[:, t + 1 :].add(jax.random.normal(jax.random.key(9), (B, h.shape[1] - t - 1, D))))
    np.testing.assert_allclose(y[:, : t + 1], y2[:, : t + 1], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(y[:, t + 1 :] - y2[:, t + 1 :]).max()) > 1e-4


@pytest.mark.parametrize("differential", [False, True])
def test_param_and_state_counts(differential):
    feat = GatedConvFeaturizer(D, differential=differential)
    h = jnp.zeros((1, 3, D))
    groups = feat.groups()
    for sub in [None, feat.shareable(), ("x",)] + [(g,) for g in groups]:
        shapes = jax.eval_shape(lambda: feat.init(jax.random.key(0), h, sub))
        assert _size(shapes) == feat.param_count(sub), sub
        assert set(shapes["params"]) == set(groups if sub is None else sub)
    assert feat.init_state(1) == {} and feat.state_elems() == 0
    n = 2 if differential else 1
    for kind, k in (("short", 1), ("short", 3), ("short", 5), ("long", 0)):
        mixer = _mixer(kind, differential, k)
        mshapes = jax.eval_shape(
            lambda: mixer.init(jax.random.key(0), feat.init_with_output(jax.random.key(0), h)[0])
        )
        assert _size(mshapes) == mixer.param_count(), (kind, k)
        for seq_len in (1, 7, MAX_LEN):
            assert _size(mixer.init_state(1, seq_len)) == mixer.state_elems(seq_len)
        expected = n * D * (k - 1) if kind == "short" else n * D * MAX_LEN
        assert mixer.state_elems(MAX_LEN) == expected


def test_fft_long_conv_matches_direct():
    ku, kh = jax.random.split(jax.random.key(3))
    u = jax.random.normal(ku, (2, 33, 5))
    h = jax.random.normal(kh, (33, 5))
    un, hn = np.asarray(u, np.float64), np.asarray(h, np.float64)
    ref = np.zeros_like(un)
    for t in range(33):
        for j in range(t + 1):
            ref[:, t] += hn[t - j] * un[:, j]
    np.testing.assert_allclose(jax.jit(fft_causal_conv)(u, h), ref, rtol=1e-4, atol=1e-4)


def test_long_conv_mixer_uses_its_filter():
    feat, mixer, fp, mp, h = _build("long", False)
    feats = feat.apply(fp, h)
    (filt,) = mixer.apply(mp, method=lambda m: m.filter_response())
    assert filt.shape == (MAX_LEN, D)
    np.testing.assert_allclose(jnp.sum(jnp.square(filt), axis=0), 1.0, rtol=1e-4)  # unit-norm taps
    u = np.asarray(feats["b"] * feats["x"], np.float64)
    fn = np.asarray(filt, np.float64)
    conv = np.zeros_like(u)
    for t in range(L):
        for j in range(t + 1):
            conv[:, t] += fn[t - j] * u[:, j]
    skip = np.asarray(mp["params"]["D"], np.float64)
    v = np.asarray(feats["c"], np.float64) * (conv + skip * u)
    ref = v @ np.asarray(mp["params"]["out"]["kernel"], np.float64)
    np.testing.assert_allclose(mixer.apply(mp, feats), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="max_len"):
        mixer.apply(mp, feat.apply(fp, jnp.zeros((1, MAX_LEN + 1, D))))


@pytest.mark.parametrize("k", [1, 3, 4])
def test_short_conv_matches_grouped_conv(k):
    ku, kw = jax.random.split(jax.random.key(4))
    u = jax.random.normal(ku, (2, 10, 6))
    w = jax.random.normal(kw, (k, 6))
    # conv_general_dilated correlates: kernel index i meets input t - (k-1) + i, so flip w
    ref = jax.lax.conv_general_dilated(
        u, w[::-1, None, :], window_strides=(1,), padding=[(k - 1, 0)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=6,
    )
    np.testing.assert_allclose(jax.jit(short_conv)(u, w), ref, rtol=1e-5, atol=1e-5)
