"""LIV classes as data: operator genomes, featurizer genomes, the 17 paper presets, a registry.

A LIV class is an operator genome (5 integers) plus the featurizer genome it points to. Users add
classes with `register_liv_class`; the model compiler builds any registered class compositionally.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from .errors import GenomeError


def is_decimal(text: str) -> bool:
    """Whether ``text`` is one or more ASCII digits 0-9, i.e. what ``int(text)`` reads as a
    non-negative integer (``str.isdigit`` also accepts other Unicode digits, such as '\u00b2',
    that ``int`` refuses)."""
    return text.isascii() and text.isdigit()


# Integer codes of the operator genome (STAR_SPEC section 2). Tables are data, not branches.
TOKEN_MIXING = {1: "diagonal", 2: "low_rank", 3: "toeplitz", 4: "semi_separable"}
SPARSITY = {1: "none", 2: "banded"}
NONLINEARITY = {1: "none", 2: "softmax", 3: "relu", 4: "swish"}
CHANNEL_MIXING = {1: "diagonal", 2: "dense", 3: "grouped"}

# Which featurizer kind each token-mixing structure needs, and which other codes it admits.
FEATURIZER_KINDS = ("qkv", "ssm", "gated", "glu")
OPERATOR_RULES = {
    # token mixing: (featurizer kind, allowed sparsity, allowed nonlinearity, allowed channel mixing)
    2: ("qkv", (1, 2), (1, 2, 3), (2, 3)),
    4: ("ssm", (1,), (1,), (1,)),
    3: ("gated", (1,), (1,), (1,)),
    1: ("glu", (1,), (1, 3, 4), (2,)),
}
# Groups each featurizer kind must define (non-differential / differential), and the groups an
# LIV of the same class may reuse from its feature-group leader.
REQUIRED_GROUPS = {
    "qkv": (("q", "k", "v"), ("q1", "k1", "q2", "k2", "v")),
    "ssm": (("x", "z", "b", "c", "dt"), ("x", "z", "b1", "c1", "dt1", "b2", "c2", "dt2")),
    "gated": (("b", "c", "x", "filter"), ("b1", "c1", "b2", "c2", "x", "filter")),
    "glu": (("gate", "value"), ("gate1", "gate2", "value")),
}
SHAREABLE_GROUPS = {
    "qkv": (("k", "v"), ("k1", "k2", "v")),
    "ssm": (("b", "c", "dt"), ("b1", "c1", "dt1", "b2", "c2", "dt2")),
    "gated": (("b", "c"), ("b1", "c1", "b2", "c2")),
    "glu": ((), ()),
}


@dataclasses.dataclass(frozen=True)
class FeatureGroup:
    """One feature group of a featurizer (Q, K, V / B, C, dt / gate, value / a conv filter).

    Attributes:
      name: the group's name, e.g. "q" or "b".
      token_mixing: 1 per-token projection; 3 a causal convolution over the projection (Toeplitz).
      sparsity, nonlinearity, channel_mixing: codes as in the operator genome.
      expansion: group width / model width (for recurrences: the state expansion of b and c; for
        an implicit filter: the order of the filter network; for GLU: the hidden expansion).
      repeat: how often the group is tiled across heads (grouped-query attention: K/V repeat).
      kernel_size: the length of a short convolution (token_mixing 3), 0 when none.
      implicit: a Hyena-style implicit long filter (token_mixing 3, length = sequence).
    """

    name: str
    token_mixing: int = 1
    sparsity: int = 1
    nonlinearity: int = 1
    channel_mixing: int = 2
    expansion: int = 1
    repeat: int = 1
    kernel_size: int = 0
    implicit: bool = False

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise GenomeError("feature group needs a non-empty name", position="name", value=self.name)
        for field, table in (("token_mixing", TOKEN_MIXING), ("sparsity", SPARSITY),
                             ("nonlinearity", NONLINEARITY), ("channel_mixing", CHANNEL_MIXING)):
            v = getattr(self, field)
            if v not in table:
                raise GenomeError(f"feature group '{self.name}' has an unknown code", position=field,
                                  value=v, valid=sorted(table))
        for field in ("expansion", "repeat"):
            v = getattr(self, field)
            if not isinstance(v, int) or v < 1:
                raise GenomeError(f"feature group '{self.name}' needs a positive integer", position=field,
                                  value=v, valid="integers >= 1")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 0:
            raise GenomeError(f"feature group '{self.name}' needs kernel_size >= 0", position="kernel_size",
                              value=self.kernel_size)
        if self.token_mixing == 3 and not self.implicit and self.kernel_size < 1:
            raise GenomeError(f"feature group '{self.name}' is a convolution but has no kernel_size",
                              position="kernel_size", value=self.kernel_size, valid="kernel_size >= 1 or implicit=True")


@dataclasses.dataclass(frozen=True)
class FeaturizerGenome:
    """How an LIV computes the operator's features from its input.

    Attributes:
      featurizer_id: the integer an operator genome uses to point here.
      kind: "qkv" (attention), "ssm" (recurrence), "gated" (gated convolution), "glu" (memoryless).
      groups: the feature groups.
      differential: the mixing groups are duplicated (Differential-Transformer style variant).
    """

    featurizer_id: int
    kind: str
    groups: tuple[FeatureGroup, ...]
    differential: bool = False

    def __post_init__(self):
        if self.kind not in FEATURIZER_KINDS:
            raise GenomeError("unknown featurizer kind", position="kind", value=self.kind, valid=FEATURIZER_KINDS)
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise GenomeError("featurizer has duplicate group names", position="groups", value=names)
        need = REQUIRED_GROUPS[self.kind][int(self.differential)]
        if tuple(sorted(names)) != tuple(sorted(need)):
            raise GenomeError(f"featurizer {self.featurizer_id} of kind '{self.kind}'"
                              f"{' (differential)' if self.differential else ''} has the wrong groups",
                              position="groups", value=names, valid=list(need))

    def group(self, name: str) -> FeatureGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def shareable(self) -> tuple[str, ...]:
        """Groups that an LIV of the same class may reuse from its feature-group leader."""
        return SHAREABLE_GROUPS[self.kind][int(self.differential)]


@dataclasses.dataclass(frozen=True)
class OperatorGenome:
    """The 5-integer operator genome of an LIV class (STAR_SPEC section 2)."""

    featurizer: int
    token_mixing: int
    sparsity: int
    nonlinearity: int
    channel_mixing: int

    FIELDS = ("featurizer", "token_mixing", "sparsity", "nonlinearity", "channel_mixing")

    @classmethod
    def from_string(cls, text: str) -> "OperatorGenome":
        parts = text.split(".") if "." in text else list(text)
        if len(parts) != 5 or not all(is_decimal(p.strip()) for p in parts):
            raise GenomeError("an operator genome is 5 integers, e.g. '1.2.1.2.3' or '12123'", value=text)
        return cls(*(int(p) for p in parts))

    def to_string(self) -> str:
        return ".".join(str(getattr(self, f)) for f in self.FIELDS)

    def check(self, featurizer: FeaturizerGenome, where: str = "") -> None:
        """Raise GenomeError unless this operator genome can be built with `featurizer`."""
        for field, table in (("token_mixing", TOKEN_MIXING), ("sparsity", SPARSITY),
                             ("nonlinearity", NONLINEARITY), ("channel_mixing", CHANNEL_MIXING)):
            v = getattr(self, field)
            if v not in table:
                raise GenomeError(f"{where}unknown operator code", position=field, value=v, valid=sorted(table))
        kind, sp, nl, cm = OPERATOR_RULES[self.token_mixing]
        mixing = TOKEN_MIXING[self.token_mixing]
        if featurizer.kind != kind:
            raise GenomeError(f"{where}token mixing '{mixing}' needs a '{kind}' featurizer",
                              position="featurizer", value=featurizer.kind, valid=kind)
        for field, allowed, table in (("sparsity", sp, SPARSITY), ("nonlinearity", nl, NONLINEARITY),
                                      ("channel_mixing", cm, CHANNEL_MIXING)):
            v = getattr(self, field)
            if v not in allowed:
                raise GenomeError(f"{where}'{table[v]}' is not available with token mixing '{mixing}'",
                                  position=field, value=v, valid={a: table[a] for a in allowed})


@dataclasses.dataclass(frozen=True)
class LIVClass:
    """A searchable LIV class: an id, a short name, an operator genome and its featurizer."""

    class_id: int
    name: str
    operator: OperatorGenome
    featurizer: FeaturizerGenome
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.class_id, int) or self.class_id < 1:
            raise GenomeError("class_id must be a positive integer", position="class_id", value=self.class_id)
        if self.operator.featurizer != self.featurizer.featurizer_id:
            raise GenomeError(f"class {self.name}: operator genome points to featurizer "
                              f"{self.operator.featurizer} but featurizer {self.featurizer.featurizer_id} is given",
                              position="featurizer", value=self.operator.featurizer)
        self.operator.check(self.featurizer, where=f"class {self.name}: ")

    @property
    def kind(self) -> str:
        return self.featurizer.kind

    @property
    def differential(self) -> bool:
        return self.featurizer.differential


# ----------------------------------------------------------------------------------------------
# The 17 classes of the paper, as data.
def _qkv(fid, *, kv_repeat=1, conv=0, diff=False):
    tm = 3 if conv else 1
    mk = lambda n, r=1: FeatureGroup(n, token_mixing=tm, kernel_size=conv, channel_mixing=3, repeat=r)
    names = ("q1", "k1", "q2", "k2", "v") if diff else ("q", "k", "v")
    return FeaturizerGenome(fid, "qkv", tuple(mk(n, 1 if n.startswith("q") else kv_repeat) for n in names), diff)


def _ssm(fid, *, state, diff=False):
    mixers = ("b1", "c1", "dt1", "b2", "c2", "dt2") if diff else ("b", "c", "dt")
    groups = [FeatureGroup("x", channel_mixing=2), FeatureGroup("z", channel_mixing=2, nonlinearity=4)]
    for n in mixers:
        groups.append(FeatureGroup(n, channel_mixing=2, expansion=state if n[0] in "bc" else 1))
    return FeaturizerGenome(fid, "ssm", tuple(groups), diff)


def _gated(fid, *, kernel=0, implicit=False, proj_conv=0, expansion=1, diff=False):
    """Gated convolution featurizer: gates b, c and input x, each optionally short-convolved
    (`proj_conv` taps: Hyena's short filters), plus the long or short filter itself."""
    gates = ("b1", "c1", "b2", "c2") if diff else ("b", "c")
    tm = 3 if proj_conv else 1
    groups = [FeatureGroup(n, token_mixing=tm, kernel_size=proj_conv, channel_mixing=2, expansion=expansion)
              for n in gates + ("x",)]
    groups.append(FeatureGroup("filter", token_mixing=3, channel_mixing=1, kernel_size=kernel, implicit=implicit,
                               expansion=16 if implicit else 1))
    return FeaturizerGenome(fid, "gated", tuple(groups), diff)


def _glu(fid, *, expansion=3):
    return FeaturizerGenome(fid, "glu", (FeatureGroup("gate", nonlinearity=4, expansion=expansion),
                                         FeatureGroup("value", expansion=expansion)), False)


_BASE_PRESETS = (
    # id, name, operator genome, featurizer factory, description
    (1, "SA-1", "1.2.1.2.3", lambda f, d: _qkv(f, diff=d), "multi-head softmax attention (RoPE)"),
    (2, "SA-2", "2.2.1.2.3", lambda f, d: _qkv(f, conv=3, diff=d), "softmax attention, short conv (k=3) on Q/K/V"),
    (3, "SA-3", "3.2.1.2.3", lambda f, d: _qkv(f, kv_repeat=4, diff=d), "grouped-query attention, K/V repeat 4"),
    (4, "SA-4", "4.2.1.2.3", lambda f, d: _qkv(f, kv_repeat=2, diff=d), "grouped-query attention, K/V repeat 2"),
    (5, "Rec-1", "5.4.1.1.1", lambda f, d: _ssm(f, state=16, diff=d), "input-varying diagonal recurrence, state x16"),
    (6, "Rec-2", "6.4.1.1.1", lambda f, d: _ssm(f, state=2, diff=d), "input-varying diagonal recurrence, state x2"),
    (7, "GConv-1", "7.3.1.1.1", lambda f, d: _gated(f, kernel=3, diff=d), "gated short conv k=3 (LFM2 block)"),
    (8, "GConv-2", "8.3.1.1.1", lambda f, d: _gated(f, implicit=True, proj_conv=3, diff=d),
     "Hyena: short conv (k=3) on B/C/x, gated implicit long conv (FFT)"),
)


def _paper_classes() -> dict[int, LIVClass]:
    out: dict[int, LIVClass] = {}
    for cid, name, op, make, desc in _BASE_PRESETS:
        out[cid] = LIVClass(cid, name, OperatorGenome.from_string(op), make(cid, False), desc)
    out[9] = LIVClass(9, "GMemless", OperatorGenome.from_string("9.1.1.4.2"), _glu(9), "SwiGLU (memoryless)")
    for cid, name, op, make, desc in _BASE_PRESETS:
        did = cid + 9
        o = OperatorGenome.from_string(op)
        out[did] = LIVClass(did, f"{name}-Diff", dataclasses.replace(o, featurizer=did), make(did, True),
                            f"differential {desc}")
    return out


PAPER_CLASSES: dict[int, LIVClass] = _paper_classes()
_REGISTRY: dict[int, LIVClass] = dict(PAPER_CLASSES)
_FEATURIZERS: dict[int, FeaturizerGenome] = {c.featurizer.featurizer_id: c.featurizer for c in PAPER_CLASSES.values()}


def liv_classes() -> dict[int, LIVClass]:
    """All registered LIV classes by id (a copy)."""
    return dict(_REGISTRY)


def class_table() -> dict[str, dict]:
    """Every registered LIV class as JSON-able data, by id (as text): name, operator genome and
    featurizer genome. A run directory records it (``classes.json``): genomes are stored as
    class ids, and an id means what the registry says in the process that reads it."""
    return {str(cid): {"name": c.name, "operator": c.operator.to_string(),
                       "featurizer": dataclasses.asdict(c.featurizer)}
            for cid, c in sorted(_REGISTRY.items())}


def class_ids() -> tuple[int, ...]:
    """The sorted pool of valid LIV class ids."""
    return tuple(sorted(_REGISTRY))


def get_liv_class(class_id: int) -> LIVClass:
    try:
        return _REGISTRY[class_id]
    except KeyError:
        raise GenomeError("unknown LIV class", position="liv_class", value=class_id, valid=list(class_ids())) from None


def get_liv_class_by_name(name: str) -> LIVClass:
    for c in _REGISTRY.values():
        if c.name == name:
            return c
    raise GenomeError("unknown LIV class name", value=name, valid=[c.name for c in _REGISTRY.values()])


def get_featurizer(featurizer_id: int) -> FeaturizerGenome:
    try:
        return _FEATURIZERS[featurizer_id]
    except KeyError:
        raise GenomeError("unknown featurizer", position="featurizer", value=featurizer_id,
                          valid=sorted(_FEATURIZERS)) from None


def register_featurizer(featurizer: FeaturizerGenome, *, replace: bool = False) -> FeaturizerGenome:
    """Add a featurizer genome that operator genomes can point to by its id.

    With ``replace``, an id already registered is redefined, and every registered LIV class
    built on it is updated to the new definition (a paper class's featurizer cannot be
    redefined)."""
    fid = featurizer.featurizer_id
    old = _FEATURIZERS.get(fid)
    if old is not None and old != featurizer:
        if not replace:
            raise GenomeError("featurizer id already registered with a different definition",
                              position="featurizer", value=fid)
        if any(c.operator.featurizer == fid for c in PAPER_CLASSES.values()):
            raise GenomeError("a paper class's featurizer cannot be redefined; register yours under another id",
                              position="featurizer", value=fid)
    _FEATURIZERS[fid] = featurizer
    if old is not None and old != featurizer:  # classes built on it read the new definition
        for cid, c in list(_REGISTRY.items()):
            if c.operator.featurizer == fid:
                _REGISTRY[cid] = dataclasses.replace(c, featurizer=featurizer)
    return featurizer


def register_liv_class(name: str, operator: OperatorGenome | str, featurizer: FeaturizerGenome | None = None, *,
                       class_id: int | None = None, description: str = "", replace: bool = False) -> LIVClass:
    """Register a new LIV class from an operator genome (and its featurizer genome).

    Arguments:
      name: a short unique name, e.g. "LinAttn".
      operator: an OperatorGenome or its text, e.g. "1.2.1.1.3" (linear attention using SA-1's
        featurizer) or "1.2.2.2.3" (sliding-window attention).
      featurizer: a new featurizer genome; omit to reuse the registered one the operator points to
        (LIVs of different classes that use the same featurizer can then share its weights).
      class_id: the id to use; default: with ``replace``, the id of the class of this name if
        there is one, else one past the largest registered id.
      replace: allow redefining an existing class (and its featurizer genome), e.g. when a
        notebook cell runs again.
    Returns:
      The registered LIVClass.
    Raises:
      GenomeError: the name or id is taken (without ``replace``), or a paper class would change;
        nothing is registered then.
    """
    if isinstance(operator, str):
        operator = OperatorGenome.from_string(operator)
    same_name = [c.class_id for c in _REGISTRY.values() if c.name == name]
    if class_id is not None:
        cid = class_id
    elif replace and same_name:
        cid = same_name[0]
    else:
        cid = max(_REGISTRY) + 1
    if same_name and same_name[0] != cid:
        raise GenomeError(f"an LIV class with this name exists (id {same_name[0]}); pass replace=True to "
                          f"redefine it", value=name)
    if cid in _REGISTRY and not replace:
        raise GenomeError("class id already registered; pass replace=True to redefine it", position="liv_class",
                          value=cid)
    if cid in PAPER_CLASSES:
        raise GenomeError("paper classes cannot be redefined", position="liv_class", value=cid)
    if featurizer is None:
        featurizer = get_featurizer(operator.featurizer)
    else:  # only now: a refused call registers nothing
        register_featurizer(featurizer, replace=replace)
    cls = LIVClass(cid, name, operator, featurizer, description)
    _REGISTRY[cid] = cls
    return cls


def unregister_liv_class(class_id: int) -> None:
    """Remove a user-registered class (the 17 paper classes cannot be removed)."""
    if class_id in PAPER_CLASSES:
        raise GenomeError("paper classes cannot be removed", position="liv_class", value=class_id)
    _REGISTRY.pop(class_id, None)


def nearest_in_pool(value: int, pool: Iterable[int]) -> int:
    """The pool member closest to value (ties to the smaller one)."""
    return min(pool, key=lambda p: (abs(p - value), p))
