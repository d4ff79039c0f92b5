"""End-to-end cost of STAR's own workload, compile included: the job a plain eager
reimplementation is judged on, run the way a user gets it by default.

The job: 16 Transformer++ candidates (8 LIVs, SA-1/SwiGLU alternating; width 64, vocab 32,
in-context recall at L 128 (127 tokens), batch 16, 100 AdamW steps, then evaluation on the
1,280-sequence test set), in a fresh process, two ways: ``tpp``, one ``star_jax.train`` per
candidate, one after another, and ``tpp_many``, the same candidates through
``star_jax.train.many.train_many`` (what ``train_population`` and ``evolve`` use), its default
number at a time. Each runs twice against one fresh persistent compilation cache: ``cold``
(empty cache) then ``warm`` (a second process, same cache). Per part it records wall seconds,
XLA compile seconds and counts (``jax.monitoring``); the job's time runs from the process start
to the last candidate's result. After the ``tpp`` job (outside its time) the candidate is timed
at 1 and at 100 steps, 3 times each, the evaluation alone 3 times, and the step's FLOPs are
compared with the f32 matmul peak measured in the same process. The population-engine setting (random
8-LIV genomes, several generations, every strategy) is ``benchmarks/population.py``. Usage:

    python benchmarks/peer_job.py [--name peer_job] [--timeout 1800] [--jobs tpp,tpp_many]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

WIDTH, VOCAB, SEQ, BATCH, STEPS, POP, N_LIV = 64, 32, 128, 16, 100, 16, 8
REPS = 3
JOBS = {"tpp": "one star_jax.train per candidate, one after another",
        "tpp_many": "the same candidates through star_jax.train.many.train_many, its default workers at a time"}


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


def _save_partial(out: dict) -> None:
    """Keeps what is done so far where the parent can read it if this process is killed."""
    path = os.environ.get("STAR_JAX_PEER_PARTIAL")
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(path + ".tmp", path)


def _worker(job: str) -> dict:
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
    genome = sj.baselines.transformer_pp(n_liv=N_LIV)
    if job == "tpp_many":  # the same candidates through train_many, its default workers at a time
        from star_jax.train.many import default_workers, train_many

        n0, t0 = len(compiles), time.perf_counter()
        workers = default_workers()
        results = train_many([genome] * POP, cfg, task, [train_cfg.replace(seed=c) for c in range(POP)])
        out["workers"] = workers
        out["parts"].append({"part": f"{POP} candidates, {workers} at a time", "wall_s": time.perf_counter() - t0,
                             "compiles": len(compiles) - n0, "compile_s": sum(compiles[n0:]),
                             "test_accuracy": [r.metrics["test_accuracy"] for r in results]})
        out["job_s"] = time.perf_counter() - t_start
        out["job_compiles"] = len(compiles)
        out["job_compile_s"] = sum(compiles)
        return out
    for c in range(POP):
        n0, t0 = len(compiles), time.perf_counter()
        res = sj.train(genome, cfg, task, train_cfg.replace(seed=c), progress=False)
        out["parts"].append({"part": f"candidate {c}", "wall_s": time.perf_counter() - t0,
                             "compiles": len(compiles) - n0, "compile_s": sum(compiles[n0:]),
                             "test_accuracy": res.metrics["test_accuracy"]})
        _save_partial(out)
    out["job_s"] = time.perf_counter() - t_start
    out["job_compiles"] = len(compiles)
    out["job_compile_s"] = sum(compiles)
    # outside the job: the same candidate at 1 and at 100 steps, REPS times each (alternated);
    # the difference of the medians is 99 steady steps, the rest of the 1-step run is the fixed
    # cost of a candidate (init, evaluation of the test set, host work)
    one, full = [], []
    for _ in range(REPS):
        t0 = time.perf_counter()
        sj.train(genome, cfg, task, train_cfg.replace(seed=99, steps=1, warmup_steps=0), progress=False)
        one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sj.train(genome, cfg, task, train_cfg.replace(seed=99), progress=False)
        full.append(time.perf_counter() - t0)
    out["one_step_candidate_s"], out["repeat_candidate_s"] = one, full
    out["step_s"] = (statistics.median(full) - statistics.median(one)) / (STEPS - 1)
    out["fixed_s"] = statistics.median(one) - out["step_s"]
    # the evaluation alone: the test set through the forward programs, REPS times
    model = sj.train.parts.PartModel(sj.compile_genome(genome, cfg), task.seq_len)
    vecs = model.init(0)[0]
    from star_jax.train.step import stack_test_batches

    test_inputs, test_targets = (jax.device_put(list(a)) for a in stack_test_batches(task, BATCH))
    from star_jax.train.threads import eval_threads

    out["eval_threads"] = eval_threads()
    evals, evals_one = [], []  # on sj.train's threads, and on one thread (alternated)
    for _ in range(REPS):
        for threads, times in ((out["eval_threads"], evals), (1, evals_one)):
            t0 = time.perf_counter()
            model.eval_sums(vecs, test_inputs, test_targets, threads)
            times.append(time.perf_counter() - t0)
    out["eval_s"] = statistics.median(evals)
    out["eval_one_thread_s"] = statistics.median(evals_one)
    out["flops_per_step"] = _flops_per_step(genome, cfg)
    from population import _matmul_peak

    out["matmul_peak_flops"] = _matmul_peak()
    out["total_s"] = time.perf_counter() - t_start
    out["total_compiles"] = len(compiles)
    out["total_compile_s"] = sum(compiles)
    return out


def _run(job: str, cache_dir: str, timeout: float) -> dict:
    partial = os.path.join(cache_dir, "partial.json")
    env = dict(os.environ, STAR_JAX_CACHE_DIR=cache_dir, STAR_JAX_PEER_PARTIAL=partial,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--worker", job]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        done = {}
        if os.path.exists(partial):
            with open(partial) as f:
                done = json.load(f)
            os.remove(partial)
        return {**done, "job": job, "error": f"timed out after {timeout:.0f} s",
                "candidates_done": len(done.get("parts", []))}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"job": job, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def _secs(values) -> str:
    return f"{statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def _markdown(results: list[dict], machine: dict) -> str:
    lines = ["# End-to-end job cost (compile included)\n",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, JAX {machine['jax']} ({machine['backend']}).",
             f"Command: `python benchmarks/peer_job.py {' '.join(sys.argv[1:])}`\n"]
    for r in results:
        if "error" in r:
            lines.append(f"## {r['job']} ({r.get('cache', '?')} cache): {r['error']}\n")
            for p in r.get("parts", []):
                lines.append(f"- {p['part']}: {p['wall_s']:.2f} s, {p['compiles']} compiles "
                             f"({p['compile_s']:.2f} s)")
            lines.append("")
            continue
        lines.append(f"## {r['job']} ({r['cache']} cache)\n")
        lines.append(f"**Job end to end {r['job_s']:.1f} s** from the process start (import {r['import_s']:.1f} s); "
                     f"{r['job_compiles']} XLA compiles taking {r['job_compile_s']:.1f} s "
                     f"({100 * r['job_compile_s'] / r['job_s']:.0f}% of the job).\n")
        lines.append("| part | wall (s) | compiles | compile (s) |")
        lines.append("|---|---|---|---|")
        for p in r["parts"]:
            lines.append(f"| {p['part']} | {p['wall_s']:.2f} | {p['compiles']} | {p['compile_s']:.2f} |")
        if "flops_per_step" in r:
            step = r["step_s"]
            frac = r["flops_per_step"] / step / r["matmul_peak_flops"]
            fixed = r["fixed_s"]
            lines.append(f"\nAfter the job, the same candidate at 1 step took {_secs(r['one_step_candidate_s'])} s and at "
                         f"{STEPS} steps {_secs(r['repeat_candidate_s'])} s (medians of {REPS}): a steady step of "
                         f"{1000 * step:.1f} ms and a fixed cost per candidate (init, evaluation of the test set, host "
                         f"work) of {fixed:.2f} s, {100 * fixed / (STEPS * step):.0f}% of its {STEPS} steps; the "
                         f"evaluation alone (the test set through the forward programs, on {r.get('eval_threads', 1)} "
                         f"thread{'s' if r.get('eval_threads', 1) > 1 else ''}) took {r['eval_s']:.2f} s "
                         f"({100 * r['eval_s'] / (STEPS * step):.0f}%), the rest {fixed - r['eval_s']:.2f} s "
                         f"({100 * (fixed - r['eval_s']) / (STEPS * step):.0f}%)"
                         + (f"; on one thread the evaluation took {r['eval_one_thread_s']:.2f} s. "
                            if "eval_one_thread_s" in r else ". ")
                         + f"{r['flops_per_step'] / 1e9:.2f} GFLOP per step (XLA cost analysis of the forward, x3) "
                         f"against a measured f32 matmul peak of {r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s: "
                         f"{frac:.2f} of peak.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="peer_job")
    ap.add_argument("--jobs", default=",".join(JOBS), help="comma-separated: " + ", ".join(
        f"{k} ({v})" for k, v in JOBS.items()))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker)))
        return
    from population import _machine

    machine = _machine()
    results = []
    os.makedirs(args.out, exist_ok=True)
    for job in args.jobs.split(","):
        if job not in JOBS:
            ap.error(f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
        with tempfile.TemporaryDirectory(prefix="star-jax-cache-") as cache:
            for label in ("cold", "warm"):
                r = _run(job, cache, args.timeout)
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
