"""End-to-end cost of STAR's own workload, compile included: the job a plain eager
reimplementation is judged on, run the way a user gets it by default.

Jobs (each in a fresh process, so its compiles are its own):
- ``tpp``: 16 Transformer++ candidates (8 LIVs, SA-1/SwiGLU alternating; width 64, vocab 32,
  L 128, batch 16, 100 AdamW steps, then evaluation on the test set), one ``star_jax.train`` each.
- ``random``: G generations of 16 random 8-LIV genomes each (the population-engine setting),
  trained with ``train_population(strategy=...)`` (default: what ``EvolveConfig(strategy="auto")``
  picks on this backend).

Every job runs twice against one fresh persistent compilation cache: ``cold`` (empty cache) then
``warm`` (a second process, same cache). Per part it records wall seconds, XLA compile seconds
and counts (``jax.monitoring``), the steady step time and the fraction of the f32 matmul peak
measured in the same process. Usage:

    python benchmarks/peer_job.py [--jobs tpp,random] [--generations 3] [--name peer_job]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

WIDTH, VOCAB, SEQ, BATCH, STEPS, POP, N_LIV = 64, 32, 128, 16, 100, 16, 8


def _flops_per_step(genome, cfg) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward), from the XLA cost
    analysis of the whole model's forward."""
    import jax
    import jax.numpy as jnp

    import star_jax as sj

    model = sj.build_model(genome, cfg)
    tokens = jnp.zeros((BATCH, SEQ), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens[:1]))
    lowered = jax.jit(model.apply).lower(params, tokens)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return 3.0 * float(cost.get("flops", 0.0))


def _worker(job: str, generations: int, strategy: str | None) -> dict:
    t_start = time.perf_counter()
    import jax

    from star_jax.compile_cache import enable_compilation_cache

    compiles: list[float] = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    cache = enable_compilation_cache()
    import star_jax as sj

    t_import = time.perf_counter() - t_start
    task = sj.tasks.make("in_context_recall", vocab_size=VOCAB, seq_len=SEQ)
    cfg = sj.ModelConfig(width=WIDTH, vocab_size=VOCAB, max_len=task.seq_len, head_dim=16)
    train_cfg = sj.TrainConfig(steps=STEPS, batch_size=BATCH, warmup_steps=10, lr=1e-3)
    out: dict = {"job": job, "cache_dir_set": cache is not None, "import_s": t_import, "parts": []}
    if job == "tpp":
        genome = sj.baselines.transformer_pp(n_liv=N_LIV)
        for c in range(POP):
            n0, t0 = len(compiles), time.perf_counter()
            res = sj.train(genome, cfg, task, train_cfg.replace(seed=c), progress=False)
            out["parts"].append({"part": f"candidate {c}", "wall_s": time.perf_counter() - t0,
                                 "compiles": len(compiles) - n0, "compile_s": sum(compiles[n0:]),
                                 "test_accuracy": res.metrics["test_accuracy"]})
        # steady step: the last candidate once more, timed per step without evaluation
        steady_cfg = train_cfg.replace(steps=STEPS, seed=99, eval_batch_size=BATCH)
        t0 = time.perf_counter()
        sj.train(genome, cfg, task, steady_cfg, progress=False)
        out["repeat_candidate_s"] = time.perf_counter() - t0
        flops = _flops_per_step(genome, cfg)
        from population import _matmul_peak

        peak = _matmul_peak()
        out["matmul_peak_flops"] = peak
        out["flops_per_step"] = flops
    else:
        from star_jax.evolve.loop import train_candidates  # noqa: F401  (the default evaluator)

        strategy = strategy or ("sequential" if jax.default_backend() == "cpu" else "static")
        out["strategy"] = strategy
        for gen in range(generations):
            genomes = [sj.random_genome(N_LIV, 1000 * gen + s) for s in range(POP)]
            n0, t0 = len(compiles), time.perf_counter()
            res = sj.train_population(genomes, cfg, task, train_cfg, strategy=strategy)
            out["parts"].append({"part": f"generation {gen + 1}", "wall_s": time.perf_counter() - t0,
                                 "compiles": len(compiles) - n0, "compile_s": sum(compiles[n0:]),
                                 "mean_test_accuracy": sum(m["test_accuracy"] for m in res.metrics) / POP})
    out["total_s"] = time.perf_counter() - t_start
    out["total_compiles"] = len(compiles)
    out["total_compile_s"] = sum(compiles)
    return out


def _run(job: str, cache_dir: str, generations: int, strategy: str | None, timeout: float) -> dict:
    env = dict(os.environ, STAR_JAX_CACHE_DIR=cache_dir, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--worker", job, "--generations", str(generations)]
    if strategy:
        cmd += ["--strategy", strategy]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"job": job, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"job": job, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def _markdown(results: list[dict], machine: dict) -> str:
    lines = [f"# End-to-end job cost (compile included)\n",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, JAX {machine['jax']} ({machine['backend']}).",
             f"Command: `python benchmarks/peer_job.py {' '.join(sys.argv[1:])}`\n"]
    for r in results:
        if "error" in r:
            lines.append(f"## {r['job']} ({r.get('cache', '?')} cache): {r['error']}\n")
            continue
        lines.append(f"## {r['job']} ({r['cache']} cache{', ' + r['strategy'] if 'strategy' in r else ''})\n")
        lines.append(f"Process wall time {r['process_wall_s']:.1f} s (import {r['import_s']:.1f} s); "
                     f"XLA compiles {r['total_compiles']} taking {r['total_compile_s']:.1f} s "
                     f"({100 * r['total_compile_s'] / r['process_wall_s']:.0f}% of the wall time).\n")
        lines.append("| part | wall (s) | compiles | compile (s) |")
        lines.append("|---|---|---|---|")
        for p in r["parts"]:
            lines.append(f"| {p['part']} | {p['wall_s']:.2f} | {p['compiles']} | {p['compile_s']:.2f} |")
        if "flops_per_step" in r:
            step = r["repeat_candidate_s"] / STEPS
            frac = r["flops_per_step"] / step / r["matmul_peak_flops"]
            lines.append(f"\nA repeated candidate (100 steps + evaluation, nothing compiled): "
                         f"{r['repeat_candidate_s']:.2f} s, i.e. at most {1000 * step:.1f} ms per step; "
                         f"{r['flops_per_step'] / 1e9:.2f} GFLOP per step against a measured f32 matmul peak "
                         f"of {r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s: at least {frac:.2f} of peak.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--jobs", default="tpp,random")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--strategy", default=None, help="random job: population strategy (default: auto's pick)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="peer_job")
    ap.add_argument("--warm-only-after-cold", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.generations, args.strategy)))
        return
    from population import _machine

    machine = _machine()
    results = []
    os.makedirs(args.out, exist_ok=True)
    for job in args.jobs.split(","):
        with tempfile.TemporaryDirectory(prefix="star-jax-cache-") as cache:
            for label in ("cold", "warm"):
                r = _run(job, cache, args.generations, args.strategy, args.timeout)
                r["cache"] = label
                results.append(r)
                print(json.dumps(r), flush=True)
                # written after every part: a later timeout never loses what is done
                with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
                    json.dump({"machine": machine, "results": results}, f, indent=1)
                with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
                    f.write(_markdown(results, machine))
    print(_markdown(results, machine))


if __name__ == "__main__":
    main()
