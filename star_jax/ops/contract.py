"""The operator contract as code: what the model compiler, the decode path and the metrics call on
a featurizer and a mixer (docs/ops_contract.md explains why the contract has this shape).

Every LIV family is two flax.linen modules, a featurizer (`Featurizer`) and a mixer (`Mixer`).
Ops know nothing of genomes: they take plain hyper-parameters (ints, floats, bools, tuples:
hashable) as module fields, `width` first. The built-in ops inherit these protocols through the
bases in star_jax.ops.base; an op of one's own may do the same or only match them structurally.
`star_jax.model.compile_genome` calls `check_featurizer` / `check_mixer` on every op it builds,
so an op that lacks part of the contract is refused when the genome is compiled, with the class
and the missing methods named, not deep inside a training step or a decode.

Shapes: `h` is the normalised block input [batch, length, width]; a decode step sees
`h_t` [batch, width]. Features are a dict[str, Array]: in parallel mode each is
[batch, length, ...], in a step [batch, ...] (same trailing shape).

Methods that describe an op (`groups`, `shareable`, `init_state`, `param_count`,
`state_elems`, `cache_groups`) must work on an unbound module (no params): decorate them with
`flax.linen.nowrap`.
"""
from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp


class OpContractError(TypeError):
    """An op does not implement the operator contract (the message names the class and what is
    missing)."""


def _missing(name: str, protocol: str):
    raise NotImplementedError(f"{protocol}.{name} is part of the operator contract and is not implemented")


@runtime_checkable
class Featurizer(Protocol):
    """A featurizer: computes the feature groups that a mixer consumes.

    Its feature groups are named; parameters of a group are created only when that group is
    computed and are named by the group, so a featurizer shared by several LIVs (featurizer
    sharing) creates the union of the groups its users compute.
    """

    def groups(self) -> tuple[str, ...]:
        """Every feature group this featurizer can compute, in its canonical order."""
        _missing("groups", "Featurizer")

    def shareable(self) -> tuple[str, ...]:
        """The groups another LIV of the same class may reuse as computed features (feature-group
        sharing, e.g. cross-layer K/V): attention the key/value groups, recurrence b, c, dt,
        gated convolution b, c, memoryless none. A subset of `groups()`."""
        _missing("shareable", "Featurizer")

    def __call__(self, h: jax.Array, groups: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
        """Parallel features of `h` [batch, length, width]: {group: [batch, length, ...]} for the
        requested groups only (None = all of `groups()`); an unknown group raises ValueError."""
        _missing("__call__", "Featurizer")

    def step(self, h_t: jax.Array, state: Any, groups: tuple[str, ...] | None = None) -> tuple[dict, Any]:
        """One decode token: `h_t` [batch, width] -> ({group: [batch, ...]}, new state). `state`
        holds only what the featurizer itself must remember (e.g. the short-conv history of each
        computed group), {} when nothing; it comes from `init_state` with the same groups."""
        _missing("step", "Featurizer")

    def init_state(self, batch: int, groups: tuple[str, ...] | None = None, dtype=jnp.float32) -> Any:
        """The zero decode state for `batch` sequences computing `groups` (None = all); a pytree,
        {} for a stateless featurizer. Works on an unbound module."""
        _missing("init_state", "Featurizer")

    def param_count(self, groups: tuple[str, ...] | None = None) -> int:
        """Analytic number of parameters created when computing `groups` (None = all); equals the
        size of the real parameter pytree. Works on an unbound module."""
        _missing("param_count", "Featurizer")

    def state_elems(self, groups: tuple[str, ...] | None = None) -> int:
        """Analytic number of floating elements of the decode state per sequence (batch 1) when
        computing `groups`; equals the size of `init_state(1, groups)`. Works on an unbound module."""
        _missing("state_elems", "Featurizer")


@runtime_checkable
class Mixer(Protocol):
    """A mixer: mixes the features across tokens (or channels) and projects back to the width."""

    def __call__(self, feats: dict[str, jax.Array]) -> jax.Array:
        """Parallel forward: features [batch, length, ...] -> y [batch, length, width], the output
        projection included."""
        _missing("__call__", "Mixer")

    def step(self, feats_t: dict[str, jax.Array], state: Any) -> tuple[jax.Array, Any]:
        """One decode token: features [batch, ...] and the state -> (y_t [batch, width], new state)."""
        _missing("step", "Mixer")

    def init_state(self, batch: int, max_len: int, dtype=jnp.float32) -> Any:
        """The zero decode state for `batch` sequences; `max_len` bounds the positions a KV cache
        or an input history must hold. Works on an unbound module."""
        _missing("init_state", "Mixer")

    def param_count(self) -> int:
        """Analytic number of parameters; equals the size of the real parameter pytree. Works on
        an unbound module."""
        _missing("param_count", "Mixer")

    def state_elems(self, seq_len: int) -> int:
        """Analytic number of floating elements in the decode state (batch 1) after decoding
        `seq_len` tokens with max_len = seq_len; integer position counters are not counted.
        Works on an unbound module."""
        _missing("state_elems", "Mixer")


@runtime_checkable
class CacheSharingMixer(Mixer, Protocol):
    """A mixer whose decode state is the history of some of its feature groups (attention: the
    K/V cache), so that a feature-group follower which reuses all of those groups from its leader
    can read the leader's cache instead of keeping its own (cross-layer K/V sharing). The compiler
    then marks the follower `readonly_cache`: it owns no decode state and adds no cache bytes."""

    def cache_groups(self) -> tuple[str, ...]:
        """The feature groups whose history is this mixer's decode state (e.g. k, v). Works on an
        unbound module."""
        _missing("cache_groups", "CacheSharingMixer")

    def step_readonly(self, feats_t: dict[str, jax.Array], state: Any) -> jax.Array:
        """Attend with the query groups of `feats_t` over `state`, the decode state of another LIV
        (same kind and layout) that has already been updated for this token -> y_t [batch, width]."""
        _missing("step_readonly", "CacheSharingMixer")


def _methods(protocol: type) -> tuple[str, ...]:
    """The methods a protocol declares, its bases' included, in declaration order."""
    names: list[str] = []
    for klass in reversed(protocol.__mro__):
        if klass in (Protocol, object) or not getattr(klass, "_is_protocol", False):
            continue
        for name, value in vars(klass).items():
            if callable(value) and (name == "__call__" or not name.startswith("_")) and name not in names:
                names.append(name)
    return tuple(names)


FEATURIZER_METHODS = _methods(Featurizer)
MIXER_METHODS = _methods(Mixer)
CACHE_SHARING_METHODS = tuple(m for m in _methods(CacheSharingMixer) if m not in MIXER_METHODS)


def _lookup(cls: type, name: str):
    """The class attribute `name` as found along the MRO (not through the metaclass), or None."""
    for klass in cls.__mro__:
        if klass is object:
            break
        if name in vars(klass):
            return vars(klass)[name]
    return None


@functools.lru_cache(maxsize=None)
def _absent(cls: type, protocol: type, names: tuple[str, ...]) -> tuple[str, ...]:
    """The names of `names` that `cls` does not implement: absent, not callable, or only the
    protocol's own declaration (inherited from the protocol without an implementation)."""
    out = []
    for name in names:
        value = _lookup(cls, name)
        declared = [vars(p)[name] for p in protocol.__mro__ if name in vars(p)]
        if value is None or not callable(value) or any(value is d for d in declared):
            out.append(name)
    return tuple(out)


def _refuse(op: Any, role: str, protocol: type, missing: tuple[str, ...], where: str) -> None:
    cls = type(op)
    prefix = f"{where}: " if where else ""
    listed = ", ".join(f"{m}()" for m in missing)
    raise OpContractError(
        f"{prefix}{role} {cls.__module__}.{cls.__qualname__} does not implement the operator contract "
        f"(star_jax.ops.contract.{protocol.__name__}): missing {listed}"
    )


def _check_module(op: Any, role: str, protocol: type, where: str) -> None:
    if not isinstance(op, nn.Module):
        cls = type(op)
        prefix = f"{where}: " if where else ""
        raise OpContractError(
            f"{prefix}{role} {cls.__module__}.{cls.__qualname__} is not a flax.linen.Module; the model "
            f"binds, clones and applies its ops as linen modules (star_jax.ops.contract.{protocol.__name__})"
        )


def check_featurizer(op: Any, where: str = "") -> None:
    """Raise OpContractError unless `op` implements `Featurizer`.

    Arguments:
      op: the (unbound) featurizer module.
      where: what it was built for (e.g. the LIV), prefixed to the message.
    Raises:
      OpContractError naming the class and every missing method.
    """
    _check_module(op, "featurizer", Featurizer, where)
    missing = _absent(type(op), Featurizer, FEATURIZER_METHODS)
    if missing:
        _refuse(op, "featurizer", Featurizer, missing, where)


def check_mixer(op: Any, where: str = "") -> None:
    """Raise OpContractError unless `op` implements `Mixer`, and, when it takes part in cache
    sharing (it subclasses `CacheSharingMixer` or defines `cache_groups` or `step_readonly`), all
    of `CacheSharingMixer`.

    Arguments:
      op: the (unbound) mixer module.
      where: what it was built for (e.g. the LIV), prefixed to the message.
    Raises:
      OpContractError naming the class and every missing method.
    """
    _check_module(op, "mixer", Mixer, where)
    cls = type(op)
    sharing = CacheSharingMixer in cls.__mro__ or any(_lookup(cls, m) is not None for m in CACHE_SHARING_METHODS)
    protocol = CacheSharingMixer if sharing else Mixer
    names = MIXER_METHODS + (CACHE_SHARING_METHODS if sharing else ())
    missing = _absent(cls, protocol, names)
    if missing:
        _refuse(op, "mixer", protocol, missing, where)


def cache_groups(mixer: Mixer) -> tuple[str, ...]:
    """The feature groups whose history is `mixer`'s decode state: `mixer.cache_groups()` for a
    `CacheSharingMixer`, () for any other mixer (its state cannot be shared)."""
    if isinstance(mixer, CacheSharingMixer):
        return tuple(mixer.cache_groups())
    return ()


__all__ = [
    "Featurizer", "Mixer", "CacheSharingMixer", "OpContractError", "check_featurizer", "check_mixer",
    "cache_groups", "FEATURIZER_METHODS", "MIXER_METHODS", "CACHE_SHARING_METHODS",
]
