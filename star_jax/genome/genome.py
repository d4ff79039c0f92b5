"""The backbone genome: a fixed-length sequence of 5-integer LIV segments.

Text, JSON and flat-array forms, validation with precise errors, repair, sharing resolution,
a content hash for de-duplication, and a readable description.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import numpy as np

from .classes import get_liv_class, class_ids, is_decimal, nearest_in_pool, LIVClass
from .errors import GenomeError

POSITIONS = ("liv_class", "featurizer_group", "featurizer_sharing", "feature_group", "feature_group_sharing")
SEGMENT_LEN = len(POSITIONS)
SHARE_NOTHING, SHARE = 1, 2


@dataclasses.dataclass(frozen=True)
class Segment:
    """One LIV of the backbone (STAR_SPEC section 2, backbone genome)."""

    liv_class: int
    featurizer_group: int = 1
    featurizer_sharing: int = SHARE_NOTHING
    feature_group: int = 1
    feature_group_sharing: int = SHARE_NOTHING

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return tuple(getattr(self, p) for p in POSITIONS)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class SharingPlan:
    """Resolved sharing: who uses whose featurizer weights and whose computed features.

    Attributes:
      featurizer_owner: per LIV, the index of the LIV whose featurizer weights it uses (itself
        when it shares nothing).
      feature_source: per LIV, the index of the leader whose shareable features it reuses, or
        None (then it computes all its features itself).
    """

    featurizer_owner: tuple[int, ...]
    feature_source: tuple[int | None, ...]

    def featurizer_groups(self) -> dict[int, tuple[int, ...]]:
        """owner index -> all LIVs using its featurizer weights (owner first)."""
        out: dict[int, list[int]] = {}
        for i, o in enumerate(self.featurizer_owner):
            out.setdefault(o, []).append(i)
        return {k: tuple(v) for k, v in out.items()}

    def feature_groups(self) -> dict[int, tuple[int, ...]]:
        """leader index -> the LIVs that reuse its features (leader first); only groups of 2+."""
        out: dict[int, list[int]] = {}
        for i, s in enumerate(self.feature_source):
            if s is not None:
                out.setdefault(s, [s]).append(i)
        return {k: tuple(v) for k, v in out.items()}


def _buckets(segments: Sequence[tuple[int, ...]], group_pos: int, strat_pos: int, compat) -> dict:
    """(group id, compatibility key) -> indices of LIVs with sharing strategy 2 there."""
    out: dict[tuple, list[int]] = {}
    for i, s in enumerate(segments):
        if s[strat_pos] == SHARE:
            out.setdefault((s[group_pos], compat(s)), []).append(i)
    return out


def _fs_key(seg) -> tuple[int, int]:
    # Same featurizer genome and the same channel-mixing structure (e.g. head layout), so the
    # featurizer weights have one meaning for every member.
    op = get_liv_class(seg[0]).operator
    return (op.featurizer, op.channel_mixing)


def _fgs_key(seg) -> int | None:
    c = get_liv_class(seg[0])
    return c.class_id if c.featurizer.shareable else None


def _key_or_class(key, seg) -> object:
    """``key(seg)``, or the class id where the class is unknown (an invalid genome's text)."""
    try:
        return key(seg)
    except GenomeError:
        return ("class", seg[0])


class Genome:
    """A backbone genome: an immutable tuple of `Segment`s.

    Construct with `Genome.from_string`, `from_json`, `from_array`, `Genome(segments)` or a
    baseline from `star_jax.baselines`. Genomes compare and hash by value.
    """

    __slots__ = ("_segments",)

    def __init__(self, segments: Sequence[Segment | Sequence[int]]):
        segs = []
        for i, s in enumerate(segments):
            if isinstance(s, Segment):
                segs.append(s)
                continue
            vals = list(s)
            if len(vals) != SEGMENT_LEN:
                raise GenomeError(f"a segment has {SEGMENT_LEN} integers", segment=i, value=vals)
            for p, v in zip(POSITIONS, vals):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise GenomeError("not an integer", segment=i, position=p, value=v)
            segs.append(Segment(*(int(v) for v in vals)))
        if not segs:
            raise GenomeError("a genome needs at least one LIV segment")
        object.__setattr__(self, "_segments", tuple(segs))

    def __setattr__(self, *_):
        raise AttributeError("Genome is immutable")

    # ------------------------------------------------------------------ basic protocol
    @property
    def segments(self) -> tuple[Segment, ...]:
        return self._segments

    def __len__(self) -> int:
        return len(self._segments)

    def __iter__(self):
        return iter(self._segments)

    def __getitem__(self, i: int) -> Segment:
        return self._segments[i]

    def __eq__(self, other) -> bool:
        return isinstance(other, Genome) and self._segments == other._segments

    def __hash__(self) -> int:
        return hash(self._segments)

    def __repr__(self) -> str:
        return f"Genome('{self.to_string()}')"

    @property
    def classes(self) -> tuple[LIVClass, ...]:
        return tuple(get_liv_class(s.liv_class) for s in self._segments)

    # ------------------------------------------------------------------ text / JSON / arrays
    @classmethod
    def from_string(cls, text: str) -> "Genome":
        """Parse '1.1.1.1.1-9.1.1.1.1' (dotted) or the paper's compact '11111-91111'.

        Raises GenomeError naming the offending segment.
        """
        if not isinstance(text, str) or not text.strip():
            raise GenomeError("genome text is empty", value=text)
        segs = []
        for i, part in enumerate(text.strip().split("-")):
            part = part.strip()
            if "." in part:
                items = part.split(".")
            elif is_decimal(part) and len(part) == SEGMENT_LEN:
                items = list(part)
            else:
                raise GenomeError(f"segment text '{part}' is neither 5 dot-separated integers nor 5 digits",
                                  segment=i, valid="e.g. '1.1.1.1.1' or '11111'")
            if len(items) != SEGMENT_LEN:
                raise GenomeError(f"segment text '{part}' has {len(items)} integers, needs {SEGMENT_LEN}", segment=i)
            for p, it in zip(POSITIONS, items):
                if not is_decimal(it.strip()):
                    raise GenomeError(f"segment text '{part}': '{it}' is not a non-negative integer",
                                      segment=i, position=p)
            segs.append([int(x) for x in items])
        return cls(segs)

    def to_string(self, compact: bool = False) -> str:
        """Dotted form; compact=True gives the paper's digit form (only when all values < 10)."""
        if compact:
            if any(v >= 10 for s in self._segments for v in s.as_tuple()):
                raise GenomeError("compact form needs every integer below 10; use the dotted form")
            return "-".join("".join(str(v) for v in s.as_tuple()) for s in self._segments)
        return "-".join(".".join(str(v) for v in s.as_tuple()) for s in self._segments)

    def to_list(self) -> list[list[int]]:
        return [list(s.as_tuple()) for s in self._segments]

    def to_json(self) -> str:
        return json.dumps(self.to_list())

    @classmethod
    def from_json(cls, data: str | Sequence[Sequence[int]]) -> "Genome":
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as e:
                raise GenomeError(f"genome JSON does not parse: {e}") from None
        if not isinstance(data, (list, tuple)):
            raise GenomeError("genome JSON must be a list of 5-integer lists", value=type(data).__name__)
        for i, s in enumerate(data):
            if not isinstance(s, (list, tuple)):
                raise GenomeError("segment must be a list of 5 integers", segment=i, value=s)
        return cls(data)

    def to_array(self) -> np.ndarray:
        """The flat integer genome [5 * n_liv] used by the variation operators."""
        return np.asarray(self.to_list(), dtype=np.int64).reshape(-1)

    @classmethod
    def from_array(cls, flat, *, repair: bool = False) -> "Genome":
        arr = np.asarray(flat)
        if arr.ndim != 1 or arr.size % SEGMENT_LEN or arr.size == 0:
            raise GenomeError(f"a flat genome has a positive multiple of {SEGMENT_LEN} integers", value=arr.shape)
        g = cls(arr.reshape(-1, SEGMENT_LEN).tolist())
        return g.repair() if repair else g

    # ------------------------------------------------------------------ validation and repair
    def pools(self) -> list[tuple[int, ...]]:
        """Valid values of each position of one segment, for this genome's length."""
        groups = tuple(range(1, len(self) + 1))
        return [class_ids(), groups, (1, 2), groups, (1, 2)]

    def validate(self) -> "Genome":
        """Check every position against its pool and every sharing strategy against its group.

        Returns self; raises GenomeError naming the segment, position, value and valid values.
        """
        pools = self.pools()
        for i, s in enumerate(self._segments):
            for p, v, pool in zip(POSITIONS, s.as_tuple(), pools):
                if v not in pool:
                    valid = f"{pool[0]}..{pool[-1]}" if pool == tuple(range(pool[0], pool[-1] + 1)) else list(pool)
                    raise GenomeError("value out of range", segment=i, position=p, value=v, valid=valid)
        segs = [s.as_tuple() for s in self._segments]
        for (gpos, spos, key, what) in ((1, 2, _fs_key, "featurizer"), (3, 4, _fgs_key, "feature-group")):
            for (gid, compat), members in _buckets(segs, gpos, spos, key).items():
                if compat is None:
                    i = members[0]
                    raise GenomeError(f"{self.classes[i].name} has no shareable feature groups",
                                      segment=i, position=POSITIONS[spos], value=SHARE, valid=[SHARE_NOTHING])
                if len(members) < 2:
                    i = members[0]
                    raise GenomeError(f"{what} sharing group {gid} has no other compatible member",
                                      segment=i, position=POSITIONS[spos], value=SHARE, valid=[SHARE_NOTHING])
        return self

    def is_valid(self) -> bool:
        try:
            self.validate()
            return True
        except GenomeError:
            return False

    def repair(self) -> "Genome":
        """The nearest valid genome: clip each value to its pool, then turn sharing strategies that
        cannot apply (no compatible partner in the group, or nothing shareable) into 1."""
        pools = self.pools()
        segs = [[nearest_in_pool(v, pool) for v, pool in zip(s.as_tuple(), pools)] for s in self._segments]
        for gpos, spos, key in ((1, 2, _fs_key), (3, 4, _fgs_key)):
            for (_, compat), members in _buckets(segs, gpos, spos, key).items():
                if compat is None or len(members) < 2:
                    for i in members:
                        segs[i][spos] = SHARE_NOTHING
        return Genome(segs)

    # ------------------------------------------------------------------ sharing
    def sharing(self) -> SharingPlan:
        """Resolve sharing into explicit 'who shares with whom' maps (validates first)."""
        self.validate()
        segs = [s.as_tuple() for s in self._segments]
        owner = list(range(len(segs)))
        source: list[int | None] = [None] * len(segs)
        for members in _buckets(segs, 1, 2, _fs_key).values():
            for i in members[1:]:
                owner[i] = members[0]
        for members in _buckets(segs, 3, 4, _fgs_key).values():
            for i in members[1:]:
                source[i] = members[0]
        return SharingPlan(tuple(owner), tuple(source))

    def canonical(self) -> "Genome":
        """The same architecture with its sharing sets relabelled 1, 2, ... in order of first use
        and the (ignored) group id of non-sharing LIVs set to 1: equal architectures, equal
        canonical form.

        A sharing set is the LIVs of one group id that can share (``_fs_key``/``_fgs_key``), so
        incompatible classes in one group id form separate sets, written the same as when each
        set has its own group id. Where every group id holds one set, its labels are those of
        group ids in order of first use (as before sets were told apart, so recorded hashes
        stand).
        """
        segs = [list(s.as_tuple()) for s in self._segments]
        for gpos, spos, key in ((1, 2, _fs_key), (3, 4, _fgs_key)):
            relabel: dict[tuple, int] = {}
            for s in segs:
                if s[spos] == SHARE:
                    s[gpos] = relabel.setdefault((s[gpos], _key_or_class(key, s)), len(relabel) + 1)
                else:
                    s[gpos] = 1
        return Genome(segs)

    def content_hash(self) -> str:
        """A stable hex digest of the canonical genome (same across processes and versions)."""
        return hashlib.sha256(self.canonical().to_string().encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ description
    def describe(self) -> str:
        """One readable line per LIV with its class, operator genome and sharing."""
        try:
            plan = self.sharing()
        except GenomeError:
            plan = None
        lines = [f"Genome ({len(self)} LIVs): {self.to_string()}"]
        width = max(len(c.name) for c in self.classes)
        for i, (s, c) in enumerate(zip(self._segments, self.classes)):
            share = []
            if plan is not None:
                o, src = plan.featurizer_owner[i], plan.feature_source[i]
                users = [j for j, oo in enumerate(plan.featurizer_owner) if oo == i and j != i]
                if o != i:
                    share.append(f"featurizer weights of #{o}")
                elif users:
                    share.append(f"featurizer shared with #{','.join(map(str, users))}")
                if src is not None:
                    share.append(f"{'/'.join(c.featurizer.shareable)} from #{src}")
                readers = [j for j, ss in enumerate(plan.feature_source) if ss == i]
                if readers:
                    share.append(f"{'/'.join(c.featurizer.shareable)} read by #{','.join(map(str, readers))}")
            lines.append(f"  #{i:<3d} {c.name:<{width}s}  [{c.operator.to_string()}]  {c.description}"
                         + (f"  | {'; '.join(share)}" if share else ""))
        return "\n".join(lines)

    def short(self) -> str:
        """A compact one-line summary, e.g. 'SA-1 > GMemless > Rec-1* > GMemless' (* = shares)."""
        plan = self.sharing() if self.is_valid() else None
        out = []
        for i, c in enumerate(self.classes):
            mark = ""
            if plan is not None and (plan.featurizer_owner[i] != i or plan.feature_source[i] is not None):
                mark = "*"
            out.append(c.name + mark)
        return " > ".join(out)
