"""Retrains the top-K genomes of a finished evolution run at a larger width and budget, next to
the baselines at matched parameters, and reports whether the search-time ranking holds.

As in the STAR paper (the top 8 of each search were retrained on more tokens): the K best
genomes of the run's Pareto front by the quality objective (the config's first objective),
filled from the other evaluated genomes when the front holds fewer than K, are retrained on the
run's task with the run's training settings except width, steps (warm-up scaled with them) and
the other overrides. Transformer++, StripedMamba and LFM2-like are sized to the median
parameter count of the retrained genomes (or --target-params) and trained with the same budget.

Ranking: Spearman's rho and Kendall's tau-b (numpy) between search-time and scaled quality,
over the K genomes, and over the genomes plus the baselines (search-time quality of a baseline:
the run's own baseline records). A rule of thumb printed with them: the ranking "holds" when
rho >= 0.5.

    python experiments/scale_up.py --run-dir runs/cpu_recall_cache --top 8 --width 64 --steps 1000
    python experiments/scale_up.py --run-dir runs/accel_lm_cache --top 8 --width 512 --steps 10000 \
        --task-arg seq_len=2048

Writes scale_up.json and scale_up.md into the run directory (or --out / --out with .md).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import study_lib as sl  # noqa: E402
from star_jax.evolve.loop import record_failure  # noqa: E402
from baselines import matched_baselines, train_baselines  # noqa: E402

RANK_HOLDS_RHO = 0.5


def select_top(result, k: int, fill: bool = True) -> list[dict]:
    """The K best front records by quality, filled from the rest of the archive when needed."""
    q = result.config.objectives[0]
    front = sorted(result.front_records, key=lambda r: sl.quality(r, q))
    chosen = front[:k]
    if fill and len(chosen) < k:
        seen = {r["hash"] for r in chosen}
        rest = [r for r in result.archive.values()
                if r["hash"] not in seen and record_failure(r) is None and math.isfinite(sl.quality(r, q))]
        chosen += sorted(rest, key=lambda r: sl.quality(r, q))[: k - len(chosen)]
    return chosen


def _task_args(pairs) -> dict:
    out = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise sl.StudyError(f"--task-arg {pair!r} is not of the form key=value")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def scaled_config(config, args):
    """The run's config with the scale-up settings (width, steps, batch, lr, seed, task fields)."""
    model = config.model.to_dict()
    train = config.train.to_dict()
    if args.width is not None:
        if args.width < model["head_dim"] or args.width % model["head_dim"]:
            raise sl.StudyError(f"--width {args.width} must be a positive multiple of the run's head_dim "
                                f"{model['head_dim']}")
        model["width"] = args.width
    if args.steps is not None:
        if args.steps < 1:
            raise sl.StudyError(f"--steps must be >= 1, got {args.steps}")
        train["warmup_steps"] = min(args.steps, round(train["warmup_steps"] * args.steps / train["steps"]))
        train["steps"] = args.steps
    for flag, field in (("batch_size", "batch_size"), ("lr", "lr"), ("train_seed", "seed")):
        if getattr(args, flag) is not None:
            train[field] = getattr(args, flag)
    task = dict(config.task)
    extra = _task_args(args.task_arg)
    if "name" in extra:
        raise sl.StudyError("--task-arg cannot change the task's name (the ranking compares one task)")
    task.update(extra)
    changes = {"model": model, "train": train, "task": task}
    try:
        new = config.replace(**changes)
    except (ValueError, TypeError) as e:
        raise sl.StudyError(f"invalid scale-up setting: {e}") from None
    from star_jax.evolve.config import ConfigFieldError

    try:
        task_obj = new.make_task()
    except ConfigFieldError as e:
        if "max_len" not in str(e):
            raise sl.StudyError(str(e)) from None
        task_obj = None
    if task_obj is None:  # a longer task: raise max_len to its length
        from star_jax import tasks

        fields = {k: v for k, v in task.items() if k != "name"}
        seq_len = tasks.make(task["name"], **fields).seq_len
        new = new.replace(model={**model, "max_len": seq_len})
        task_obj = new.make_task()
    return new, task_obj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--run-dir", required=True, help="a run directory written by run_study.py / star-jax evolve")
    ap.add_argument("--top", type=int, default=8, help="how many genomes to retrain (default 8, the paper's)")
    ap.add_argument("--width", type=int, help="model width of the retraining (default: 2x the run's)")
    ap.add_argument("--steps", type=int, help="training steps of the retraining (default: 5x the run's)")
    ap.add_argument("--batch-size", type=int, help="training sequences per step (default: the run's)")
    ap.add_argument("--lr", type=float, help="peak learning rate (default: the run's)")
    ap.add_argument("--train-seed", type=int, help="training seed (default: the run's)")
    ap.add_argument("--task-arg", action="append", metavar="KEY=VALUE",
                    help="change a task field for the retraining (repeatable), e.g. seq_len=2048")
    ap.add_argument("--front-only", action="store_true",
                    help="retrain only front genomes, even when the front holds fewer than --top")
    ap.add_argument("--no-baselines", action="store_true", help="do not train the matched baselines")
    ap.add_argument("--target-params", type=int,
                    help="baseline parameter target (default: median of the retrained genomes)")
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="relative parameter difference counted as matched (default 0.10)")
    ap.add_argument("--out", help="JSON output (default: RUN_DIR/scale_up.json; a .md table goes next to it)")
    ap.add_argument("--progress", action="store_true", help="show per-step progress bars")
    args = ap.parse_args(argv)

    def run() -> int:
        import star_jax as sj
        from star_jax.evolve import load_run
        from star_jax.model import ConfigError

        if args.top < 1:
            raise sl.StudyError(f"--top must be >= 1, got {args.top}")
        result = load_run(args.run_dir)
        config = result.config
        q = config.objectives[0]
        if args.width is None:
            args.width = 2 * config.model.width
        if args.steps is None:
            args.steps = 5 * config.train.steps
        chosen = select_top(result, args.top, fill=not args.front_only)
        if not chosen:
            raise sl.StudyError(f"{args.run_dir} has no evaluated genome with a finite {q}")
        if not result.finished:
            print(f"warning: the run is not finished ({result.generations_done} of "
                  f"{config.generations + 1} generations)", file=sys.stderr)
        big, task = scaled_config(config, args)
        # the baselines are matched (and their sizes checked) before anything trains: a width no
        # baseline fits is an error now, not after every genome has been retrained
        matches, target = None, None
        if not args.no_baselines:
            built = []
            for r in chosen:
                try:
                    built.append(int(sj.param_count(sj.Genome.from_string(r["genome"]), big.model)))
                except ConfigError:
                    pass
            target = args.target_params or (int(round(float(np.median(built)))) if built else None)
            if target is None:
                print("no genome can be built: baselines skipped", file=sys.stderr)
            else:
                base_cfg = big.replace(n_liv=config.n_liv if config.n_liv % 2 == 0 else config.n_liv + 1)
                try:
                    target, matches = matched_baselines(base_cfg, target, tolerance=args.tolerance)
                except sl.StudyError as e:
                    raise sl.StudyError(f"{e} (at width {big.model.width}); pass another --width or "
                                        f"--no-baselines") from None
        print(f"retraining {len(chosen)} genomes at width {big.model.width}, {big.train.steps} steps x "
              f"{big.train.batch_size} sequences (search: width {config.model.width}, {config.train.steps} "
              f"steps x {config.train.batch_size})", flush=True)
        sl.setup_cache()
        rows = []
        for rank, r in enumerate(chosen):
            g = sj.Genome.from_string(r["genome"])
            row = {"search_rank": rank, "short": r["short"], "genome": r["genome"],
                   "in_front": any(f["hash"] == r["hash"] for f in result.front_records),
                   "search_quality": sl.finite_or_none(sl.quality(r, q)), "search_params": r.get("params"),
                   "search_cache_bytes": r.get("cache_bytes")}
            t0 = time.perf_counter()
            try:
                params = int(sj.param_count(g, big.model))
                res = sj.train(g, big.model, task, big.train, progress=args.progress)
            except ConfigError as e:
                row.update({"params": None, "cache_bytes": None, "quality": None, "error": str(e)})
                print(f"  #{rank} {r['short']}: cannot be built at width {big.model.width}: {e}", flush=True)
                rows.append(row)
                continue
            m = dict(res.metrics)
            row.update({
                "params": params,
                "cache_bytes": int(sj.cache_bytes(g, big.model, seq_len=big.cache_seq_len,
                                                  bytes_per_elem=big.cache_bytes_per_elem)),
                "test_loss": sl.finite_or_none(m.get("test_loss")),
                "test_accuracy": sl.finite_or_none(m.get("test_accuracy")),
                "diverged": bool(m.get("diverged")),
                "quality": sl.finite_or_none(sl.quality_from_metrics(m, q)),
                "seconds": round(time.perf_counter() - t0, 1), "error": None})
            print(f"  #{rank} {r['short']}: {q} {sl.fmt(row['search_quality'])} -> {sl.fmt(row['quality'])} "
                  f"({params:,} params, {row['seconds']}s)", flush=True)
            rows.append(row)

        base_rows = []
        if matches is not None:
            base_rows = train_baselines(base_cfg, matches, task, progress=args.progress)
            search_base = {r["baseline"]: r for r in result.baselines}
            for b in base_rows:
                sb = search_base.get(b["name"])
                b["search_quality"] = None if sb is None else sl.finite_or_none(sl.quality(sb, q))

        def correlations(items):
            items = [x for x in items if x.get("search_quality") is not None or x.get("quality") is not None]
            if len(items) < 2:
                return {"n": len(items), "spearman": None, "kendall_tau_b": None}
            a = sl.finite_for_ranking([math.inf if x.get("search_quality") is None else x["search_quality"]
                                       for x in items])
            b = sl.finite_for_ranking([math.inf if x.get("quality") is None else x["quality"] for x in items])
            return {"n": len(items), "spearman": sl.finite_or_none(sl.spearman(a, b)),
                    "kendall_tau_b": sl.finite_or_none(sl.kendall_tau_b(a, b))}

        genomes_corr = correlations(rows)
        all_corr = correlations(rows + [b for b in base_rows if b.get("search_quality") is not None])
        rho = genomes_corr["spearman"]
        verdict = ("too few genomes to rank" if rho is None else
                   "ranking holds" if rho >= RANK_HOLDS_RHO else "ranking does not hold")
        finite = [row for row in rows if row.get("quality") is not None]
        best_scaled = min(finite, key=lambda x: x["quality"])["search_rank"] if finite else None
        summary = {
            "run_dir": str(args.run_dir), "quality_objective": q, "top": args.top,
            "search": {"width": config.model.width, "steps": config.train.steps,
                       "batch_size": config.train.batch_size, "task": dict(config.task)},
            "scaled": {"width": big.model.width, "steps": big.train.steps, "batch_size": big.train.batch_size,
                       "lr": big.train.lr, "task": dict(big.task), "max_len": big.model.max_len},
            "genomes": rows, "baselines": base_rows, "baseline_target_params": target,
            "rank_correlation_genomes": genomes_corr, "rank_correlation_with_baselines": all_corr,
            "search_best_is_scaled_best": best_scaled == 0 if best_scaled is not None else None,
            "verdict": verdict, "rule": f"ranking holds when Spearman rho >= {RANK_HOLDS_RHO}",
        }
        header = ["", "architecture", f"search {q}", f"scaled {q}", "params", f"cache bytes (L={big.cache_seq_len})"]
        table_rows = [[f"#{row['search_rank']}" + ("" if row["in_front"] else " (archive)"), row["short"],
                       row["search_quality"], row.get("quality") if not row.get("error") else "build error",
                       row.get("params"), row.get("cache_bytes")] for row in rows]
        table_rows += [[b["name"], b["short"], b.get("search_quality"), b["quality"],
                        f"{b['params']:,} ({100 * b['rel_diff']:+.1f}% vs {target:,}"
                        + ("" if b["matched"] else ", not matched") + ")", b["cache_bytes"]] for b in base_rows]
        text = (f"# Scale-up of {args.run_dir}\n\n"
                f"Search: width {config.model.width}, {config.train.steps} steps. Scaled: width "
                f"{big.model.width}, {big.train.steps} steps x {big.train.batch_size}.\n\n"
                + sl.table(header, table_rows)
                + f"\nGenomes (n={genomes_corr['n']}): Spearman {sl.fmt(genomes_corr['spearman'])}, "
                  f"Kendall tau-b {sl.fmt(genomes_corr['kendall_tau_b'])}. With baselines "
                  f"(n={all_corr['n']}): Spearman {sl.fmt(all_corr['spearman'])}, Kendall tau-b "
                  f"{sl.fmt(all_corr['kendall_tau_b'])}.\n\n"
                  f"Verdict: {verdict} ({summary['rule']}); the search's best genome "
                  f"{'is' if summary['search_best_is_scaled_best'] else 'is not'} the best after scaling.\n")
        print(text)
        out = pathlib.Path(args.out) if args.out else pathlib.Path(result.run_dir) / "scale_up.json"
        sl.write_json(out, summary)
        out.with_suffix(".md").write_text(text, encoding="utf-8")
        print(f"wrote {out} and {out.with_suffix('.md')}")
        return 0

    return sl.run_main(run)


if __name__ == "__main__":
    sys.exit(main())
