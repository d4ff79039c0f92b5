"""Runs one STAR study (an evolution from a JSON config), then writes its report and results.json.

The evolution is resumable: run the same command again (same config, same overrides) after an
interruption and it continues from the last finished generation. Baselines (Transformer++,
StripedMamba, LFM2-like of the run's backbone length) are trained inside the run with the
identical budget and data.

    python experiments/run_study.py --config experiments/configs/cpu_recall_cache.json \
        --run-dir runs/cpu_recall_cache
    python experiments/run_study.py --config ... --run-dir ... --report-only   # no training

Writes, in the run directory: the run's own files (config, evaluations.jsonl, baselines.jsonl,
checkpoints, logs), plots/ (Pareto-front PNGs, hypervolume, front.md), and results.json: the
Pareto front (short architecture, quality, params, cache bytes) next to the baselines, and the
largest cache and parameter reductions vs each baseline among genomes of equal or better
quality, over the front and over every evaluated genome.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import study_lib as sl  # noqa: E402
from star_jax.evolve.records import EvalRecord  # noqa: E402


def _row(record: EvalRecord, objective: str) -> dict:
    return {"short": record.short, "genome": record.genome,
            "quality": sl.finite_or_none(sl.quality(record, objective)),
            "params": record.params, "cache_bytes": record.cache_bytes,
            "test_loss": record.test_loss, "test_accuracy": record.test_accuracy,
            "diverged": record.diverged, "generation": record.generation,
            "objectives": dict(record.objectives)}


def summarize(result, quality_tol: float = 0.0) -> dict:
    """The results.json summary of an ``EvolveResult``.

    Arguments:
        result: a finished (or partial) run, e.g. ``star_jax.evolve.load_run(run_dir)``.
        quality_tol: relative quality slack when comparing with a baseline (0: equal or better).

    Returns:
        A JSON-ready dict.
    """
    config = result.config
    q = config.objectives[0]
    front = list(result.front_records)
    archive = [r for r in result.archive.values() if r.failure is None]
    baselines = {r.baseline: r for r in result.baselines}
    comparisons = {}
    for name, base in baselines.items():
        comparisons[name] = {"front": sl.reductions(front, base, q, quality_tol),
                             "all_evaluated": sl.reductions(archive, base, q, quality_tol)}
    return {
        "objectives": list(config.objectives),
        "quality_objective": q,
        "quality_tolerance": quality_tol,
        "cache_seq_len": config.cache_seq_len,
        "cache_bytes_per_elem": config.cache_bytes_per_elem,
        "task": dict(config.task),
        "n_liv": config.n_liv,
        "width": config.model.width,
        "train_steps": config.train.steps,
        "train_batch_size": config.train.batch_size,
        "generations_done": result.generations_done,
        "finished": result.finished,
        "evaluated": len(result.archive),
        "hypervolume": list(result.hypervolume),
        "front": [_row(r, q) for r in front],
        "baselines": {name: _row(r, q) for name, r in baselines.items()},
        "reductions": comparisons,
    }


def print_summary(summary: dict) -> None:
    q = summary["quality_objective"]
    rows = [[f"front {i}", r["short"], r["quality"], r["params"], r["cache_bytes"]]
            for i, r in enumerate(summary["front"])]
    rows += [[name, r["short"], r["quality"], r["params"], r["cache_bytes"]]
             for name, r in summary["baselines"].items()]
    print(sl.table(["", "architecture", q, "params", f"cache bytes (L={summary['cache_seq_len']})"], rows))
    red_rows = []
    for name, scopes in summary["reductions"].items():
        for scope, r in scopes.items():
            red_rows.append([name, scope, r["baseline_quality"], r["n_qualifying"],
                             None if r["cache_reduction"] is None else f"{100 * r['cache_reduction']:.1f}%",
                             None if r["param_reduction"] is None else f"{100 * r['param_reduction']:.1f}%"])
    print(f"Reductions among genomes with {q} <= the baseline's"
          + (f" (+{100 * summary['quality_tolerance']:.1f}%)" if summary["quality_tolerance"] else "") + ":")
    print(sl.table(["baseline", "among", f"baseline {q}", "qualifying", "cache reduction", "param reduction"],
                   red_rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--config", help="EvolveConfig JSON (e.g. experiments/configs/cpu_recall_cache.json); "
                    "not needed with --report-only")
    ap.add_argument("--run-dir", required=True, help="run directory (created; resumed when it exists)")
    ap.add_argument("--report-only", action="store_true",
                    help="do not train: write the report and results.json of the run as it stands")
    ap.add_argument("--quality-tol", type=float, default=0.0,
                    help="relative quality slack for 'equal or better than a baseline' (default 0)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    ap.add_argument("--workers", type=int, help="candidates trained at once (default: 2 on a CPU of 2 or more "
                                                "cores, 1 on a GPU/TPU); results do not depend on it")
    sl.add_override_args(ap)
    args = ap.parse_args(argv)

    def run() -> int:
        import star_jax as sj
        from star_jax.evolve import load_run, write_report
        from star_jax.io.rundir import RunConfigMismatch

        if args.quality_tol < 0:
            raise sl.StudyError(f"--quality-tol must be >= 0, got {args.quality_tol}")
        if args.workers is not None and args.workers < 1:
            raise sl.StudyError(f"--workers must be >= 1, got {args.workers}")
        run_dir = pathlib.Path(args.run_dir)
        if not args.report_only:
            if not args.config:
                raise sl.StudyError("--config is required unless --report-only")
            config = sl.apply_overrides(sl.load_config(args.config), args)
            if args.print_config:
                print(config.to_json())
                return 0
            config.make_task()  # fail early on a task / model mismatch
            sl.setup_cache()
            t0 = time.perf_counter()
            try:
                sj.evolve(config, run_dir, progress=not args.no_progress, workers=args.workers)
            except RunConfigMismatch as e:
                raise sl.StudyError(f"{e} (a run resumes only with the same config and overrides)") from None
            print(f"evolution: {time.perf_counter() - t0:.1f}s")
        result = load_run(run_dir)
        paths = write_report(run_dir)
        summary = summarize(result, args.quality_tol)
        summary["report_files"] = [str(pathlib.Path(p).relative_to(result.run_dir)) for p in paths]
        out = pathlib.Path(result.run_dir) / "results.json"
        sl.write_json(out, summary)
        print_summary(summary)
        print(f"results: {out}")
        print("report: " + ", ".join(str(p) for p in paths))
        return 0

    return sl.run_main(run)


if __name__ == "__main__":
    sys.exit(main())
