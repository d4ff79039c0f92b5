"""Re-evaluation of a finished run over training seeds: do the front's advantages survive?

A search keeps the best of many noisy scores, so the front is biased towards genomes whose one
training seed was lucky. `reevaluate` retrains every front genome and every baseline with K
fresh training seeds (the r = ``train_seeds`` seeds the search selected with, ``train.seed ...
train.seed + r - 1``, excluded: seeds ``train.seed + r ... train.seed + r + K - 1``) at the
run's budget, and compares each front genome with each baseline by the paired differences of
their quality objective over the same seeds (same initialisation seed and batch order for both).
The baselines are the comparisons' reference, so they are retrained here even for a run made with
``baselines=False`` (which only skips scoring them during the search).

Intervals: paired t intervals, mean(d) +- t_{1 - a/2, K-1} sd(d) / sqrt(K), with d the per-seed
difference (front genome minus baseline; the objective is minimised, so negative is better),
made simultaneous over the m comparisons of a re-evaluation by Bonferroni (a = 0.05 / m), so the
chance that *any* verdict is a false "better" or "worse" is at most 5%. A front genome is
"better" than a baseline only when its whole interval is below 0, "worse" when it is above 0,
and "within noise" otherwise. A run that diverged or failed is the worst value: the interval is
taken over the seeds both trained, and a genome that failed on a seed its baseline trained is
never "better" than it (nor "worse" where the baseline failed and it did not); the tables count
those seeds.

Results are appended per (genome, seed) to ``reevaluation.jsonl`` in the run directory, so a
killed re-evaluation resumes where it stopped; ``reevaluation.md`` and
``plots/reevaluation.png`` (mean +- sd error bars) are rewritten at the end. With the default
evaluator every (genome, seed) run left trains in one ``train_many`` call, several at a time,
and each is appended as soon as it finishes; an evaluator of your own is called once per seed
(or once for all of them, see ``star_jax.evolve.evaluation.Evaluator``).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
from typing import Any, Callable, Sequence

import numpy as np

from star_jax.evolve.config import ConfigFieldError, EvolveConfig
from star_jax.evolve.objectives import first_quality_objective
from star_jax.evolve.display import fmt
from star_jax.evolve.evaluation import baseline_genomes, evaluate_per_seed
from star_jax.evolve.records import Candidate, EvalRecord, current_hash
from star_jax.evolve.runstate import check_classes, load_run
from star_jax.genome import Genome
from star_jax.io import RunDir
from star_jax.io.jsonutil import append_jsonl, read_jsonl, repair_jsonl

REEVAL_FILE = "reevaluation.jsonl"


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` >= 1 (the finite series of Abramowitz and
    Stegun 26.7.3-4, exact up to float rounding)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with integer ``df`` >= 1, by bisection."""
    if not 0.5 < p < 1 or not isinstance(df, int) or df < 1:
        raise ValueError(f"t_quantile: need 0.5 < p < 1 and an integer df >= 1, got p={p}, df={df}")
    target, lo, hi = 2 * p - 1, 0.0, 1.0
    while _t_two_sided(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < target else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def paired_interval(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b over paired seeds and its paired t interval at ``level``: (mean, low, high).

    With fewer than two pairs the interval is (-inf, inf): one seed resolves nothing.
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.size == 0:
        return math.nan, -math.inf, math.inf
    mean = float(d.mean())
    if d.size < 2:
        return mean, -math.inf, math.inf
    half = t_quantile(0.5 + level / 2, d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """'better' (interval below 0), 'worse' (above 0) or 'within noise'."""
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "within noise"


@dataclasses.dataclass(frozen=True)
class SeedSummary:
    """One genome over the re-evaluation seeds.

    Fields:
        name: the baseline's name, or the genome's short form for a front genome.
        kind: "front" or "baseline".
        genome, hash: the genome string and content hash.
        values: the quality objective per seed, in ``Reevaluation.seeds`` order (None: the run
            diverged or failed, the worst value).
        mean, sd: over the finite values (sd with ddof 1; nan with fewer than two); ``failed``
            says how many values they leave out.
        search_value: the objective the search recorded with its own seed.
        params, cache_bytes: the genome's sizes.
    """

    name: str
    kind: str
    genome: str
    hash: str
    values: tuple[float | None, ...]
    mean: float
    sd: float
    search_value: float | None
    params: int | None
    cache_bytes: int | None


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """A front genome against a baseline: mean paired difference and its 95% interval over the
    ``n`` seeds both trained; ``failed`` (``baseline_failed``) counts the seeds on which only the
    front genome (only the baseline) diverged or failed."""

    genome: str
    baseline: str
    mean: float
    low: float
    high: float
    n: int
    verdict: str
    failed: int = 0
    baseline_failed: int = 0


@dataclasses.dataclass(frozen=True)
class Reevaluation:
    """What ``reevaluate`` measured.

    Fields:
        objective: the quality objective compared (the run's first non-size objective).
        seeds: the training seeds used.
        summaries: one per front genome, then one per baseline.
        comparisons: every front genome against every baseline.
        interval: how the intervals were made (text).
    """

    objective: str
    seeds: tuple[int, ...]
    summaries: tuple[SeedSummary, ...]
    comparisons: tuple[PairedComparison, ...]
    interval: str = "paired t intervals over seeds, simultaneous 95% (Bonferroni over the comparisons)"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)


def compare_over_seeds(front: Sequence[tuple[str, Sequence[float | None]]],
                       baselines: Sequence[tuple[str, Sequence[float | None]]]) -> list[PairedComparison]:
    """Every front genome against every baseline from per-seed values (same seeds, same order;
    None: the run diverged or failed, the worst value): paired t intervals over the seeds both
    trained, simultaneous 95% over all the comparisons (Bonferroni). A side that failed on a seed
    the other trained cannot win the verdict: "better" (or "worse") becomes "within noise"."""
    level = 1.0 - 0.05 / max(1, len(front) * len(baselines))
    out = []
    for fname, fvals in front:
        for bname, bvals in baselines:
            pairs = [(x, y) for x, y in zip(fvals, bvals) if x is not None and y is not None]
            failed = sum(x is None and y is not None for x, y in zip(fvals, bvals))
            baseline_failed = sum(x is not None and y is None for x, y in zip(fvals, bvals))
            mean, low, high = paired_interval([p[0] for p in pairs], [p[1] for p in pairs], level=level)
            call = verdict(low, high)
            if (call == "better" and failed) or (call == "worse" and baseline_failed):
                call = "within noise"
            out.append(PairedComparison(fname, bname, mean, low, high, len(pairs), call, failed, baseline_failed))
    return out


def failures_note(c: PairedComparison) -> str:
    """``""``, or what a comparison's verdict leaves out: the seeds only one side failed on."""
    parts = [f"{n} seed{'s' if n != 1 else ''} only {who} diverged or failed on"
             for n, who in ((c.failed, "the front genome"), (c.baseline_failed, "the baseline")) if n]
    return f" ({'; '.join(parts)}; interval over the other {c.n})" if parts else ""


def quality_objective(config: EvolveConfig) -> str:
    """The run's quality objective: its first objective that is not a size (params, cache, latency).

    Raises:
        ConfigFieldError: every objective is a size (nothing a training seed changes).
    """
    name = first_quality_objective(config.objectives)
    if name is not None:
        return name
    raise ConfigFieldError(f"the run's objectives {list(config.objectives)} have no quality objective to "
                           f"re-evaluate over training seeds (sizes do not depend on the seed)")


def _finite(v) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def reevaluate(run_dir, seeds: int = 5, *, evaluator: Callable | None = None,
               progress: bool = False) -> Reevaluation:
    """Retrains a finished run's front genomes and its baselines over ``seeds`` fresh training seeds.

    Arguments:
        run_dir: an evolution run directory (``star_jax.evolve``).
        seeds: K >= 2, the number of training seeds (``train.seed + r ... train.seed + r + K -
            1``, with r the run's ``train_seeds``: none of the seeds that selected the front).
        evaluator: the training function (default: the run's, ``train_candidates``); same
            signature as ``evolve``'s.
        progress: print one line per finished seed to stderr.

    Returns:
        The ``Reevaluation``; also written to the run directory (see the module docstring).
    """
    from star_jax.evolve import loop  # its train_candidates, looked up now (tests replace it)

    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 2:
        raise ValueError(f"reevaluate: seeds must be an integer >= 2 (one seed resolves nothing), got {seeds!r}")
    result = load_run(run_dir)
    config = result.config
    objective = quality_objective(config)
    first = config.train.seed + config.train_seeds  # after every seed the search selected with
    seed_list = tuple(first + i for i in range(seeds))
    entries: list[tuple[str, str, Genome, EvalRecord | None]] = [
        ("front", r.short or r.genome, g, r) for g, r in zip(result.pareto_front, result.front_records)]
    recorded_baselines = {r.baseline: r for r in result.baselines}
    for name, g in baseline_genomes(config.n_liv).items():
        entries.append(("baseline", name, g, recorded_baselines.get(name)))
    rd = RunDir(run_dir)
    path = pathlib.Path(rd.path) / REEVAL_FILE
    task = config.make_task()
    evaluator = evaluator or loop.train_candidates
    with rd.lock():
        check_classes(rd, resumed=True)  # the run's genomes must build the models they named
        repair_jsonl(path)  # a line cut short by a kill mid-append: cut off before appending after it
        done = {(current_hash(r.get("genome"), r["hash"]), r["seed"]): r
                for r in (read_jsonl(path) if path.exists() else [])
                if isinstance(r, dict) and "hash" in r and "seed" in r}
        # seeds with the same genomes left to train go together: one call trains them all
        groups: dict[tuple, tuple[list, list[int]]] = {}
        for seed in seed_list:
            unique: dict[str, tuple] = {}  # a front genome that is also a baseline trains once
            for e in entries:
                if (e[2].content_hash(), seed) not in done:
                    unique.setdefault(e[2].content_hash(), e)
            if unique:
                groups.setdefault(tuple(unique), (list(unique.values()), []))[1].append(seed)
        cfg = config.replace(train_seeds=1)
        for todo, seeds_left in groups.values():
            candidates = [Candidate.of(g, -1, "baseline", name) if kind == "baseline" else Candidate.of(g, -1)
                          for kind, name, g, _ in todo]
            left = {seed: len(todo) for seed in seeds_left}

            def store(seed: int, j: int, rec, todo=todo, left=left) -> None:  # as each run finishes
                kind, name, g, _ = todo[j]
                line = {"hash": g.content_hash(), "seed": seed, "genome": g.to_string(), "name": name, "kind": kind,
                        "objectives": dict(rec.objectives), "test_accuracy": rec.test_accuracy,
                        "test_loss": rec.test_loss, "diverged": rec.diverged}
                append_jsonl(path, line)
                done[(line["hash"], seed)] = line
                left[seed] -= 1
                if progress and left[seed] == 0:
                    print(f"re-evaluation: seed {seed} done ({len(todo)} genomes)", file=sys.stderr, flush=True)

            evaluate_per_seed(candidates, cfg, task, evaluator, seeds_left, on_record=store)
    summaries = []
    for kind, name, g, rec in entries:
        h = g.content_hash()
        values = tuple(_finite(done[(h, s)]["objectives"].get(objective)) for s in seed_list)
        finite = [v for v in values if v is not None]
        summaries.append(SeedSummary(
            name=name, kind=kind, genome=g.to_string(), hash=h, values=values,
            mean=float(np.mean(finite)) if finite else math.nan,
            sd=float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan,
            search_value=None if rec is None else _finite(rec.objective(objective)),
            params=None if rec is None else rec.params, cache_bytes=None if rec is None else rec.cache_bytes))
    comparisons = compare_over_seeds([(s.genome, s.values) for s in summaries if s.kind == "front"],
                                     [(s.name, s.values) for s in summaries if s.kind == "baseline"])
    out = Reevaluation(objective, seed_list, tuple(summaries), tuple(comparisons))
    write_reevaluation_report(out, rd.path, config)
    return out


def _labels(reeval: Reevaluation) -> dict[int, str]:
    """Table and plot labels: front genomes numbered in order (``#0 name``), baselines by name."""
    out, i = {}, 0
    for s in reeval.summaries:
        if s.kind == "front":
            out[id(s)] = f"#{i} {s.name}"
            i += 1
        else:
            out[id(s)] = s.name
    return out


def write_reevaluation_report(reeval: Reevaluation, run_dir, config: EvolveConfig) -> pathlib.Path:
    """Writes ``reevaluation.md`` and ``plots/reevaluation.png`` into the run directory."""
    run_dir = pathlib.Path(run_dir)
    q = reeval.objective
    lines = [f"# Re-evaluation over {len(reeval.seeds)} training seeds", "",
             f"Objective: `{q}` (lower is better). Seeds: {list(reeval.seeds)} (the search used "
             f"{config.train.seed}). Budget: the run's ({config.train.steps} steps, batch "
             f"{config.train.batch_size}). Intervals: {reeval.interval}.", "",
             f"| | architecture | {q} per seed | mean +- sd | search value | cache bytes | params |",
             "|---|---|---|---|---|---|---|"]
    label = _labels(reeval)
    for s in reeval.summaries:
        per_seed = ", ".join(fmt(v, 3) for v in s.values)
        failed = sum(v is None for v in s.values)
        over = f" ({len(s.values) - failed} seeds; {failed} diverged or failed)" if failed else ""
        lines.append(f"| {s.kind} | {label[id(s)]} | {per_seed} | {fmt(s.mean, 4)} +- {fmt(s.sd, 4)}{over} "
                     f"| {fmt(s.search_value, 4)} | {s.cache_bytes if s.cache_bytes is not None else '-'} "
                     f"| {s.params if s.params is not None else '-'} |")
    lines += ["", "Paired differences (front genome minus baseline; negative = the front genome is better):", "",
              "| front genome | baseline | mean difference | simultaneous 95% interval | verdict |", "|---|---|---|---|---|"]
    short = {s.genome: label[id(s)] for s in reeval.summaries if s.kind == "front"}
    for c in reeval.comparisons:
        lines.append(f"| {short.get(c.genome, c.genome)} | {c.baseline} | {fmt(c.mean, 4)} | "
                     f"[{fmt(c.low, 4)}, {fmt(c.high, 4)}] | {c.verdict}{failures_note(c)} |")
    md = run_dir / "reevaluation.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = "cache_bytes" if "cache_bytes" in config.objectives or "params" not in config.objectives else "params"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for kind, marker, color in (("front", "o", "tab:blue"), ("baseline", "s", "tab:red")):
        pts = [s for s in reeval.summaries if s.kind == kind and getattr(s, x_key) is not None and math.isfinite(s.mean)]
        if pts:
            ax.errorbar([getattr(s, x_key) for s in pts], [s.mean for s in pts],
                        yerr=[0.0 if math.isnan(s.sd) else s.sd for s in pts], fmt=marker, color=color,
                        capsize=3, label=f"{kind} (mean +- sd over {len(reeval.seeds)} seeds)")
            for s in pts:
                text = label[id(s)].split(" ")[0] if kind == "front" else s.name  # "#i": the table's number
                ax.annotate(text, (getattr(s, x_key), s.mean), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(("inference cache bytes" if x_key == "cache_bytes" else "parameters") + " (lower is better, log)")
    ax.set_ylabel(f"{q} (lower is better)")
    ax.set_title("Front and baselines re-trained over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    (run_dir / "plots").mkdir(exist_ok=True)
    fig.savefig(run_dir / "plots" / "reevaluation.png", dpi=120)
    plt.close(fig)
    return md


__all__ = ["reevaluate", "Reevaluation", "SeedSummary", "PairedComparison", "paired_interval", "verdict",
           "t_quantile", "quality_objective", "compare_over_seeds", "failures_note", "write_reevaluation_report",
           "REEVAL_FILE"]
