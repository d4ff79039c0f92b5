"""What each LIV class costs in a training step, in two ways a part could train: the forward and
backward part programs of every one of the 17 classes (one LIV, no sharing).

- ``recompute`` (what ``sj.train`` runs): the forward keeps nothing, the backward recomputes it.
- ``vjp``: the forward returns ``jax.vjp``'s pullback (a pytree holding the residuals), the
  backward applies it; an evaluation would run that forward too (its residuals written and
  dropped). Measured, not used: see ``benchmarks/results/residuals.md`` for whole backbones.

Per class and way: compile seconds of the two programs (compiled fresh, one after another),
medians of ``--reps`` timed calls, the bytes of residuals, and whether the two ways give the same
outputs and gradients bit for bit. Every class is also given as a ratio to GMemless (SwiGLU)
timed in the same process. ``--setting`` picks the shapes: the peer job's (width 64, 4 heads of
16, L 127, batch 16) or the quick run's (width 32, 4 heads of 8, L 31, batch 16).

Usage: python benchmarks/part_kinds.py [--name part_kinds] [--label HEAD] [--reps 30]
           [--setting "peer job"] [--classes 1,5,9] (GMemless, 9, is always measured)
"""
from __future__ import annotations

import argparse
import os
import shlex
import time

import compile_options  # this directory's benchmarks
from compile_options import one_liv_per_class
from population import _machine, _save_results
from population_step import _median_ms

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {s["name"]: s for s in compile_options.SETTINGS}
REFERENCE = 9  # GMemless


def _apply_pullback(pullback, cotangent):
    """A part's VJP applied to a cotangent, and the squared norm of its parameter gradient (as the
    recomputing backward returns it)."""
    import jax.numpy as jnp

    grads = pullback(cotangent)
    return grads, jnp.sum(jnp.square(grads[0]))


def measure(reps: int, setting: dict, ids: list[int]) -> list[dict]:
    import jax
    import numpy as np

    from star_jax.genome import classes

    model, vecs, x, ct = one_liv_per_class(setting, ids, seed=0)
    rows = []
    for k, cid in enumerate(ids, start=1):
        prog = model.progs[k]
        fargs = (vecs[k], None, x, {})
        row = {"class_id": cid, "class": classes.get_liv_class(cid).name}
        t = time.perf_counter()
        fwd = jax.jit(prog._slot_forward).lower(*fargs).compile()
        bwd = jax.jit(prog._slot_backward).lower(*fargs, ct).compile()
        row["recompute_compile_s"] = time.perf_counter() - t
        row["recompute_fwd_ms"] = _median_ms(fwd, fargs, reps)[0]
        row["recompute_bwd_ms"] = _median_ms(bwd, fargs + (ct,), reps)[0]
        t = time.perf_counter()
        fwd_vjp = jax.jit(lambda *a, f=prog._slot_forward: jax.vjp(f, *a)).lower(*fargs).compile()
        out, pullback = fwd_vjp(*fargs)
        apply = jax.jit(_apply_pullback).lower(pullback, ct).compile()
        row["vjp_compile_s"] = time.perf_counter() - t
        row["vjp_fwd_ms"] = _median_ms(fwd_vjp, fargs, reps)[0]
        row["vjp_bwd_ms"] = _median_ms(apply, (pullback, ct), reps)[0]
        row["residual_mb"] = sum(a.nbytes for a in jax.tree.leaves(pullback)) / 2 ** 20
        want = jax.tree.leaves(jax.device_get((fwd(*fargs), bwd(*fargs, ct))))
        got = jax.tree.leaves(jax.device_get((out, apply(pullback, ct))))
        row["identical"] = all(np.array_equal(a, b) for a, b in zip(want, got))
        rows.append(row)
        print(f"{row['class']:>14}: recompute {row['recompute_compile_s']:.2f} s / "
              f"{row['recompute_fwd_ms'] + row['recompute_bwd_ms']:.2f} ms, vjp {row['vjp_compile_s']:.2f} s / "
              f"{row['vjp_fwd_ms'] + row['vjp_bwd_ms']:.2f} ms, {row['residual_mb']:.1f} MiB, "
              f"identical {row['identical']}", flush=True)
    ref = next(r for r in rows if r["class_id"] == REFERENCE)
    for way in ("recompute", "vjp"):
        ref_ms = ref[f"{way}_fwd_ms"] + ref[f"{way}_bwd_ms"]
        for r in rows:
            r[f"{way}_ratio_to_reference"] = (r[f"{way}_fwd_ms"] + r[f"{way}_bwd_ms"]) / ref_ms
    return rows


def markdown(out: dict) -> str:
    m, s, rows = out["machine"], out["setting"], out["rows"]
    lines = [f"# Part programs per LIV class: forward and backward of one LIV, two ways ({out['label']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). "
             f"Command: `{out['command']}`.",
             f"Setting: {out['setting_name']} (width {s['width']}, heads of {s['head_dim']}, L {s['seq'] - 1}, "
             f"batch {s['batch']}); median of {out['reps']} calls. vjp: the forward returns its pullback, "
             "the backward applies it; recompute: the backward recomputes the forward (sj.train's way). Compile: both programs, compiled fresh. Identical: outputs "
             "and gradients equal bit for bit. Ratio: forward + backward over GMemless's, same process, same way.", "",
             "| class | recompute: compile s | fwd ms | bwd ms | ratio | vjp: compile s | fwd ms | bwd ms | ratio "
             "| residual MiB | vjp / recompute (fwd + bwd) | identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rc, vj = r["recompute_fwd_ms"] + r["recompute_bwd_ms"], r["vjp_fwd_ms"] + r["vjp_bwd_ms"]
        lines.append(f"| {r['class']} | {r['recompute_compile_s']:.2f} | {r['recompute_fwd_ms']:.2f} | "
                     f"{r['recompute_bwd_ms']:.2f} | {r['recompute_ratio_to_reference']:.2f} | {r['vjp_compile_s']:.2f} | "
                     f"{r['vjp_fwd_ms']:.2f} | {r['vjp_bwd_ms']:.2f} | {r['vjp_ratio_to_reference']:.2f} | "
                     f"{r['residual_mb']:.1f} | {vj / rc:.2f} | {'yes' if r['identical'] else 'no'} |")
    tot = {k: sum(r[k] for r in rows) for k in ("recompute_compile_s", "recompute_fwd_ms", "recompute_bwd_ms",
                                                  "vjp_compile_s", "vjp_fwd_ms", "vjp_bwd_ms")}
    rc, vj = tot["recompute_fwd_ms"] + tot["recompute_bwd_ms"], tot["vjp_fwd_ms"] + tot["vjp_bwd_ms"]
    lines += ["", f"Summed over the {len(rows)} classes: compile {tot['recompute_compile_s']:.1f} s (recompute) against "
              f"{tot['vjp_compile_s']:.1f} s (vjp), {tot['vjp_compile_s'] / tot['recompute_compile_s']:.2f}x; "
              f"forward + backward {rc:.1f} ms against {vj:.1f} ms, {vj / rc:.2f}x; forward alone (what an "
              f"evaluation runs) {tot['recompute_fwd_ms']:.1f} ms against {tot['vjp_fwd_ms']:.1f} ms, "
              f"{tot['vjp_fwd_ms'] / tot['recompute_fwd_ms']:.2f}x. "
              f"{sum(not r['identical'] for r in rows)} of {len(rows)} classes not bit-identical between the two ways."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="part_kinds")
    ap.add_argument("--label", default="HEAD", help="what was measured, e.g. a commit")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--setting", default="peer job", choices=sorted(SETTINGS))
    ap.add_argument("--classes", default="", help="comma-separated class ids (default: all 17)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    try:
        ids = sorted({int(c) for c in args.classes.split(",") if c} | {REFERENCE}) if args.classes else list(range(1, 18))
    except ValueError:
        ap.error(f"--classes: expected comma-separated class ids, got {args.classes!r}")
    if not set(ids) <= set(range(1, 18)):
        ap.error(f"--classes: the paper's classes are 1..17, got {sorted(set(ids) - set(range(1, 18)))}")
    cmd = "python benchmarks/part_kinds.py" + (f" --name {args.name}" if args.name != "part_kinds" else "") \
        + (f" --label {shlex.quote(args.label)}" if args.label != "HEAD" else "") \
        + (f" --setting {shlex.quote(args.setting)}" if args.setting != "peer job" else "") \
        + (f" --classes {args.classes}" if args.classes else "")
    out = {"label": args.label, "reps": args.reps, "machine": _machine(), "command": cmd,
           "setting_name": args.setting, "setting": SETTINGS[args.setting],
           "rows": measure(args.reps, SETTINGS[args.setting], ids)}
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
