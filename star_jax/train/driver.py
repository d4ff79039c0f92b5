"""The one host loop of training: one candidate is a population of one.

Every trainer (``star_jax.train``'s part programs, ``fit`` of any flax module, and the
whole-population strategies of ``star_jax.population``) hands ``drive`` two functions: one that
runs a chunk of steps for every candidate and one that sums the test loss over the test set.
``drive`` owns what must be the same for all of them: the chunk plan (``chunk_plan``), the
divergence rule (a non-finite training or test loss stops that candidate, its losses become
``inf`` and its accuracy 0), the evaluation points (every ``eval_every`` steps and after the
last), the per-candidate curves and the final metrics of ``TrainResult``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Protocol

import numpy as np

from star_jax.train.config import TrainConfig
from star_jax.train.parts import lr_curve
from star_jax.train.step import final_train_loss

MAX_CHUNK = 100
"""Most steps in one compiled chunk (a chunk also ends at every evaluation point)."""

_STEP_METRICS = (("train_loss", "loss"), ("train_accuracy", "accuracy"), ("grad_norm", "grad_norm"))


class TrainState(NamedTuple):
    """What every trainer carries from one step to the next (a pytree).

    Fields:
        params: the parameters in the trainer's layout: one flat float32 vector (``fit``), the
            list of part vectors (``sj.train``), or every candidate's vector (population
            strategies).
        opt_state: the optimizer state in the same layout (``sj.train``: ``(mu, nu, count)``,
            the per-part Adam moments and the step count).
        alive: bool, a scalar or one per candidate: False once a candidate's step was
            non-finite (it then changes no more).
    """

    params: Any
    opt_state: Any
    alive: Any


class RunChunk(Protocol):
    def __call__(self, start: int, stop: int, alive: np.ndarray) -> dict[str, np.ndarray]:
        """Runs 0-based steps ``start..stop-1`` of every candidate still ``alive`` ([P] bool).

        Returns host arrays ``loss``, ``accuracy``, ``grad_norm``, ``finite`` of shape [S] (one
        candidate) or [S, P], S >= ``stop - start``; after a candidate's non-finite step the rest
        of the chunk changes nothing of it."""


class Evaluate(Protocol):
    def __call__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(loss_sum, n_correct, n_counted)`` over the whole test set, each a scalar or [P]."""


def chunk_plan(cfg: TrainConfig) -> tuple[int, list[tuple[int, int]]]:
    """Chunk length and the ``(start, stop)`` step ranges; a range ends at every eval point."""
    period = cfg.eval_every if cfg.eval_every > 0 else cfg.steps
    length = min(MAX_CHUNK, period, cfg.steps)
    cuts = set(range(length, cfg.steps, length)) | {cfg.steps}
    if cfg.eval_every > 0:
        cuts |= set(range(cfg.eval_every, cfg.steps, cfg.eval_every))
    bounds = [0, *sorted(cuts)]
    return length, list(zip(bounds[:-1], bounds[1:]))


def is_eval_point(cfg: TrainConfig, done: int) -> bool:
    """Whether the test set is evaluated after ``done`` steps (every ``eval_every``, and last)."""
    return done == cfg.steps or (cfg.eval_every > 0 and done % cfg.eval_every == 0)


@dataclasses.dataclass
class _Candidate:
    """One candidate's record while it trains."""

    records: dict[str, list] = dataclasses.field(
        default_factory=lambda: {name: [] for name, _ in _STEP_METRICS})
    evals: dict[str, list] = dataclasses.field(
        default_factory=lambda: {"eval_step": [], "test_loss": [], "test_accuracy": []})
    steps_run: int = 0
    diverged: bool = False
    last_eval: dict = dataclasses.field(default_factory=lambda: {"loss": math.inf, "accuracy": 0.0})

    def record_chunk(self, metrics: dict, column: int, start: int, n: int) -> None:
        """Appends steps ``start..start+n-1`` up to and including the first non-finite one."""
        finite = np.asarray(metrics["finite"][:n, column])
        if not finite.all():
            n = int(np.argmin(finite)) + 1
            self.diverged = True
        for name, source in _STEP_METRICS:
            self.records[name].append(np.asarray(metrics[source][:n, column], np.float64))
        self.steps_run = start + n

    def record_eval(self, step: int, loss_sum, n_correct, n_counted) -> None:
        counted = int(n_counted)
        if counted == 0:
            raise ValueError("the test set has no counted targets (all are -100)")
        ev = {"loss": float(loss_sum) / counted, "accuracy": int(n_correct) / counted}
        self.last_eval = ev
        self.diverged = not math.isfinite(ev["loss"])
        self.evals["eval_step"].append(step)
        self.evals["test_loss"].append(ev["loss"])
        self.evals["test_accuracy"].append(ev["accuracy"])

    def finish(self, cfg: TrainConfig) -> tuple[dict[str, np.ndarray], dict]:
        """The candidate's curve and final metrics (see ``TrainResult``)."""
        curve = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in self.records.items()}
        curve["train_loss"] = np.where(np.isfinite(curve["train_loss"]), curve["train_loss"], np.inf)
        curve["step"] = np.arange(1, self.steps_run + 1, dtype=np.int64)
        curve["lr"] = lr_curve(cfg, self.steps_run)
        curve["eval_step"] = np.asarray(self.evals["eval_step"], np.int64)
        test_loss = np.asarray(self.evals["test_loss"], np.float64).reshape(-1)
        curve["test_loss"] = np.where(np.isfinite(test_loss), test_loss, np.inf)
        curve["test_accuracy"] = np.asarray(self.evals["test_accuracy"], np.float64).reshape(-1)
        if self.diverged:
            metrics = {"train_loss": math.inf, "test_loss": math.inf, "test_accuracy": 0.0}
        else:
            metrics = {"train_loss": final_train_loss(curve["train_loss"]),
                       "test_loss": float(self.last_eval["loss"]),
                       "test_accuracy": float(self.last_eval["accuracy"])}
        metrics.update(diverged=self.diverged, steps_run=int(self.steps_run))
        return curve, metrics


def drive(cfg: TrainConfig, run_chunk: RunChunk, evaluate: Evaluate, *, n: int = 1,
          n_real: int | None = None,
          on_chunk: Callable[[int, list[int], list[bool], str], None] | None = None,
          ) -> tuple[list[dict[str, np.ndarray]], list[dict]]:
    """Train ``n`` candidates through ``cfg.steps`` steps (the host loop every trainer shares).

    Arguments:
        cfg: the training config (steps, eval_every).
        run_chunk: runs a chunk of steps (see ``RunChunk``).
        evaluate: sums the test loss and counts (see ``Evaluate``); called at every evaluation
            point while any candidate is alive.
        n: number of candidates P.
        n_real: the first ``n_real`` candidates are real, the others padding: stopped from the
            start, never evaluated or returned (None: all ``n``).
        on_chunk: ``on_chunk(stop, steps_run, diverged, info)`` after each chunk (progress):
            per-candidate steps run and divergence, and a short text (the first real
            candidate's last loss, and its test loss and accuracy after an evaluation).

    Returns:
        ``(curves, metrics)``: per real candidate, as ``TrainResult.curve`` and ``.metrics``.
    """
    n_real = n if n_real is None else n_real
    cands = [_Candidate() for _ in range(n)]
    for c in cands[n_real:]:
        c.diverged = True
    _, plan = chunk_plan(cfg)
    for start, stop in plan:
        alive = np.array([not c.diverged for c in cands])
        metrics = run_chunk(start, stop, alive)
        metrics = {k: np.asarray(v).reshape(np.shape(v)[0], -1) for k, v in metrics.items()}
        for i, c in enumerate(cands):
            if alive[i]:
                c.record_chunk(metrics, i, start, stop - start)
        info = ""
        if n_real and cands[0].steps_run:
            info = f"loss {float(cands[0].records['train_loss'][-1][-1]):.4f}"
        if is_eval_point(cfg, stop) and not all(c.diverged for c in cands):
            sums = [np.asarray(s).reshape(-1) for s in evaluate()]
            for i, c in enumerate(cands):
                if not c.diverged:
                    c.record_eval(stop, sums[0][i], sums[1][i], sums[2][i])
            if n_real and cands[0].evals["eval_step"][-1:] == [stop]:
                ev = cands[0].last_eval
                info += f"  test loss {ev['loss']:.4f}  acc {ev['accuracy']:.3f}"
        if on_chunk is not None:
            on_chunk(stop, [c.steps_run for c in cands[:n_real]], [c.diverged for c in cands[:n_real]], info)
        if all(c.diverged for c in cands):
            break
    out = [c.finish(cfg) for c in cands[:n_real]]
    return [curve for curve, _ in out], [metrics for _, metrics in out]
