"""An analytic estimate of a population's training memory, used to split a population into
chunks that run one after another when it would not fit a memory budget."""
from __future__ import annotations

from typing import Sequence

from star_jax.genome import Genome
from star_jax.metrics import param_count
from star_jax.model.config import ModelConfig
from star_jax.model.program import compile_genome

BYTES_PER_ELEM = 4
"""float32 everywhere."""

PARAM_COPIES = 4
"""Parameters, gradients, Adam first and second moments."""

ACTIVATION_FACTOR = 12
"""Saved [batch, length, width] activations per LIV for the backward pass: the residual input,
the norm output, the features (q/k/v, gates, up to ~5 groups of width), the mixer's internals and
its output. Expanded features (GLU hidden, recurrence state) add their expansion on top."""


def _slot_activation_elems(slot, cfg: ModelConfig, batch: int, seq_len: int) -> int:
    bl = batch * seq_len
    elems = ACTIVATION_FACTOR * bl * cfg.width
    kind = type(slot.mixer).__name__
    if kind == "AttentionMixer":
        heads = getattr(slot.mixer, "n_heads", 1)
        mult = 2 if getattr(slot.mixer, "differential", False) else 1
        elems += 3 * mult * batch * heads * seq_len * seq_len  # scores, probabilities, mask
    elif kind == "RecurrenceMixer":
        e = getattr(slot.mixer, "state_expansion", 1)
        mult = 2 if getattr(slot.mixer, "differential", False) else 1
        elems += 3 * mult * bl * cfg.width * e  # decays, inputs and states [B, L, D, e]
    elif kind == "GLUMixer":
        elems += 3 * bl * getattr(slot.mixer, "hidden", cfg.width)
    elif kind == "LongConvMixer":
        elems += 4 * batch * 2 * seq_len * cfg.width  # rfft buffers padded to 2L (complex)
    return elems


def estimate_memory_bytes(genomes: Sequence[Genome], cfg: ModelConfig, batch_size: int, seq_len: int) -> int:
    """Estimated peak bytes to train a population with one jitted step (float32).

    The estimate is ``sum over candidates of (PARAM_COPIES * params + activations) * 4`` where
    ``params = param_count(genome, cfg)`` (parameters, gradients, two Adam moments) and the
    activations kept for the backward pass are, per LIV, ``ACTIVATION_FACTOR * B * L * width``
    plus the operator's extra: attention ``3 * B * heads * L^2`` (doubled when differential),
    recurrence ``3 * B * L * width * state_expansion``, GLU ``3 * B * L * hidden``, long conv
    ``8 * B * L * width``; plus embeddings and logits ``4 * B * L * (width + vocab)``. It is an
    order-of-magnitude guide (XLA may fuse away or add buffers), meant for chunking decisions.

    Arguments:
        genomes: the population.
        cfg: the model config.
        batch_size: training sequences per step B.
        seq_len: sequence length L.

    Returns:
        Estimated bytes (int).
    """
    total = 0
    for g in genomes:
        prog = compile_genome(g, cfg)
        elems = PARAM_COPIES * param_count(g, cfg)
        elems += 4 * batch_size * seq_len * (cfg.width + cfg.vocab_size)
        elems += sum(_slot_activation_elems(s, cfg, batch_size, seq_len) for s in prog.slots)
        total += elems * BYTES_PER_ELEM
    return int(total)


def split_by_budget(genomes: Sequence[Genome], cfg: ModelConfig, batch_size: int, seq_len: int,
                    budget: int | None) -> list[list[int]]:
    """Consecutive candidate index chunks whose estimated memory each fits ``budget`` bytes
    (a single candidate over the budget still gets a chunk of its own).

    Returns:
        A list of index lists covering ``range(len(genomes))`` in order.
    """
    idx = list(range(len(genomes)))
    if budget is None:
        return [idx]
    chunks: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in idx:
        need = estimate_memory_bytes([genomes[i]], cfg, batch_size, seq_len)
        if cur and used + need > budget:
            chunks.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += need
    if cur:
        chunks.append(cur)
    return chunks
