"""What an evolution shows while it runs: a generation bar with the candidates trained so far, and one
line per finished generation with the ETA of the rest, on the shared progress display (stderr)."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping

from star_jax.train.progress import progress_bar

__all__ = ["Display", "clock", "eta", "fmt"]


def fmt(value: Any, digits: int | None = None) -> str:
    """A number as a table shows it: "-" for None.

    Arguments:
        value: a number (or anything else, shown with ``str``).
        digits: None: 4 significant digits (``1.235e+04`` from 10^4 on; non-finite as ``nan``/``inf``);
            an int: fixed point with that many decimals, and "-" for a non-finite value.

    Returns:
        The text.
    """
    if value is None:
        return "-"
    if digits is not None:
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3e}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def eta(gen_seconds: Mapping[int, float], left: int) -> str:
    """The time the ``left`` next generations should take, from this process's generations so far:
    the mean of its offspring generations (generation 0 also trains the baselines and compiles
    most programs), or generation 0's time when it is the only one."""
    if left <= 0:
        return "done"
    offspring = [t for g, t in gen_seconds.items() if g > 0]
    per_gen = sum(offspring) / len(offspring) if offspring else gen_seconds[0]
    return f"ETA {clock(left * per_gen)} for {left} more generation{'s' if left > 1 else ''}"


class Display:
    """The progress of an evolution (a context manager; does nothing when disabled).

    Built on ``star_jax.train.progress.progress_bar``: on a terminal, one bar over the
    generations with the candidates trained so far beside it; elsewhere (a log file, a test)
    one line per generation's start. Either way, one line per finished generation:
    ``generation G/N: k new, front f, hypervolume h, best/<objective> v, seconds, ETA``.
    """

    def __init__(self, enabled: bool, total_generations: int, done: int):
        self.enabled = enabled
        self.total = total_generations
        self.done = done
        self.gen_seconds: dict[int, float] = {}
        self._n_new = 0
        self._stack = contextlib.ExitStack()
        self.bar = None

    def __enter__(self) -> "Display":
        self.bar = self._stack.enter_context(progress_bar("evolution", total=self.total, enabled=self.enabled,
                                                          title="evolution"))
        self.bar.update(completed=self.done)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def start_generation(self, gen: int, n_new: int, n_cached: int) -> None:
        """A generation starts: ``n_new`` candidates to train, ``n_cached`` served from the archive."""
        self._n_new = n_new
        self.bar.phase(f"generation {gen}: training {n_new} new ({n_cached} cached)")
        self.bar.update(info=f"candidates 0/{n_new}")

    def candidate(self, done: int) -> None:
        """``done`` candidates of the generation are trained."""
        self.bar.update(info=f"candidates {done}/{self._n_new}")

    def end_generation(self, gen: int, metrics: Mapping[str, float], seconds: float) -> None:
        """Generation ``gen`` is saved: its line, from the logged ``metrics``."""
        from rich.markup import escape

        self.gen_seconds[gen] = seconds
        best = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("best/"))
        self.bar.advance()
        self.bar.log(escape(f"generation {gen}/{self.total - 1}: {metrics['evaluated']} new, front "
                            f"{metrics['front_size']}, hypervolume {metrics['hypervolume']:.4g}, {best}, "
                            f"{seconds:.1f}s, {eta(self.gen_seconds, self.total - gen - 1)}"))
