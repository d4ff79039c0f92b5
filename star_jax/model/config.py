"""The model configuration shared by every candidate of a search.

A frozen, validated dataclass: widths, vocabulary, lengths and the few operator settings that
are not part of the genome.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from star_jax._util.validate import ConfigError, Fields, unknown_fields

__all__ = ["ModelConfig", "ConfigError"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Settings of a compiled backbone that the genome does not choose.

    Attributes:
      width: model width d.
      vocab_size: number of token ids.
      max_len: longest sequence the model will see (also the decode cache length and the
        length an implicit long-conv filter is generated for).
      head_dim: attention head width for grouped (multi-head) channel mixing.
      window: the causal window of banded (sliding-window) attention.
      scan_impl: "scan" (fast on CPU) or "associative" (usually faster on GPU/TPU) for recurrences.
      norm_eps: RMSNorm epsilon.
      rope_base: RoPE frequency base.
      embed_init_std: std of the token embedding initialiser.
    """

    width: int = 64
    vocab_size: int = 32
    max_len: int = 128
    head_dim: int = 16
    window: int = 32
    scan_impl: str = "scan"
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    embed_init_std: float = 0.02

    def __post_init__(self):
        check = Fields("ModelConfig", self)
        for name in ("width", "vocab_size", "max_len", "head_dim", "window"):
            check.int(name, lo=1)
        if self.width % self.head_dim:
            check.fail("width", f"an integer divisible by head_dim ({self.head_dim})")
        if self.head_dim % 2:
            check.fail("head_dim", "an even integer >= 2 (rotary embeddings rotate pairs of channels)")
        check.choice("scan_impl", ("scan", "associative"))
        check.real("norm_eps", lo=0, lo_open=True)
        check.real("rope_base", lo=0, lo_open=True)
        check.real("embed_init_std", lo=0)

    @property
    def n_heads(self) -> int:
        return self.width // self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Build from a mapping; unknown keys are an error (never silently dropped)."""
        error = unknown_fields("ModelConfig", d, sorted(f.name for f in dataclasses.fields(cls)))
        if error is not None:
            raise error
        return cls(**dict(d))
