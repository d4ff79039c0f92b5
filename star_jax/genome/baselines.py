"""Baseline backbones as genomes: Transformer++, StripedMamba and an LFM2-like hybrid.

STAR_SPEC section 5 fixes their layouts.
"""
from __future__ import annotations

from .genome import Genome

SA1, SA3, REC1, GCONV1, SWIGLU = 1, 3, 5, 7, 9


def _plain(ids) -> Genome:
    return Genome([[c, 1, 1, 1, 1] for c in ids])


def transformer_pp(n_liv: int = 24) -> Genome:
    """Transformer++: SA-1 and SwiGLU alternating (n_liv must be even)."""
    if n_liv < 2 or n_liv % 2:
        raise ValueError(f"transformer_pp needs an even n_liv >= 2, got {n_liv}")
    return _plain([SA1, SWIGLU] * (n_liv // 2))


def striped_mamba(n_liv: int = 24, attention_every: int = 4) -> Genome:
    """StripedMamba: mixers striped, one attention mixer in `attention_every` (the rest Rec-1),
    each mixer followed by SwiGLU. The attention mixers are the last of each stripe."""
    if n_liv < 2 or n_liv % 2:
        raise ValueError(f"striped_mamba needs an even n_liv >= 2, got {n_liv}")
    mixers = [SA1 if (m % attention_every) == attention_every - 1 else REC1 for m in range(n_liv // 2)]
    return _plain([x for m in mixers for x in (m, SWIGLU)])


LFM2_ATTENTION_MIXERS = (2, 5, 8, 10, 12, 14)


def lfm2_like(n_mixers: int = 16) -> Genome:
    """LFM2-like: 16 mixers, each followed by SwiGLU; grouped-query attention (SA-3) at mixer
    positions 2, 5, 8, 10, 12, 14 (from 0) and the gated short conv GConv-1 elsewhere.
    Other lengths keep LFM2's attention share (6 of 16, at least one) spread evenly."""
    if n_mixers < 1:
        raise ValueError(f"lfm2_like needs n_mixers >= 1, got {n_mixers}")
    if n_mixers == 16:
        attn = set(LFM2_ATTENTION_MIXERS)
    else:
        n_attn = max(1, int(n_mixers * len(LFM2_ATTENTION_MIXERS) / 16 + 0.5))
        attn = {int((i + 1) * n_mixers / (n_attn + 1)) for i in range(n_attn)}
    mixers = [SA3 if m in attn else GCONV1 for m in range(n_mixers)]
    return _plain([x for m in mixers for x in (m, SWIGLU)])


ROSTER = ("Transformer++", "StripedMamba", "LFM2-like")
"""The baseline architectures every evolution run trains beside its candidates, in this order."""


def roster(n_liv: int) -> dict[str, Genome]:
    """The baseline architectures of a backbone length, as evolution trains them.

    Transformer++ and StripedMamba of ``n_liv`` LIVs (StripedMamba with attention every
    ``min(4, n_liv // 2)`` pairs) and LFM2-like with ``n_liv // 2`` mixers (each followed by
    SwiGLU: ``n_liv`` LIVs).

    Arguments:
        n_liv: backbone length.

    Returns:
        name -> genome, in ``ROSTER`` order; empty for an odd ``n_liv`` or one below 2 (the three
        layouts alternate a mixer with SwiGLU).
    """
    if n_liv < 2 or n_liv % 2:
        return {}
    return {
        "Transformer++": transformer_pp(n_liv),
        "StripedMamba": striped_mamba(n_liv, attention_every=min(4, n_liv // 2)),
        "LFM2-like": lfm2_like(n_liv // 2),
    }
