"""The MAD card: what each LIV class learns, on the six MAD tasks at their baseline settings.

Each of the 17 paper classes runs as MAD's 2-block backbone (the class, then SwiGLU) and is
trained once per task (the six MAD baselines, `star_jax.tasks.mad_baselines()`), with MAD's
optimiser as mad-lab runs it: AdamW at a constant learning rate, betas (0.9, 0.999), no
weight decay, no gradient clipping. Every cell records the test accuracy on the task's 1,280-
sequence test set, its wall time (compile included) and its XLA compile count. An extra row,
"GConv-2 x4", is GConv-2 with the gated path four times wider (featurizer expansion 4, the inner
width of mad-lab's own Hyena layer config), and a second, "GConv-2 x4 tiled", is mad-lab's Hyena
layer itself: expansion 4 with each projection tiled four times (featurizer repeat 4; mad-lab's
proj_groups 4), so its projections are no larger than GConv-2's. A third, "Rec-1 conv4", is Rec-1
with Mamba's causal conv (k=4) and SiLU on x, from which B, C and dt are computed as in the Mamba
block, and "Rec-1 Mamba" adds Mamba's expand 2 (x, z, dt and the SSM twice as wide). These
reference rows are user classes, so the card can be read against mad-lab's layers.

Three budgets:
  --budget cpu          (default) width 64, batch 64, 300 steps, lr 3e-3, constant: the whole
                        card in about an hour on a 2-core CPU.
  --budget madlab       mad-lab's baseline setting (width 128, batch 128, lr 5e-4) for 200 steps
                        at a constant lr: 1% of mad-lab's training (each cell ~1-3 minutes on a
                        2-core CPU).
  --budget madlab-full  mad-lab's training as its MADConfig defaults run it: 200 epochs of the
                        12,800 training sequences = 20,000 steps of 128, AdamW lr 5e-4 with a
                        cosine decay to 1e-6 over all steps, no warm-up (for an accelerator).
--steps N trains N steps of a budget's schedule instead (the cosine of madlab-full then spans the
N steps), and --eval-every K records the test accuracy every K steps (the cell's "curve"): the
first 1,000 steps of mad-lab's run are `--budget madlab --steps 1000` (its cosine over 20,000
steps is within 0.7% of lr 5e-4 there).

Results go to benchmarks/results/<name>.{json,md,png}; the JSON is rewritten after every cell,
and a rerun with the same name and budget skips the cells already done (so a killed run
resumes, and more --seeds train only the new seeds). With several seeds a cell reads
mean +- sd over them. Usage:

    python benchmarks/mad_card.py [--budget cpu|madlab|madlab-full] [--name mad_card]
                                  [--classes 1,8,9] [--tasks in_context_recall,...]
                                  [--seeds 0,1,2] [--no-wide] [--steps N] [--eval-every K]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

BUDGETS = {
    "cpu": {"width": 64, "batch_size": 64, "steps": 300, "lr": 3e-3},
    "madlab": {"width": 128, "batch_size": 128, "steps": 200, "lr": 5e-4},
    "madlab-full": {"width": 128, "batch_size": 128, "steps": 20000, "lr": 5e-4, "min_lr": 1e-6},
}
# a budget without "min_lr" trains at a constant lr; with it, cosine from lr to min_lr, no warm-up
# reference rows, user classes beside the 17: (class id, name, base class, changes to the
# featurizer groups {group: {field: value}} (None: all but the filter), description)
REFERENCE = (
    (99, "GConv-2 x4", 8, {None: {"expansion": 4}}, "GConv-2, gated path 4x wider"),
    (98, "GConv-2 x4 tiled", 8, {None: {"expansion": 4, "repeat": 4}},
     "GConv-2, gated path 4x wider from projections tiled 4 times (mad-lab's Hyena layer: inner_factor 4, "
     "proj_groups 4)"),
    (97, "Rec-1 conv4", 5, {"x": {"token_mixing": 3, "kernel_size": 4, "nonlinearity": 4}},
     "Rec-1 with Mamba's causal conv (k=4) + SiLU on x, B/C/dt read from the convolved x"),
    (96, "Rec-1 Mamba", 5, {"x": {"token_mixing": 3, "kernel_size": 4, "nonlinearity": 4, "expansion": 2},
                            "z": {"expansion": 2}, "dt": {"expansion": 2}},
     "Rec-1 as a Mamba block: conv (k=4) + SiLU on x, B/C/dt from the convolved x, expand 2 (full-rank dt)"),
)


def _register_reference() -> list[int]:
    """The reference rows as user classes."""
    import dataclasses

    import star_jax as sj
    from star_jax.genome.classes import FeaturizerGenome, get_liv_class

    for cid, name, base, changes, desc in REFERENCE:
        fz = get_liv_class(base).featurizer
        groups = tuple(dataclasses.replace(g, **changes.get(g.name, changes.get(None, {}) if g.name != "filter" else {}))
                       for g in fz.groups)
        sj.register_liv_class(name, f"{cid}." + get_liv_class(base).operator.to_string().split(".", 1)[1],
                              FeaturizerGenome(cid, fz.kind, groups), class_id=cid, replace=True, description=desc)
    return [cid for cid, *_ in REFERENCE]


def _compile_counter():
    import jax

    counts = {"n": 0, "s": 0.0}

    def listener(event, duration, **_):
        if event == "/jax/compilation_cache/compile_time_saved_sec":
            return
        if event.endswith("backend_compile_duration"):
            counts["n"] += 1
            counts["s"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    return counts


def _write(path: str, out: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)


def _short_task(name: str) -> str:
    return {"in_context_recall": "recall", "fuzzy_in_context_recall": "fuzzy recall",
            "noisy_in_context_recall": "noisy recall", "selective_copying": "sel. copying",
            "compression": "compression", "memorization": "memorization"}.get(name, name)


def _report(out: dict, base: str) -> None:
    """Markdown table and heat map of what is done so far."""
    rows, tasks = out["rows"], out["tasks"]
    seeds = out.get("seeds", [out.get("seed", 0)])
    cells: dict = {}  # (class, task) -> the cells of every seed done
    for c in out["cells"]:
        cells.setdefault((c["class"], c["task"]), []).append(c)

    def acc(key) -> str:
        a = [c["test_accuracy"] for c in cells[key]]
        if len(a) == 1:
            return f"{a[0]:.3f}"
        return f"{statistics.mean(a):.3f} ± {statistics.stdev(a):.3f}"

    def mean_of(key, field) -> float:
        return statistics.mean(c[field] for c in cells[key])

    several = len(tasks) > 1  # a mean over tasks (with one task it would repeat its column)
    seeds_text = (f"One training seed ({seeds[0]}) per cell: a difference of a few points between two cells "
                  "is within seed noise." if len(seeds) == 1 else
                  f"Every cell is trained with seeds {', '.join(map(str, seeds))} and reads mean ± sd over "
                  "them; times are means per seed.")
    lines = [f"# MAD card ({out['budget']} budget)", "",
             f"Command: `{out['command']}`  ", f"Machine: {out['machine']}; JAX {out['jax']}.  ",
             f"Budget: {json.dumps(out['settings'])}; optimiser: {out['optimizer']}.  ",
             f"Backbone: the class, then SwiGLU (MAD's 2-block model). {seeds_text}  ",
             f"Total wall time: {out.get('total_seconds', 0.0):.0f} s over {len(out['cells'])} cells "
             f"(compile included).", "",
             "Test accuracy (1,280 test sequences):", "",
             "| class | " + " | ".join(_short_task(t) for t in tasks) + (" | mean |" if several else " |"),
             "|---|" + "---|" * (len(tasks) + several)]
    for r in rows:
        done = [mean_of((r, t), "test_accuracy") for t in tasks if (r, t) in cells]
        mean = f" {sum(done) / len(done):.3f} |" if len(done) == len(tasks) else " |"
        lines.append(f"| {r} | " + " | ".join(acc((r, t)) if (r, t) in cells else "" for t in tasks)
                     + " |" + (mean if several else ""))
    first = {}  # class -> its cell of the first task done (the size of its model there)
    for t in tasks:
        for r in rows:
            if (r, t) in cells and r not in first:
                first[r] = cells[(r, t)][0]
    if first:
        lines += ["", "Size of each backbone (analytic, at the first task's vocabulary and length; cache in "
                  "16-bit elements at that length):", "", "| class | task | params | cache bytes |", "|---|---|---|---|"]
        for r in rows:
            if r in first:
                c = first[r]
                lines.append(f"| {r} | {_short_task(c['task'])} | {c['params']:,} | "
                             f"{c['cache_bytes']:,} |" if "cache_bytes" in c else f"| {r} | {_short_task(c['task'])} | "
                             f"{c['params']:,} | |")
    lines += ["", "Wall seconds per cell (compile included; compile seconds in brackets):", "",
              "| class | " + " | ".join(_short_task(t) for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(
            f"{mean_of((r, t), 'seconds'):.0f} ({mean_of((r, t), 'compile_seconds'):.0f})" if (r, t) in cells else ""
            for t in tasks) + " |")
    curves = [c for c in out["cells"] if c.get("curve")]
    if curves:
        steps = sorted({st for c in curves for st, _ in c["curve"]})
        lines += ["", "Test accuracy during training (--eval-every), per seed:", "",
                  "| class | task | seed | " + " | ".join(f"step {st}" for st in steps) + " |",
                  "|---|---|---|" + "---|" * len(steps)]
        for c in sorted(curves, key=lambda c: (rows.index(c["class"]), tasks.index(c["task"]), c["seed"])):
            at = dict((st, a) for st, a in c["curve"])
            lines.append(f"| {c['class']} | {_short_task(c['task'])} | {c['seed']} | "
                         + " | ".join(f"{at[st]:.3f}" if st in at else "" for st in steps) + " |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(rows), len(tasks)), np.nan)
    for i, r in enumerate(rows):
        for j, t in enumerate(tasks):
            if (r, t) in cells:
                grid[i, j] = mean_of((r, t), "test_accuracy")
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 2.5, 0.42 * len(rows) + 1.6))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(tasks)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(tasks)), [_short_task(t) for t in tasks], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    seed_label = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {', '.join(map(str, seeds))}"
    ax.set_title(f"MAD card: test accuracy, class + SwiGLU\n({out['budget']} budget, {seed_label})", fontsize=9)
    fig.colorbar(im, ax=ax, label="test accuracy (higher is better)")
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--name", default=None, help="results name (default mad_card, or mad_card_madlab)")
    ap.add_argument("--classes", default=None, help="comma-separated class ids (default: all 17)")
    ap.add_argument("--tasks", default=None, help="comma-separated MAD task names (default: all six)")
    ap.add_argument("--no-wide", action="store_true",
                    help="skip the reference rows (" + ", ".join(r[1] for r in REFERENCE) + ")")
    ap.add_argument("--seeds", default=None, help="comma-separated training seeds (default: --seed)")
    ap.add_argument("--seed", type=int, default=0, help="the one training seed when --seeds is not given")
    ap.add_argument("--steps", type=int, default=None, help="train this many steps instead of the budget's")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="also evaluate every this many steps (recorded as each cell's curve)")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps: expected an integer >= 1, got {args.steps}")
    if args.eval_every < 0:
        ap.error(f"--eval-every: expected an integer >= 0, got {args.eval_every}")
    try:
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    except ValueError:
        ap.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if len(set(seeds)) != len(seeds):
        ap.error(f"--seeds: each seed once, got {args.seeds!r}")

    import jax

    import star_jax as sj
    from star_jax.genome.classes import get_liv_class

    sj.enable_compilation_cache()
    counts = _compile_counter()
    budget = dict(BUDGETS[args.budget])
    if args.steps is not None:
        budget["steps"] = args.steps
    if args.eval_every:
        budget["eval_every"] = args.eval_every
    name = args.name or ("mad_card" if args.budget == "cpu" else f"mad_card_{args.budget}")
    base = os.path.join(HERE, "results", name)
    class_list = [int(c) for c in args.classes.split(",")] if args.classes else list(range(1, 18))
    if not args.no_wide:
        class_list += _register_reference()
    settings = {s.task: s for s in sj.tasks.mad_baselines()}
    tasks = args.tasks.split(",") if args.tasks else list(settings)
    unknown = [t for t in tasks if t not in settings]
    if unknown:
        ap.error(f"--tasks: unknown MAD task(s) {unknown}; choose from {sorted(settings)}")
    out = {"budget": args.budget, "settings": budget, "seeds": seeds, "tasks": tasks,
           "rows": [get_liv_class(c).name for c in class_list],
           "optimizer": ("AdamW, " + (f"cosine from lr to {budget['min_lr']:g} over the steps, no warm-up"
                                       if "min_lr" in budget else "constant lr")
                         + ", betas (0.9, 0.999), weight decay 0, no clipping"),
           "command": "python benchmarks/mad_card.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"backend {jax.default_backend()}",
           "jax": jax.__version__, "cells": [], "total_seconds": 0.0}
    if os.path.exists(base + ".json"):
        with open(base + ".json") as f:
            old = json.load(f)
        if old.get("settings") == budget:
            for c in old["cells"]:  # a card from before --seeds has one seed, "seed", for all cells
                c.setdefault("seed", old.get("seed", 0))
            out["cells"] = [c for c in old["cells"]
                            if c["class"] in out["rows"] and c["task"] in tasks and c["seed"] in seeds]
            out["total_seconds"] = sum(c["seconds"] for c in out["cells"])
    done = {(c["class"], c["task"], c["seed"]) for c in out["cells"]}
    for task_name in tasks:
        task = settings[task_name].make()
        cfg = sj.ModelConfig(width=budget["width"], vocab_size=task.vocab_size, max_len=task.seq_len, head_dim=16)
        for c in out["cells"]:  # cells recorded before the cache column
            if c["task"] == task_name and "cache_bytes" not in c:
                c["cache_bytes"] = sj.cache_bytes(sj.Genome([[c["class_id"], 1, 1, 1, 1], [9, 1, 1, 1, 1]]), cfg,
                                                  seq_len=task.seq_len)
        for cid in class_list:
            cls = get_liv_class(cid)
            genome = sj.Genome([[cid, 1, 1, 1, 1], [9, 1, 1, 1, 1]])
            for seed in seeds:
                if (cls.name, task_name, seed) in done:
                    continue
                tcfg = sj.TrainConfig(steps=budget["steps"], batch_size=budget["batch_size"], lr=budget["lr"],
                                      weight_decay=0.0, min_lr_ratio=budget.get("min_lr", budget["lr"]) / budget["lr"],
                                      b1=0.9, b2=0.999, clip_norm=None, seed=seed,
                                      eval_every=budget.get("eval_every", 0))
                n0, s0, t0 = counts["n"], counts["s"], time.perf_counter()
                res = sj.train(genome, cfg, task, tcfg, progress=False)
                cell = {"class": cls.name, "class_id": cid, "task": task_name, "seed": seed,
                        "test_accuracy": float(res.metrics["test_accuracy"]),
                        "test_loss": float(res.metrics["test_loss"]),
                        "diverged": bool(res.metrics.get("diverged", False)),
                        "seconds": time.perf_counter() - t0, "compiles": counts["n"] - n0,
                        "compile_seconds": counts["s"] - s0, "params": sj.param_count(genome, cfg),
                        "cache_bytes": sj.cache_bytes(genome, cfg, seq_len=task.seq_len)}
                if budget.get("eval_every"):
                    cell["curve"] = [[int(st), float(acc)] for st, acc in
                                     zip(res.curve["eval_step"], res.curve["test_accuracy"])]
                out["cells"].append(cell)
                out["total_seconds"] += cell["seconds"]
                print(f"{cls.name:>16} {task_name:>24} seed {seed}: acc {cell['test_accuracy']:.3f}  "
                      f"{cell['seconds']:.1f} s ({cell['compiles']} compiles, {cell['compile_seconds']:.1f} s)",
                      flush=True)
                _write(base + ".json", out)
                _report(out, base)
    _write(base + ".json", out)
    _report(out, base)
    print(f"wrote {base}.json, .md, .png ({out['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
