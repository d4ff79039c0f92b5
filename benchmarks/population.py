"""Population-engine benchmark: one generation of 16 random genomes trained sequentially
(one `star_jax.train` each) versus the static and genome-as-data population strategies.

Each strategy runs in a fresh subprocess (so its peak RSS and its compiles are its own). Prints
and writes Markdown + JSON results. Usage:
    python benchmarks/population.py [--out benchmarks/results] [--strategies static,data,sequential]
        [--population 16] [--n-liv 8] [--width 64] [--seq-len 128] [--batch 16] [--steps 100]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import jax

    return {"cpu": model, "cores": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}


def _save_results(out_dir: str, name: str, result: dict, text: str) -> None:
    """Writes ``<out_dir>/<name>.json`` (the result) and ``.md`` (its table), and prints the table."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, name + ".md"), "w") as f:
        f.write(text)
    print(text)


def _matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Measured float32 matmul FLOP/s (best of ``reps``) of an n x n x n product."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def _worker(args) -> dict:
    import jax

    events: list[tuple[float, float]] = []  # (end time, seconds) of every trace/lowering/compile
    backend_compiles = [0]  # XLA backend compiles (what the compile-count tests count)

    def listen(event, duration, **_):
        if event in ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_trace_duration",
                     "/jax/core/compile/jaxpr_to_mlir_module_duration"):
            events.append((time.perf_counter(), duration))
        if event == "/jax/core/compile/backend_compile_duration":
            backend_compiles[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)

    import star_jax as sj
    from star_jax import tasks
    from star_jax.population import train_population
    from star_jax.train import TrainConfig

    task = tasks.make("in_context_recall", vocab_size=16, seq_len=args.seq_len)
    cfg = sj.ModelConfig(width=args.width, vocab_size=16, max_len=task.seq_len, head_dim=min(16, args.width // 4))
    tc = TrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=min(10, args.steps), eval_batch_size=256)
    n_timed = args.population
    if args.worker == "sequential" and 0 < args.sequential_sample < args.population:
        n_timed = args.sequential_sample  # time a sample of each generation, extrapolate linearly
    scale = args.population / n_timed
    extra = {}
    if args.worker == "sequential":
        from star_jax.train.many import default_workers

        extra["workers"] = args.workers or default_workers()
    gens = []
    for gen in range(args.generations):
        # Generation 0 is the historical population (seeds 1000..); later ones are new genomes of
        # the same config, as an evolution run would ask for.
        genomes = [sj.random_genome(args.n_liv, 1000 + 1000 * gen + s) for s in range(args.population)][:n_timed]
        n_events, n_backend = len(events), backend_compiles[0]
        t = time.perf_counter()
        res = train_population(genomes, cfg, task, tc, strategy=args.worker, **extra)
        wall = time.perf_counter() - t
        cand_steps = sum(m["steps_run"] for m in res.metrics)
        params = [sj.param_count(g, cfg) for g in genomes]
        # Analytic training FLOPs: 6 x (parameters outside embedding) per token per step (matmuls).
        flops = sum(6.0 * (p - cfg.vocab_size * cfg.width) * args.batch * task.seq_len * args.steps for p in params)
        init_s = res.timings.get("init", 0.0)
        new_events = events[n_events:]
        compile_total = sum(d for _, d in new_events)
        compile_after_init = sum(d for end, d in new_events if end > t + init_s)
        steady = max(wall - init_s - compile_after_init, 1e-9)
        gens.append({
            "generation": gen,
            "wall_s": wall * scale,
            "compile_s": compile_total * scale,
            "init_s": init_s * scale,
            "n_compiles": res.n_compiles,
            "xla_compiles": backend_compiles[0] - n_backend,
            "ms_per_candidate_step": 1e3 * steady / cand_steps,
            "ms_per_candidate_step_end_to_end": 1e3 * wall / cand_steps,
            "steady_s": steady * scale,
            "train_flops": flops * scale,
            "achieved_flops_per_s": flops / steady,
            "test_loss": [m["test_loss"] for m in res.metrics],
            "diverged": [m["diverged"] for m in res.metrics],
            "genomes": [g.to_string() for g in genomes],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "extrapolated_from": n_timed if scale != 1.0 else None,
            **extra,
        })
        print("GEN " + json.dumps(gens[-1]), flush=True)  # kept if a later generation times out
    return _summary(args.worker, n_timed if scale != 1.0 else None, gens)


def _summary(strategy: str, extrapolated_from, gens: list) -> dict:
    first = gens[0]
    return {
        "strategy": strategy,
        "extrapolated_from": extrapolated_from,
        # the first generation (compile included), as before; all generations below
        "wall_s": first["wall_s"],
        "compile_s": first["compile_s"],
        "init_s": first["init_s"],
        "n_compiles": first["n_compiles"],
        "ms_per_candidate_step": first["ms_per_candidate_step"],
        "ms_per_candidate_step_end_to_end": first["ms_per_candidate_step_end_to_end"],
        "steady_s": first["steady_s"],
        "achieved_flops_per_s": first["achieved_flops_per_s"],
        "total_wall_s": sum(g["wall_s"] for g in gens),
        "later_wall_s": [g["wall_s"] for g in gens[1:]],
        "later_compile_s": [g["compile_s"] for g in gens[1:]],
        "peak_rss_mb": max(g["peak_rss_mb"] for g in gens),
        "generations": gens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--strategies", default="static,data,sequential",
                    help="comma-separated; 'name:G' runs G generations for that strategy")
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--n-liv", type=int, default=8)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--sequential-sample", type=int, default=0,
                    help="time sequential training on only this many genomes and extrapolate (0 = all)")
    ap.add_argument("--generations", type=int, default=1,
                    help="train this many populations of new genomes in one process (a strategy that "
                         "compiles once per config pays its compile only in the first)")
    ap.add_argument("--workers", type=int, default=0,
                    help="sequential: candidates trained at once (0: train_many's default)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per strategy subprocess")
    ap.add_argument("--name", default="population")
    ap.add_argument("--report", default=None, metavar="JSON",
                    help="only rewrite the Markdown report of a saved result (written next to it)")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        _write_markdown(saved, os.path.splitext(args.report)[0] + ".md",
                        os.path.splitext(os.path.basename(args.report))[0])
        return
    if args.worker:
        print("RESULT " + json.dumps(_worker(args)), flush=True)
        return

    machine = _machine()
    peak = _matmul_peak()
    runs = []
    for item in args.strategies.split(","):
        strategy, _, n_gen = item.partition(":")  # "static:1" = one generation for this strategy
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", strategy]
        for k in ("population", "n_liv", "width", "seq_len", "batch", "steps", "sequential_sample", "workers"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        cmd += ["--generations", n_gen or str(args.generations)]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        print(f"running {strategy} ...", flush=True)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
            stdout, error = out.stdout, out.stderr[-2000:]
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            error = f"timed out after {args.timeout:.0f} s"
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        done = [json.loads(ln[len("GEN "):]) for ln in stdout.splitlines() if ln.startswith("GEN ")]
        if lines:
            r = json.loads(lines[-1][len("RESULT "):])
        elif done:  # the generations that finished before the timeout or crash
            r = _summary(strategy, done[0]["extrapolated_from"], done)
            r["error_after"] = f"generation {len(done) - 1}: {error.splitlines()[-1] if error else '?'}"
        else:
            runs.append({"strategy": strategy, "error": error})
            continue
        r["fraction_of_matmul_peak"] = r["achieved_flops_per_s"] / peak
        runs.append(r)
        print(f"  {strategy}: {r['wall_s']:.1f} s end to end, {r['ms_per_candidate_step']:.2f} ms/candidate-step",
              flush=True)
    seq = next((r for r in runs if r.get("strategy") == "sequential" and "wall_s" in r), None)
    for r in runs:
        if seq and "wall_s" in r:
            r["speedup_vs_sequential"] = seq["wall_s"] / r["wall_s"]
            if len(r["generations"]) == len(seq["generations"]):
                r["speedup_vs_sequential_all_generations"] = seq["total_wall_s"] / r["total_wall_s"]
    bound = None
    if seq:
        # An engine that compiled nothing and ran each candidate-step exactly as fast as a lone
        # model (no parallel headroom left between candidates) would still need seq's steady time.
        bound = seq["wall_s"] / seq["steady_s"]
    result = {"machine": machine, "matmul_peak_flops_per_s": peak,
              "config": {k: getattr(args, k) for k in ("population", "n_liv", "width", "seq_len", "batch", "steps",
                                                       "generations", "strategies")},
              "task": "in_context_recall (vocab 16)", "runs": runs,
              "zero_compile_bound_vs_sequential": bound}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    _write_markdown(result, os.path.join(args.out, f"{args.name}.md"), args.name)


def _write_markdown(result: dict, path: str, name: str) -> None:
    """The Markdown report of a result (``--report JSON`` rewrites it from a saved result)."""
    machine, peak, cfg, runs = result["machine"], result["matmul_peak_flops_per_s"], result["config"], result["runs"]
    seq = next((r for r in runs if r.get("strategy") == "sequential" and "wall_s" in r), None)
    bound = result.get("zero_compile_bound_vs_sequential")
    n_gen = {r["strategy"]: len(r["generations"]) for r in runs if "generations" in r}
    gens_text = ", ".join(f"{k} {v}" for k, v in n_gen.items())
    lines = [f"# Population engine benchmark ({name})", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, JAX {machine['jax']} ({machine['backend']}).",
             f"Measured f32 matmul peak: {peak / 1e9:.1f} GFLOP/s.", "",
             f"Population {cfg['population']} random genomes, {cfg['n_liv']} LIVs, width {cfg['width']}, "
             f"L {cfg['seq_len']}, batch {cfg['batch']}, {cfg['steps']} steps, in_context_recall (vocab 16); "
             f"generations of new genomes per strategy, each strategy in one process: {gens_text}."
             + (f" Sequential trained {seq['generations'][0]['workers']} candidate"
                f"{'s' if seq['generations'][0]['workers'] > 1 else ''} at a time (`workers`)."
                if seq and "workers" in seq["generations"][0] else ""), "",
             "First generation (compile included):", "",
             "| strategy | end to end (s) | compile (s) | init (s) | ms / candidate-step (steady) | "
             "speedup vs sequential | peak RSS (MB) | achieved GFLOP/s | fraction of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['strategy']} | error: {r['error'].splitlines()[-1] if r['error'] else '?'} |||||||")
            continue
        label = r["strategy"] + (f" (timed on {r['extrapolated_from']}, scaled)" if r.get("extrapolated_from") else "")
        if r.get("error_after"):
            label += f" (then stopped: {r['error_after']})"
        lines.append(f"| {label} | {r['wall_s']:.1f} | {r['compile_s']:.1f} | {r['init_s']:.1f} | "
                     f"{r['ms_per_candidate_step']:.2f} | {r.get('speedup_vs_sequential', float('nan')):.2f}x | "
                     f"{r['peak_rss_mb']:.0f} | {r['achieved_flops_per_s'] / 1e9:.2f} | "
                     f"{r['fraction_of_matmul_peak']:.3f} |")
    multi = [r for r in runs if "error" not in r and seq and len(r["generations"]) > 1
             and len(r["generations"]) == len(seq["generations"])]
    if multi:
        lines += ["", f"All {len(seq['generations'])} generations (strategies that ran as many as sequential):", "",
                  "| strategy | per generation (s) | compile per generation (s) (XLA compiles) | ms / candidate-step "
                  "per generation "
                  "| total (s) | speedup vs sequential |",
                  "|---|---|---|---|---|---|"]
        for r in multi:
            per = ", ".join(f"{g['wall_s']:.1f}" for g in r["generations"])
            comp = ", ".join(f"{g['compile_s']:.1f}" + (f" ({g['xla_compiles']})" if "xla_compiles" in g else "")
                             for g in r["generations"])
            ms = ", ".join(f"{g['ms_per_candidate_step']:.1f}" for g in r["generations"])
            lines.append(f"| {r['strategy']} | {per} | {comp} | {ms} | {r['total_wall_s']:.1f} | "
                         f"{r['speedup_vs_sequential_all_generations']:.2f}x |")
    if bound:
        lines += ["", f"Zero-compile bound: sequential's first generation spent {seq['steady_s']:.1f} s of its "
                  f"{seq['wall_s']:.1f} s in steady training steps, so an engine that compiled nothing and ran "
                  f"each candidate-step as fast as a lone model would be at most {bound:.2f}x faster. Beyond "
                  "that, the speedup has to come from running candidate-steps faster together than alone, "
                  "which needs idle parallel hardware (an accelerator, or more cores than one model's ops use)."]
    lines += ["", "Compile = XLA trace + lowering + backend compile seconds (jax.monitoring). Steady "
              "ms/candidate-step = (end to end - init - compiles after init) / candidate-steps (for sequential "
              "the per-candidate init is inside the loop and counted). FLOPs are analytic: "
              "6 x non-embedding parameters per token per step (matmuls only; attention scores and scans "
              "not counted), so the fraction of peak is a lower bound."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
