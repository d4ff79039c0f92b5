"""Run state on disk: orbax checkpoints, run directories, metric logs and JSON helpers.

The only package that imports orbax, so checkpoint-format churn stays behind these names.
"""
from star_jax.io.atomic import atomic_write_bytes, atomic_write_text
from star_jax.io.checkpoint import CheckpointError, CheckpointManager, CheckpointWarning
from star_jax.io.jsonutil import RunStateWarning, config_hash, to_jsonable, write_json_atomic
from star_jax.io.logs import MetricLogger
from star_jax.io.rundir import RunConfigMismatch, RunDir, RunDirBusy, RunDirError

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWarning",
    "MetricLogger",
    "RunConfigMismatch",
    "RunDirBusy",
    "RunDir",
    "RunDirError",
    "RunStateWarning",
    "atomic_write_bytes",
    "atomic_write_text",
    "config_hash",
    "to_jsonable",
    "write_json_atomic",
]
