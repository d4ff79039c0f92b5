"""Candidates trained at once: ``train_many`` with 1 worker against more, in one process.

For each job (random 8-LIV genomes at the population-engine setting, Transformer++, and a MAD
score's grid) the same genomes are trained with each number of workers in turn, ``--reps`` times
with the order alternated; their part programs are compiled first (outside the timing), so the
ratio is one of training throughput. Every run's metrics are checked to be identical to the
1-worker run's. The ``mad`` job is ``star_jax.mad.score`` of MAD's 2-block backbone (SA-1, then
SwiGLU; width 64) on the in-context recall baseline setting, its 6-point lr x weight-decay grid
at 100 steps of batch 64 (``mad_card.py``'s CPU batch); it runs when ``--jobs`` names it (the
default is ``random,tpp``). Usage:

    python benchmarks/workers.py [--workers 1,2] [--reps 2] [--candidates 8] [--jobs random,tpp,mad]
                                 [--name workers]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

WIDTH, SEQ, BATCH, STEPS, N_LIV = 64, 128, 16, 100, 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts; the first is the reference")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=8, help="candidates per job")
    ap.add_argument("--jobs", default="random,tpp", help="comma-separated: random, tpp, mad")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="workers")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    if args.reps < 1 or args.candidates < 1 or not counts or min(counts) < 1:
        ap.error("--reps, --candidates and every --workers count must be >= 1")

    import star_jax as sj
    from population import _machine, _save_results
    from star_jax.train.many import train_many

    cmd = "python benchmarks/workers.py " + " ".join(sys.argv[1:])
    result = {"machine": _machine(), "command": cmd.strip(), "setting": {
        "width": WIDTH, "seq_len": SEQ, "batch": BATCH, "steps": STEPS, "n_liv": N_LIV,
        "candidates": args.candidates, "reps": args.reps}, "jobs": {}}
    for job in args.jobs.split(","):
        if job == "mad":
            result["jobs"][job] = _mad_job(counts, args.reps)
            continue
        vocab = 16 if job == "random" else 32
        task = sj.tasks.make("in_context_recall", vocab_size=vocab, seq_len=SEQ)
        cfg = sj.ModelConfig(width=WIDTH, vocab_size=vocab, max_len=task.seq_len, head_dim=16)
        tc = sj.TrainConfig(steps=STEPS, batch_size=BATCH, warmup_steps=10, lr=1e-3)
        if job == "random":  # the population-engine setting's first generation
            genomes = [sj.random_genome(N_LIV, 1000 + s) for s in range(args.candidates)]
        elif job == "tpp":
            genomes = [sj.baselines.transformer_pp(n_liv=N_LIV)] * args.candidates
        else:
            ap.error(f"unknown job {job!r} (random, tpp, mad)")
        seeds = range(args.candidates)
        t = time.perf_counter()
        sj.train.parts.warm_up_genomes(genomes, cfg, task, BATCH)
        compile_s = time.perf_counter() - t
        cfgs = [tc.replace(seed=s) for s in seeds]  # one seed per candidate

        def run(workers: int):
            return [r.metrics for r in train_many(genomes, cfg, task, cfgs, workers=workers)]

        result["jobs"][job] = _time_workers(job, run, counts, args.reps, compile_s)[0]
    _save_results(args.out, args.name, result, _markdown(result, counts))


MAD_GENOME, MAD_WIDTH, MAD_BATCH = "1.1.1.1.1-9.1.1.1.1", 64, 64


def _mad_job(counts: list[int], reps: int) -> dict:
    """``star_jax.mad.score`` over its grid with each worker count (see the module docstring)."""
    import star_jax as sj

    (setting,) = [s for s in sj.tasks.mad_baselines() if s.task == "in_context_recall"]
    task = setting.make()
    cfg = sj.ModelConfig(width=MAD_WIDTH, vocab_size=task.vocab_size, max_len=task.seq_len, head_dim=16)
    t = time.perf_counter()
    sj.train.parts.warm_up_genomes([MAD_GENOME], cfg, task, MAD_BATCH)
    compile_s = time.perf_counter() - t
    out, score = _time_workers("mad", lambda w: sj.mad.score(
        MAD_GENOME, cfg, settings=[setting], steps=STEPS, batch_size=MAD_BATCH, progress=False, workers=w).to_dict(),
        counts, reps, compile_s)
    return {**out, "score": score["score"]}


def _time_workers(job: str, run, counts: list[int], reps: int, compile_s: float) -> dict:
    """Times ``run(workers)`` for every worker count, ``reps`` times with the order alternated,
    and checks that every run returns what the first one did: ``(summary, that result)``."""
    walls: dict[int, list[float]] = {w: [] for w in counts}
    ref = None
    for rep in range(reps):
        for w in (counts if rep % 2 == 0 else counts[::-1]):
            t = time.perf_counter()
            out = run(w)
            walls[w].append(time.perf_counter() - t)
            if ref is None:
                ref = out
            elif out != ref:
                raise SystemExit(f"{job}: {w} workers gave other results than the first run")
            print(f"{job} rep {rep} workers {w}: {walls[w][-1]:.1f} s", flush=True)
    first = statistics.median(walls[counts[0]])
    return {"compile_s": compile_s, "walls_s": {str(w): v for w, v in walls.items()},
            "median_s": {str(w): statistics.median(v) for w, v in walls.items()},
            "speedup_vs_first": {str(w): first / statistics.median(v) for w, v in walls.items()},
            "identical_metrics": True}, ref


def _markdown(result: dict, counts: list[int]) -> str:
    m, s = result["machine"], result["setting"]
    lines = ["# Candidates trained at once", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}).",
             f"Command: `{result['command']}`", "",
             f"Random genomes and Transformer++: {s['candidates']} candidates per job, {s['n_liv']} LIVs, width "
             f"{s['width']}, L {s['seq_len']}, batch {s['batch']}, {s['steps']} steps. MAD: `star_jax.mad.score` "
             f"of a 2-block backbone (width {MAD_WIDTH}) over its 6-point lr x weight-decay grid. Each job runs "
             f"with every worker count in turn, {s['reps']} times (order alternated); part programs compiled "
             "before the timing. Every run's metrics (MAD: the whole score) equal the first run's.", "",
             "| job | " + " | ".join(f"{w} worker{'s' if w > 1 else ''} (s, median)" for w in counts)
             + " | " + " | ".join(f"speed-up of {w}" for w in counts[1:]) + " |",
             "|---|" + "---|" * (2 * len(counts) - 1)]
    names = {"random": "random 8-LIV genomes (genome seeds 1000.., training seeds 0..)",
             "tpp": "Transformer++ (training seeds 0..)",
             "mad": f"MAD score grid: 6 runs of SA-1 > SwiGLU, in-context recall baseline, {STEPS} steps of {MAD_BATCH}"}
    for job, r in result["jobs"].items():
        lines.append(f"| {names.get(job, job)} | " + " | ".join(
            f"{r['median_s'][str(w)]:.1f} ({', '.join(f'{x:.1f}' for x in r['walls_s'][str(w)])})" for w in counts)
            + " | " + " | ".join(f"{r['speedup_vs_first'][str(w)]:.2f}x" for w in counts[1:]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
