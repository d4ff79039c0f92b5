"""Reports of an evolution run: Pareto-front plots, hypervolume over generations, a front table.
Everything is read back from the run directory, so a report can be drawn while a run goes on or after."""
from __future__ import annotations

import math
import pathlib
from typing import Sequence

import numpy as np

from star_jax.evolve.display import fmt as _fmt
from star_jax.evolve.hypervolume import normalize_hypervolume
from star_jax.evolve.objectives import first_quality_objective, get_objective
from star_jax.evolve.records import EvalRecord
from star_jax.evolve.reevaluate import compare_over_seeds, failures_note
from star_jax.evolve.runstate import load_run

__all__ = ["write_report", "print_front", "front_rows", "front_markdown", "plane_front", "dominated_front_points",
           "short_label", "axis_label", "plane_figure", "hypervolume_figure", "normalized_hypervolume"]

_BASELINE_MARKERS = {"Transformer++": "s", "StripedMamba": "^", "LFM2-like": "D"}

# What each quantity is, as an axis says it (all are minimised: "lower is better" is added).
_AXIS_NAMES = {
    "error": "test error = 1 - accuracy",
    "mad_error": "MAD error = 1 - MAD score",
    "task_loss": "test loss",
    "perplexity": "test perplexity",
    "bits_per_byte": "test bits per byte",
    "params": "parameters",
    "cache_bytes": "inference cache bytes per sequence at L={cache_seq_len}",
    "latency": "decode latency (ms)",
}
_LABEL_CHARS = 32   # a plot label longer than this is summarised by class counts (when shorter)
_MAX_LABELS = 12    # front points labelled per plot (evenly spread when the front is longer)


def front_rows(records: Sequence[EvalRecord], objectives: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a front table: architecture, objectives, params, cache bytes, genome.

    Arguments:
        records: evaluation records (e.g. ``EvolveResult.front_records``; their JSON objects work too).
        objectives: objective names (columns).

    Returns:
        (header, rows) of strings.
    """
    sizes = [k for k in ("params", "cache_bytes") if k not in objectives]
    header = ["#", "architecture", *objectives, *sizes, "genome"]
    rows = []
    for i, r in enumerate(map(EvalRecord.coerce, records)):
        short = r.short or ""
        arch = f"{r.baseline}: {short}" if r.baseline is not None else short
        rows.append([str(i), arch, *[_fmt(r.objective(k)) for k in objectives],
                     *[_fmt(getattr(r, k)) for k in sizes], r.genome])
    return header, rows


def front_markdown(records: Sequence[EvalRecord], objectives: Sequence[str]) -> str:
    """A markdown table of a front.

    Arguments:
        records: evaluation records.
        objectives: objective names.

    Returns:
        The table text.
    """
    header, rows = front_rows(records, objectives)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_front(result, console=None) -> None:
    """Prints an ``EvolveResult``'s Pareto front (and its baselines) as a rich table, genome
    strings included (``star-jax describe GENOME`` or ``Genome.from_string`` take them back).

    Arguments:
        result: the ``EvolveResult``.
        console: a ``rich.console.Console`` (default: stdout).

    Returns:
        None.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    objectives = result.config.objectives
    header, rows = front_rows(result.front_records, objectives)
    table = Table(title=f"Pareto front ({len(rows)} of {len(result.archive)} evaluated genomes, "
                        f"{result.generations_done} generations)")
    for h in header:
        if h == "genome":
            table.add_column(h, justify="left", overflow="fold")
        else:
            table.add_column(h, justify="left" if h == "architecture" else "right")
    for row in rows:
        table.add_row(*row)
    if result.baselines:
        _, rows_b = front_rows(result.baselines, objectives)
        for row in rows_b:
            table.add_row("base", f"[dim]{row[1]}[/dim]", *row[2:-1], f"[dim]{row[-1]}[/dim]")
    console.print(table)
    hv = normalized_hypervolume(result)
    if hv is not None:
        values, _, reference, ideal = hv
        console.print(f"hypervolume {values[-1]:.4f} (normalised: the fraction of the box from the ideal point "
                      f"{_point_text(objectives, ideal)} to the reference point {_point_text(objectives, reference)})",
                      highlight=False)
    elif result.reference_point is not None and result.hypervolume:
        console.print(f"hypervolume {_fmt(float(result.hypervolume[-1]))} ({_why_raw(result)} "
                      f"{_point_text(objectives, result.reference_point)})", highlight=False)


# ------------------------------------------------------------------------------------ plot data
def _xy(record: EvalRecord, y_key: str, x_key: str):
    """(x, y) of a record in a plane, or None when either is missing or not finite."""
    y, x = record.value(y_key), record.value(x_key)
    if x is None or y is None:
        return None
    x, y = float(x), float(y)
    return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def plane_front(records: Sequence[EvalRecord], y_key: str, x_key: str) -> list[EvalRecord]:
    """The Pareto front of one plane: the feasible records with finite ``x_key`` and ``y_key``
    that no other such record beats in both (both minimised), sorted by ``x_key``.

    This is the front a plot of ``y_key`` against ``x_key`` shows, which differs from the run's
    front when the run minimised other objectives (a genome on the error/cache front can be
    dominated in the error/params plane).

    Arguments:
        records: evaluation records (values are read from ``record["objectives"]``, else from the
            record itself, e.g. ``params`` and ``cache_bytes``).
        y_key: the quantity on the y axis, e.g. ``"error"``.
        x_key: the quantity on the x axis, e.g. ``"params"``.

    Returns:
        The front's records, by increasing ``x_key`` (records with equal values all kept).
    """
    records = [EvalRecord.coerce(r) for r in records]
    kept = [(r, xy) for r in records if r.feasible and (xy := _xy(r, y_key, x_key)) is not None]
    if not kept:
        return []
    pts = np.array([xy for _, xy in kept], dtype=np.float64)  # [n, 2]: x, y
    le = (pts[:, None, :] <= pts[None, :, :]).all(-1)          # [i, j]: i no worse than j in both
    lt = (pts[:, None, :] < pts[None, :, :]).any(-1)
    dominated = (le & lt).any(axis=0)
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    return [kept[i][0] for i in order if not dominated[i]]


def dominated_front_points(baseline: EvalRecord, front: Sequence[EvalRecord], y_key: str, x_key: str) -> list[int]:
    """Indices of the plane-front records a baseline dominates in that plane.

    Arguments:
        baseline: the baseline's evaluation record.
        front: the plane's front (``plane_front``).
        y_key, x_key: the plane.

    Returns:
        The indices into ``front`` (empty when the baseline has no finite point there).
    """
    b = _xy(EvalRecord.coerce(baseline), y_key, x_key)
    if b is None:
        return []
    out = []
    for i, r in enumerate(map(EvalRecord.coerce, front)):
        f = _xy(r, y_key, x_key)
        if f is not None and b[0] <= f[0] and b[1] <= f[1] and (b[0] < f[0] or b[1] < f[1]):
            out.append(i)
    return out


def short_label(short: str) -> str:
    """A plot-sized name of a backbone from ``Genome.short()`` (``"SA-1 > GMemless > ..."``).

    A repeated pattern becomes ``"SA-1/GMemless x4"``; otherwise runs of one class collapse
    (``"SA-1 x2/GMemless/Rec-1"``); a name still longer than 32 characters becomes class counts
    when that is shorter (``"3 SA-1, 3 GMemless, 2 Rec-1"``, most frequent first). ``*`` marks
    a LIV that shares weights or features, as in ``Genome.short()``.

    Arguments:
        short: the ``short`` field of an evaluation record.

    Returns:
        The label.
    """
    names = [t.strip() for t in short.split(">") if t.strip()]
    n = len(names)
    if n == 0:
        return short
    for period in range(1, n):
        if n % period == 0 and names == names[:period] * (n // period):
            return f"{'/'.join(names[:period])} x{n // period}"
    runs: list[list] = []
    for name in names:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    label = "/".join(name if k == 1 else f"{name} x{k}" for name, k in runs)
    if len(label) <= _LABEL_CHARS:
        return label
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    by_count = sorted(counts.items(), key=lambda item: (-item[1], names.index(item[0])))
    summary = ", ".join(f"{k} {name}" for name, k in by_count)
    return summary if len(summary) < len(label) else label


def _label(record: EvalRecord) -> str:
    return short_label(record.short or record.genome or "?")


def axis_label(name: str, result=None, log: bool = False) -> str:
    """What an axis shows, in words, and which way is better."""
    if name in _AXIS_NAMES:
        text = _AXIS_NAMES[name].format(cache_seq_len=getattr(getattr(result, "config", None), "cache_seq_len", "?"))
    else:
        try:
            description = get_objective(name).description
        except KeyError:
            description = ""
        text = f"{name}: {description}" if description else name
    return f"{text} (lower is better{', log scale' if log else ''})"


def normalized_hypervolume(result):
    """The run's hypervolume per generation as a fraction of the box from the ideal point to the
    reference point (see ``hypervolume.normalize_hypervolume``).

    The reference point is the run's (``EvolveResult.reference_point``); the ideal point is the
    minimum of each objective over the feasible evaluated genomes with finite objectives, the
    points the hypervolume counts, so every value lies in [0, 1].

    Arguments:
        result: an ``EvolveResult``.

    Returns:
        ``(archive values, population values, reference, ideal)``, or None when the run has no
        reference point or no feasible finite genome.
    """
    ref = result.reference_point
    if ref is None:
        return None
    objectives = result.config.objectives
    rows = []
    for r in result.archive.values():
        if r.feasible:
            vals = [r.objective(k) for k in objectives]
            if all(v is not None and math.isfinite(float(v)) for v in vals):
                rows.append([float(v) for v in vals])
    if not rows:
        return None
    ideal = tuple(float(v) for v in np.min(np.asarray(rows), axis=0))
    if not all(lo < hi for lo, hi in zip(ideal, ref)):
        return None  # a reference point no genome beats: every hypervolume is 0
    norm = [normalize_hypervolume(float(v), ref, ideal) for v in result.hypervolume]
    pop = [normalize_hypervolume(float(v), ref, ideal) for v in result.population_hypervolume]
    return norm, pop, tuple(float(v) for v in ref), ideal


def _why_raw(result) -> str:
    """Why the hypervolume is shown unnormalised: no reference point yet, or none that any
    feasible genome beats."""
    return "no reference point yet" if result.reference_point is None else "no genome beats the reference point"


def quality_key(objectives: Sequence[str]) -> str:
    """The objective the report plots against the sizes: the first that is not a size (the
    first objective when all are)."""
    return first_quality_objective(objectives) or objectives[0]


def _point_text(objectives: Sequence[str], point: Sequence[float]) -> str:
    return "(" + ", ".join(f"{k} {_fmt(float(v))}" for k, v in zip(objectives, point)) + ")"


# ------------------------------------------------------------------------------------ figures
def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all when ``n <= k``), ends included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def plane_figure(result, x_key: str, y_key: str | None = None):
    """One plane of a run: every evaluated genome faded, the plane's own Pareto front
    highlighted and labelled with short architecture names, the baselines marked and, where one
    dominates a front point, annotated and linked to the points it dominates.

    Arguments:
        result: an ``EvolveResult``.
        x_key: the x quantity (``"params"``, ``"cache_bytes"``, or an objective name).
        y_key: the y quantity (default: the run's quality objective, ``quality_key``).

    Returns:
        The matplotlib ``Figure`` (the caller saves and closes it).
    """
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    y_key = y_key or quality_key(result.config.objectives)
    records = list(result.archive.values())
    points = [xy for r in records if r.feasible and (xy := _xy(r, y_key, x_key)) is not None]
    infeasible = [xy for r in records if not r.feasible and (xy := _xy(r, y_key, x_key)) is not None]
    front = plane_front(records, y_key, x_key)
    fxy = [_xy(r, y_key, x_key) for r in front]
    fig, ax = plt.subplots(figsize=(7.2, 5.4), dpi=100)
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=16, alpha=0.25, color="tab:gray",
                   label=f"evaluated ({len(points)})")
    if infeasible:  # they violate a constraint: never on a front, whatever their values
        ax.scatter([p[0] for p in infeasible], [p[1] for p in infeasible], s=16, marker="x", alpha=0.35,
                   color="tab:purple", label=f"infeasible: violates a constraint ({len(infeasible)})")
    if fxy:
        ax.scatter([p[0] for p in fxy], [p[1] for p in fxy], s=42, color="tab:red", zorder=3,
                   label=f"Pareto front in this plane ({len(front)})")
        if len(fxy) > 1:  # the staircase the front dominates
            ax.step([p[0] for p in fxy], [p[1] for p in fxy], where="post", color="tab:red", alpha=0.6, lw=1)
        labelled = _spread(len(front), _MAX_LABELS)
        for k, i in enumerate(labelled):  # right half of the front: text to the left of its point
            left = 2 * k >= len(labelled) and len(labelled) > 1
            ax.annotate(_label(front[i]), fxy[i], xytext=(-6 if left else 6, 6 if k % 2 == 0 else -11),
                        textcoords="offset points", ha="right" if left else "left", fontsize=7, color="darkred",
                        zorder=5)
    run_front = {r.hash for r in result.front_records} - {r.hash for r in front}
    others = [xy for r in records if r.hash in run_front and (xy := _xy(r, y_key, x_key)) is not None]
    if others:
        ax.scatter([p[0] for p in others], [p[1] for p in others], s=42, facecolors="none", edgecolors="tab:red",
                   zorder=3, label=f"on the run's front ({', '.join(result.config.objectives)}) only")
    all_x = [p[0] for p in points]
    for r in result.baselines:
        b = _xy(r, y_key, x_key)
        if b is None:
            continue
        all_x.append(b[0])
        # an infeasible baseline dominates nothing (feasibility first, as the search ranks)
        dominated = dominated_front_points(r, front, y_key, x_key) if r.feasible else []
        ax.scatter([b[0]], [b[1]], s=80, marker=_BASELINE_MARKERS.get(r.baseline, "*"), zorder=4,
                   edgecolors="black", label=f"baseline: {r.baseline}{'' if r.feasible else ' (infeasible)'}")
        if dominated:
            ax.annotate(f"{r.baseline} dominates {len(dominated)} front point{'s' if len(dominated) > 1 else ''}",
                        b, xytext=(8, -14), textcoords="offset points", fontsize=7, fontweight="bold", zorder=6,
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.8, "lw": 0})
            for i in dominated:
                ax.plot([b[0], fxy[i][0]], [b[1], fxy[i][1]], color="black", lw=0.8, ls=":", zorder=2)
            ax.scatter([fxy[i][0] for i in dominated], [fxy[i][1] for i in dominated], s=110, facecolors="none",
                       edgecolors="black", lw=1.2, zorder=4)
    log_x = bool(all_x) and min(all_x) > 0 and max(all_x) / min(all_x) > 20
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no overlap
    ax.set_xlabel(axis_label(x_key, result, log_x))
    ax.set_ylabel(axis_label(y_key, result))
    ax.set_title(f"{y_key} vs {x_key}: the Pareto front of this plane\n"
                 f"{len(records)} genomes, {result.generations_done} generations; better is down and left",
                 fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def hypervolume_figure(result):
    """The hypervolume per generation, normalised to [0, 1] (``normalized_hypervolume``), with
    the reference and ideal points stated; integer generation ticks.

    Arguments:
        result: an ``EvolveResult``.

    Returns:
        The matplotlib ``Figure`` (the caller saves and closes it).
    """
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=100)
    objectives = result.config.objectives
    gens = list(range(len(result.hypervolume)))
    hv = normalized_hypervolume(result)
    if hv is not None:
        archive, population, ref, ideal = hv
        ax.plot(gens, archive, marker="o", label="front of all genomes evaluated so far")
        ax.plot(gens, population, marker=".", alpha=0.7, label="current population")
        low = min(archive + population)
        ax.set_ylim(max(0.0, low - max(1.0 - low, 0.05)), 1.0)  # within [0, 1], zoomed on the values
        ax.set_ylabel("normalised hypervolume (higher is better)")
        ax.set_title(f"hypervolume as a fraction of the box from the ideal point\n{_point_text(objectives, ideal)} "
                     f"to the reference point {_point_text(objectives, ref)}", fontsize=9)
    else:
        ax.plot(gens, result.hypervolume, marker="o", label="front of all genomes evaluated so far")
        ax.set_ylabel(f"hypervolume ({_why_raw(result)})")
        ax.set_title("hypervolume", fontsize=9)
    if len(gens) <= 1:  # MaxNLocator(integer=True) falls back to fractions with one integer in range
        ax.set_xticks(gens)
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlim(-0.5, max(len(gens) - 0.5, 0.5))
    ax.set_xlabel("generation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def seed_noise_markdown(result) -> str:
    """How the front genomes' differences from the baselines compare with training-seed noise.

    With ``train_seeds`` > 1 every record holds its per-seed test accuracies (the same seeds for
    every genome), and each front genome is compared with each baseline on error = 1 - accuracy
    by paired t intervals, simultaneous at 95% (``star_jax.evolve.reevaluate.compare_over_seeds``).
    These are the seeds that selected the front, so an interval that excludes 0 is biased in the
    front's favour (a search keeps the luckiest of many noisy scores, so among equally good
    genomes the front's errors on these seeds are the low ones): the table says "resolved",
    never "better", and points to ``star-jax reevaluate``, whose fresh seeds give the verdicts.
    With one seed per genome nothing can be resolved, and the text says how to re-evaluate.
    """
    def errors(r: EvalRecord):
        accs = r.seed_test_accuracy
        return None if accs is None else [None if a is None else 1.0 - a for a in accs]

    front = [(r.short or r.genome, errors(r)) for r in result.front_records]
    bases = [(r.baseline or r.short, errors(r)) for r in result.baselines]
    if not bases:
        return "No baselines in this run.\n"
    if any(v is None or len(v) < 2 for _, v in front + bases):
        return ("One training seed per genome (train_seeds = 1): differences between the front and the "
                "baselines are not resolved. Run `star-jax reevaluate RUN_DIR --seeds 5` (or set "
                "train_seeds >= 2) before claiming a front genome is better.\n")
    rows = compare_over_seeds(front, bases)
    lines = [f"Error = 1 - accuracy over the {len(front[0][1])} training seeds the search selected with; paired t "
             "intervals, simultaneous 95% (Bonferroni); negative = the front genome's error is lower. These seeds "
             "chose the front, so its differences here are biased in its favour: run `star-jax reevaluate RUN_DIR "
             "--seeds 5` (fresh seeds) before claiming a front genome is better.\n",
             "| front genome | baseline | mean difference | interval | on the selection seeds |", "|---|---|---|---|---|"]
    lines += [f"| {c.genome} | {c.baseline} | {c.mean:+.4f} | [{c.low:+.4f}, {c.high:+.4f}] | "
              f"{'within noise' if c.verdict == 'within noise' else 'resolved, ' + ('lower' if c.verdict == 'better' else 'higher')}"
              f"{failures_note(c)} |" for c in rows]
    return "\n".join(lines) + "\n"


def write_report(run_dir) -> list[pathlib.Path]:
    """Writes PNG plots and a markdown summary of a run into ``run_dir/plots``.

    Plots: the first objective (quality) against parameters and against cache bytes, each with
    its own plane's Pareto front (``plane_figure``); the normalised hypervolume per generation
    (``hypervolume_figure``). Summary: ``front.md`` with the run's front table (genome strings
    included), the baselines and the hypervolume with its reference and ideal points.

    Arguments:
        run_dir: the run directory (it needs at least one checkpoint).

    Returns:
        Paths of the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = load_run(run_dir)
    out_dir = pathlib.Path(result.run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    quality = quality_key(result.config.objectives)
    written = []
    for x_key in (k for k in ("params", "cache_bytes") if k != quality):
        fig = plane_figure(result, x_key, quality)
        path = out_dir / f"front_{quality}_vs_{x_key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    fig = hypervolume_figure(result)
    path = out_dir / "hypervolume.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    objectives = result.config.objectives
    text = [f"# Evolution run: {result.generations_done} of {result.config.generations + 1} generations, "
            f"{len(result.archive)} genomes evaluated\n",
            f"Objectives (all minimised): {', '.join(axis_label(k, result) for k in objectives)}\n",
            "## Pareto front\n", front_markdown(result.front_records, objectives)]
    if result.baselines:
        text += ["\n## Baselines\n", front_markdown(result.baselines, objectives)]
    text += ["\n## Front against baselines over training seeds\n", seed_noise_markdown(result)]
    hv = normalized_hypervolume(result)
    text.append("\n## Hypervolume per generation\n")
    if hv is not None:
        archive, _, ref, ideal = hv
        text += [f"Normalised to [0, 1]: the fraction of the box from the ideal point {_point_text(objectives, ideal)} "
                 f"(each objective's minimum over the feasible evaluated genomes) to the reference point "
                 f"{_point_text(objectives, ref)}.\n",
                 ", ".join(f"{v:.4f}" for v in archive) + "\n"]
    text += [f"Raw (objective units{', ' + _why_raw(result) if hv is None else ''}):\n",
             ", ".join(_fmt(float(v)) for v in result.hypervolume) + "\n"]
    path = out_dir / "front.md"
    path.write_text("\n".join(text), encoding="utf-8")
    written.append(path)
    return written
