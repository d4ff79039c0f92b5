"""The model configuration shared by every candidate of a search.

A frozen, validated dataclass: widths, vocabulary, lengths and the few operator settings that
are not part of the genome.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


class ConfigError(ValueError):
    """A configuration field has an invalid value, or cannot fit a genome."""


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
        for name in ("width", "vocab_size", "max_len", "head_dim", "window"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {v!r}")
        if self.width % self.head_dim:
            raise ConfigError(f"ModelConfig.width ({self.width}) must be divisible by head_dim ({self.head_dim})")
        if self.head_dim % 2:
            raise ConfigError(f"ModelConfig.head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.scan_impl not in ("scan", "associative"):
            raise ConfigError(f"ModelConfig.scan_impl must be 'scan' or 'associative', got {self.scan_impl!r}")
        if not self.norm_eps > 0:
            raise ConfigError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def n_heads(self) -> int:
        return self.width // self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Build from a mapping; unknown keys are an error (never silently dropped)."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s) {unknown}; valid fields: {sorted(valid)}")
        return cls(**dict(d))
