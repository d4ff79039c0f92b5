"""Trains Transformer++, StripedMamba and the LFM2-like preset at matched parameter counts with the
identical budget and data, and prints a table: quality, params, cache bytes at L=4096.

The budget, data and model settings come from an evolution config (the same JSON files
run_study.py takes), so the numbers compare with a run's. The target parameter count is
Transformer++'s at the config's width and backbone length, or --target-params. Transformer++
and StripedMamba keep the backbone length and search the width (multiples of head_dim);
LFM2-like keeps the width and searches its number of LIVs (two per mixer), and also the width
when no length comes within the tolerance.

    python experiments/baselines.py --config experiments/configs/cpu_lm_quality.json \
        --out runs/baselines_cpu_lm.json
    python experiments/baselines.py --config experiments/configs/cpu_recall_quality.json \
        --target-params 200000 --steps 500
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import study_lib as sl  # noqa: E402


def matched_baselines(config, target: int | None = None, names=sl.BASELINE_NAMES,
                      tolerance: float = 0.10) -> tuple[int, list[dict]]:
    """Sizes each baseline to a parameter target (no training).

    Arguments:
        config: the ``EvolveConfig`` (model and n_liv are used).
        target: parameter count to match (default: Transformer++ at the config's size).
        names: baseline names.
        tolerance: relative difference counted as matched.

    Returns:
        (target, [match dicts of ``study_lib.match_params`` plus "matched" and "model_cfg"]).
    """
    import star_jax as sj

    n_liv = config.n_liv
    if n_liv < 2 or n_liv % 2:
        raise sl.StudyError(f"baselines need an even backbone length; the config has n_liv={n_liv}")
    if target is None:
        target = int(sj.param_count(sl.baseline_genome("Transformer++", n_liv), config.model))
    if target < 1:
        raise sl.StudyError(f"--target-params must be >= 1, got {target}")
    out = []
    for name in names:
        m = sl.match_params(name, config.model, n_liv, target, tolerance=tolerance)
        m["matched"] = abs(m["rel_diff"]) <= tolerance
        m["model_cfg"] = config.model.__class__.from_dict({**config.model.to_dict(), "width": m["width"]})
        out.append(m)
    return target, out


def train_baselines(config, matches: list[dict], task=None, progress: bool = False) -> list[dict]:
    """Trains each matched baseline with the config's training budget on the config's task.

    Returns:
        One row per baseline: name, short, width, n_liv, params, rel_diff, matched, cache_bytes,
        train/test metrics, quality (the config's first objective), seconds.
    """
    import star_jax as sj

    task = task if task is not None else config.make_task()
    q = config.objectives[0]
    rows = []
    for m in matches:
        g, cfg = m["genome"], m["model_cfg"]
        t0 = time.perf_counter()
        res = sj.train(g, cfg, task, config.train, progress=progress)
        metrics = dict(res.metrics)
        rows.append({
            "name": m["name"], "short": m["short"], "genome": g.to_string(), "width": m["width"],
            "n_liv": m["n_liv"], "params": m["params"], "rel_diff": m["rel_diff"], "matched": m["matched"],
            "cache_bytes": int(sj.cache_bytes(g, cfg, seq_len=config.cache_seq_len,
                                              bytes_per_elem=config.cache_bytes_per_elem)),
            "train_loss": sl.finite_or_none(metrics.get("train_loss")),
            "test_loss": sl.finite_or_none(metrics.get("test_loss")),
            "test_accuracy": sl.finite_or_none(metrics.get("test_accuracy")),
            "diverged": bool(metrics.get("diverged")),
            "quality": sl.finite_or_none(sl.quality_from_metrics(metrics, q)),
            "seconds": round(time.perf_counter() - t0, 1),
        })
        print(f"  trained {m['name']} ({m['params']:,} params, width {m['width']}, {m['n_liv']} LIVs): "
              f"{q} {sl.fmt(rows[-1]['quality'])}, {rows[-1]['seconds']}s", flush=True)
    return rows


def print_table(rows: list[dict], objective: str, cache_seq_len: int, target: int) -> None:
    print(f"Baselines matched to {target:,} parameters:")
    print(sl.table(["baseline", "width", "LIVs", "params", "vs target", objective, "test loss",
                    "test accuracy", f"cache bytes (L={cache_seq_len})", "architecture"],
                   [[r["name"], r["width"], r["n_liv"], r["params"], f"{100 * r['rel_diff']:+.1f}%"
                     + ("" if r["matched"] else " (not matched)"), r["quality"], r["test_loss"],
                     r["test_accuracy"], r["cache_bytes"], r["short"]] for r in rows]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--config", required=True, help="EvolveConfig JSON giving task, model and training budget")
    ap.add_argument("--target-params", type=int,
                    help="parameter count to match (default: Transformer++ at the config's size)")
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="relative parameter difference counted as matched (default 0.10)")
    ap.add_argument("--baselines", nargs="+", default=list(sl.BASELINE_NAMES), choices=sl.BASELINE_NAMES,
                    metavar="NAME", help=f"which baselines (default all: {', '.join(sl.BASELINE_NAMES)})")
    ap.add_argument("--out", help="write the table as JSON here")
    ap.add_argument("--dry-run", action="store_true", help="only size the baselines (no training)")
    ap.add_argument("--progress", action="store_true", help="show per-step progress bars")
    sl.add_override_args(ap)
    args = ap.parse_args(argv)

    def run() -> int:
        if args.tolerance < 0:
            raise sl.StudyError(f"--tolerance must be >= 0, got {args.tolerance}")
        config = sl.apply_overrides(sl.load_config(args.config), args)
        target, matches = matched_baselines(config, args.target_params, args.baselines, args.tolerance)
        for m in matches:
            flag = "" if m["matched"] else f"  (outside {100 * args.tolerance:.0f}%: the closest size that keeps the shape)"
            print(f"{m['name']}: width {m['width']}, {m['n_liv']} LIVs, {m['params']:,} params "
                  f"({100 * m['rel_diff']:+.1f}% vs {target:,}){flag}")
        if args.dry_run:
            return 0
        task = config.make_task()
        sl.setup_cache()
        rows = train_baselines(config, matches, task, progress=args.progress)
        print_table(rows, config.objectives[0], config.cache_seq_len, target)
        if args.out:
            sl.write_json(pathlib.Path(args.out), {
                "target_params": target, "tolerance": args.tolerance, "quality_objective": config.objectives[0],
                "task": dict(config.task), "train": config.train.to_dict(), "model": config.model.to_dict(),
                "cache_seq_len": config.cache_seq_len, "baselines": rows})
            print(f"wrote {args.out}")
        return 0

    return sl.run_main(run)


if __name__ == "__main__":
    sys.exit(main())
