"""Reports of an evolution run: Pareto-front plots, hypervolume over generations, a front table.
Everything is read back from the run directory, so a report can be drawn while a run goes on or after."""
from __future__ import annotations

import math
import pathlib
from typing import Sequence

__all__ = ["write_report", "print_front", "front_rows", "front_markdown"]

_BASELINE_MARKERS = {"Transformer++": "s", "StripedMamba": "^", "LFM2-like": "D"}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1e4:
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def front_rows(records: Sequence[dict], objectives: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a front table: architecture, objectives, params, cache bytes, genome.

    Arguments:
        records: evaluation records (e.g. ``EvolveResult.front_records``).
        objectives: objective names (columns).

    Returns:
        (header, rows) of strings.
    """
    sizes = [k for k in ("params", "cache_bytes") if k not in objectives]
    header = ["#", "architecture", *objectives, *sizes, "genome"]
    rows = []
    for i, r in enumerate(records):
        arch = f"{r['baseline']}: {r.get('short', '')}" if "baseline" in r else r.get("short", "")
        rows.append([str(i), arch, *[_fmt(r["objectives"].get(k)) for k in objectives],
                     *[_fmt(r.get(k)) for k in sizes], r.get("genome", "")])
    return header, rows


def front_markdown(records: Sequence[dict], objectives: Sequence[str]) -> str:
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
    """Prints an ``EvolveResult``'s Pareto front (and its baselines) as a rich table.

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
    for h in header[:-1]:
        table.add_column(h, justify="left" if h == "architecture" else "right")
    for row in rows:
        table.add_row(*row[:-1])
    if result.baselines:
        header_b, rows_b = front_rows(result.baselines, objectives)
        for r, row in zip(result.baselines, rows_b):
            table.add_row("base", f"[dim]{row[1]}[/dim]", *row[2:-1])
    console.print(table)


def _points(records, objective: str, x_key: str):
    xs, ys = [], []
    for r in records:
        x, y = r.get(x_key), r["objectives"].get(objective)
        if x is not None and y is not None:
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def write_report(run_dir) -> list[pathlib.Path]:
    """Writes PNG plots and a markdown summary of a run into ``run_dir/plots``.

    Plots: the first objective (quality) against cache bytes and against parameters, with every
    evaluated genome faded, the run's Pareto front highlighted (the front of the run's own
    objectives) and the baselines marked; the hypervolume per generation. Summary:
    ``front.md`` with the front table and the baselines.

    Arguments:
        run_dir: the run directory (it needs at least one checkpoint).

    Returns:
        Paths of the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (used as matplotlib.ticker)

    from star_jax.evolve.loop import load_run

    result = load_run(run_dir)
    out_dir = pathlib.Path(result.run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    quality = result.config.objectives[0]
    records = list(result.archive.values())
    front_hashes = {r["hash"] for r in result.front_records}
    written = []
    for x_key, label in (("cache_bytes", f"cache bytes at L={result.config.cache_seq_len}"),
                         ("params", "parameters")):
        fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
        xs, ys = _points(records, quality, x_key)
        ax.scatter(xs, ys, s=18, alpha=0.25, color="tab:gray", label="evaluated")
        front = [r for r in records if r["hash"] in front_hashes]
        fx, fy = _points(front, quality, x_key)
        order = sorted(range(len(fx)), key=lambda i: (fx[i], fy[i]))
        ax.scatter(fx, fy, s=40, color="tab:red", zorder=3, label="Pareto front")
        if x_key in result.config.objectives and len(order) > 1:
            ax.plot([fx[i] for i in order], [fy[i] for i in order], color="tab:red", alpha=0.6, lw=1)
        for r in result.baselines:
            bx, by = _points([r], quality, x_key)
            if bx:
                ax.scatter(bx, by, s=70, marker=_BASELINE_MARKERS.get(r["baseline"], "*"), zorder=4,
                           edgecolors="black", label=r["baseline"])
        if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no overlap
        ax.set_xlabel(label)
        ax.set_ylabel(quality)
        ax.set_title(f"{quality} vs {x_key} ({len(records)} genomes)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        path = out_dir / f"front_{quality}_vs_{x_key}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    gens = list(range(len(result.hypervolume)))
    ax.plot(gens, result.hypervolume, marker="o", label="archive front")
    ax.plot(gens, result.population_hypervolume, marker=".", alpha=0.7, label="population")
    ax.set_xlabel("generation")
    ax.set_ylabel("hypervolume")
    ref = result.reference_point
    ax.set_title("hypervolume" + (f" (reference {', '.join(_fmt(x) for x in ref)})" if ref else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = out_dir / "hypervolume.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    text = [f"# Evolution run: {result.generations_done} of {result.config.generations + 1} generations, "
            f"{len(records)} genomes evaluated\n",
            f"Objectives (minimised): {', '.join(result.config.objectives)}\n",
            "## Pareto front\n", front_markdown(result.front_records, result.config.objectives)]
    if result.baselines:
        text += ["\n## Baselines\n", front_markdown(result.baselines, result.config.objectives)]
    text += ["\n## Hypervolume per generation\n",
             ", ".join(_fmt(float(v)) for v in result.hypervolume) + "\n"]
    path = out_dir / "front.md"
    path.write_text("\n".join(text), encoding="utf-8")
    written.append(path)
    return written
