"""How many host threads train or evaluate at once: the ``workers`` setting and its default.

Part programs are small, so on a CPU one chain of them keeps the cores only partly busy; work
that is independent (candidates, or the test batches of one evaluation) runs on several host
threads. XLA runs the programs outside Python's lock, and each thread's results are the ones it
would compute alone.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

import jax

from star_jax._util.validate import ConfigError

__all__ = ["WORKERS_ENV", "CPU_WORKERS", "check_workers", "default_workers", "pool_thread", "eval_threads"]

WORKERS_ENV = "STAR_JAX_WORKERS"
"""Environment variable that sets the default number of candidates trained at once."""

CPU_WORKERS = 2
"""Default on a CPU (at most its number of cores): measured on 2 cores; more workers than
cores gained nothing there (``benchmarks/results/workers.md``)."""


def check_workers(workers: Any, where: str = "workers") -> int:
    """``workers`` as an int >= 1, else a ``ConfigError`` (a ``ValueError``) that names ``where``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{where} must be an integer >= 1 (candidates trained at once), got {workers!r}")
    return workers


def default_workers() -> int:
    """How many candidates are trained at once when nothing says otherwise.

    ``STAR_JAX_WORKERS`` when set (an integer >= 1); else on a CPU ``min(2, cores)``, and 1 on
    a GPU or TPU, where training several candidates at once is not measured yet
    (``benchmarks/gpu_check.sh`` times 1 against 2).
    """
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = env
        return check_workers(value, f"the environment variable {WORKERS_ENV}")
    if jax.default_backend() != "cpu":
        return 1
    return max(1, min(CPU_WORKERS, os.cpu_count() or 1))


_LOCAL = threading.local()


@contextlib.contextmanager
def pool_thread() -> Iterator[None]:
    """Marks the current thread as one of several training at once (``train_many``): work it
    does is not spread over more threads (``eval_threads`` is then 1)."""
    before = getattr(_LOCAL, "in_pool", False)
    _LOCAL.in_pool = True
    try:
        yield
    finally:
        _LOCAL.in_pool = before


def eval_threads() -> int:
    """Host threads one evaluation spreads its test batches over: ``default_workers()``, or 1
    on a thread that ``train_many`` runs beside others."""
    return 1 if getattr(_LOCAL, "in_pool", False) else default_workers()
