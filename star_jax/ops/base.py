"""Bases of the built-in ops: each declares the contract it implements (star_jax.ops.contract)
and holds the code every family would otherwise repeat.

- `FeaturizerBase`: resolving a requested tuple of feature groups against `groups()`.
- `StatelessFeaturizer`: a featurizer that remembers nothing between decode tokens (its step is
  its parallel forward on one token; empty state).
- `MixerBase`, `StatelessMixer`: the same for mixers.
- `CacheSharingMixerBase`: a mixer whose decode state other LIVs may read.

The bases have no fields and create no parameters: subclassing one changes neither a module's
fields nor its parameter paths.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from star_jax.ops.contract import CacheSharingMixer, Featurizer, Mixer
from star_jax.ops.groups import resolve_groups


class FeaturizerBase(nn.Module, Featurizer):
    """Base of the featurizers: subclasses implement `groups`, `shareable`, `__call__`, `step`,
    `init_state`, `param_count` and `state_elems` (see contract.Featurizer)."""

    @nn.nowrap
    def _describe(self) -> str:
        """How error messages name this featurizer: its class name."""
        return type(self).__name__

    @nn.nowrap
    def _resolve(self, groups) -> tuple[str, ...]:
        """The groups to compute, in `groups()` order (None = all); ValueError names unknown ones."""
        return resolve_groups(groups, self.groups(), self._describe())


class StatelessFeaturizer(FeaturizerBase):
    """A featurizer without decode state: a step is the parallel forward on one token
    ([batch, width] in, {group: [batch, ...]} out), and its state is {}."""

    def step(self, h_t: jax.Array, state: dict, groups: tuple[str, ...] | None = None):
        """One token: (features {group: [batch, ...]}, state unchanged)."""
        return self(h_t, groups), state

    @nn.nowrap
    def init_state(self, batch: int, groups=None, dtype=jnp.float32) -> dict:
        """No state: {}."""
        return {}

    @nn.nowrap
    def state_elems(self, groups=None) -> int:
        """Featurizer state per sequence: 0."""
        return 0


class MixerBase(nn.Module, Mixer):
    """Base of the mixers: subclasses implement `__call__`, `step`, `init_state`, `param_count`
    and `state_elems` (see contract.Mixer)."""


class StatelessMixer(MixerBase):
    """A mixer without decode state (token-wise, e.g. a GLU): a step is the parallel forward on
    one token, and its state is {}."""

    def step(self, feats_t: dict[str, jax.Array], state: dict):
        """One token: (y_t [batch, width], state unchanged)."""
        return self(feats_t), state

    @nn.nowrap
    def init_state(self, batch: int, max_len: int = 0, dtype=jnp.float32) -> dict:
        """No state: {}."""
        return {}

    @nn.nowrap
    def state_elems(self, seq_len: int = 0) -> int:
        """Decode state per sequence: 0."""
        return 0


class CacheSharingMixerBase(MixerBase, CacheSharingMixer):
    """Base of the mixers whose decode state other LIVs may read: subclasses also implement
    `cache_groups` and `step_readonly` (see contract.CacheSharingMixer)."""


__all__ = ["FeaturizerBase", "StatelessFeaturizer", "MixerBase", "StatelessMixer", "CacheSharingMixerBase"]
