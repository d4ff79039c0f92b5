"""XLA's CPU code generation, set for many small programs: applied when ``star_jax`` is imported.

A search compiles one forward and one backward program per LIV kind (``star_jax.train.parts``),
and on a CPU much of a short run's compile time is LLVM optimising each program's fused loops.
One of XLA's CPU backend options, ``xla_cpu_disable_loop_unrolling`` (LLVM does not unroll the
loops XLA generates), compiles the 17 LIV classes' part programs in 0.93x (quick run shapes) and
0.97x (width 64, L 127) the time, and random 8-LIV backbones train in 0.95x the time
(``benchmarks/results/cpu_codegen.md``: compile seconds, run time and bit-identity per LIV class,
then whole backbones); a cold quick run took 0.87x (README, Speed). XLA's older fusion emitters
(``xla_cpu_disable_new_fusion_emitters``) would halve compile time together with it, but made
the recurrences' parts about 1.4x slower and whole random backbones 1.29x slower to train: not
set.

The option is CPU-only (a GPU or TPU compiler skips ``xla_cpu_*`` keys) and process-wide, read
once when JAX starts its backends (XLA accepts it in ``XLA_FLAGS``, not per program). So it is
appended to ``XLA_FLAGS`` at import, and only when all of these hold:

- ``$STAR_JAX_XLA_CPU`` is not ``off`` (or ``0``, ``no``, ``none``, ``false``: keep XLA's
  defaults; unset, empty, ``on``, ``1``, ``yes`` or ``true`` apply it, and any other value warns
  and applies it);
- the user's ``XLA_FLAGS`` does not set ``--xla_backend_extra_options`` already (theirs wins);
- JAX has not started its backends yet (then the option could not take effect; importing
  ``star_jax`` before running any JAX code avoids this).

``STATUS`` says which case happened. JAX keys its persistent compilation cache on ``XLA_FLAGS``, so
programs built with and without the option never mix. Results can differ from XLA's default
build in the last bits for some classes (floating-point rounding in a few fused loops); a run is
reproducible from its seed under the same setting.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import MutableMapping

__all__ = ["CPU_OPTIONS", "ENV", "STATUS", "apply_cpu_options"]

ENV = "STAR_JAX_XLA_CPU"
OFF = ("0", "off", "no", "none", "false")
ON = ("", "1", "on", "yes", "true")
CPU_OPTIONS = ("xla_cpu_disable_loop_unrolling",)
EXTRA = "--xla_backend_extra_options"

STATUS = "not applied"
"""``applied``, ``off`` (switched off by ``$STAR_JAX_XLA_CPU``), ``user`` (``XLA_FLAGS`` already sets
backend extra options), ``late`` (JAX's backends had started) or ``not applied`` (not called)."""


def _backends_started() -> bool:
    if "jax" not in sys.modules:  # importing star_jax must not import JAX
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # another JAX layout: assume the worst, change nothing
        return True


def apply_cpu_options(environ: MutableMapping[str, str] | None = None,
                      backends_started: bool | None = None) -> str:
    """Append ``CPU_OPTIONS`` to ``XLA_FLAGS`` in ``environ`` (default ``os.environ``) where the
    rules in the module docstring allow it; returns and records the case in ``STATUS``."""
    global STATUS
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    switch = environ.get(ENV, "").strip().lower()
    if switch not in OFF + ON:
        warnings.warn(f"{ENV}={environ[ENV]!r} is not one of {', '.join(OFF + ON[1:])}; applying XLA's "
                      f"CPU option {', '.join(CPU_OPTIONS)} (set {ENV}=off to keep XLA's defaults)",
                      RuntimeWarning, stacklevel=2)
    if switch in OFF:
        status = "off"
    elif any(f.split("=", 1)[0].lstrip("-") == EXTRA.lstrip("-") for f in flags.split()):
        status = "user"
    elif _backends_started() if backends_started is None else backends_started:
        status = "late"
    else:
        environ["XLA_FLAGS"] = f"{flags} {EXTRA}={','.join(CPU_OPTIONS)}".strip()
        status = "applied"
    STATUS = status
    return status
