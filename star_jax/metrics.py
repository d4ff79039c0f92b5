"""Analytic size metrics of a genome under a config: unique parameters and inference-cache bytes.

Computed from the compiled program and each op's own formulas (no model is built); the tests
prove them equal to the real parameter pytree and decode state.
"""
from __future__ import annotations

import numpy as np

from star_jax.genome import Genome
from star_jax.model.config import ModelConfig
from star_jax.model.program import Program, compile_genome


def _program(genome: Genome | str | Program, cfg: ModelConfig | None) -> Program:
    if isinstance(genome, Program):
        return genome
    if isinstance(genome, str):
        genome = Genome.from_string(genome)
    if cfg is None:
        raise TypeError("cfg (a ModelConfig) is required")
    return compile_genome(genome, cfg)


def param_count(genome: Genome | str | Program, cfg: ModelConfig | None = None) -> int:
    """Unique trainable parameters: embedding, per-LIV norm and mixer, each featurizer once
    (with the union of groups its users compute), final norm, LM head."""
    prog = _program(genome, cfg)
    c = prog.cfg
    total = c.vocab_size * c.width + c.width + c.width * c.vocab_size  # embed, final norm, head
    for s in prog.slots:
        total += c.width + s.mixer.param_count()
    for o in prog.featurizer_owners:
        total += prog.slots[o].featurizer.param_count(groups=prog.owner_groups(o))
    return int(total)


def cache_elems(genome: Genome | str | Program, cfg: ModelConfig | None = None, seq_len: int = 4096) -> int:
    """Elements of the per-sequence decode state after `seq_len` tokens (batch 1).

    Raises:
      ValueError: `seq_len` is not an integer >= 1.
    """
    _check_positive("seq_len", seq_len)
    prog = _program(genome, cfg)
    total = 0
    for s in prog.slots:
        total += s.featurizer.state_elems(groups=s.compute_groups)
        if not s.readonly_cache:
            total += s.mixer.state_elems(seq_len)
    return int(total)


def cache_bytes(genome: Genome | str | Program, cfg: ModelConfig | None = None, seq_len: int = 4096,
                bytes_per_elem: int = 2) -> int:
    """Bytes of the per-sequence inference state at `seq_len` (default 16-bit elements).

    Raises:
      ValueError: `seq_len` or `bytes_per_elem` is not an integer >= 1.
    """
    _check_positive("bytes_per_elem", bytes_per_elem)
    return cache_elems(genome, cfg, seq_len) * int(bytes_per_elem)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
