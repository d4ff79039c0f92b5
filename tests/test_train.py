"""Tests of single-candidate training: loss, schedule, clipping, decay mask, determinism,
divergence, learning, the exact step/key recipe the population engine mirrors, config errors."""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from star_jax.train import (
    FlatLayout,
    TrainConfig,
    batch_keys,
    evaluate,
    fit,
    fit_model,
    make_flat_optimizer,
    make_optimizer,
    make_schedule,
    make_train_step,
    masked_loss_and_accuracy,
    step_batch_key,
    train,
)


# ----------------------------------------------------------------------------------------------
# A tiny model and tiny tasks obeying the task API
# ----------------------------------------------------------------------------------------------
class TinyLM(nn.Module):
    """Per-token MLP: tokens [B, L] -> logits [B, L, vocab]. The token ``vocab - 1`` (which
    ShiftTask draws only when poisoning) turns its logits into NaN, to inject divergence at a
    known step while every test compiles the same model."""

    vocab: int
    width: int = 32

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.width)(tokens)  # [B, L, W]
        x = nn.gelu(nn.Dense(self.width)(nn.LayerNorm()(x)))
        logits = nn.Dense(self.vocab)(x)  # [B, L, V]
        poisoned = (tokens == self.vocab - 1)[..., None]  # [B, L, 1]
        return jnp.where(poisoned, jnp.nan, logits)


@dataclasses.dataclass(frozen=True)
class ShiftTask:
    """target[t] = (input[t] + 1) mod vocab; position 0 ignored. With ``poison_prob`` > 0, a
    batch has token ``vocab - 1`` (else never drawn) at a counted position with that probability."""

    vocab_size: int = 8
    seq_len: int = 12
    num_train: int = 1024
    num_test: int = 40
    poison_prob: float = 0.0
    readout: str = "all"

    def _examples(self, key, n):
        data_key, poison_key = jax.random.split(key)
        inputs = jax.random.randint(data_key, (n, self.seq_len), 0, self.vocab_size - 1, jnp.int32)
        if self.poison_prob > 0:
            poisoned = jax.random.uniform(poison_key, ()) < self.poison_prob
            inputs = inputs.at[0, 1].set(jnp.where(poisoned, self.vocab_size - 1, inputs[0, 1]))
        targets = (inputs + 1) % self.vocab_size
        targets = targets.at[:, 0].set(-100)
        return inputs, targets

    def sample(self, key, batch_size):
        return self._examples(key, batch_size)

    def test_set(self):
        clean = dataclasses.replace(self, poison_prob=0.0)  # the test set is never poisoned
        inputs, targets = clean._examples(jax.random.key(10_000), self.num_test)
        return np.asarray(inputs), np.asarray(targets)

    def test_batches(self, batch_size):
        inputs, targets = self.test_set()
        pad = -len(inputs) % batch_size
        inputs = np.concatenate([inputs, np.zeros((pad, self.seq_len), np.int32)])
        targets = np.concatenate([targets, np.full((pad, self.seq_len), -100, np.int32)])
        for i in range(0, len(inputs), batch_size):
            yield inputs[i : i + batch_size], targets[i : i + batch_size]


class HostShiftTask(ShiftTask):
    """The same batches, but sampled with numpy on the host (not traceable)."""

    def sample(self, key, batch_size):
        inputs, targets = self._examples(key, batch_size)
        return np.asarray(inputs), np.asarray(targets)


SMALL = dict(steps=60, batch_size=16, lr=1e-2, warmup_steps=5, eval_every=30, eval_batch_size=16)


@pytest.fixture(scope="module")
def shift_runs():
    task = ShiftTask()
    model = TinyLM(vocab=task.vocab_size)
    cfg = TrainConfig(**SMALL)
    return task, model, cfg, fit(model, task, cfg, progress=False), fit(model, task, cfg, progress=False)


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------
def test_masked_loss_matches_hand_computation():
    logits = np.array([[[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 5.0, 0.0], [1.0, 3.0, 0.5, 0.0]]], np.float32)
    targets = np.array([[0, -100, 2]], np.int32)
    loss, (n_correct, n_counted) = masked_loss_and_accuracy(jnp.asarray(logits), jnp.asarray(targets))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(log_probs[0, 0, 0] + log_probs[0, 2, 2]) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert int(n_counted) == 2
    assert int(n_correct) == 1  # position 0 right (argmax 0), position 2 wrong (argmax 1)
    assert loss.dtype == jnp.float32


def test_ignored_targets_do_not_contribute():
    key = jax.random.key(0)
    logits = jax.random.normal(key, (2, 5, 7), jnp.float32)
    targets = jnp.array([[1, -100, 3, -100, 0], [-100, -100, 6, 2, 2]], jnp.int32)
    changed = logits.at[0, 1].set(100.0).at[1, 0].set(-50.0)  # only ignored positions
    loss_a, counts_a = masked_loss_and_accuracy(logits, targets)
    loss_b, counts_b = masked_loss_and_accuracy(changed, targets)
    assert float(loss_a) == float(loss_b)
    assert [int(c) for c in counts_a] == [int(c) for c in counts_b]
    grads = jax.grad(lambda z: masked_loss_and_accuracy(z, targets)[0])(logits)
    assert float(jnp.abs(grads[0, 1]).sum()) == 0.0 and float(jnp.abs(grads[1, :2]).sum()) == 0.0
    assert float(jnp.abs(grads[0, 0]).sum()) > 0.0
    # nothing counted: loss 0, counts 0, finite zero gradient
    none = jnp.full((2, 5), -100, jnp.int32)
    loss, (n_correct, n_counted) = masked_loss_and_accuracy(logits, none)
    assert float(loss) == 0.0 and int(n_correct) == 0 and int(n_counted) == 0
    zero_grads = jax.grad(lambda z: masked_loss_and_accuracy(z, none)[0])(logits)
    assert bool(jnp.all(zero_grads == 0.0))


def test_bfloat16_logits_are_scored_in_float32():
    logits = jnp.array([[[3.0, 0.0, -1.0]]], jnp.bfloat16)
    loss, _ = masked_loss_and_accuracy(logits, jnp.array([[1]], jnp.int32))
    assert loss.dtype == jnp.float32
    assert float(loss) == pytest.approx(3.0 + math.log(1 + math.exp(-3.0) + math.exp(-4.0)), rel=1e-3)


# ----------------------------------------------------------------------------------------------
# Optimizer: schedule, clipping, decay mask
# ----------------------------------------------------------------------------------------------
def test_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=101, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    schedule = make_schedule(cfg)
    expected = {0: 1e-4, 4: 5e-4, 9: 1e-3, 10: 1e-3, 55: 1e-3 * (0.1 + 0.9 * 0.5), 100: 1e-4, 500: 1e-4}
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-5), step
    lrs = np.asarray(schedule(jnp.arange(10, 101)))
    assert np.all(np.diff(lrs) <= 0)  # monotone decay after warm-up
    no_warmup = make_schedule(TrainConfig(steps=3, lr=1.0, warmup_steps=0, min_lr_ratio=0.0))
    assert [float(no_warmup(s)) for s in range(3)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)


def test_optimizer_follows_schedule():
    # With constant gradients Adam's direction is +-1, so the first update is -lr(0) * sign(g).
    cfg = TrainConfig(steps=100, lr=1e-2, warmup_steps=4, weight_decay=0.0, clip_norm=None)
    opt = make_optimizer(cfg)
    params = {"w": jnp.ones((3,), jnp.float32)}
    state = opt.init(params)
    grads = {"w": jnp.array([1.0, -2.0, 0.5], jnp.float32)}
    for step in range(3):
        updates, state = opt.update(grads, state, params)
        lr = 1e-2 * (step + 1) / 4
        np.testing.assert_allclose(updates["w"], -lr * np.sign(grads["w"]), rtol=1e-5)


def test_global_norm_clipping_is_applied():
    cfg = TrainConfig(steps=10, lr=1e-2, warmup_steps=0, weight_decay=0.0, clip_norm=1.0)
    clipped_opt = make_optimizer(cfg)
    reference = optax.adamw(make_schedule(cfg), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
    unclipped = make_optimizer(cfg.replace(clip_norm=None))
    params = {"a": jnp.ones((2, 2), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    g1 = {"a": jnp.full((2, 2), 5.0, jnp.float32), "b": jnp.array([0.0, 0.0, 10.0], jnp.float32)}
    g2 = {"a": jnp.full((2, 2), 0.01, jnp.float32), "b": jnp.array([0.02, 0.0, 0.0], jnp.float32)}
    norm1 = float(optax.tree.norm(g1))
    g1_clipped = jax.tree.map(lambda g: g / norm1, g1)  # norm 1
    states = [clipped_opt.init(params), reference.init(params), unclipped.init(params)]
    for grads, ref_grads in ((g1, g1_clipped), (g2, g2)):  # g2 has norm < 1: left alone
        u_clip, states[0] = clipped_opt.update(grads, states[0], params)
        with jax.numpy_dtype_promotion("standard"):  # optax's own Adam needs it
            u_ref, states[1] = reference.update(ref_grads, states[1], params)
        u_raw, states[2] = unclipped.update(grads, states[2], params)
    for name in params:
        np.testing.assert_allclose(u_clip[name], u_ref[name], rtol=1e-5)
    # the moments remember the unclipped first gradient, so the second update differs
    assert not np.allclose(u_clip["a"], u_raw["a"], rtol=1e-3)


def test_weight_decay_only_on_matrices():
    cfg = TrainConfig(steps=10, lr=0.1, warmup_steps=0, weight_decay=0.5, min_lr_ratio=1.0)
    opt = make_optimizer(cfg)
    params = {"kernel": jnp.full((2, 3), 2.0, jnp.float32), "bias": jnp.full((3,), 2.0, jnp.float32),
              "scale": jnp.array(2.0, jnp.float32)}
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6)
    assert float(jnp.abs(updates["bias"]).sum()) == 0.0 and float(updates["scale"]) == 0.0


def test_flat_optimizer_takes_the_tree_optimizers_steps():
    """The flat-vector optimizer (used by fit and the population engine) = make_optimizer."""
    cfg = TrainConfig(steps=20, lr=0.05, warmup_steps=2, weight_decay=0.3, clip_norm=0.5)
    keys = jax.random.split(jax.random.key(3), 8)
    params = {"dense": {"kernel": jax.random.normal(keys[0], (4, 3)), "bias": jax.random.normal(keys[1], (3,))},
              "conv": jax.random.normal(keys[2], (2, 3, 5)), "lam": jnp.array(0.7, jnp.float32)}
    layout = FlatLayout(params)
    assert layout.size == 12 + 3 + 30 + 1
    np.testing.assert_array_equal(np.asarray(layout.ravel(layout.unravel(layout.ravel(params)))),
                                  np.asarray(layout.ravel(params)))
    tree_opt, flat_opt = make_optimizer(cfg), make_flat_optimizer(cfg, layout)
    tp, fp = params, layout.ravel(params)
    ts, fs = tree_opt.init(tp), flat_opt.init(fp)
    for s in range(6):  # large gradients: clipping is active on every step
        g = jax.tree.map(lambda x, s=s: 3.0 * jnp.sin(x * (s + 1.0)), tp)
        u, ts = tree_opt.update(g, ts, tp)
        tp = optax.apply_updates(tp, u)
        fu, fs = flat_opt.update(layout.ravel(g), fs, fp)
        fp = optax.apply_updates(fp, fu)
        np.testing.assert_allclose(np.asarray(fp), np.asarray(layout.ravel(tp)), rtol=1e-5, atol=1e-7)


def test_flat_layout_rejects_non_float32_leaves_by_path():
    with pytest.raises(TypeError, match=r"\['head'\]\['kernel'\].*bfloat16"):
        FlatLayout({"head": {"kernel": jnp.zeros((2, 2), jnp.bfloat16)}})


class _HalfLM(nn.Module):
    vocab: int

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, 16, param_dtype=jnp.bfloat16)(tokens)
        return nn.Dense(self.vocab, param_dtype=jnp.bfloat16)(x).astype(jnp.float32)


def test_fit_trains_models_with_non_float32_parameters(shift_runs):
    task = shift_runs[0]
    res = fit(_HalfLM(task.vocab_size), task, TrainConfig(steps=30, lr=3e-2, batch_size=16), progress=False)
    assert res.metrics["train_loss"] < res.curve["train_loss"][0]
    assert jax.tree.leaves(res.params)[0].dtype == jnp.bfloat16


# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------
def test_tiny_model_learns_and_run_is_deterministic(shift_runs):
    task, _, cfg, first, second = shift_runs
    curve = first.curve
    assert first.metrics["diverged"] is False and first.metrics["steps_run"] == cfg.steps
    assert list(curve["step"]) == list(range(1, 61)) and list(curve["eval_step"]) == [30, 60]
    # chance level is log(8) = 2.08; a per-token map is learned well within 60 steps
    assert curve["train_loss"][0] > 1.8
    assert first.metrics["train_loss"] < 0.3
    assert first.metrics["test_loss"] < 0.3 and first.metrics["test_accuracy"] > 0.97
    assert first.metrics["test_loss"] == curve["test_loss"][-1]
    np.testing.assert_allclose(curve["lr"], np.asarray(make_schedule(cfg)(jnp.arange(60))), rtol=1e-6)
    # determinism: identical curves and metrics for the same seed
    assert first.metrics == second.metrics
    for name, values in curve.items():
        np.testing.assert_array_equal(values, second.curve[name], err_msg=name)


def test_different_seed_gives_different_run(shift_runs):
    task, model, cfg, first, _ = shift_runs
    other = fit(model, task, cfg.replace(seed=1), progress=False)
    assert not np.array_equal(other.curve["train_loss"], first.curve["train_loss"])
    assert other.metrics["test_accuracy"] > 0.97


def test_manual_step_loop_reproduces_fit_exactly(shift_runs):
    """The recipe the population engine mirrors: batch_keys, fold_in per step, make_train_step."""
    task, model, cfg, first, _ = shift_runs
    init_key, data_key = batch_keys(cfg.seed)
    params = model.init(init_key, jnp.zeros((1, task.seq_len), jnp.int32))
    opt = make_optimizer(cfg)
    opt_state = opt.init(params)
    step = jax.jit(make_train_step(model.apply, opt))
    losses = []
    for s in range(12):
        inputs, targets = task.sample(step_batch_key(data_key, s), cfg.batch_size)
        params, opt_state, metrics = step(params, opt_state, inputs, targets)
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses, first.curve["train_loss"][:12], rtol=2e-5)


def test_host_sampled_task_matches_in_scan_sampling(shift_runs):
    task, model, cfg, first, _ = shift_runs
    host = fit(model, HostShiftTask(), cfg, progress=False)
    np.testing.assert_allclose(host.curve["train_loss"], first.curve["train_loss"], rtol=2e-5)
    np.testing.assert_allclose(host.curve["test_loss"], first.curve["test_loss"], rtol=2e-5)


def test_evaluate_counts_whole_test_set_and_ignores_padding(shift_runs):
    task, model, _, first, _ = shift_runs
    inputs, targets = task.test_set()  # 40 examples; batch 16 pads 8 rows
    logits = model.apply(first.params, jnp.asarray(inputs))
    loss, (n_correct, n_counted) = masked_loss_and_accuracy(logits, jnp.asarray(targets))
    result = evaluate(model.apply, first.params, task, 16)
    assert result["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert result["accuracy"] == pytest.approx(int(n_correct) / int(n_counted))
    assert result["loss"] == pytest.approx(first.metrics["test_loss"], rel=1e-6)


def test_divergence_stops_early_and_scores_worst(shift_runs):
    _, model, cfg, _, _ = shift_runs
    task = HostShiftTask(poison_prob=0.1)  # host sampling: reuses the compiled host chunk
    _, data_key = batch_keys(cfg.seed)
    sample = jax.jit(jax.vmap(lambda s: ShiftTask.sample(task, step_batch_key(data_key, s), cfg.batch_size)))
    poisoned = np.asarray(sample(jnp.arange(cfg.steps))[0][:, 0, 1] == task.vocab_size - 1)
    first_bad = int(np.argmax(poisoned))
    assert poisoned[first_bad] and first_bad > 0
    result = fit(model, task, cfg, progress=False)
    assert result.metrics["diverged"] is True
    assert result.metrics["steps_run"] == first_bad + 1
    assert result.metrics["test_loss"] == math.inf and result.metrics["train_loss"] == math.inf
    assert result.metrics["test_accuracy"] == 0.0
    assert len(result.curve["train_loss"]) == first_bad + 1
    assert np.all(np.isfinite(result.curve["train_loss"][:-1])) and result.curve["train_loss"][-1] == np.inf
    assert len(result.curve["eval_step"]) == 0  # it diverged before the first evaluation
    # the returned parameters are the last finite ones
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(result.params))


def test_nan_parameters_diverge_on_the_first_step(shift_runs):
    task, model, cfg, first, _ = shift_runs
    params = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), first.params)
    result = fit_model(model, task, cfg, params=params, progress=False)
    assert result.metrics["diverged"] is True and result.metrics["steps_run"] == 1
    assert result.metrics["test_loss"] == math.inf and result.metrics["test_accuracy"] == 0.0


def test_model_with_too_small_vocab_is_rejected():
    task = ShiftTask()
    with pytest.raises(ValueError, match="vocab"):
        fit_model(TinyLM(vocab=task.vocab_size - 2), task, progress=False, steps=2)


# ----------------------------------------------------------------------------------------------
# Config validation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [("steps", 0), ("batch_size", -1), ("lr", 0.0), ("lr", float("nan")), ("weight_decay", -0.1),
     ("warmup_steps", 2000), ("min_lr_ratio", 1.5), ("clip_norm", 0.0), ("b1", 1.0), ("b2", -0.1),
     ("eval_every", -1), ("eval_batch_size", 0), ("seed", -3), ("steps", 10.0), ("steps", True)],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} .*expected"):
        TrainConfig(**{field: value})


def test_config_from_dict_rejects_unknown_keys_and_round_trips():
    with pytest.raises(ValueError, match="unknown TrainConfig field.*'learning_rate'.*valid fields.*'lr'"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    cfg = TrainConfig(steps=7, lr=2e-3, warmup_steps=3, clip_norm=None)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(seed=4).seed == 4
    with pytest.raises(ValueError, match="unknown"):
        fit_model(TinyLM(vocab=8), ShiftTask(), progress=False, epochs=3)


# ----------------------------------------------------------------------------------------------
# The real tasks and the genome compiler
# ----------------------------------------------------------------------------------------------
def _real_task():
    tasks = pytest.importorskip("star_jax.tasks")
    if not hasattr(tasks, "make"):
        pytest.skip("star_jax.tasks.make is not available")
    return tasks.make("in_context_recall", vocab_size=8, seq_len=16, num_train=256, num_test=24)


@pytest.mark.slow
def test_train_genome_and_mad_score_agree():
    task = _real_task()
    model_mod = pytest.importorskip("star_jax.model")
    from star_jax.train import mad

    genome = "1.1.1.1.1-9.1.1.1.1"
    model_cfg = model_mod.ModelConfig(width=32, vocab_size=task.vocab_size, max_len=task.seq_len,
                                      head_dim=16)
    scored = mad.score(genome, model_cfg, settings=[task], lrs=(3e-3,), weight_decays=(0.0,),
                       steps=30, batch_size=8, eval_batch_size=16, progress=False)
    # the same run through the public train(): MAD's optimizer settings, same seed
    result = train(genome, model_cfg, task, steps=30, batch_size=8, lr=3e-3, weight_decay=0.0,
                   min_lr_ratio=1e-6 / 3e-3, clip_norm=None, b2=0.999, eval_batch_size=16,
                   progress=False)
    assert result.metrics["diverged"] is False
    assert result.curve["train_loss"][-1] < result.curve["train_loss"][0]
    (setting,) = scored.settings
    assert setting.best_accuracy == result.metrics["test_accuracy"]
    assert scored.score == setting.best_accuracy
    assert scored.per_task == {"in_context_recall": setting.best_accuracy}
    assert (setting.best_lr, setting.best_weight_decay, setting.steps) == (3e-3, 0.0, 30)
    assert scored.to_dict()["settings"][0]["grid"][0]["diverged"] is False
    # the reported test loss is the masked loss over the task's whole (unpadded) test set
    inputs, targets = task.test_set()
    model = model_mod.build_model(genome, model_cfg)
    manual_loss, _ = masked_loss_and_accuracy(jax.jit(model.apply)(result.params, inputs), targets)
    assert result.metrics["test_loss"] == pytest.approx(float(manual_loss), rel=1e-4)
