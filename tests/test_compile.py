"""Compile once, train many: what a training call compiles, counted with jax.monitoring, and the
part programs' numbers against the whole model's autodiff."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import star_jax as sj
from star_jax.model import compile_genome
from star_jax.train import parts as P
from star_jax.train.optim import FlatLayout, make_flat_optimizer
from star_jax.train.step import masked_loss_and_accuracy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    def __init__(self):
        self.n = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **_):
        if event == COMPILE_EVENT:
            self.n += 1


_COUNTER = CompileCounter()


def compiles_of(fn):
    start = _COUNTER.n
    out = fn()
    return _COUNTER.n - start, out


@pytest.fixture(scope="module")
def task():
    return sj.tasks.make("in_context_recall", vocab_size=16, seq_len=32, num_train=256, num_test=40)


CFG = sj.ModelConfig(width=32, vocab_size=16, max_len=32, head_dim=8)
TRAIN = sj.TrainConfig(steps=4, batch_size=4, warmup_steps=1, eval_batch_size=32)
# every kind of sharing: k/v read by #2 from #0, the SwiGLU featurizer of #1 reused by #3, a
# differential attention, a recurrence, a gated short convolution
SHARING = "1.1.1.1.2-9.1.2.1.1-1.1.1.1.2-9.1.2.1.1-2.1.1.1.1-5.1.1.1.1-7.1.1.1.1"


def test_second_train_of_a_known_structure_compiles_nothing(task):
    g = sj.Genome.from_string("1.1.1.1.1-9.1.1.1.1")
    sj.train(g, CFG, task, TRAIN, progress=False)
    for changes in ({"seed": 3}, {"lr": 3e-3, "weight_decay": 0.0, "clip_norm": None, "b2": 0.99},
                    {"steps": 7, "warmup_steps": 3, "eval_every": 2}):
        n, res = compiles_of(lambda: sj.train(g, CFG, task, TRAIN.replace(**changes), progress=False))
        assert n == 0, changes
        assert res.metrics["steps_run"] == TRAIN.replace(**changes).steps


def test_new_genome_of_known_kinds_compiles_nothing(task):
    sj.train("1.1.1.1.1-9.1.1.1.1-7.1.1.1.1", CFG, task, TRAIN, progress=False)
    for text in ("7.1.1.1.1-1.1.1.1.1-9.1.1.1.1-9.1.1.1.1", "9.1.1.1.1-7.1.1.1.1-7.1.1.1.1-1.1.1.1.1-9.1.1.1.1"):
        n, _ = compiles_of(lambda: sj.train(text, CFG, task, TRAIN, progress=False))
        assert n == 0, text


def test_sequential_population_with_new_genomes_compiles_nothing(task):
    pool = ["1.1.1.1.1", "9.1.1.1.1", "7.1.1.1.1"]
    first = ["-".join(pool[(i + j) % 3] for j in range(4)) for i in range(3)]
    sj.train_population(first, CFG, task, TRAIN, strategy="sequential")
    second = ["-".join(pool[(i * j + 1) % 3] for j in range(4)) for i in range(3)]
    n, out = compiles_of(lambda: sj.train_population(second, CFG, task, TRAIN, strategy="sequential"))
    assert n == 0
    assert len(out.metrics) == 3


def _chain_vs_autodiff(genome: str, seq_len: int = 32):
    cfg = CFG
    program = compile_genome(sj.Genome.from_string(genome), cfg)
    model = P.PartModel(program, seq_len)
    vecs, _, _ = model.init(5)
    key = jax.random.key(1)
    inputs = jax.random.randint(key, (3, seq_len), 0, cfg.vocab_size, jnp.int32)
    targets = jnp.where(jnp.arange(seq_len)[None] % 3 == 0, -100, jnp.roll(inputs, -1, axis=1))
    (loss, _), grads, sq = model.loss_and_grads(vecs, inputs, targets)

    flax_model = sj.build_model(genome, cfg)
    params = model.to_flax(vecs)

    def loss_fn(p):
        return masked_loss_and_accuracy(flax_model.apply(p, inputs), targets)[0]

    want_loss, want_tree = jax.value_and_grad(loss_fn)(params)
    want = model.from_flax(want_tree)
    return loss, want_loss, grads, want, sq


def test_part_chain_matches_whole_model_autodiff_with_every_kind_of_sharing():
    loss, want_loss, grads, want, sq = _chain_vs_autodiff(SHARING)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for k, (g, w) in enumerate(zip(grads, want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-6, err_msg=f"part {k}")
        np.testing.assert_allclose(sq[k], np.sum(np.square(w)), rtol=1e-4, err_msg=f"part {k} norm")


def test_to_flax_and_from_flax_round_trip_and_fit_the_model():
    program = compile_genome(sj.Genome.from_string(SHARING), CFG)
    model = P.PartModel(program, 32)
    vecs, _, _ = model.init(0)
    tree = model.to_flax(vecs)
    shapes = jax.eval_shape(lambda: sj.build_model(SHARING, CFG).init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32)))
    assert jax.tree.structure(tree) == jax.tree.structure(shapes)
    assert jax.tree.map(lambda a: a.shape, tree) == jax.tree.map(lambda a: a.shape, shapes)
    for a, b in zip(model.from_flax(tree), vecs):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"do not fit (the embedding|LIV #\d|the head)|values for (LIV #\d|the)"):
        other = compile_genome(sj.Genome.from_string("1.1.1.1.1-9.1.1.1.1"), CFG)
        P.PartModel(other, 32).from_flax(sj.build_model("9.1.1.1.1-1.1.1.1.1", CFG).init(
            jax.random.key(0), jnp.zeros((1, 32), jnp.int32)))


def test_part_optimizer_step_equals_the_flat_optimizer():
    cfg = sj.TrainConfig(steps=20, warmup_steps=3, lr=2e-3, weight_decay=0.1, clip_norm=0.05)
    program = compile_genome(sj.Genome.from_string("1.1.1.1.1-9.1.1.1.1"), CFG)
    model = P.PartModel(program, 32)
    vecs, mus, nus = model.init(0)
    rng = np.random.default_rng(0)
    tree = model.to_flax(vecs)
    layout = FlatLayout(tree)
    opt = make_flat_optimizer(cfg, layout)
    flat = layout.ravel(tree)
    state = opt.init(flat)
    count = np.int32(0)
    hyper = P.hyper_vector(cfg)
    for _ in range(4):
        grad_tree = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), tree)
        grads = model.from_flax(grad_tree)
        sq = tuple(P._sqnorm(g) for g in grads)
        ok, gn, alive, new_count, _ = P._step_tail(jnp.float32(1.0), (0.0, 1, 1), sq, np.bool_(True), count)
        for k in range(model.n_parts):
            vecs[k], mus[k], nus[k] = P._adamw(vecs[k], grads[k], mus[k], nus[k], model.progs[k].decay, count,
                                               ok, gn, hyper)
        count = new_count
        updates, state = opt.update(layout.ravel(grad_tree), state, flat)
        flat = flat + updates
    got = layout.ravel(model.to_flax(vecs))
    np.testing.assert_allclose(got, flat, rtol=1e-5, atol=1e-7)


def test_models_built_at_once_on_several_threads_share_one_program_per_kind():
    # separate copies of a kind's programs would each compile; threads must share the one built
    import concurrent.futures

    cfg = sj.ModelConfig(width=16, vocab_size=8, max_len=12, head_dim=4, window=4)
    genomes = ["2.1.1.1.1-9.1.1.1.1", "9.1.1.1.1-2.1.1.1.1", "2.1.1.1.1-2.1.1.1.1-9.1.1.1.1"]
    P.clear_program_cache()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        models = list(pool.map(lambda g: P.PartModel(sj.compile_genome(sj.Genome.from_string(g), cfg), 12),
                               genomes * 4))
    by_kind: dict = {}
    for m in models:
        for kind, progs in zip(m.kinds, m.progs):
            by_kind.setdefault(kind, set()).add(id(progs))
    assert by_kind and all(len(ids) == 1 for ids in by_kind.values())


def test_lr_curve_matches_make_schedule():
    cfg = sj.TrainConfig(steps=50, warmup_steps=7, lr=3e-3, min_lr_ratio=0.05)
    want = np.asarray(sj.train.make_schedule(cfg)(jnp.arange(50)))
    np.testing.assert_allclose(P.lr_curve(cfg, 50), want, rtol=2e-6)


def test_bucket_sizes():
    assert P.bucket(1) == P.MIN_BUCKET and P.bucket(P.MIN_BUCKET) == P.MIN_BUCKET
    assert P.bucket(P.MIN_BUCKET + 1) == 4 * P.MIN_BUCKET


_FRESH = textwrap.dedent("""
    import json, sys, jax
    n = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda ev, d, **_: n.append(d) if ev == "/jax/core/compile/backend_compile_duration" else None)
    from star_jax.compile_cache import enable_compilation_cache
    enable_compilation_cache()
    import star_jax as sj
    task = sj.tasks.make("in_context_recall", vocab_size=16, seq_len=32, num_train=256, num_test=32)
    cfg = sj.ModelConfig(width=32, vocab_size=16, max_len=32, head_dim=8)
    g = sj.baselines.transformer_pp(n_liv=4)
    before = len(n)
    res = sj.train(g, cfg, task, sj.TrainConfig(steps=3, batch_size=4, eval_batch_size=32, warmup_steps=0),
                   progress=False)
    print(json.dumps({"compiles": len(n) - before, "metrics": res.metrics}))
""")


def _fresh_process(cache_dir: str) -> dict:
    env = dict(os.environ, STAR_JAX_CACHE_DIR=cache_dir)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _FRESH], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_first_train_in_a_fresh_process_compiles_at_most_20_programs():
    assert _fresh_process("off")["compiles"] <= 20


def test_corrupt_persistent_cache_entries_cost_a_compile_not_a_result(tmp_path):
    cache = str(tmp_path / "cache")
    first = _fresh_process(cache)
    entries = [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs]
    assert entries, "the persistent cache wrote nothing"
    for path in entries:  # flip bytes in the middle of every entry, truncate one
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            mid = len(data) // 2
            data[mid:mid + 16] = bytes(255 - b for b in data[mid:mid + 16])
            f.seek(0)
            f.write(data)
    with open(entries[0], "r+b") as f:
        f.truncate(7)
    second = _fresh_process(cache)
    assert second["metrics"] == first["metrics"]


def test_unwritable_cache_location_warns_once_and_runs_on(tmp_path, monkeypatch):
    from star_jax import compile_cache

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    target = str(blocker / "cache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compile_cache.enable_compilation_cache(target) is None
        assert compile_cache.enable_compilation_cache(target) is None
    assert len([w for w in caught if "not writable" in str(w.message)]) == 1
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.cache_dir() is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "c"))
    assert compile_cache.cache_dir() == str(tmp_path / "c")
