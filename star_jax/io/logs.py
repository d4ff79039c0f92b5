"""Per-step metrics to `logs/metrics.jsonl` and TensorBoard, reopened by appending on resume.

Named `logs` rather than `logging` so it never shadows the standard library module.
"""
from __future__ import annotations

import math
import os
import pathlib
import time
from typing import Any

import numpy as np

from star_jax.io.jsonutil import append_jsonl, repair_jsonl, rewrite_jsonl, to_jsonable
from star_jax.io.rundir import RunDir


def _flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, Any]:
    """Flattens nested metric dicts to "a/b" tags.

    Arguments:
      metrics: nested dict of values.
      prefix: tag of `metrics` itself.
    Returns:
      {tag: value}.
    """
    out = {}
    for key, value in metrics.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten_metrics(value, tag))
        else:
            out[tag] = value
    return out


def _scalar(value: Any) -> float | None:
    """A real number for TensorBoard, or None for values that are not one (strings, vectors).

    Arguments:
      value: a metric value.
    Returns:
      The float, or None.
    """
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if hasattr(value, "__array__") and hasattr(value, "shape") and value.shape == ():
        a = np.asarray(value)
        if a.dtype.kind in "biuf":
            return float(a)
    return None


class MetricLogger:
    """Writes each step's metrics as one JSON line (`logs/metrics.jsonl`) and TensorBoard scalars.

    Opening it on an existing run appends. Pass `purge_step` when resuming from a checkpoint:
    JSONL lines with `step >= purge_step` are dropped and TensorBoard hides its events from
    that step on, so the resumed logs match an uninterrupted run's.

    Arguments:
      rundir: a `RunDir` or its path.
      purge_step: first step to be logged again on resume; None keeps everything.
      tensorboard: whether to write TensorBoard events too.
    """

    def __init__(self, rundir: RunDir | str | os.PathLike, *, purge_step: int | None = None,
                 tensorboard: bool = True):
        self.rundir = rundir if isinstance(rundir, RunDir) else RunDir(rundir)
        self.path: pathlib.Path = self.rundir.metrics_path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)
        if purge_step is not None:
            rewrite_jsonl(self.path, lambda r: not (isinstance(r, dict)
                                                    and isinstance(r.get("step"), int)
                                                    and r["step"] >= purge_step))
        self._closed = False
        self._writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.rundir.tensorboard_dir.mkdir(parents=True, exist_ok=True)
            # A unique suffix: the default name (seconds + host) repeats when reopened within a
            # second, and the new writer would then overwrite the earlier events.
            self._writer = SummaryWriter(logdir=str(self.rundir.tensorboard_dir),
                                         purge_step=purge_step, flush_secs=30,
                                         filename_suffix=f".{os.getpid()}.{time.time_ns()}")

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self, step: int, metrics: dict, *, wall_time: float | None = None) -> None:
        """Records one step: a JSON line `{"step", "wall_time", **metrics}`, plus a TensorBoard
        scalar per numeric metric (nested dicts become "a/b" tags).

        Arguments:
          step: the step (generation); an int.
          metrics: dict of JSON-able values; non-numeric ones go to the JSON line only.
          wall_time: seconds since the epoch; defaults to now.
        Returns:
          None.
        """
        if self._closed:
            raise RuntimeError(f"MetricLogger for {self.path} is closed")
        step = int(step)
        wall_time = time.time() if wall_time is None else float(wall_time)
        if "step" in metrics or "wall_time" in metrics:
            raise ValueError("metric names 'step' and 'wall_time' are reserved")
        append_jsonl(self.path, {"step": step, "wall_time": wall_time, **to_jsonable(metrics)})
        if self._writer is not None:
            for tag, value in _flatten_metrics(metrics).items():
                x = _scalar(value)
                if x is not None and not math.isnan(x):
                    self._writer.add_scalar(tag, x, global_step=step, walltime=wall_time)
            self._writer.flush()

    def flush(self) -> None:
        """Flushes TensorBoard events (JSON lines are fsynced as written).

        Returns:
          None.
        """
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes; safe to call twice.

        Returns:
          None.
        """
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._closed = True
