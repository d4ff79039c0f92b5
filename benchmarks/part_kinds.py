"""What each LIV class costs in a training step: the forward and the backward part program of
every one of the 17 classes (one LIV, no sharing) at the peer-job setting (width 64, 4 heads of
16, L 127, batch 16), as `sj.train` runs them. The backward recomputes its part's forward.

Times are medians of ``--reps`` timed calls after a warm-up; every class is also given as a
ratio to GMemless (SwiGLU) timed in the same process, the reference that is least sensitive to
other load. ``--label`` names the run (e.g. the commit measured), so tables of two versions of
the code, each run on the same machine, can be set side by side.

Usage: python benchmarks/part_kinds.py [--name part_kinds] [--label HEAD] [--reps 30]
"""
from __future__ import annotations

import argparse
import os
import shlex

from population import _machine, _save_results  # this directory's population benchmark
from population_step import _median_ms

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTH, VOCAB, SEQ, BATCH = 64, 32, 128, 16
REFERENCE = 9  # GMemless


def measure(reps: int) -> list[dict]:
    import jax

    import star_jax as sj
    from star_jax.genome import Genome, classes
    from star_jax.model import compile_genome
    from star_jax.train import parts as P

    task = sj.tasks.make("in_context_recall", vocab_size=VOCAB, seq_len=SEQ)
    cfg = sj.ModelConfig(width=WIDTH, vocab_size=VOCAB, max_len=task.seq_len, head_dim=16)
    ids = list(range(1, 18))
    model = P.PartModel(compile_genome(Genome([[c, 1, 1, 1, 1] for c in ids]), cfg), task.seq_len)
    P.warm_up([model], BATCH)
    vecs, _, _ = model.init(0)
    x = jax.random.normal(jax.random.key(0), (BATCH, task.seq_len, WIDTH))
    rows = []
    for k, cid in enumerate(ids, start=1):
        prog = model.progs[k]
        fwd, _ = _median_ms(prog.fwd, (vecs[k], None, x, {}), reps)
        bwd, _ = _median_ms(prog.bwd, (vecs[k], None, x, {}, (x, {})), reps)
        rows.append({"class_id": cid, "class": classes.get_liv_class(cid).name, "fwd_ms": fwd, "bwd_ms": bwd})
    ref = next(r for r in rows if r["class_id"] == REFERENCE)
    for r in rows:
        r["ratio_to_reference"] = (r["fwd_ms"] + r["bwd_ms"]) / (ref["fwd_ms"] + ref["bwd_ms"])
    return rows


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = [f"# Part programs per LIV class: forward and backward of one LIV ({out['label']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). "
             f"Command: `{out['command']}`.",
             f"Width {WIDTH}, 4 heads of 16, L {SEQ - 1}, batch {BATCH}; median of {out['reps']} calls. "
             "The backward recomputes the part's forward. Ratio: forward + backward over GMemless's, "
             "same process.", "",
             "| class | forward ms | backward ms | forward + backward ms | ratio to GMemless |",
             "|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['class']} | {r['fwd_ms']:.2f} | {r['bwd_ms']:.2f} | {r['fwd_ms'] + r['bwd_ms']:.2f} "
                     f"| {r['ratio_to_reference']:.2f} |")
    total = sum(r["fwd_ms"] + r["bwd_ms"] for r in out["rows"])
    ref = next(r for r in out["rows"] if r["class_id"] == REFERENCE)
    lines += ["", f"Sum over the 17 classes: {total:.1f} ms ({total / (ref['fwd_ms'] + ref['bwd_ms']):.1f}x GMemless)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="part_kinds")
    ap.add_argument("--label", default="HEAD", help="what was measured, e.g. a commit")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    out = {"label": args.label, "reps": args.reps, "machine": _machine(),
           "command": "python benchmarks/part_kinds.py" + (f" --name {args.name}" if args.name != "part_kinds" else "")
           + (f" --label {shlex.quote(args.label)}" if args.label != "HEAD" else ""),
           "rows": measure(args.reps)}
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
