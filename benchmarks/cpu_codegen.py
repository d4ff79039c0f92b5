"""XLA's CPU code generation for the part programs: compile seconds, run time and bit-identity per
LIV class, with XLA's default build against the option ``star_jax`` sets at import
(``star_jax/xla_flags.py``) and against it with XLA's older fusion emitters as well.

The options are process-wide (read once when JAX starts its backends), so every configuration runs
in its own fresh process, and the configurations alternate over ``--rounds`` (per class, the
median over rounds is reported). Each process builds one LIV per class (no sharing) at each
setting's shapes (the same backbone and inputs as ``compile_options.py``), compiles its forward
and backward part programs (no persistent cache), times them (median of ``--reps`` calls, each
waited for) and saves their outputs; outputs and gradients are compared bit for bit with XLA's
default build. Then, since single parts do not show everything a training step does, it trains
``--backbones`` random 8-LIV genomes whole with ``sj.train`` at the population-engine setting and
times a second call of each (its programs compiled by the first).

Usage: python benchmarks/cpu_codegen.py [--rounds 2] [--reps 10] [--name cpu_codegen]
           [--settings "quick run,peer job"] [--classes 1,5,9] [--backbones 4] [--steps 60]
"""
from __future__ import annotations

import os

_XLA_FLAGS = os.environ.get("XLA_FLAGS")  # before anything imports star_jax (which appends to it)

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

EXTRA = "--xla_backend_extra_options="
CONFIGS = {  # label -> (environment changes, what it is)
    "xla_default": ({"STAR_JAX_XLA_CPU": "off"}, "XLA's default CPU build (STAR_JAX_XLA_CPU=off)"),
    "star_jax": ({}, "xla_cpu_disable_loop_unrolling, as star_jax sets it at import"),
    "plus_old_emitters": ({"STAR_JAX_XLA_CPU": "off", "XLA_FLAGS": EXTRA + "xla_cpu_disable_loop_unrolling,"
                           "xla_cpu_disable_new_fusion_emitters"},
                          "and xla_cpu_disable_new_fusion_emitters (measured, not set)"),
}
ALL_CLASSES = tuple(range(1, 18))


def _backbones(n: int, steps: int) -> list[float]:
    """Seconds of a second ``sj.train`` (programs compiled by the first) of each of ``n`` random
    8-LIV genomes (seeds 0..n-1) at the population-engine setting: width 64, in-context recall
    (vocab 16) at L 128, batch 16, ``steps`` AdamW steps, then its evaluation."""
    import star_jax as sj

    task = sj.tasks.make("in_context_recall", vocab_size=16, seq_len=128)
    cfg = sj.ModelConfig(width=64, vocab_size=16, max_len=task.seq_len, head_dim=16)
    tc = sj.TrainConfig(steps=steps, batch_size=16, lr=1e-3)
    out = []
    for seed in range(n):
        g = sj.random_genome(8, seed)
        sj.train(g, cfg, task, tc, progress=False)
        t = time.perf_counter()
        sj.train(g, cfg, task, tc, progress=False)
        out.append(time.perf_counter() - t)
    return out


def _worker(setting_names: list[str], class_ids: tuple[int, ...], reps: int, out_npz: str,
            backbones: int, steps: int) -> dict:
    import jax
    import numpy as np

    import star_jax
    from compile_options import SETTINGS, one_liv_per_class
    from population_step import _median_ms
    from star_jax.genome import classes

    result = {"status": star_jax.xla_flags.STATUS, "xla_flags": os.environ.get("XLA_FLAGS", ""), "settings": {}}
    arrays = {}
    for setting in (s for s in SETTINGS if s["name"] in setting_names):
        model, vecs, x, ct = one_liv_per_class(setting, class_ids, seed=1)
        rows = []
        for k, cid in enumerate(class_ids, start=1):
            prog = model.progs[k]
            fargs, bargs = (vecs[k], None, x, {}), (vecs[k], None, x, {}, ct)
            t = time.perf_counter()
            fwd = jax.jit(prog._slot_forward).lower(*fargs).compile()
            t_fwd = time.perf_counter() - t
            bwd = jax.jit(prog._slot_backward).lower(*bargs).compile()
            t_bwd = time.perf_counter() - t - t_fwd
            rows.append({"class_id": cid, "class": classes.get_liv_class(cid).name,
                         "compile_s": t_fwd + t_bwd, "forward_compile_s": t_fwd, "backward_compile_s": t_bwd,
                         "ms": _median_ms(fwd, fargs, reps)[0] + _median_ms(bwd, bargs, reps)[0]})
            for i, a in enumerate(jax.tree.leaves(jax.device_get((fwd(*fargs), bwd(*bargs))))):
                arrays[f"{setting['name']}|{cid}|{i}"] = np.asarray(a)
        result["settings"][setting["name"]] = rows
    np.savez(out_npz, **arrays)
    result["backbone_s"] = _backbones(backbones, steps)
    return result


def _identical(npz_a: str, npz_b: str, setting: str, cid: int) -> bool:
    import numpy as np

    a, b = np.load(npz_a), np.load(npz_b)
    keys = [k for k in a.files if k.startswith(f"{setting}|{cid}|")]
    return bool(keys) and all(np.array_equal(a[k], b[k]) for k in keys)


def markdown(out: dict) -> str:
    m, labels = out["machine"], list(out["configs"])
    lines = ["# XLA's CPU code generation for the part programs", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, JAX {m['jax']} ({m['backend']}). Command: "
             f"`{out['command']}`. Forward + backward part programs of one LIV per class, compiled fresh "
             f"(no persistent cache) in one new process per configuration; configurations alternated "
             f"{out['rounds']} times, per class the median over rounds. Run: median of {out['reps']} "
             "calls each, waited for. Identical: outputs and gradients equal XLA's default build bit for bit.",
             "", "Configurations: " + "; ".join(f"`{k}`: {v}" for k, v in out["configs"].items()) + "."]
    for name, rows in out["settings"].items():
        base = {r["class_id"]: r for r in rows["xla_default"]}
        lines += ["", f"## {name}", "",
                  "| class | " + " | ".join(f"compile s ({x})" for x in labels) + " | "
                  + " | ".join(f"run ms ({x})" for x in labels) + " | "
                  + " | ".join(f"identical ({x})" for x in labels[1:]) + " |",
                  "|---" * (1 + 3 * len(labels) - 1) + "|"]
        for cid, b in base.items():
            rs = {x: next(r for r in rows[x] if r["class_id"] == cid) for x in labels}
            lines.append(f"| {b['class']} | " + " | ".join(f"{rs[x]['compile_s']:.2f}" for x in labels) + " | "
                         + " | ".join(f"{rs[x]['ms']:.2f}" for x in labels) + " | "
                         + " | ".join("yes" if rs[x]["identical"] else "no" for x in labels[1:]) + " |")
        c0 = sum(r["compile_s"] for r in rows["xla_default"])
        m0 = sum(r["ms"] for r in rows["xla_default"])
        lines.append("")
        for x in labels:
            c, ms = sum(r["compile_s"] for r in rows[x]), sum(r["ms"] for r in rows[x])
            tail = "" if x == "xla_default" else \
                f", {sum(not r['identical'] for r in rows[x])} of {len(rows[x])} classes not bit-identical"
            lines.append(f"- {x}: compile {c:.1f} s ({c / c0:.2f}x), run {ms:.1f} ms ({ms / m0:.2f}x){tail}")
    b = out["backbones"]
    if b["n"]:
        base = sum(b["seconds"]["xla_default"])
        lines += ["", f"## Whole backbones: {b['n']} random 8-LIV genomes (seeds 0-{b['n'] - 1}), width 64, L 127, "
                  f"batch 16, {b['steps']} steps + evaluation, programs compiled first (median over rounds)", "",
                  "| configuration | seconds per genome | total (s) | ratio to xla_default |", "|---|---|---|---|"]
        for x in labels:
            t = b["seconds"][x]
            lines.append(f"| {x} | {', '.join(f'{v:.2f}' for v in t)} | {sum(t):.2f} | {sum(t) / base:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--name", default="cpu_codegen")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--settings", default="quick run,peer job", help="comma-separated")
    ap.add_argument("--classes", default=",".join(map(str, ALL_CLASSES)), help="comma-separated class ids")
    ap.add_argument("--backbones", type=int, default=4, help="random 8-LIV genomes trained whole")
    ap.add_argument("--steps", type=int, default=60, help="training steps of each whole backbone")
    args = ap.parse_args()
    if args.worker:
        settings, classes_, reps, npz, backbones, steps = args.worker
        print(json.dumps(_worker(settings.split(","), tuple(int(c) for c in classes_.split(",")), int(reps), npz,
                                 int(backbones), int(steps))))
        return
    from compile_options import SETTINGS

    names = [x.strip() for x in args.settings.split(",")]
    unknown = sorted(set(names) - {s["name"] for s in SETTINGS})
    if unknown:
        ap.error(f"--settings: unknown {unknown}; choose from {[s['name'] for s in SETTINGS]}")
    try:
        class_ids = tuple(int(c) for c in args.classes.split(","))
    except ValueError:
        ap.error(f"--classes: expected comma-separated integers, got {args.classes!r}")
    if args.rounds < 1 or args.reps < 1 or args.backbones < 0 or args.steps < 1:
        ap.error("--rounds, --reps and --steps must be >= 1, --backbones >= 0")
    from population import _machine, _save_results

    machine = _machine()
    runs: dict[str, list[dict]] = {x: [] for x in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="star-jax-codegen-") as tmp:
        for rnd in range(args.rounds):
            for label, (changes, _) in CONFIGS.items():
                env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "STAR_JAX_XLA_CPU")}
                if _XLA_FLAGS is not None:
                    env["XLA_FLAGS"] = _XLA_FLAGS
                env.update(changes)
                env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
                npz = os.path.join(tmp, f"{label}_{rnd}.npz")
                proc = subprocess.run([sys.executable, __file__, "--worker", ",".join(names),
                                       ",".join(map(str, class_ids)), str(args.reps), npz,
                                       str(args.backbones), str(args.steps)],
                                      env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{label}: worker failed\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["npz"] = npz
                runs[label].append(r)
                c = sum(x["compile_s"] for rows in r["settings"].values() for x in rows)
                print(f"round {rnd + 1} {label:>13} ({r['status']}): compile {c:.1f} s", flush=True)
        expected = {"xla_default": "off", "star_jax": "applied", "plus_old_emitters": "off"}
        for label, rs in runs.items():
            bad = {r["status"] for r in rs} - {expected[label]}
            if bad:
                raise SystemExit(f"{label}: star_jax.xla_flags.STATUS was {bad}, expected {expected[label]!r}")
        import numpy as np

        settings = {}
        for name in names:
            per = {}
            for label, rs in runs.items():
                rows = []
                for i, cid in enumerate(class_ids):
                    samples = [r["settings"][name][i] for r in rs]
                    row = {k: samples[0][k] for k in ("class_id", "class")}
                    for key in ("compile_s", "forward_compile_s", "backward_compile_s", "ms"):
                        row[key] = float(np.median([s[key] for s in samples]))
                    row["samples_compile_s"] = [s["compile_s"] for s in samples]
                    row["identical"] = all(_identical(runs["xla_default"][0]["npz"], r["npz"], name, cid) for r in rs)
                    rows.append(row)
                per[label] = rows
            settings[name] = per
    command = "python benchmarks/cpu_codegen.py" + "".join(
        f" {flag} {shlex.quote(str(value))}" for flag, value, default in (
            ("--rounds", args.rounds, 2), ("--reps", args.reps, 10), ("--name", args.name, "cpu_codegen"),
            ("--settings", args.settings, "quick run,peer job"),
            ("--classes", args.classes, ",".join(map(str, ALL_CLASSES))),
            ("--backbones", args.backbones, 4), ("--steps", args.steps, 60)) if value != default)
    backbone_s = {label: [float(np.median([r["backbone_s"][i] for r in rs])) for i in range(args.backbones)]
                  for label, rs in runs.items()}
    out = {"machine": machine, "command": command, "rounds": args.rounds, "reps": args.reps,
           "configs": {k: v[1] for k, v in CONFIGS.items()}, "settings": settings,
           "backbones": {"n": args.backbones, "steps": args.steps, "seconds": backbone_s}}
    _save_results(args.out, args.name, out, markdown(out))


if __name__ == "__main__":
    main()
