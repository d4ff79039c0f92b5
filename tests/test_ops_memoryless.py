"""Tests of the memoryless family (SwiGLU and relatives): values, decode, causality, sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.ops.memoryless import GLUFeaturizer, GLUMixer

B, L, D, H = 2, 6, 8, 12


def _size(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _build(activation, differential):
    feat = GLUFeaturizer(D, H, activation, differential=differential)
    mixer = GLUMixer(D, H, activation, differential=differential)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (B, L, D))
    fp = feat.init(k2, h)
    mp = mixer.init(k3, feat.apply(fp, h))
    return feat, mixer, fp, mp, h


CASES = [(a, d) for a in ("swish", "relu", "none") for d in (False, True)]


@pytest.mark.parametrize("activation,differential", CASES)
def test_values_decode_and_causality(activation, differential):
    feat, mixer, fp, mp, h = _build(activation, differential)
    fwd = jax.jit(lambda h: mixer.apply(mp, feat.apply(fp, h)))
    y = fwd(h)
    # reference in numpy
    act = {"swish": lambda v: v / (1 + np.exp(-v)), "relu": lambda v: np.maximum(v, 0), "none": lambda v: v}[activation]
    hn = np.asarray(h, np.float64)
    w = {g: np.asarray(p["kernel"], np.float64) for g, p in fp["params"].items()}
    if differential:
        lam = float(mixer.apply(mp, method=lambda m: m.diff_lambda()))
        gate = act(hn @ w["gate1"]) - lam * act(hn @ w["gate2"])
    else:
        gate = act(hn @ w["gate"])
    ref = (gate * (hn @ w["value"])) @ np.asarray(mp["params"]["out"]["kernel"], np.float64)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    # one token at a time gives the same outputs
    fs, ms = feat.init_state(B), mixer.init_state(B, L)
    for t in range(L):
        f_t, fs = feat.apply(fp, h[:, t], fs, method="step")
        y_t, ms = mixer.apply(mp, f_t, ms, method="step")
        np.testing.assert_allclose(y_t, y[:, t], rtol=1e-4, atol=1e-5)
    assert fs == {} and ms == {}
    # position-wise: changing later tokens changes nothing before them
    y2 = fwd(h.at[:, 3:].add(1.0))
    np.testing.assert_allclose(y2[:, :3], y[:, :3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("differential", [False, True])
def test_param_and_state_counts(differential):
    feat = GLUFeaturizer(D, H, differential=differential)
    mixer = GLUMixer(D, H, differential=differential)
    h = jnp.zeros((1, 3, D))
    assert feat.shareable() == ()
    for sub in [None] + [(g,) for g in feat.groups()] + [feat.groups()[:2]]:
        shapes = jax.eval_shape(lambda: feat.init(jax.random.key(0), h, sub))
        assert _size(shapes) == feat.param_count(sub), sub
        assert set(shapes["params"]) == set(feat.groups() if sub is None else sub)
    mshapes = jax.eval_shape(lambda: mixer.init(jax.random.key(0), feat.init_with_output(jax.random.key(0), h)[0]))
    assert _size(mshapes) == mixer.param_count()
    assert mixer.state_elems(4096) == 0 and feat.state_elems() == 0 and mixer.init_state(1, 8) == {}


def test_bad_activation_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        GLUFeaturizer(D, H, "gelu").param_count()
    with pytest.raises(ValueError, match="activation"):
        GLUMixer(D, H, "gelu").init(jax.random.key(0), {"gate": jnp.zeros((1, 2, H)), "value": jnp.zeros((1, 2, H))})
