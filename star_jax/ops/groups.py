"""Feature-group bookkeeping shared by every featurizer: which groups a call computes, and the
branch suffixes of differential variants."""
from __future__ import annotations

from typing import Iterable


def branch_suffixes(differential: bool) -> tuple[str, ...]:
    """Suffixes of the duplicated mixing groups: ("1", "2") for a differential variant, else ("",)."""
    return ("1", "2") if differential else ("",)


def resolve_groups(groups: Iterable[str] | None, valid: tuple[str, ...], who: str) -> tuple[str, ...]:
    """The groups to compute, in the featurizer's own order without duplicates.

    Arguments:
      groups: the requested group names, or None for all of them.
      valid: every group the featurizer can compute, in its order.
      who: the featurizer's description, for the error message.
    Raises:
      ValueError naming the unknown groups and the valid ones.
    """
    if groups is None:
        return valid
    groups = tuple(groups)
    bad = [g for g in groups if g not in valid]
    if bad:
        raise ValueError(f"{who}: unknown feature groups {bad}; valid groups are {valid}")
    return tuple(g for g in valid if g in groups)
