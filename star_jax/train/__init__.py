"""Training and evaluation: config, optimizer, pure step functions, the one host loop
(`driver.drive`, which every trainer and population strategy goes through) and `sj.train`."""
from star_jax.train.config import TrainConfig
from star_jax.train.driver import TrainState, drive
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
    "TrainState",
    "apply_update",
    "batch_keys",
    "decay_mask",
    "drive",
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
