"""Causal query blocks in the parallel attention (``star_jax.ops.attention.causal_blocks``)
against one block (the whole [l, l] scores, masked), in one process, calls alternated.

1. The attention alone (``AttentionMixer``, 4 heads of 16, batch 16, width 64), forward +
   backward, at several lengths (blocked as ``causal_blocks`` says, and cut into 4 blocks
   whatever the rule says): compile seconds and run ms.
2. The part programs of the 8 attention classes at the peer job's shapes but twice the length
   (width 64, L 255, batch 16; ``compile_options.one_liv_per_class``), forward + backward.
3. A lone 8-LIV Transformer++ trained by ``star_jax.train`` at the peer job's setting but L 255
   (in-context recall at 256): the steady step, (100-step run - 1-step run) / 99, medians over
   alternated rounds.
4. Random 8-LIV genomes (seeds 0..n-1, what a search trains) at the population-engine setting
   but L 255: a second ``star_jax.train`` of each (60 steps and the evaluation), both ways
   alternated per genome and round.

One block is what the attention computed before blocks were introduced (``UNBLOCKED_UP_TO`` set
above every length). Usage:

    python benchmarks/attention_blocks.py [--reps 20] [--rounds 4] [--lengths 127,255,511,1023,2047]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import time

from population import _machine, _save_results  # this directory's population benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
ONE_BLOCK = (1 << 30, 1 << 30)
ATTENTION_CLASSES = (1, 2, 3, 4, 10, 11, 12, 13)
LONG_SEQ = 256  # the task's sequence length: the models see L 255
SECTIONS = ("alone", "parts", "transformer", "backbones")


def _alternated(calls: dict, reps: int) -> dict:
    """Median ms of each ``label -> (fn, args)``, the labels' calls alternated (order reversed
    every other round) so that the machine's drift hits them alike; every call waited for."""
    import jax

    times = {label: [] for label in calls}
    labels = list(calls)
    for rep in range(reps):
        for label in (labels if rep % 2 == 0 else labels[::-1]):
            fn, args = calls[label]
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[label].append(time.perf_counter() - t)
    return {label: 1e3 * statistics.median(ts) for label, ts in times.items()}


@contextlib.contextmanager
def _block_rule(blocking: tuple[int, int] | None, clear_programs: bool = False):
    """``(UNBLOCKED_UP_TO, QUERY_BLOCK)`` set to ``blocking`` (None: the defaults) while inside;
    with ``clear_programs``, ``sj.train``'s part programs are dropped on entry and on exit (they
    are keyed by part kind, not by the block rule)."""
    from star_jax.ops import attention
    from star_jax.train import parts

    saved = attention.UNBLOCKED_UP_TO, attention.QUERY_BLOCK
    if blocking is not None:
        attention.UNBLOCKED_UP_TO, attention.QUERY_BLOCK = blocking
    if clear_programs:
        parts.clear_program_cache()
    try:
        yield
    finally:
        attention.UNBLOCKED_UP_TO, attention.QUERY_BLOCK = saved
        if clear_programs:
            parts.clear_program_cache()


def _compiled(blocking: tuple[int, int] | None, fn, *args):
    """``(compiled, seconds)``: ``fn`` traced under ``_block_rule(blocking)`` and compiled."""
    import jax

    with _block_rule(blocking):
        t = time.perf_counter()
        # a new function object: JAX caches traces per function, and the rule is read while tracing
        out = jax.jit(lambda *a: fn(*a)).lower(*args).compile()
        return out, time.perf_counter() - t


def attention_alone(lengths, reps: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from star_jax.ops import attention

    mix = attention.AttentionMixer(64, n_heads=4, n_kv_heads=4, head_dim=16)
    rows = []
    for length in lengths:
        rs = np.random.RandomState(length)
        feats = {g: jnp.asarray(rs.randn(16, length, 4, 16).astype(np.float32)) for g in ("q", "k", "v")}
        params = mix.init(jax.random.key(0), feats)
        ct = jnp.asarray(rs.randn(16, length, 64).astype(np.float32))

        def fwd_bwd(params, feats, ct):
            y, pullback = jax.vjp(lambda p, f: mix.apply(p, f), params, feats)
            return y, pullback(ct)

        args = (params, feats, ct)
        four = (0, -(-length // 4))  # 4 blocks whatever the length
        progs, compile_s = {}, {}
        for label, blocking in (("blocked", None), ("four", four), ("whole", ONE_BLOCK)):
            progs[label], compile_s[label] = _compiled(blocking, fwd_bwd, *args)
        ref = jax.tree.leaves(progs["whole"](*args))
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(progs["blocked"](*args)), ref))
        ms = _alternated({label: (p, args) for label, p in progs.items()}, reps)
        row = {"length": length, "blocks": len(attention.causal_blocks(length)), "max_diff": diff}
        for label in progs:
            row[f"ms_{label}"], row[f"compile_s_{label}"] = ms[label], compile_s[label]
            # XLA's own account of the program's scratch memory (deterministic, unlike timings)
            row[f"temp_mib_{label}"] = progs[label].memory_analysis().temp_size_in_bytes / 2**20
        rows.append(row)
        print(f"attention L {length}: {row['blocks']} blocks {ms['blocked']:.2f} ms, 4 blocks {ms['four']:.2f} ms, "
              f"whole {ms['whole']:.2f} ms; compile {compile_s['blocked']:.2f}, {compile_s['four']:.2f}, "
              f"{compile_s['whole']:.2f} s", flush=True)
    return rows


def attention_parts(reps: int) -> list[dict]:
    import jax

    from compile_options import SETTINGS, one_liv_per_class
    from star_jax.genome import classes
    from star_jax.ops import attention

    setting = {**next(s for s in SETTINGS if s["name"] == "peer job"), "seq": LONG_SEQ}
    ids = list(ATTENTION_CLASSES)
    model, vecs, x, ct = one_liv_per_class(setting, ids, seed=1)
    rows = []
    for k, cid in enumerate(ids, start=1):
        prog = model.progs[k]
        fargs, bargs = (vecs[k], None, x, {}), (vecs[k], None, x, {}, ct)
        progs, compile_s = {}, {}
        for label, blocking in (("blocked", None), ("whole", ONE_BLOCK)):
            f, cf = _compiled(blocking, prog._slot_forward, *fargs)
            b, cb = _compiled(blocking, prog._slot_backward, *bargs)
            progs[label], compile_s[label] = (f, b), cf + cb

        def step(f, b):
            return lambda: (f(*fargs), b(*bargs))

        ms = _alternated({label: (step(*fb), ()) for label, fb in progs.items()}, reps)
        row = {"class": classes.get_liv_class(cid).name, "compile_s_blocked": compile_s["blocked"],
               "compile_s_whole": compile_s["whole"], "ms_blocked": ms["blocked"], "ms_whole": ms["whole"]}
        rows.append(row)
        print(f"part {row['class']}: {ms['blocked']:.2f} ms against {ms['whole']:.2f} ms", flush=True)
    return rows


def transformer_step(rounds: int) -> dict:
    import star_jax as sj

    task = sj.tasks.make("in_context_recall", vocab_size=32, seq_len=LONG_SEQ)
    cfg = sj.ModelConfig(width=64, vocab_size=32, max_len=task.seq_len, head_dim=16)
    tc = sj.TrainConfig(steps=100, batch_size=16, warmup_steps=10, lr=1e-3)
    genome = sj.baselines.transformer_pp(n_liv=8)
    runs: dict = {"blocked": {"one": [], "full": []}, "whole": {"one": [], "full": []}}
    for r in range(rounds):
        for label in (("blocked", "whole") if r % 2 == 0 else ("whole", "blocked")):
            with _block_rule(None if label == "blocked" else ONE_BLOCK, clear_programs=True):
                sj.train(genome, cfg, task, tc.replace(steps=1, warmup_steps=0), progress=False)  # compiles
                for key, steps in (("one", 1), ("full", 100)):
                    t = time.perf_counter()
                    sj.train(genome, cfg, task, tc.replace(steps=steps, warmup_steps=min(10, steps - 1)),
                             progress=False)
                    runs[label][key].append(time.perf_counter() - t)
    out = {"runs": runs}
    for label, r in runs.items():
        out[f"step_ms_{label}"] = 1e3 * (statistics.median(r["full"]) - statistics.median(r["one"])) / 99
    print(f"Transformer++ step: {out['step_ms_blocked']:.1f} ms against {out['step_ms_whole']:.1f} ms", flush=True)
    return out


def random_backbones(n: int, rounds: int) -> dict:
    import star_jax as sj

    task = sj.tasks.make("in_context_recall", vocab_size=16, seq_len=LONG_SEQ)
    cfg = sj.ModelConfig(width=64, vocab_size=16, max_len=task.seq_len, head_dim=16)
    tc = sj.TrainConfig(steps=60, batch_size=16, lr=1e-3)
    rows = []
    for seed in range(n):
        genome = sj.random_genome(8, seed)
        times: dict = {"blocked": [], "whole": []}
        for r in range(rounds):
            for label in (("blocked", "whole") if (r + seed) % 2 == 0 else ("whole", "blocked")):
                with _block_rule(None if label == "blocked" else ONE_BLOCK, clear_programs=True):
                    sj.train(genome, cfg, task, tc, progress=False)  # compiles
                    t = time.perf_counter()
                    sj.train(genome, cfg, task, tc, progress=False)
                    times[label].append(time.perf_counter() - t)
        row = {"seed": seed, "genome": str(genome), "s_blocked": statistics.median(times["blocked"]),
               "s_whole": statistics.median(times["whole"]), "times": times,
               "attention_livs": sum(1 for seg in genome.segments if seg.liv_class in ATTENTION_CLASSES)}
        rows.append(row)
        print(f"genome {seed} ({row['attention_livs']} attention LIVs): {row['s_blocked']:.2f} s against "
              f"{row['s_whole']:.2f} s", flush=True)
    return {"rows": rows, "s_blocked": sum(r["s_blocked"] for r in rows), "s_whole": sum(r["s_whole"] for r in rows)}


def markdown(out: dict) -> str:
    m = out["machine"]

    def ratio(r):  # one block is the whole program: its two timings differ by the machine's noise only
        return (f"{r['ms_blocked'] / r['ms_whole']:.2f}x" if r["blocks"] > 1 else
                f"same program ({r['ms_blocked'] / r['ms_whole']:.2f}x: noise)")

    lines = ["# Causal query blocks in the parallel attention", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). Command: "
             f"`{out['command']}`. Blocked: `causal_blocks` (one block up to L {out['unblocked_up_to']}, "
             f"then at most {out['max_blocks']} blocks of at least {out['query_block']} query rows); whole: one "
             f"block, the masked [l, l] scores, as before. Both ways in one process (no persistent cache), "
             + (f"calls alternated, medians of {out['reps']}." if out.get("alone") or out.get("parts") else
                "alternated.")]
    if out.get("alone"):
        lines += ["", "## The attention alone (4 heads of 16, batch 16), forward + backward", "",
                  "Scratch memory: XLA's `memory_analysis()` of the compiled forward + backward program.", "",
                  "| L | blocks | ms (blocked) | ms (4 blocks) | ms (whole) | blocked / whole | compile s (blocked) | "
                  "compile s (4 blocks) | compile s (whole) | scratch MiB (blocked) | scratch MiB (whole) | "
                  "max abs diff, blocked |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out.get("alone", ()):
        lines.append(f"| {r['length']} | {r['blocks']} | {r['ms_blocked']:.2f} | {r['ms_four']:.2f} | "
                     f"{r['ms_whole']:.2f} | {ratio(r)} | {r['compile_s_blocked']:.2f} | "
                     f"{r['compile_s_four']:.2f} | {r['compile_s_whole']:.2f} | {r['temp_mib_blocked']:.0f} | "
                     f"{r['temp_mib_whole']:.0f} | {r['max_diff']:.1e} |")
    if out.get("parts"):
        lines += ["", f"## Part programs of the attention classes (width 64, L {LONG_SEQ - 1}, batch 16), forward + backward", "",
                  "| class | ms (blocked) | ms (whole) | ratio | compile s (blocked) | compile s (whole) |",
                  "|---|---|---|---|---|---|"]
        for r in out["parts"]:
            lines.append(f"| {r['class']} | {r['ms_blocked']:.2f} | {r['ms_whole']:.2f} | "
                         f"{r['ms_blocked'] / r['ms_whole']:.2f}x | {r['compile_s_blocked']:.2f} | "
                         f"{r['compile_s_whole']:.2f} |")
        sums = {k: sum(r[k] for r in out["parts"]) for k in ("ms_blocked", "ms_whole", "compile_s_blocked",
                                                             "compile_s_whole")}
        lines += ["", f"Summed: run {sums['ms_blocked']:.1f} against {sums['ms_whole']:.1f} ms "
                  f"({sums['ms_blocked'] / sums['ms_whole']:.2f}x), compile {sums['compile_s_blocked']:.1f} against "
                  f"{sums['compile_s_whole']:.1f} s ({sums['compile_s_blocked'] / sums['compile_s_whole']:.2f}x)."]
    if out.get("transformer"):
        t = out["transformer"]
        lines += ["", f"## A lone 8-LIV Transformer++ trained by `star_jax.train` (width 64, vocab 32, L {LONG_SEQ - 1}, "
                  "batch 16, 100 steps)",
                  "", f"Steady step ((100-step run - 1-step run) / 99, medians over {out['rounds']} alternated "
                  f"rounds): **{t['step_ms_blocked']:.1f} ms** blocked against {t['step_ms_whole']:.1f} ms whole "
                  f"({t['step_ms_blocked'] / t['step_ms_whole']:.2f}x)."]
    if out.get("backbones"):
        b = out["backbones"]
        lines += ["", f"## Random 8-LIV genomes at width 64, L {LONG_SEQ - 1}, batch 16: 60 steps and the evaluation",
                  "", f"A second `sj.train` of each, both ways alternated, median of {out['rounds']} rounds.", "",
                  "| seed | attention LIVs | s (blocked) | s (whole) | ratio |", "|---|---|---|---|---|"]
        for r in b["rows"]:
            lines.append(f"| {r['seed']} | {r['attention_livs']} | {r['s_blocked']:.2f} | {r['s_whole']:.2f} | "
                         f"{r['s_blocked'] / r['s_whole']:.2f}x |")
        lines += ["", f"Summed: **{b['s_blocked']:.1f} s against {b['s_whole']:.1f} s "
                  f"({b['s_blocked'] / b['s_whole']:.2f}x)**."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4, help="alternated rounds of the Transformer++ step")
    ap.add_argument("--lengths", default="127,255,511,1023,2047")
    ap.add_argument("--backbones", type=int, default=4, help="random genomes of section 4")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: alone, parts, transformer, "
                    "backbones")
    ap.add_argument("--name", default="attention_blocks")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    for name in ("reps", "rounds", "backbones"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: a positive integer, got {getattr(args, name)}")
    try:
        lengths = [int(v) for v in args.lengths.split(",")]
        if any(v < 1 for v in lengths):
            raise ValueError
    except ValueError:
        ap.error(f"--lengths: comma-separated positive integers, got {args.lengths!r}")
    skip = {v.strip() for v in args.skip.split(",") if v.strip()}
    if skip - set(SECTIONS):
        ap.error(f"--skip: only {', '.join(SECTIONS)}, got {args.skip!r}")
    import star_jax  # noqa: F401  (its XLA CPU option before JAX starts)
    from star_jax.ops import attention

    out = {"machine": _machine(), "command": "python benchmarks/attention_blocks.py " + shlex.join(sys.argv[1:]),
           "reps": args.reps, "rounds": args.rounds, "query_block": attention.QUERY_BLOCK,
           "unblocked_up_to": attention.UNBLOCKED_UP_TO,
           "max_blocks": attention.MAX_QUERY_BLOCKS}
    if "alone" not in skip:
        out["alone"] = attention_alone(lengths, args.reps)
    if "parts" not in skip:
        out["parts"] = attention_parts(args.reps)
    if "transformer" not in skip:
        out["transformer"] = transformer_step(args.rounds)
    if "backbones" not in skip:
        out["backbones"] = random_backbones(args.backbones, args.rounds)
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
