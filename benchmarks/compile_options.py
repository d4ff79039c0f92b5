"""XLA build options for the part programs, measured and not adopted: compile seconds against run
time and bit-identity, per LIV class, at the quick run's shapes and at the peer job's.

For each of the 17 classes (one LIV, no sharing) the forward and the backward part program are
compiled with XLA's default CPU build and with each variant (``compiler_options`` of ``jax.jit``,
so per program, not process-wide), timed (median of ``--reps`` calls, each waited for) and
checked bit for bit against the default build's forward outputs and gradients. Every variant
here changes results in the last bits for some classes, which would move recorded results; the
table says how much compile time each would buy and what it would cost in run time.

Variants on a CPU: ``level1``: xla_backend_optimization_level 1; ``no_fusion_emitters``:
xla_cpu_use_fusion_emitters false (XLA's older elemental emitters for fusions). On a GPU:
``level1`` and ``autotune0``: xla_gpu_autotune_level 0 (no autotuning of GEMM and fusion
configurations while compiling).

Usage: python benchmarks/compile_options.py [--reps 10] [--name compile_options]
           [--settings "quick run,peer job"] [--classes 1,5,9]
"""
from __future__ import annotations

import argparse
import os
import shlex
import time

from population import _machine, _save_results  # this directory's population benchmark
from population_step import _median_ms

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {"cpu": {"level1": {"xla_backend_optimization_level": 1},
                    "no_fusion_emitters": {"xla_cpu_use_fusion_emitters": False}},
            "gpu": {"level1": {"xla_backend_optimization_level": 1},
                    "autotune0": {"xla_gpu_autotune_level": 0}}}
ALL_CLASSES = tuple(range(1, 18))
SETTINGS = ({"name": "quick run", "width": 32, "seq": 32, "head_dim": 8, "batch": 16, "vocab": 16},
            {"name": "peer job", "width": 64, "seq": 128, "head_dim": 16, "batch": 16, "vocab": 32})


def one_liv_per_class(setting: dict, class_ids, seed: int):
    """``(model, vecs, x, ct)``: a backbone of one LIV per class in ``class_ids`` (no sharing) at
    ``setting``'s shapes as a ``PartModel`` (LIV ``k`` is part ``k``), its initial part vectors,
    and a random block input and output cotangent ``(dx, {})`` of the training shape (normal
    values from ``numpy``'s ``RandomState(seed)``)."""
    import jax
    import numpy as np

    import star_jax as sj
    from star_jax.genome import Genome
    from star_jax.model import compile_genome
    from star_jax.train import parts as P

    task = sj.tasks.make("in_context_recall", vocab_size=setting["vocab"], seq_len=setting["seq"])
    cfg = sj.ModelConfig(width=setting["width"], vocab_size=setting["vocab"], max_len=task.seq_len,
                         head_dim=setting["head_dim"])
    model = P.PartModel(compile_genome(Genome([[c, 1, 1, 1, 1] for c in class_ids]), cfg), task.seq_len)
    vecs, _, _ = model.init(0)
    rs = np.random.RandomState(seed)
    shape = (setting["batch"], task.seq_len - 1, setting["width"])
    x = jax.device_put(rs.randn(*shape).astype(np.float32))
    ct = (jax.device_put(rs.randn(*shape).astype(np.float32)), {})
    return model, vecs, x, ct


def build_variants(setting: dict, variants: dict, reps: int, verbose: bool = True,
                   class_ids: tuple[int, ...] = ALL_CLASSES) -> list[dict]:
    """Per class: ``{label}_compile_s`` and ``{label}_ms`` (forward + backward) for "default" and
    every variant, and ``{label}_identical`` (outputs and gradients equal the default build's)."""
    import jax
    import numpy as np

    from star_jax.genome import classes

    ids = list(class_ids)
    model, vecs, x, ct = one_liv_per_class(setting, ids, seed=1)
    rows = []
    for k, cid in enumerate(ids, start=1):
        prog = model.progs[k]
        row = {"class_id": cid, "class": classes.get_liv_class(cid).name}
        outs = {}
        for label, options in (("default", None), *variants.items()):
            kw = {} if options is None else {"compiler_options": options}
            fargs, bargs = (vecs[k], None, x, {}), (vecs[k], None, x, {}, ct)
            t = time.perf_counter()
            fwd = jax.jit(prog._slot_forward, **kw).lower(*fargs).compile()
            bwd = jax.jit(prog._slot_backward, **kw).lower(*bargs).compile()
            row[f"{label}_compile_s"] = time.perf_counter() - t
            row[f"{label}_ms"] = _median_ms(fwd, fargs, reps)[0] + _median_ms(bwd, bargs, reps)[0]
            outs[label] = jax.tree.leaves(jax.device_get((fwd(*fargs), bwd(*bargs))))
            if label != "default":
                row[f"{label}_identical"] = all(np.array_equal(a, b) for a, b in zip(outs["default"], outs[label]))
        rows.append(row)
        if verbose:
            print(f"{setting['name']:>9} {row['class']:>14}: " + ", ".join(
                f"{label} {row[label + '_compile_s']:.2f} s / {row[label + '_ms']:.2f} ms"
                for label in ("default", *variants)), flush=True)
    return rows


def markdown(out: dict) -> str:
    m = out["machine"]
    labels = ("default", *out["variants"])
    lines = ["# XLA build options for the part programs (measured, not adopted)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). "
             f"Command: `{out['command']}`. Forward + backward part programs of one LIV per class; run "
             f"times are medians of {out['reps']} calls, each waited for. Options: "
             + "; ".join(f"`{k}`: `{v}`" for k, v in out["variants"].items()) + "."]
    for s in out["settings"]:
        rows = s["rows"]
        lines += ["", f"## {s['name']}: width {s['width']}, L {s['seq'] - 1}, batch {s['batch']}", "",
                  "| class | " + " | ".join(f"compile s ({x})" for x in labels) + " | "
                  + " | ".join(f"run ms ({x})" for x in labels) + " | "
                  + " | ".join(f"identical ({x})" for x in out["variants"]) + " |",
                  "|---" * (3 * len(labels) - 1 + 1) + "|"]
        for r in rows:
            lines.append(f"| {r['class']} | " + " | ".join(f"{r[x + '_compile_s']:.2f}" for x in labels) + " | "
                         + " | ".join(f"{r[x + '_ms']:.2f}" for x in labels) + " | "
                         + " | ".join("yes" if r[x + "_identical"] else "no" for x in out["variants"]) + " |")
        sums = {x: (sum(r[x + "_compile_s"] for r in rows), sum(r[x + "_ms"] for r in rows)) for x in labels}
        base = sums["default"]
        lines += [""] + [f"- {x}: compile {sums[x][0]:.1f} s ({sums[x][0] / base[0]:.2f}x default), run "
                         f"{sums[x][1]:.1f} ms ({sums[x][1] / base[1]:.2f}x)"
                         + ("" if x == "default" else
                            f", {sum(not r[x + '_identical'] for r in rows)} of {len(rows)} classes not bit-identical")
                         for x in labels]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="compile_options")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--settings", default=",".join(s["name"] for s in SETTINGS), help="comma-separated")
    ap.add_argument("--classes", default=",".join(map(str, ALL_CLASSES)), help="comma-separated class ids")
    args = ap.parse_args()
    import jax

    variants = VARIANTS["cpu" if jax.default_backend() == "cpu" else "gpu"]
    names = [x.strip() for x in args.settings.split(",")]
    unknown = sorted(set(names) - {s["name"] for s in SETTINGS})
    if unknown:
        ap.error(f"--settings: unknown {unknown}; choose from {[s['name'] for s in SETTINGS]}")
    class_ids = tuple(int(c) for c in args.classes.split(","))
    command = "python benchmarks/compile_options.py" + "".join(
        f" {flag} {shlex.quote(str(value))}" for flag, value, default in (
            ("--reps", args.reps, 10), ("--name", args.name, "compile_options"),
            ("--settings", args.settings, ",".join(s["name"] for s in SETTINGS)),
            ("--classes", args.classes, ",".join(map(str, ALL_CLASSES)))) if value != default)
    out = {"reps": args.reps, "machine": _machine(), "variants": variants, "command": command,
           "settings": [{**s, "rows": build_variants(s, variants, args.reps, class_ids=class_ids)}
                        for s in SETTINGS if s["name"] in names]}
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
