"""Tests of the population engine: every strategy reproduces `star_jax.train` per candidate, the
compile counts, divergence isolation, memory chunking and (simulated) multi-device meshes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import star_jax as sj
from star_jax import tasks
from star_jax.population import PopulationResult, estimate_memory_bytes, train_population
from star_jax.train import TrainConfig, batch_keys

# Three genomes with every kind of sharing: featurizer sharing + feature-group sharing of a
# differential recurrence (A), featurizer sharing across positions (B), shared K/V of attention
# (C); A and C run slot 2 as one vmapped group under "static".
GENOMES = ("14.1.2.1.2-14.1.2.1.2-5.1.1.1.1", "15.1.2.2.1-14.2.1.2.1-15.1.2.1.1", "1.1.1.1.2-1.1.1.1.2-5.1.1.1.1")
OTHER = "5.1.1.1.1-9.1.1.1.1-15.1.1.1.1"
CLASSES = (1, 5, 9, 14, 15)
RTOL = 1e-4


@pytest.fixture(scope="module")
def setting():
    task = tasks.make("in_context_recall", vocab_size=16, seq_len=16, num_train=256, num_test=32)
    cfg = sj.ModelConfig(width=16, vocab_size=16, max_len=task.seq_len, head_dim=4, window=8)
    tc = TrainConfig(steps=4, batch_size=4, warmup_steps=2, eval_every=2, eval_batch_size=16)
    return task, cfg, tc


@pytest.fixture(scope="module")
def sequential(setting):
    task, cfg, tc = setting
    return train_population(GENOMES, cfg, task, tc, strategy="sequential")


@pytest.fixture(scope="module")
def static(setting):
    task, cfg, tc = setting
    return train_population(GENOMES, cfg, task, tc, strategy="static", keep_params=True)


@pytest.fixture(scope="module")
def data(setting):
    task, cfg, tc = setting
    return train_population(GENOMES, cfg, task, tc, strategy="data", classes=CLASSES, keep_params=True)


def _assert_same(result: PopulationResult, reference: PopulationResult, rtol: float, idx=None):
    idx = range(len(reference.metrics)) if idx is None else idx
    for c in idx:
        got, want = result.metrics[c], reference.metrics[c]
        assert set(got) == set(want)
        assert got["diverged"] == want["diverged"] and got["steps_run"] == want["steps_run"]
        for k in ("train_loss", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(got[k], want[k], rtol=rtol, err_msg=f"candidate {c} {k}")
        assert set(result.curves[c]) == set(reference.curves[c])
        for k, v in reference.curves[c].items():
            np.testing.assert_allclose(result.curves[c][k], v, rtol=rtol, atol=1e-7, err_msg=f"candidate {c} curve {k}")


def test_genomes_exercise_sharing(setting):
    _, cfg, _ = setting
    programs = [sj.compile_genome(sj.Genome.from_string(g), cfg) for g in GENOMES]
    assert any(s.featurizer_owner != s.index for p in programs for s in p.slots)
    assert any(s.feature_source is not None and not s.readonly_cache for p in programs for s in p.slots)
    assert any(s.readonly_cache for p in programs for s in p.slots)
    assert programs[0].slots[2].signature == programs[2].slots[2].signature


def test_static_matches_train_per_candidate(static, sequential):
    assert static.strategy == "static"
    _assert_same(static, sequential, RTOL)
    assert all(len(c["train_loss"]) == 4 and len(c["test_loss"]) == 2 for c in static.curves)
    # one compile of the training step and one of the eval, whatever the population
    assert static.n_compiles <= 2


def test_data_matches_train_per_candidate(data, sequential):
    _assert_same(data, sequential, RTOL)
    assert data.n_compiles <= 2


def test_final_params_match(static, data, setting):
    task, cfg, tc = setting
    ref = sj.train(GENOMES[0], cfg, task, tc, progress=False).params
    for res in (static, data):
        got = res.params[0]
        assert jax.tree.structure(got) == jax.tree.structure(ref)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-6)


def test_data_reads_a_cross_class_featurizer_owner_s_weights(setting):
    # ReGLU reuses SwiGLU's featurizer with its own activation and shares its owner's weights:
    # the "data" strategy must read them from the owner's slot (it read an untrained zero slot)
    from star_jax.genome import register_liv_class, unregister_liv_class

    task, cfg, tc = setting
    register_liv_class("ReGLU", "9.1.1.3.2", class_id=936, replace=True)
    try:
        genomes = ("9.1.2.1.1-936.1.2.1.1", "936.1.2.1.1-9.1.2.1.1")
        got = train_population(genomes, cfg, task, tc, strategy="data", classes=(9, 936))
        for i, g in enumerate(genomes):
            alone = sj.train(g, cfg, task, tc, progress=False)
            np.testing.assert_allclose(got.curves[i]["train_loss"], alone.curve["train_loss"], rtol=RTOL)
    finally:
        unregister_liv_class(936)


def test_data_new_genomes_do_not_recompile(data, setting):
    task, cfg, tc = setting
    swapped = (GENOMES[2], OTHER, GENOMES[0])
    again = train_population(swapped, cfg, task, tc, strategy="data", classes=CLASSES)
    assert again.n_compiles == 0
    np.testing.assert_allclose(again.curves[0]["train_loss"], data.curves[2]["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(again.curves[2]["train_loss"], data.curves[0]["train_loss"], rtol=1e-6)
    alone = sj.train(OTHER, cfg, task, tc, progress=False)
    np.testing.assert_allclose(again.curves[1]["train_loss"], alone.curve["train_loss"], rtol=RTOL)


def test_data_padding_reuses_the_compiled_step(data, setting):
    task, cfg, tc = setting
    # two genomes padded to the compiled size of three: no compile, same results, two returned
    padded = train_population(GENOMES[:2], cfg, task, tc, strategy="data", classes=CLASSES, pad_to=3)
    assert padded.n_compiles == 0 and len(padded.metrics) == len(padded.curves) == 2
    _assert_same(padded, data, 1e-6, idx=range(2))
    with pytest.raises(ValueError, match="pad_to"):
        train_population(GENOMES, cfg, task, tc, strategy="data", classes=CLASSES, pad_to=2)
    # static ignores it (it compiles per call)
    st = train_population(GENOMES[:1], cfg, task, tc, strategy="static", pad_to=3)
    assert len(st.metrics) == 1


def _poisoned_init(setting, genome):
    task, cfg, tc = setting
    init_key, _ = batch_keys(tc.seed)
    params = sj.build_model(genome, cfg).init(init_key, jnp.zeros((1, task.seq_len), jnp.int32))
    return jax.tree.map(lambda x: x * jnp.nan, params)


@pytest.mark.parametrize("strategy", ["static", "data"])
def test_diverging_candidate_is_isolated(strategy, static, data, setting):
    task, cfg, tc = setting
    clean = static if strategy == "static" else data
    init = [None, None, _poisoned_init(setting, GENOMES[2])]  # vmapped with candidate 0 at slot 2
    res = train_population(GENOMES, cfg, task, tc, strategy=strategy, init_params=init, classes=CLASSES)
    bad = res.metrics[2]
    assert bad["diverged"] and bad["steps_run"] == 1
    assert bad["train_loss"] == math.inf and bad["test_loss"] == math.inf and bad["test_accuracy"] == 0.0
    for c in (0, 1):  # bit-identical to the run without the poisoned candidate
        assert res.metrics[c] == clean.metrics[c]
        for k, v in clean.curves[c].items():
            np.testing.assert_array_equal(res.curves[c][k], v)


def test_memory_estimate_and_chunking(static, setting):
    task, cfg, tc = setting
    genomes = [sj.Genome.from_string(g) for g in GENOMES]
    one = estimate_memory_bytes(genomes[:1], cfg, tc.batch_size, task.seq_len)
    assert one > 4 * 4 * sj.param_count(genomes[0], cfg)  # at least params + grads + Adam
    assert estimate_memory_bytes(genomes[:1], cfg, 2 * tc.batch_size, task.seq_len) > one
    total = estimate_memory_bytes(genomes, cfg, tc.batch_size, task.seq_len)
    assert total == sum(estimate_memory_bytes([g], cfg, tc.batch_size, task.seq_len) for g in genomes)
    budget = max(estimate_memory_bytes([g], cfg, tc.batch_size, task.seq_len) for g in genomes)
    res = train_population(GENOMES, cfg, task, tc, strategy="static", memory_budget_bytes=budget)
    assert res.timings["n_chunks"] == 3  # one candidate per chunk, run one after another
    _assert_same(res, static, 1e-5)


def test_readable_errors(setting):
    task, cfg, tc = setting
    with pytest.raises(ValueError, match="strategy"):
        train_population(GENOMES, cfg, task, tc, strategy="vmap")
    with pytest.raises(ValueError, match="class pool"):
        train_population(GENOMES, cfg, task, tc, strategy="data", classes=(1, 5))
    with pytest.raises(ValueError, match="same number of LIVs"):
        train_population([GENOMES[0], "9.1.1.1.1"], cfg, task, tc, strategy="static")


_MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import star_jax as sj
    from star_jax import tasks
    from star_jax.population import train_population
    from star_jax.train import TrainConfig
    genomes, classes = json.loads(sys.argv[1])
    assert len(jax.devices()) == 8
    task = tasks.make("in_context_recall", vocab_size=16, seq_len=16, num_train=256, num_test=32)
    cfg = sj.ModelConfig(width=16, vocab_size=16, max_len=task.seq_len, head_dim=4, window=8)
    tc = TrainConfig(steps=2, batch_size=4, warmup_steps=1, eval_batch_size=16)
    devs = np.array(jax.devices())
    out = {}
    for strategy, mesh in (("static", jax.sharding.Mesh(devs[:4], ("data",))),
                           ("data", jax.sharding.Mesh(devs.reshape(2, 4), ("candidates", "data")))):
        for name, m in (("one", None), ("mesh", mesh)):
            r = train_population(genomes, cfg, task, tc, strategy=strategy, mesh=m, classes=classes)
            out[strategy + "_" + name] = [c["train_loss"].tolist() + c["test_loss"].tolist() for c in r.curves]
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_mesh_of_8_simulated_devices_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # Two genomes over a small class pool (attention with shared K/V, recurrence, SwiGLU) keep the
    # four compiles of this test short.
    genomes = [GENOMES[2], "5.1.1.1.1-9.1.1.1.1-1.1.1.1.1"]
    out = subprocess.run([sys.executable, "-c", _MESH_SCRIPT, json.dumps([genomes, [1, 5, 9]])],
                         capture_output=True, text=True, env=env, timeout=1200)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT "):])
    for strategy in ("static", "data"):
        np.testing.assert_allclose(res[strategy + "_mesh"], res[strategy + "_one"], rtol=1e-5)


def test_data_gradient_matches_model_gradient(setting):
    """The genome-as-data forward's gradient, read back per candidate, is the model's own
    gradient (this covers the in-place VJPs of the feature-sharing stash), and superset entries
    a genome does not use get exactly zero."""
    from star_jax.population import data as D
    from star_jax.train.step import masked_loss_and_accuracy

    task, cfg, _ = setting
    rng = np.random.default_rng(3)
    many = []  # a genome where several followers read their leaders' features, one leader twice
    while not many:
        g = sj.random_genome(6, rng, classes=CLASSES, share_prob=0.9)
        srcs = [s for s in g.sharing().feature_source if s is not None]
        if len(srcs) >= 3 and len(set(srcs)) < len(srcs):
            many.append(g)
    pool = D.make_pool(cfg, task.seq_len, CLASSES)
    batch = task.sample(jax.random.key(0), 4)
    inputs, targets = batch[0], batch[1]
    for g in [sj.Genome.from_string(s) for s in GENOMES] + many:
        model = sj.build_model(g, cfg)
        params = model.init(jax.random.key(1), inputs)
        want = jax.grad(lambda p: masked_loss_and_accuracy(model.apply(p, inputs), targets)[0])(params)
        base = D._base_params(pool, len(g), task.seq_len)
        sp = jax.tree.map(jnp.asarray, D.to_superset(params, g, pool, base))
        fwd = D.DataForward(pool, len(g))
        code = jnp.asarray(D.encode(g, pool))
        grad_sp = jax.grad(lambda s: masked_loss_and_accuracy(fwd(s, code, inputs), targets)[0])(sp)
        got = D.from_superset(grad_sp, g, pool, params)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
            a, b = np.asarray(a), np.asarray(b)
            np.testing.assert_allclose(a, b, rtol=0, atol=_grad_atol(a, b, inputs.shape, cfg.width),
                                       err_msg=f"{g.short()} {jax.tree_util.keystr(path)}")
        # Unused superset entries get zero: summed correctly rounded (math.fsum of the float32
        # values, which float64 holds exactly), |grad| over the whole superset equals |grad| over
        # the entries the genome uses unless another entry is nonzero (any above ~1e-16 of the
        # total shows), so no float32 tolerance applies.
        used = _exact_abs_sum(D.to_superset(jax.tree.map(jnp.abs, got), g, pool,
                                            jax.tree.map(np.zeros_like, base)))
        assert _exact_abs_sum(grad_sp) == used, f"{g.short()}: unused entries got gradient"


def _exact_abs_sum(tree) -> float:
    """Sum of |x| over a pytree of float32 arrays, correctly rounded (math.fsum)."""
    return math.fsum(v for x in jax.tree.leaves(tree) for v in np.abs(np.asarray(x, np.float64)).ravel().tolist())


def _grad_atol(a: np.ndarray, b: np.ndarray, batch_shape: tuple, width: int) -> float:
    """Tolerance for one gradient leaf computed two ways in float32 (model vs genome-as-data).

    Both are the same sums taken in different orders and groupings (vmapped/switched ops, another
    contraction order). An entry of a gradient is a sum of N products (cotangent x activation);
    recursive float32 summation of N terms errs by at most gamma_N * sum|terms| with
    gamma_N ~= N * eps_f32 (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), so the
    two results differ by at most 2 * N * eps_f32 * sum|terms|.
    - N: a parameter's gradient collects at most one term per token position and channel of the
      activation it acts on, N = batch * seq_len * width (4 * 16 * 16 = 1024 here; a dense weight
      sums batch * seq_len terms per entry, a per-head scalar such as the differential lambda
      sums over all three).
    - sum|terms| is taken as the largest |entry| of the leaf (either side). That is exceeded where
      terms cancel (the differential lambdas' gradients, ~6e-6, are sums over
      every position and channel of terms that mostly cancel), while N * eps_f32 is the
      worst case, about sqrt(N) = 32 times the typical error of random-sign roundings; measured
      on a 2-core AMD EPYC, the largest difference is 500 * eps_f32 * (leaf's largest |entry|), 4x
      inside 2 * N = 2048, and the embedding's 5.5e-6 (largest entry 5.4) is 9 * eps_f32 * 5.4.
    A wrong gradient (a missing sharing VJP) differs by a sizeable fraction of the entries, far
    above 2 * N * eps_f32 = 2.4e-4 of the leaf's largest entry."""
    n = math.prod(batch_shape) * width
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    return 2 * n * float(np.finfo(np.float32).eps) * scale
