"""Tests of training several candidates at once (`star_jax.train.many`): results bit-identical to
training each alone, in order, whatever the number of workers; errors, progress and settings."""
from __future__ import annotations

import math
import threading

import jax
import numpy as np
import pytest

import star_jax as sj
from star_jax import tasks
from star_jax.evolve import EvolveConfig
from star_jax.evolve.evaluation import train_candidates
from star_jax.population import train_population
from star_jax.train import TrainConfig
from star_jax.train.many import WORKERS_ENV, default_workers, train_many

# attention with shared K/V, a differential recurrence with featurizer sharing, a gated conv + SwiGLU
GENOMES = ("1.1.1.1.2-1.1.1.1.2-5.1.1.1.1", "14.1.2.1.2-14.1.2.1.2-5.1.1.1.1", "8.1.1.1.1-9.1.1.1.1-8.1.1.1.1",
           "5.1.1.1.1-9.1.1.1.1-15.1.1.1.1")


@pytest.fixture(scope="module")
def setting():
    task = tasks.make("in_context_recall", vocab_size=16, seq_len=16, num_train=256, num_test=32)
    cfg = sj.ModelConfig(width=16, vocab_size=16, max_len=task.seq_len, head_dim=4, window=8)
    tc = TrainConfig(steps=6, batch_size=4, warmup_steps=2, eval_every=3, eval_batch_size=16)
    return task, cfg, tc


@pytest.fixture(scope="module")
def alone(setting):
    task, cfg, tc = setting
    return [sj.train(g, cfg, task, tc, progress=False) for g in GENOMES]


def _assert_identical(got, want):
    assert got.metrics == want.metrics
    assert set(got.curve) == set(want.curve)
    for k, v in want.curve.items():
        np.testing.assert_array_equal(got.curve[k], v, err_msg=k)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_are_bit_identical_to_training_alone(setting, alone, workers):
    task, cfg, tc = setting
    finished, threads = [], set()
    results = train_many(GENOMES, cfg, task, tc, workers=workers,
                         on_result=lambda i, r: finished.append(i),
                         on_start=lambda i: threads.add(threading.get_ident()))
    assert len(results) == len(GENOMES)
    for got, want in zip(results, alone):
        _assert_identical(got, want)
    assert sorted(finished) == list(range(len(GENOMES)))
    if workers == 1:
        assert threads == {threading.get_ident()}  # one at a time, on the calling thread
    else:
        assert threading.get_ident() not in threads


def test_given_params_per_candidate(setting, alone):
    task, cfg, tc = setting
    start = [alone[0].params, None]
    got = train_many(GENOMES[:2], cfg, task, tc, params=start, workers=2)
    want = sj.train(GENOMES[0], cfg, task, tc, params=alone[0].params, progress=False)
    _assert_identical(got[0], want)
    _assert_identical(got[1], alone[1])
    with pytest.raises(ValueError, match="params has 1 entries for 2 genomes"):
        train_many(GENOMES[:2], cfg, task, tc, params=[None])


def test_a_diverging_candidate_does_not_touch_the_others(setting, alone):
    task, cfg, tc = setting
    poisoned = jax.tree.map(lambda x: x * np.nan, alone[1].params)
    got = train_many(GENOMES[:3], cfg, task, tc, params=[None, poisoned, None], workers=2)
    assert got[1].metrics["diverged"] and got[1].metrics["test_loss"] == math.inf
    _assert_identical(got[0], alone[0])
    _assert_identical(got[2], alone[2])


def test_the_first_failing_genome_in_order_is_raised(setting):
    task, cfg, tc = setting
    big_task = tasks.make("in_context_recall", vocab_size=64, seq_len=16, num_train=64, num_test=16)
    # every candidate fails the same way (vocabulary too small); the error is the one sj.train gives
    with pytest.raises(ValueError, match="smaller than the task's"):
        train_many(GENOMES, cfg, big_task, tc, workers=2)


def test_workers_setting(setting, monkeypatch):
    task, cfg, tc = setting
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            train_many(GENOMES[:1], cfg, task, tc, workers=bad)
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            train_population(GENOMES[:1], cfg, task, tc, strategy="sequential", workers=bad)
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert default_workers() == 3
    monkeypatch.setenv(WORKERS_ENV, "three")
    with pytest.raises(ValueError, match=f"the environment variable {WORKERS_ENV} must be an integer >= 1"):
        default_workers()
    monkeypatch.delenv(WORKERS_ENV)
    assert 1 <= default_workers() <= 2
    with pytest.raises(ValueError, match="workers applies to the default evaluator"):
        sj.evolve(EvolveConfig(), "unused", evaluator=train_candidates, workers=2)
    assert train_many([], cfg, task, tc) == []


def test_population_and_evolve_evaluator_use_workers(setting, alone):
    task, cfg, tc = setting
    pop = train_population(GENOMES, cfg, task, tc, strategy="sequential", workers=2, keep_params=True)
    for c, want in enumerate(alone):
        assert pop.metrics[c] == want.metrics
    config = EvolveConfig(model=cfg, train=tc, n_liv=3, pop_size=4, strategy="sequential")
    ticks = []
    got = train_candidates([sj.Genome.from_string(g) for g in GENOMES], config, task,
                           on_candidate=ticks.append, workers=2)
    assert got == [dict(r.metrics) for r in alone]
    assert ticks == [1, 2, 3, 4]


def test_mad_score_is_the_same_with_any_number_of_workers(setting):
    task, cfg, _ = setting
    other = tasks.make("in_context_recall", vocab_size=16, seq_len=16, num_train=64, num_test=16, seed=7)
    kw = dict(settings=[task, other], lrs=(3e-3, 1e-3), weight_decays=(0.0, 0.1), steps=4, batch_size=4,
              eval_batch_size=16, progress=False)
    one = sj.mad.score(GENOMES[2], cfg, workers=1, **kw)
    assert sj.mad.score(GENOMES[2], cfg, workers=3, **kw).to_dict() == one.to_dict()
    # a grid point is the run star_jax.train gives alone
    point = one.settings[1].grid[3]
    alone = sj.train(GENOMES[2], cfg, other, steps=4, batch_size=4, lr=1e-3, weight_decay=0.1, warmup_steps=0,
                     min_lr_ratio=1e-6 / 1e-3, clip_norm=None, b2=0.999, eval_every=0, eval_batch_size=16,
                     progress=False)
    assert (point.lr, point.weight_decay, point.test_accuracy, point.test_loss) == (
        1e-3, 0.1, alone.metrics["test_accuracy"], alone.metrics["test_loss"])
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        sj.mad.score(GENOMES[2], cfg, workers=0, **kw)
    # the grid and the budget are not overridable behind the results' back; a zero lr is named
    with pytest.raises(ValueError, match=r"train_overrides may not set \['lr', 'steps'\]"):
        sj.mad.score(GENOMES[2], cfg, train_overrides={"lr": 1e-3, "steps": 3}, **kw)
    with pytest.raises(ValueError, match=r"lrs must be finite numbers > 0, got \[0.0\]"):
        sj.mad.score(GENOMES[2], cfg, **{**kw, "lrs": (0.0,)})


def test_several_training_seeds_train_in_one_call_with_the_per_seed_results(setting, monkeypatch):
    from star_jax.evolve import evaluation
    from star_jax.evolve.records import Candidate

    task, cfg, tc = setting
    config = EvolveConfig(model=cfg, train=tc, n_liv=3, pop_size=4, strategy="sequential", train_seeds=2)
    candidates = [Candidate.of(sj.Genome.from_string(g), 0) for g in GENOMES[:3]]
    calls = []
    real = evaluation.train_many

    def counting(genomes, *args, **kwargs):
        calls.append(len(genomes))
        return real(genomes, *args, **kwargs)

    monkeypatch.setattr(evaluation, "train_many", counting)
    ticks = []
    flat = evaluation.evaluate(candidates, config, task, train_candidates, on_candidate=ticks.append)
    assert calls == [6] and ticks == [0, 1, 1, 2, 2, 3]  # 3 genomes x 2 seeds in one call

    def per_seed(genomes, config, task, on_candidate=None):  # no seeds keyword: called once per seed
        return train_candidates(genomes, config, task, on_candidate=on_candidate, workers=1)

    calls.clear()
    assert evaluation.evaluate(candidates, config, task, per_seed) == flat
    assert calls == [3, 3]
    # the seeds are train.seed and train.seed + 1, each run the one sj.train gives alone
    for c, rec in zip(candidates, flat):
        accs = [sj.train(c.to_genome(), cfg, task, tc.replace(seed=s), progress=False).metrics["test_accuracy"]
                for s in (tc.seed, tc.seed + 1)]
        assert rec.seed_test_accuracy == tuple(accs)


def test_per_seed_records_train_in_one_call_and_are_stored_as_they_finish(setting, monkeypatch):
    from star_jax.evolve import evaluation
    from star_jax.evolve.records import Candidate

    task, cfg, tc = setting
    config = EvolveConfig(model=cfg, train=tc, n_liv=3, pop_size=4, strategy="sequential")
    candidates = [Candidate.of(sj.Genome.from_string(g), -1) for g in GENOMES[:4]]
    calls = []
    real_train, real_sizes = evaluation.train_many, evaluation._size_metrics

    def counting(genomes, *args, **kwargs):
        calls.append(len(genomes))
        return real_train(genomes, *args, **kwargs)

    def sizes(genome, config):  # the last genome cannot be built: recorded, not trained
        if genome.to_string() == GENOMES[3]:
            return {"params": None, "cache_bytes": None}, "GenomeError: not buildable here"
        return real_sizes(genome, config)

    monkeypatch.setattr(evaluation, "train_many", counting)
    monkeypatch.setattr(evaluation, "_size_metrics", sizes)
    stored = []
    got = evaluation.evaluate_per_seed(candidates, config, task, train_candidates, [3, 4],
                                       on_record=lambda seed, j, rec: stored.append((seed, j, rec)))
    assert calls == [6]  # 3 built genomes x 2 seeds in one call
    assert [(s, j) for s, j, _ in stored[:2]] == [(3, 3), (4, 3)]  # the failures first
    assert sorted((s, j) for s, j, _ in stored) == [(s, j) for s in (3, 4) for j in range(4)]
    assert got[0][3].failure == "GenomeError: not buildable here" and got[0][3].test_accuracy is None
    for seed, row in zip((3, 4), got):
        at = config.replace(train=tc.replace(seed=seed))
        assert row == evaluation.evaluate(candidates, at, task, train_candidates)
        assert all(rec is got[(3, 4).index(s)][j] for s, j, rec in stored if s == seed)


@pytest.mark.parametrize("window", [2, 1, None])  # None: every batch held to the end
def test_evaluation_over_threads_gives_the_same_sums(setting, window, monkeypatch):
    from star_jax.model import compile_genome
    from star_jax.train import parts
    from star_jax.train.step import stack_test_batches

    task, cfg, tc = setting
    monkeypatch.setattr(parts, "EVAL_WINDOW", window)
    model = parts.PartModel(compile_genome(sj.Genome.from_string(GENOMES[1]), cfg), task.seq_len)
    vecs = model.init(0)[0]
    inputs, targets = (list(a) for a in stack_test_batches(task, tc.batch_size))
    assert len(inputs) == 8
    want = model.eval_sums(vecs, inputs, targets, threads=1)
    assert want[2] > 0
    for threads in (2, 3, 20):
        np.testing.assert_array_equal(model.eval_sums(vecs, inputs, targets, threads=threads), want)


def test_threads_of_train_many_evaluate_on_their_own_thread(monkeypatch):
    from star_jax.train import threads

    monkeypatch.setenv(WORKERS_ENV, "2")
    assert threads.eval_threads() == 2
    with threads.pool_thread():
        assert threads.eval_threads() == 1
    assert threads.eval_threads() == 2


def test_one_train_config_per_genome(setting):
    task, cfg, tc = setting
    cfgs = [tc.replace(seed=5), tc.replace(seed=6, lr=3e-3)]
    got = train_many([GENOMES[0]] * 2, cfg, task, cfgs, workers=2)
    for r, c in zip(got, cfgs):
        _assert_identical(r, sj.train(GENOMES[0], cfg, task, c, progress=False))
    with pytest.raises(ValueError, match="a sequence of 2 of them"):
        train_many(GENOMES[:2], cfg, task, cfgs[:1])
    with pytest.raises(ValueError, match="share a batch size"):
        train_many(GENOMES[:2], cfg, task, [tc, tc.replace(batch_size=8)])
