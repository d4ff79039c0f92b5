"""Writes the evolution configs of experiments/configs/ (the JSON files are the source of truth
for runs; this script documents how they were derived and regenerates them).

Three studies, as in the STAR paper: quality only, quality + parameters, quality + cache. Each
in two fitness flavours: a MAD task (in-context recall) and byte-level language modelling on the
Python standard library sources (bytes_lm). Three scales:

  cpu_*          2 CPU cores, 8 LIVs, population 8, 4 offspring generations: recall at width 32,
                 200 steps a candidate (~6 min a run); bytes_lm at width 64, 400 steps of 16
                 sequences of 128 bytes (~15 min a run).
  accel_*        one GPU/TPU, hours: recall at MAD's baseline setting (width 128, 8 LIVs), LM at
                 width 256, 12 LIVs, sequence 1024; population 16, 18 generations (the paper's).
  accel_paper_*  the paper's search setting on bytes_lm: 24 LIVs, width 768, sequence 4096,
                 population 16, 18 generations, AdamW lr 8e-4, betas 0.9/0.95, weight decay 0.1,
                 cosine; a documented fraction (PAPER_FRACTION) of the paper's 1.3B tokens.

    python experiments/make_configs.py [--out-dir experiments/configs] [--check]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

PAPER_TOKENS = 1_300_000_000
"""Tokens each candidate was trained on in the paper's searches (RedPajama, sequence 4096)."""
PAPER_TOKENS_PER_STEP = 250_000
"""The paper's batch: about 0.25M tokens a step (64 sequences of 4096 is 262,144)."""
PAPER_SEQ_LEN = 4096
PAPER_BATCH = 2
"""Sequences a step in accel_paper_*: 2 x 4096 tokens. The paper's 64 x 4096 does not fit one
accelerator: the evolution trains candidates without gradient accumulation, and softmax attention
keeps the [heads, L, L] scores for the backward pass (star_jax.population.estimate_memory_bytes:
~78 GiB for one 24-LIV width-768 Transformer++ at batch 2, ~155 GiB at batch 4)."""
PAPER_STEPS = 4000
"""4000 steps x 2 x 4096 = 32.8M tokens a candidate: 2.5% of the paper's 1.3B."""
PAPER_FRACTION = PAPER_STEPS * PAPER_BATCH * PAPER_SEQ_LEN / PAPER_TOKENS

STUDIES = {
    # study -> objectives after the quality objective
    "quality": [],
    "params": ["params"],
    "cache": ["cache_bytes"],
}


def _cpu_recall() -> dict:
    return {
        "model": {"width": 32, "vocab_size": 16, "max_len": 31, "head_dim": 8, "window": 16},
        "task": {"name": "in_context_recall", "vocab_size": 16, "seq_len": 32, "num_train": 4096,
                 "num_test": 256, "seed": 0},
        "train": {"steps": 200, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 10,
                  "b1": 0.9, "b2": 0.95, "min_lr_ratio": 0.1, "clip_norm": 1.0, "eval_batch_size": 256,
                  "seed": 0},
        "n_liv": 8, "pop_size": 8, "generations": 4,
        # one small compile per genome: predictable on 2 cores ("data" compiles one superset
        # step for the whole run, which costs minutes on a 2-core CPU)
        "strategy": "sequential",
    }


def _cpu_lm() -> dict:
    return {
        # Width 64, 400 steps of 16 x 128 bytes (819k bytes seen): about 14 s a Transformer++
        # candidate on 2 cores, and the baselines' seed sd (~0.02 bits per byte) is small against
        # their differences (~0.3); at width 32, 200 steps of 8 the sd is similar but every
        # backbone is still near a bigram model (~3.1-3.7 bits per byte).
        "model": {"width": 64, "vocab_size": 256, "max_len": 128, "head_dim": 16, "window": 32},
        "task": {"name": "bytes_lm", "seq_len": 128, "num_test": 256},
        "train": {"steps": 400, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.1, "warmup_steps": 20,
                  "b1": 0.9, "b2": 0.95, "min_lr_ratio": 0.1, "clip_norm": 1.0, "eval_batch_size": 64,
                  "seed": 0},
        "n_liv": 8, "pop_size": 8, "generations": 4,
        # one small compile per genome: predictable on 2 cores ("data" compiles one superset
        # step for the whole run, which costs minutes on a 2-core CPU)
        "strategy": "sequential",
    }


def _accel_recall() -> dict:
    # MAD's baseline in-context recall setting (vocab 16, length 128, 12,800 / 1,280 examples),
    # MAD's width 128.
    return {
        "model": {"width": 128, "vocab_size": 16, "max_len": 127, "head_dim": 16, "window": 32},
        "task": {"name": "in_context_recall", "vocab_size": 16, "seq_len": 128, "num_train": 12800,
                 "num_test": 1280, "seed": 0},
        "train": {"steps": 2000, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 100,
                  "b1": 0.9, "b2": 0.95, "min_lr_ratio": 0.1, "clip_norm": 1.0, "eval_batch_size": 256,
                  "seed": 0},
        "n_liv": 8, "pop_size": 16, "generations": 18, "strategy": "auto",
    }


def _accel_lm() -> dict:
    # 8 x 1024 tokens a step, 3000 steps: 24.6M tokens a candidate (about 2.5 epochs of the
    # ~9.9 MB standard-library corpus).
    return {
        "model": {"width": 256, "vocab_size": 256, "max_len": 1024, "head_dim": 64, "window": 128,
                  "scan_impl": "associative"},
        "task": {"name": "bytes_lm", "seq_len": 1024, "max_bytes": 64 * 2**20, "num_test": 256},
        "train": {"steps": 3000, "batch_size": 8, "lr": 8e-4, "weight_decay": 0.1, "warmup_steps": 100,
                  "b1": 0.9, "b2": 0.95, "min_lr_ratio": 0.1, "clip_norm": 1.0, "eval_batch_size": 16,
                  "seed": 0},
        "n_liv": 12, "pop_size": 16, "generations": 18, "strategy": "auto",
    }


def _accel_paper() -> dict:
    return {
        "model": {"width": 768, "vocab_size": 256, "max_len": PAPER_SEQ_LEN, "head_dim": 64, "window": 512,
                  "scan_impl": "associative"},
        "task": {"name": "bytes_lm", "seq_len": PAPER_SEQ_LEN, "max_bytes": 64 * 2**20, "num_test": 64},
        "train": {"steps": PAPER_STEPS, "batch_size": PAPER_BATCH, "lr": 8e-4, "weight_decay": 0.1,
                  "warmup_steps": 200, "b1": 0.9, "b2": 0.95, "min_lr_ratio": 0.1, "clip_norm": 1.0,
                  "eval_batch_size": 4, "seed": 0},
        "n_liv": 24, "pop_size": 16, "generations": 18,
        # one candidate at a time: the population does not fit one accelerator at this size
        "strategy": "sequential",
    }


FAMILIES = {
    # prefix -> (builder, quality objective)
    "cpu_recall": (_cpu_recall, "error"),
    "cpu_lm": (_cpu_lm, "bits_per_byte"),
    "accel_recall": (_accel_recall, "error"),
    "accel_lm": (_accel_lm, "bits_per_byte"),
    "accel_paper_lm": (_accel_paper, "bits_per_byte"),
}

_COMMON = {"mutation_prob": 0.1, "crossover_points": 2, "elitism": 2, "cache_seq_len": 4096, "reevaluate_seeds": 5,
           "cache_bytes_per_elem": 2, "seed": 0, "baselines": True, "seed_baselines": False}


def build_all() -> dict[str, dict]:
    """Returns:
    file name -> config dict, for every family and study.
    """
    out = {}
    for prefix, (builder, quality) in FAMILIES.items():
        for study, extra in STUDIES.items():
            cfg = {**builder(), **_COMMON, "objectives": [quality, *extra]}
            out[f"{prefix}_{study}.json"] = cfg
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write (or --check) the evolution configs of the STAR studies.")
    ap.add_argument("--out-dir", default=str(pathlib.Path(__file__).resolve().parent / "configs"),
                    help="directory of the JSON configs (default: experiments/configs next to this script)")
    ap.add_argument("--check", action="store_true",
                    help="only check that the files on disk equal what this script would write")
    args = ap.parse_args(argv)
    from star_jax.evolve import EvolveConfig

    out_dir = pathlib.Path(args.out_dir)
    stale = []
    for name, cfg in build_all().items():
        text = EvolveConfig.from_dict(cfg).to_json() + "\n"  # validates and fills every field
        path = out_dir / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)} (run experiments/make_configs.py)", file=sys.stderr)
            return 1
        print(f"all {len(build_all())} configs up to date")
    print(f"accel_paper_*: {PAPER_STEPS} steps x {PAPER_BATCH} x {PAPER_SEQ_LEN} tokens = "
          f"{PAPER_STEPS * PAPER_BATCH * PAPER_SEQ_LEN / 1e6:.1f}M tokens a candidate, "
          f"{100 * PAPER_FRACTION:.2f}% of the paper's {PAPER_TOKENS / 1e9:.1f}B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
