"""The MAD card: what each LIV class learns, on the six MAD tasks at their baseline settings.

Each of the 17 paper classes runs as MAD's 2-block backbone (the class, then SwiGLU) and is
trained once per task (the six MAD baselines, `star_jax.tasks.mad_baselines()`), with MAD's
optimiser as mad-lab runs it: AdamW at a constant learning rate, betas (0.9, 0.999), no
weight decay, no gradient clipping. Every cell records the test accuracy on the task's 1,280-
sequence test set, its wall time (compile included) and its XLA compile count. An extra row,
"GConv-2 x4", is GConv-2 with the gated path four times wider (featurizer expansion 4, the inner
width of mad-lab's own Hyena layer config) so the card can be read against mad-lab's Hyena.

Two budgets:
  --budget cpu     (default) width 64, batch 64, 300 steps, lr 3e-3: the whole card in about an
                   hour on a 2-core CPU.
  --budget madlab  mad-lab's baseline: width 128, batch 128, 200 steps, lr 5e-4 (for an
                   accelerator; each cell is ~1-2 minutes on a 2-core CPU).

Results go to benchmarks/results/<name>.{json,md,png}; the JSON is rewritten after every cell,
and a rerun with the same name and budget skips the cells already done (so a killed run
resumes). Usage:

    python benchmarks/mad_card.py [--budget cpu|madlab] [--name mad_card] [--classes 1,8,9]
                                  [--tasks in_context_recall,...] [--no-wide]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

BUDGETS = {
    "cpu": {"width": 64, "batch_size": 64, "steps": 300, "lr": 3e-3},
    "madlab": {"width": 128, "batch_size": 128, "steps": 200, "lr": 5e-4},
}
WIDE_ID, WIDE_NAME = 99, "GConv-2 x4"


def _register_wide():
    """GConv-2 with a 4x wider gated path (mad-lab's Hyena inner width), as a user class."""
    import star_jax as sj
    from star_jax.genome.classes import FeatureGroup, FeaturizerGenome, get_liv_class

    hyena = get_liv_class(8).featurizer
    groups = tuple(g if g.name == "filter" else FeatureGroup(g.name, token_mixing=g.token_mixing,
                                                             kernel_size=g.kernel_size, channel_mixing=2, expansion=4)
                   for g in hyena.groups)
    sj.register_liv_class(WIDE_NAME, f"{WIDE_ID}.3.1.1.1", FeaturizerGenome(WIDE_ID, "gated", groups),
                          class_id=WIDE_ID, replace=True, description="GConv-2, gated path 4x wider")
    return WIDE_ID


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
    cells = {(c["class"], c["task"]): c for c in out["cells"]}
    lines = [f"# MAD card ({out['budget']} budget)", "",
             f"Command: `{out['command']}`  ", f"Machine: {out['machine']}; JAX {out['jax']}.  ",
             f"Budget: {json.dumps(out['settings'])}; optimiser: {out['optimizer']}.  ",
             "Backbone: the class, then SwiGLU (MAD's 2-block model). One training seed (0) per cell: "
             "a difference of a few points between two cells is within seed noise.  ",
             f"Total wall time: {out.get('total_seconds', 0.0):.0f} s over {len(out['cells'])} cells "
             f"(compile included).", "",
             "Test accuracy (1,280 test sequences):", "",
             "| class | " + " | ".join(_short_task(t) for t in tasks) + " | mean |",
             "|---|" + "---|" * (len(tasks) + 1)]
    for r in rows:
        accs = [cells[(r, t)]["test_accuracy"] if (r, t) in cells else None for t in tasks]
        done = [a for a in accs if a is not None]
        mean = f"{sum(done) / len(done):.3f}" if len(done) == len(tasks) else ""
        lines.append(f"| {r} | " + " | ".join("" if a is None else f"{a:.3f}" for a in accs) + f" | {mean} |")
    lines += ["", "Wall seconds per cell (compile included; compile seconds in brackets):", "",
              "| class | " + " | ".join(_short_task(t) for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(
            f"{cells[(r, t)]['seconds']:.0f} ({cells[(r, t)]['compile_seconds']:.0f})" if (r, t) in cells else ""
            for t in tasks) + " |")
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
                grid[i, j] = cells[(r, t)]["test_accuracy"]
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 2.5, 0.42 * len(rows) + 1.6))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(tasks)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(tasks)), [_short_task(t) for t in tasks], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(f"MAD card: test accuracy, class + SwiGLU ({out['budget']} budget, seed 0)")
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
    ap.add_argument("--no-wide", action="store_true", help=f"skip the '{WIDE_NAME}' reference row")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import jax

    import star_jax as sj
    from star_jax.genome.classes import get_liv_class

    sj.enable_compilation_cache()
    counts = _compile_counter()
    budget = BUDGETS[args.budget]
    name = args.name or ("mad_card" if args.budget == "cpu" else f"mad_card_{args.budget}")
    base = os.path.join(HERE, "results", name)
    class_list = [int(c) for c in args.classes.split(",")] if args.classes else list(range(1, 18))
    if not args.no_wide:
        class_list.append(_register_wide())
    settings = {s.task: s for s in sj.tasks.mad_baselines()}
    tasks = args.tasks.split(",") if args.tasks else list(settings)
    unknown = [t for t in tasks if t not in settings]
    if unknown:
        ap.error(f"--tasks: unknown MAD task(s) {unknown}; choose from {sorted(settings)}")
    tcfg = sj.TrainConfig(steps=budget["steps"], batch_size=budget["batch_size"], lr=budget["lr"],
                          weight_decay=0.0, min_lr_ratio=1.0, b1=0.9, b2=0.999, clip_norm=None, seed=args.seed)
    out = {"budget": args.budget, "settings": budget, "seed": args.seed, "tasks": tasks,
           "rows": [get_liv_class(c).name for c in class_list],
           "optimizer": "AdamW, constant lr, betas (0.9, 0.999), weight decay 0, no clipping",
           "command": "python benchmarks/mad_card.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"backend {jax.default_backend()}",
           "jax": jax.__version__, "cells": [], "total_seconds": 0.0}
    if os.path.exists(base + ".json"):
        with open(base + ".json") as f:
            old = json.load(f)
        if old.get("settings") == budget and old.get("seed") == args.seed:
            out["cells"] = [c for c in old["cells"] if c["class"] in out["rows"] and c["task"] in tasks]
            out["total_seconds"] = sum(c["seconds"] for c in out["cells"])
    done = {(c["class"], c["task"]) for c in out["cells"]}
    for task_name in tasks:
        task = settings[task_name].make()
        cfg = sj.ModelConfig(width=budget["width"], vocab_size=task.vocab_size, max_len=task.seq_len, head_dim=16)
        for cid in class_list:
            cls = get_liv_class(cid)
            if (cls.name, task_name) in done:
                continue
            genome = sj.Genome([[cid, 1, 1, 1, 1], [9, 1, 1, 1, 1]])
            n0, s0, t0 = counts["n"], counts["s"], time.perf_counter()
            res = sj.train(genome, cfg, task, tcfg, progress=False)
            cell = {"class": cls.name, "class_id": cid, "task": task_name,
                    "test_accuracy": float(res.metrics["test_accuracy"]),
                    "test_loss": float(res.metrics["test_loss"]), "diverged": bool(res.metrics.get("diverged", False)),
                    "seconds": time.perf_counter() - t0, "compiles": counts["n"] - n0,
                    "compile_seconds": counts["s"] - s0, "params": sj.param_count(genome, cfg)}
            out["cells"].append(cell)
            out["total_seconds"] += cell["seconds"]
            print(f"{cls.name:>12} {task_name:>24}: acc {cell['test_accuracy']:.3f}  {cell['seconds']:.1f} s "
                  f"({cell['compiles']} compiles, {cell['compile_seconds']:.1f} s)", flush=True)
            _write(base + ".json", out)
            _report(out, base)
    _write(base + ".json", out)
    _report(out, base)
    print(f"wrote {base}.json, .md, .png ({out['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
