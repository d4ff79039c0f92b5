"""The memoryless LIV family: gated linear units (SwiGLU and relatives), diagonal token mixing.

It is STAR's channel-mixing block (the MLP of a Transformer++): no token interaction, no cache.
"""
from __future__ import annotations

from typing import ClassVar

import chex
import flax.linen as nn
import jax

from star_jax.ops.base import StatelessFeaturizer, StatelessMixer
from star_jax.ops.differential import DiffLambda, diff_combine
from star_jax.ops import init as init_lib
from star_jax.ops.primitives import rows

ACTIVATIONS = {"swish": jax.nn.silu, "relu": jax.nn.relu, "none": lambda v: v}


def _check_activation(activation: str, who: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{who}: activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")


class GLUFeaturizer(StatelessFeaturizer):
    """Featurizer of the gated linear unit: gate and value projections Linear(width -> hidden).

    Attributes:
      width: model width d.
      hidden: GLU hidden width.
      activation: "swish" | "relu" | "none" (applied by the mixer; recorded here for the genome).
      differential: two gates (gate1, gate2) and one shared value.

    Groups: gate, value (differential gate1, gate2, value), each a bias-free Linear named by the
    group, created only when computed. Nothing is shareable; no decode state.
    """

    width: int
    hidden: int
    activation: str = "swish"
    differential: bool = False

    recorded_fields: ClassVar[tuple[str, ...]] = ("activation",)
    """Fields this featurizer only records (its features and weights do not depend on them), so
    LIVs whose featurizers differ only there can share its weights (``compile_genome``)."""

    @nn.nowrap
    def groups(self) -> tuple[str, ...]:
        """All feature groups this featurizer can compute."""
        return ("gate1", "gate2", "value") if self.differential else ("gate", "value")

    @nn.nowrap
    def shareable(self) -> tuple[str, ...]:
        """Groups another LIV may reuse: none (a memoryless op has no cache worth sharing)."""
        return ()

    @nn.nowrap
    def _resolve(self, groups) -> tuple[str, ...]:
        _check_activation(self.activation, type(self).__name__)
        return super()._resolve(groups)

    @nn.compact
    def __call__(self, h: jax.Array, groups: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
        """Compute the requested feature groups.

        Arguments:
          h: [batch, length, width] (or [batch, width] for one token).
          groups: names to compute; None = all of `groups()`.
        Returns:
          dict group -> [..., hidden] (same leading axes as h).
        """
        chex.assert_axis_dimension(h, -1, self.width)
        return {
            g: rows(nn.Dense(self.hidden, use_bias=False, kernel_init=init_lib.LecunNormal(), name=g), h)
            for g in self._resolve(groups)
        }

    @nn.nowrap
    def param_count(self, groups=None) -> int:
        """Analytic number of parameters created when computing `groups` (None = all)."""
        return len(self._resolve(groups)) * self.width * self.hidden


class GLUMixer(StatelessMixer):
    """Gated linear unit: out(act(gate) * value) (SwiGLU for activation="swish").

    Differential: out((act(gate1) - lambda * act(gate2)) * value), lambda learnable.

    Attributes:
      width: model width d.
      hidden: GLU hidden width.
      activation: "swish" | "relu" | "none".
      differential: the differential variant.

    State: {}. Params: out (Linear hidden -> d, no bias), diff_lambda when differential.
    """

    width: int
    hidden: int
    activation: str = "swish"
    differential: bool = False

    def setup(self):
        _check_activation(self.activation, type(self).__name__)
        self.out = nn.Dense(self.width, use_bias=False, kernel_init=init_lib.LecunNormal())
        if self.differential:
            self.diff_lambda = DiffLambda(self.width)

    def __call__(self, feats: dict[str, jax.Array]) -> jax.Array:
        """Apply the unit token by token.

        Arguments:
          feats: gate, value [batch, length, hidden] (differential gate1, gate2, value);
            a decode step passes [batch, hidden].
        Returns:
          y: [batch, length, width] ([batch, width] for one token).
        """
        act = ACTIVATIONS[self.activation]
        if self.differential:
            gate = diff_combine(act(feats["gate1"]), act(feats["gate2"]), self.diff_lambda())
        else:
            gate = act(feats["gate"])
        return rows(self.out, gate * feats["value"])

    @nn.nowrap
    def param_count(self) -> int:
        """Analytic parameter count."""
        return self.hidden * self.width + (DiffLambda.count(self.width) if self.differential else 0)


__all__ = ["GLUFeaturizer", "GLUMixer", "ACTIVATIONS"]
