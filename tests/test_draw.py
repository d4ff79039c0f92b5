"""Part initialisation through the shared draw program (star_jax.train.draw): the same bits as
each kind's own compiled flax initialisation, for every LIV class, shared featurizers and the
embedding/final parts; the initialisers equal flax's; the key graph and the Threefry hash."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import star_jax as sj
from star_jax.genome import Genome, baselines, variation
from star_jax.model import compile_genome
from star_jax.ops import init as I
from star_jax.train import draw as D
from star_jax.train import parts as P
from star_jax.train.optim import FlatLayout

O0 = D.INIT_OPTIONS  # what each kind's own initialisation was compiled with


def assert_same(got, want, what=None):
    """Byte for byte on a CPU (what the recorded runs used); on another backend XLA may contract
    a multiply-add differently in the two programs, so the last bit may differ."""
    got, want = np.asarray(got), np.asarray(want)
    if jax.default_backend() == "cpu":
        assert got.tobytes() == want.tobytes(), what
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=str(what))


def _model(genome, width=32, seq_len=16):
    task = sj.tasks.make("in_context_recall", vocab_size=16, seq_len=seq_len)
    cfg = sj.ModelConfig(width=width, vocab_size=16, max_len=task.seq_len, head_dim=8, window=8)
    return P.PartModel(compile_genome(genome, cfg), task.seq_len)


def _own_init(prog, seed, k):
    """The part's flax initialisation compiled on its own (what parts used before the plan)."""
    return np.asarray(jax.jit(prog._init, compiler_options=O0)(np.uint32(seed), np.int32(k))[0])


@pytest.mark.parametrize("genome", [
    Genome([[c, 1, 1, 1, 1] for c in range(1, 18)]),
    variation.random_genome(6, np.random.default_rng(3)),  # shared featurizers and feature groups
    baselines.lfm2_like(4),
], ids=["all_classes", "shared", "lfm2"])
def test_plan_draws_the_flax_initialisation_bit_for_bit(genome):
    model = _model(genome)
    assert all(isinstance(p.init, D.InitPlan) for p in model.progs)
    for seed in (0, 11):
        vecs, mus, nus = model.init(seed)
        for k, (prog, v) in enumerate(zip(model.progs, vecs)):
            assert_same(v, _own_init(prog, seed, k), (k, model.kinds[k]))
            assert not np.any(np.asarray(mus[k])) and not np.any(np.asarray(nus[k]))


def test_new_kinds_compile_no_initialisation_of_their_own():
    """Initialising 19 part kinds compiles a handful of shared programs, not one per kind, and
    new kinds of the same parameter shapes (here: another sequence length) compile nothing."""
    n = [0]

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            n[0] += 1

    P.clear_program_cache()
    jax.monitoring.register_event_duration_secs_listener(listen)
    genome = Genome([[c, 1, 1, 1, 1] for c in (1, 5, 9, 10, 14)])
    jax.block_until_ready(_model(Genome([[c, 1, 1, 1, 1] for c in range(1, 18)]), width=64).init(0))
    first = n[0]
    assert first <= 10, first  # draw programs per vector length, dt/S4D programs per shape
    jax.block_until_ready(_model(genome, width=64, seq_len=16).init(1))
    assert n[0] == first
    model = _model(genome, width=64, seq_len=24)
    jax.block_until_ready(model.init(2))
    assert all(isinstance(p.init, D.InitPlan) for p in model.progs)
    assert n[0] == first


@pytest.mark.parametrize("ours, theirs, shape", [
    (I.LecunNormal(), nn.initializers.lecun_normal(), (24, 40)),
    (I.VarianceScaling(0.01, "normal"), nn.initializers.variance_scaling(0.01, "fan_in", "normal"), (7, 5)),
    (I.VarianceScaling(1.0, "uniform"), nn.initializers.variance_scaling(1.0, "fan_in", "uniform"), (3, 9)),
    (I.Normal(0.02), nn.initializers.normal(0.02), (33,)),
    (I.Uniform(0.5), nn.initializers.uniform(0.5), (4, 4)),
    (I.ONES, nn.initializers.ones, (6,)),
    (I.ZEROS, nn.initializers.zeros, (2, 3)),
])
def test_initialisers_return_what_flax_returns(ours, theirs, shape):
    key = jax.random.key(4)
    assert np.asarray(ours(key, shape)).tobytes() == np.asarray(theirs(key, shape, jnp.float32)).tobytes()


@pytest.mark.parametrize("init, shape", [
    (I.LecunNormal(), (24, 40)), (I.VarianceScaling(0.01, "normal"), (7, 5)),
    (I.VarianceScaling(1.0, "uniform"), (3, 9)), (I.Normal(0.02), (33,)), (I.Uniform(0.5), (4, 4)),
    (I.Centered(0.25), (4, 8)), (I.UniformRange(-0.3, 0.3), (5,)), (I.ConvPassThrough(0.1), (3, 8)),
    (I.ONES, (6,)), (I.DtBias(1e-3, 1e-1), (12,)), (I.S4DReal(), (4, 6)),
    (I.Centered(3 ** -0.5), (3, 40)), (I.UniformRange(-0.5, 0.5), (64,)), (I.UniformRange(-0.3, 0.3), (64,)),
    (I.ConvPassThrough(0.1), (4, 40)),
])
def test_every_initialiser_is_drawn_as_compiled(init, shape):
    """A one-parameter kind through the plan equals its compiled initialisation."""
    class Kind:
        def init_tree(self, key, seq_len):
            return {"w": init(key, shape)}

    kind = Kind()
    layout = FlatLayout(jax.eval_shape(lambda: kind.init_tree(jax.random.key(0), 1)))
    plan = D.InitPlan.build(kind, 1, layout, P.bucket(layout.size))
    assert plan is not None

    def own(seed, index):
        key = jax.random.fold_in(jax.random.split(jax.random.key(seed))[0], index)
        return layout.ravel(kind.init_tree(key, 1))

    for seed, index in ((0, 0), (9, 3)):
        got = np.asarray(plan(seed, index)[0])
        want = np.asarray(jax.jit(own, compiler_options=O0)(np.uint32(seed), np.int32(index)))
        assert_same(got[: layout.size], want)
        assert not np.any(got[layout.size:])


@pytest.mark.parametrize("scale, distribution, match", [
    (1.0, "fan_avg", "distribution must be one of"), (0.0, "normal", "scale must be positive")])
def test_a_bad_variance_scaling_is_refused_where_it_is_made(scale, distribution, match):
    with pytest.raises(ValueError, match=match):
        I.VarianceScaling(scale, distribution)


def test_a_foreign_initialiser_keeps_its_own_compiled_initialisation():
    class Kind:
        def init_tree(self, key, seq_len):
            return nn.Dense(4, kernel_init=nn.initializers.orthogonal()).init(key, jnp.zeros((1, 3)))["params"]

    kind = Kind()
    layout = FlatLayout(jax.eval_shape(lambda: kind.init_tree(jax.random.key(0), 1)))
    assert D.InitPlan.build(kind, 1, layout, P.bucket(layout.size)) is None


def test_other_threefry_layout_keeps_the_compiled_initialisation():
    """With jax_threefry_partitionable off (jax's other layout of random bits) every kind keeps
    its own compiled flax initialisation."""
    old = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", not old)
    try:
        P.clear_program_cache()
        model = _model(Genome([[1, 1, 1, 1, 1], [9, 1, 1, 1, 1]]))
        assert not any(isinstance(p.init, D.InitPlan) for p in model.progs) or old is False
        vecs, _, _ = model.init(3)
        for k, prog in enumerate(model.progs):
            assert_same(vecs[k], _own_init(prog, 3, k))
    finally:
        jax.config.update("jax_threefry_partitionable", old)
        P.clear_program_cache()


@pytest.mark.parametrize("key, count, want", [
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_threefry_known_answers(key, count, want):
    """Threefry-2x32 with 20 rounds, the Random123 known-answer vectors, numpy and jnp."""
    for xp in (np, jnp):
        args = [xp.asarray([v], dtype=np.uint32) for v in key + count]
        got = D.threefry2x32(*args)
        assert (int(np.asarray(got[0])[0]), int(np.asarray(got[1])[0])) == want
