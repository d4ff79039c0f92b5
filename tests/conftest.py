"""Test-wide JAX settings: strict promotion so silent broadcasting/dtype bugs fail loudly,
and a persistent compilation cache so repeated test runs compile less."""
import os

import star_jax  # noqa: F401  first, so its XLA CPU options apply before JAX starts (star_jax/xla_flags.py)

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
_cache = os.environ.get("STAR_JAX_TEST_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture
def recall_accuracy():
    """``f(class_ids) -> {class_id: test accuracy}``: each class as a 2-LIV backbone (the class,
    then SwiGLU) trained on the small in-context recall setting of the operator learning tests:
    vocabulary 16, 64 tokens, 4,096 training and 256 test sequences, width 64, 600 AdamW steps of
    batch 32 at lr 3e-3, no weight decay, seed 0. Chance is 1/8."""
    import star_jax as sj

    def run(class_ids):
        task = sj.tasks.make("in_context_recall", vocab_size=16, seq_len=64, num_train=4096, num_test=256)
        cfg = sj.ModelConfig(width=64, vocab_size=16, max_len=task.seq_len, head_dim=16)
        tcfg = sj.TrainConfig(steps=600, batch_size=32, lr=3e-3, weight_decay=0.0, seed=0)
        return {cid: float(sj.train(sj.Genome([[cid, 1, 1, 1, 1], [9, 1, 1, 1, 1]]), cfg, task, tcfg,
                                    progress=False).metrics["test_accuracy"]) for cid in class_ids}

    return run
