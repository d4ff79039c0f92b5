"""Single-candidate training and evaluation: config, optimizer, pure step functions, the loop.
The population engine mirrors `batch_keys` and `make_train_step` to reproduce these runs."""
from star_jax.train.config import TrainConfig
from star_jax.train.loop import TrainResult, fit, fit_model, train
from star_jax.train.optim import FlatLayout, decay_mask, make_flat_optimizer, make_optimizer, make_schedule
from star_jax.train.step import (
    IGNORE_INDEX,
    apply_update,
    batch_keys,
    evaluate,
    make_chunk,
    make_sampled_scan_chunk,
    make_scan_chunk,
    make_train_step,
    masked_loss_and_accuracy,
    masked_sums,
    step_batch_key,
)

__all__ = [
    "FlatLayout",
    "IGNORE_INDEX",
    "TrainConfig",
    "TrainResult",
    "apply_update",
    "batch_keys",
    "decay_mask",
    "evaluate",
    "fit",
    "fit_model",
    "make_flat_optimizer",
    "make_optimizer",
    "make_chunk",
    "make_sampled_scan_chunk",
    "make_scan_chunk",
    "make_schedule",
    "make_train_step",
    "masked_loss_and_accuracy",
    "masked_sums",
    "step_batch_key",
    "train",
]

# `star_jax.train(...)` is `star_jax.train.train(...)`; `star_jax.train.mad` stays a submodule.
from star_jax._util.callable_module import make_callable as _make_callable

_make_callable(__name__, train)
