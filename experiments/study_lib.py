"""Helpers shared by the experiment scripts: config overrides, quality of a record, reductions
against baselines, parameter matching of baselines, rank correlations (numpy only)."""
from __future__ import annotations

import argparse
import json
import math
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from star_jax.io.jsonutil import finite_or_none  # noqa: F401  (re-exported for the scripts)
from star_jax.genome.baselines import ROSTER as BASELINE_NAMES  # the one roster


class StudyError(Exception):
    """A user error in an experiment script: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------- configs
def add_override_args(ap: argparse.ArgumentParser) -> None:
    """Adds the optional config overrides shared by the scripts (all default to the config's)."""
    g = ap.add_argument_group("config overrides (default: the config's values)")
    g.add_argument("--generations", type=int, help="offspring generations after the initial population")
    g.add_argument("--pop-size", type=int, help="NSGA-II population size")
    g.add_argument("--n-liv", type=int, help="backbone length (LIVs per genome)")
    g.add_argument("--width", type=int, help="model width (a multiple of the config's head_dim)")
    g.add_argument("--steps", type=int, help="training steps per candidate (warm-up is clamped to fit)")
    g.add_argument("--batch-size", type=int, help="training sequences per step")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--seed", type=int, help="evolution seed (initial population, variation)")
    g.add_argument("--train-seed", type=int, help="training seed (init and batch order of every candidate)")
    g.add_argument("--strategy", choices=("auto", "static", "data", "sequential"),
                   help="population-engine strategy")


def apply_overrides(config, args: argparse.Namespace):
    """A copy of an ``EvolveConfig`` with the command-line overrides applied (validated).

    Raises:
        StudyError: an override is invalid (the message names it).
    """
    from star_jax.evolve.config import ConfigFieldError

    changes: dict[str, Any] = {}
    for flag, field in (("generations", "generations"), ("pop_size", "pop_size"), ("n_liv", "n_liv"),
                        ("seed", "seed"), ("strategy", "strategy")):
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = value
    model = config.model.to_dict()
    width = getattr(args, "width", None)
    if width is not None:
        if width < model["head_dim"] or width % model["head_dim"]:
            raise StudyError(f"--width {width} must be a positive multiple of the config's head_dim "
                             f"{model['head_dim']}")
        model["width"] = width
        changes["model"] = model
    train = config.train.to_dict()
    train_changed = False
    steps = getattr(args, "steps", None)
    if steps is not None:
        if steps < 1:
            raise StudyError(f"--steps must be >= 1, got {steps}")
        train["steps"] = steps
        if train["warmup_steps"] > steps:
            train["warmup_steps"] = steps // 10
        train_changed = True
    for flag, field in (("batch_size", "batch_size"), ("lr", "lr"), ("train_seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            train[field] = value
            train_changed = True
    if train_changed:
        changes["train"] = train
    if not changes:
        return config
    try:
        return config.replace(**changes)
    except (ConfigFieldError, ValueError) as e:
        raise StudyError(f"invalid override: {e}") from None


def load_config(path: str):
    """Reads an ``EvolveConfig`` JSON file, turning its errors into ``StudyError``."""
    from star_jax.evolve import EvolveConfig
    from star_jax.evolve.config import ConfigFieldError

    try:
        return EvolveConfig.from_file(path)
    except ConfigFieldError as e:
        raise StudyError(str(e)) from None


def setup_cache() -> None:
    """Turns on JAX's persistent compilation cache (see ``star_jax.cli.setup_compilation_cache``)."""
    from star_jax.cli import setup_compilation_cache

    setup_compilation_cache()


# ---------------------------------------------------------------------------------- records
def _field(record: Mapping[str, Any], key: str) -> Any:
    """A field of an evaluation record: an ``EvalRecord``'s attribute, else the mapping's value
    (records written by hand, e.g. in tests, are plain dicts)."""
    from star_jax.evolve.records import EvalRecord

    return getattr(record, key) if isinstance(record, EvalRecord) else record.get(key)


def quality(record: Mapping[str, Any], objective: str) -> float:
    """The quality objective of an evaluation record (an ``EvalRecord``, or a dict with its keys;
    inf when missing: the worst)."""
    value = (_field(record, "objectives") or {}).get(objective)
    if value is None:
        from star_jax.evolve.objectives import get_objective

        value = get_objective(objective)(record)
    value = float(value) if value is not None else math.inf
    return value if math.isfinite(value) else math.inf


def quality_from_metrics(metrics: Mapping[str, Any], objective: str) -> float:
    """The quality objective computed from ``star_jax.train`` final metrics (inf when diverged)."""
    from star_jax.evolve.objectives import get_objective

    record = {"loss": metrics.get("test_loss"),
              "accuracy": None if metrics.get("diverged") else metrics.get("test_accuracy")}
    try:
        value = get_objective(objective)(record)
    except KeyError as e:
        raise StudyError(f"quality objective {objective!r} cannot be computed from training metrics: "
                         f"{e.args[0]}") from None
    return float(value) if math.isfinite(value) else math.inf


def reductions(candidates: Sequence[Mapping], baseline: Mapping, objective: str,
               quality_tol: float = 0.0) -> dict[str, Any]:
    """Best parameter and cache reductions vs one baseline among candidates of equal or better quality.

    A candidate qualifies when ``quality <= q_b + quality_tol * |q_b|`` (q_b: the baseline's).
    Reductions are ``1 - value / baseline value`` (0.9 = 10x smaller); None when no candidate
    qualifies or a size is missing.

    Returns:
        ``{"baseline_quality", "n_qualifying", "cache_reduction", "cache_genome", "cache_quality",
        "param_reduction", "param_genome", "param_quality"}``.
    """
    qb = quality(baseline, objective)
    bound = qb + quality_tol * abs(qb) if math.isfinite(qb) else math.inf
    ok = [r for r in candidates if quality(r, objective) <= bound] if math.isfinite(qb) else []
    out: dict[str, Any] = {"baseline_quality": finite_or_none(qb), "n_qualifying": len(ok)}
    for key, name in (("cache_bytes", "cache"), ("params", "param")):
        base = _field(baseline, key)
        sized = [r for r in ok if _field(r, key) is not None]
        if not sized or not base:
            out.update({f"{name}_reduction": None, f"{name}_genome": None, f"{name}_quality": None})
            continue
        best = min(sized, key=lambda r: (_field(r, key), quality(r, objective)))
        out[f"{name}_reduction"] = 1.0 - float(_field(best, key)) / float(base)
        out[f"{name}_genome"] = _field(best, "short")
        out[f"{name}_quality"] = finite_or_none(quality(best, objective))
    return out


# ---------------------------------------------------------------------------------- baselines
def baseline_genome(name: str, n_liv: int):
    """The baseline genome of a name and backbone length (as the evolution loop builds it).

    For LFM2-like, ``n_liv`` is twice the number of mixers.
    """
    from star_jax.genome import baselines

    if name not in baselines.ROSTER:
        raise StudyError(f"unknown baseline {name!r}; valid: {', '.join(baselines.ROSTER)}")
    genome = baselines.roster(n_liv).get(name)
    if genome is None:
        raise StudyError(f"baseline {name!r} needs an even n_liv >= 2, got {n_liv}")
    return genome


def _params(genome, cfg) -> int | None:
    import star_jax as sj

    try:
        return int(sj.param_count(genome, cfg))
    except (ValueError, sj.ConfigError, sj.GenomeError):
        return None


def match_params(name: str, cfg, n_liv: int, target: int, *, max_width: int | None = None,
                 max_n_liv: int | None = None, tolerance: float = 0.10) -> dict[str, Any]:
    """Finds the size of a baseline whose parameter count is closest to ``target``.

    Transformer++ and StripedMamba keep ``n_liv`` and search the width over multiples of
    ``cfg.head_dim``; LFM2-like keeps the width and searches its number of LIVs (2 per mixer),
    and, when no length comes within ``tolerance``, takes the width nearest ``cfg.width`` at
    which one with at least half of ``n_liv`` does (else keeps the closest size at ``cfg.width``).

    Arguments:
        name: a baseline name.
        cfg: the ``ModelConfig`` (vocabulary, head_dim, lengths, and the starting width).
        n_liv: backbone length of Transformer++ / StripedMamba.
        target: the parameter count to match.
        max_width: the largest width tried (default 8x cfg.width).
        max_n_liv: the most LIVs tried for LFM2-like (default 4x n_liv, at least 8).
        tolerance: the relative parameter difference counted as matched (LFM2-like changes its
            width only when no length at ``cfg.width`` comes within it).

    Returns:
        ``{"name", "genome" (Genome), "short", "width", "n_liv", "params", "rel_diff"}``.
    """
    import star_jax as sj  # noqa: F401

    hd = cfg.head_dim
    max_width = max_width or 8 * cfg.width
    widths = range(hd, max_width + 1, hd)
    candidates: list[tuple[int, int]] = []  # (width, n_liv)
    if name in ("Transformer++", "StripedMamba"):
        candidates = [(w, n_liv) for w in widths]
    elif name == "LFM2-like":
        max_n_liv = max_n_liv or max(8, 4 * n_liv)
        candidates = [(cfg.width, n) for n in range(2, max_n_liv + 1, 2)]
    else:
        raise StudyError(f"unknown baseline {name!r}; valid: {', '.join(BASELINE_NAMES)}")

    def best_of(cands):
        best = None
        for w, n in cands:
            g = baseline_genome(name, n)
            p = _params(g, cfg.__class__.from_dict({**cfg.to_dict(), "width": w}))
            if p is None:
                continue
            err = abs(p - target) / max(target, 1)
            if best is None or err < best[0]:
                best = (err, w, n, g, p)
        return best

    best = best_of(candidates)
    if name == "LFM2-like" and (best is None or best[0] > tolerance):
        # the width nearest the config's (then the closest count) among sizes within tolerance that
        # keep at least half the backbone length (a 1-mixer "LFM2" is no baseline); else the
        # closest size at the config's width stands, reported as not matched
        min_n = max(2, 2 * ((n_liv // 2) // 2))
        for w in sorted(widths, key=lambda w: (abs(w - cfg.width), w)):
            found = best_of([(w, n) for n in range(min_n, max_n_liv + 1, 2)])
            if found is not None and found[0] <= tolerance:
                best = found
                break
    if best is None:
        raise StudyError(f"no size of {name} could be built with this model config")
    err, w, n, g, p = best
    return {"name": name, "genome": g, "short": g.short(), "width": w, "n_liv": n, "params": p,
            "rel_diff": (p - target) / max(target, 1)}


# ---------------------------------------------------------------------------------- ranking
def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties get their average rank (as scipy.stats.rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks); NaN when undefined."""
    if len(a) != len(b):
        raise ValueError("spearman: sequences of different lengths")
    if len(a) < 2:
        return math.nan
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either sequence accounted for); NaN when undefined."""
    if len(a) != len(b):
        raise ValueError("kendall_tau_b: sequences of different lengths")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    if n < 2:
        return math.nan
    i, j = np.triu_indices(n, k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    s = float((da * db).sum())
    n_a, n_b = float((da != 0).sum()), float((db != 0).sum())
    denom = math.sqrt(n_a * n_b)
    return s / denom if denom > 0 else math.nan


def finite_for_ranking(values: Iterable[float]) -> list[float]:
    """Non-finite qualities (diverged runs) become larger than every finite one (worst rank)."""
    values = [float(v) for v in values]
    finite = [v for v in values if math.isfinite(v)]
    worst = (max(finite) + 1.0) if finite else 0.0
    return [v if math.isfinite(v) else worst for v in values]


# ---------------------------------------------------------------------------------- output
def write_json(path: pathlib.Path, data: Any) -> None:
    """Writes JSON atomically (non-finite numbers as null)."""
    def clean(v):
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return finite_or_none(v)

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(data), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def fmt(value: Any) -> str:
    """Short text of a number for tables."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_main(main: Callable[[], int]) -> int:
    """Runs a script's main, printing a ``StudyError`` (or a run-dir/config error) as one line."""
    import sys

    try:
        return main()
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # library user errors with a clear message
        from star_jax.evolve.config import ConfigFieldError
        from star_jax.genome import GenomeError
        from star_jax.io.rundir import RunDirError
        from star_jax.tasks import TaskConfigError

        if isinstance(e, (ConfigFieldError, GenomeError, RunDirError, TaskConfigError)):
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        raise
