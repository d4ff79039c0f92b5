"""Genome -> program of slots: which featurizer and mixer each LIV runs, with what settings,
whose featurizer weights it uses and whose computed features it reads.

The program is static, hashable data; the Flax model, the metrics and the population engine all
consume it, so they agree by construction.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn

from star_jax.genome.classes import is_decimal
from star_jax.genome import Genome, LIVClass
from star_jax.genome.classes import NONLINEARITY
from star_jax.ops.attention import AttentionFeaturizer, AttentionMixer
from star_jax.ops.contract import cache_groups as mixer_cache_groups, check_featurizer, check_mixer
from star_jax.ops.conv import GatedConvFeaturizer, ShortConvMixer, LongConvMixer
from star_jax.ops.memoryless import GLUFeaturizer, GLUMixer
from star_jax.ops.recurrence import RecurrenceFeaturizer, RecurrenceMixer
from .config import ModelConfig, ConfigError

ACTIVATIONS = {1: "none", 3: "relu", 4: "swish"}
ATTENTION_KINDS = {1: "linear", 2: "softmax", 3: "relu"}


@dataclasses.dataclass(frozen=True)
class SlotSpec:
    """One LIV of a compiled backbone.

    Attributes:
      index: position in the backbone.
      liv_class: the class id; name: its name.
      featurizer: the (unbound) featurizer module whose weights this LIV uses; equal to the
        owner's.
      mixer: the (unbound) mixer module.
      featurizer_owner: index of the LIV that owns those featurizer weights.
      feature_source: index of the leader whose shareable features are reused, or None.
      shared_groups: feature groups taken from the leader.
      compute_groups: feature groups this LIV computes with the featurizer.
      readonly_cache: the mixer reads the leader's decode cache and owns none (shared K/V).
    """

    index: int
    liv_class: int
    name: str
    featurizer: nn.Module
    mixer: nn.Module
    featurizer_owner: int
    feature_source: int | None
    shared_groups: tuple[str, ...]
    compute_groups: tuple[str, ...]
    readonly_cache: bool

    @property
    def signature(self) -> tuple:
        """What must be equal for two slots (of different candidates) to run as one batched op."""
        return (self.featurizer, self.mixer, self.compute_groups, self.shared_groups, self.readonly_cache)


PARAM_COLLECTIONS = ("norms", "featurizers", "mixers")
"""The per-LIV module collections of a backbone's parameter tree, beside ``embed``,
``final_norm`` and ``head``."""


def param_name(collection: str, index: int) -> str:
    """The key of a per-LIV module in a backbone's parameter tree (``StarModel``'s, and every
    trainer's): ``norms_{i}`` (LIV i's pre-norm), ``mixers_{i}``, ``featurizers_{i}`` (the
    featurizer weights LIV i owns)."""
    if collection not in PARAM_COLLECTIONS:
        raise ValueError(f"unknown parameter collection {collection!r}; valid: {', '.join(PARAM_COLLECTIONS)}")
    return f"{collection}_{index}"


def parse_param_name(name: str) -> tuple[str, int] | None:
    """The inverse of ``param_name``: ``(collection, index)``, or None for ``embed``,
    ``final_norm``, ``head`` and any other key."""
    collection, _, index = name.rpartition("_")
    if collection in PARAM_COLLECTIONS and is_decimal(index):
        return collection, int(index)
    return None


@dataclasses.dataclass(frozen=True)
class Program:
    """A compiled backbone: the slots plus the model config."""

    slots: tuple[SlotSpec, ...]
    cfg: ModelConfig

    def param_names(self, i: int) -> dict[str, str]:
        """LIV ``i``'s keys in the parameter tree: ``{"norm", "mixer", "featurizer"}`` (the
        featurizer key is its owner's: a LIV sharing featurizer weights reads its leader's)."""
        return {"norm": param_name("norms", i), "mixer": param_name("mixers", i),
                "featurizer": param_name("featurizers", self.slots[i].featurizer_owner)}

    @property
    def featurizer_owners(self) -> tuple[int, ...]:
        return tuple(sorted({s.featurizer_owner for s in self.slots}))

    def owner_groups(self, owner: int) -> tuple[str, ...]:
        """The union of groups computed with owner's featurizer weights, in the featurizer's order."""
        used = {g for s in self.slots if s.featurizer_owner == owner for g in s.compute_groups}
        return tuple(g for g in self.slots[owner].featurizer.groups() if g in used)

    @property
    def leaders(self) -> tuple[int, ...]:
        return tuple(sorted({s.feature_source for s in self.slots if s.feature_source is not None}))


# ---------------------------------------------------------------------------------------------
def _liv_where(i: int, cls: LIVClass) -> str:
    return f"LIV #{i} ({cls.name}, operator {cls.operator.to_string()})"


def _single(i: int, cls: LIVClass, names, why: str) -> None:
    """A ConfigError unless the featurizer groups `names` (None: all) have repeat 1."""
    tiled = {g.name: g.repeat for g in cls.featurizer.groups if g.repeat != 1 and (names is None or g.name in names)}
    if tiled:
        raise ConfigError(f"{_liv_where(i, cls)}: feature group(s) {sorted(tiled)} ask for repeat "
                          f"{tiled}, but {why}; use repeat 1")


def _agree(i: int, cls: LIVClass, names, value: Callable, what: str, why: str, who: str = "its groups"):
    """The one ``value(group)`` the featurizer groups ``names`` (None: all) share, else a
    ConfigError naming each group's value (a builder must never drop a group's setting)."""
    got = {g.name: value(g) for g in cls.featurizer.groups if names is None or g.name in names}
    if len(set(got.values())) > 1:
        raise ConfigError(f"{_liv_where(i, cls)}: {why}, so {who} need one {what}, but the groups ask for {got}")
    return next(iter(got.values()))


def _attention(i: int, cls: LIVClass, cfg: ModelConfig):
    op, fz = cls.operator, cls.featurizer
    where = _liv_where(i, cls)
    if op.channel_mixing == 3:  # grouped: multi-head
        n_heads, head_dim = cfg.width // cfg.head_dim, cfg.head_dim
    else:  # dense: one head spanning the width
        n_heads, head_dim = 1, cfg.width
    _single(i, cls, [g.name for g in fz.groups if g.name.startswith("q")], "queries are never shared across heads")
    repeat = _agree(i, cls, [g.name for g in fz.groups if not g.name.startswith("q")], lambda g: g.repeat,
                    "repeat", "K and V are tiled across the same heads", who="they")
    if n_heads % repeat:
        raise ConfigError(f"{where}: {n_heads} attention heads (width {cfg.width} / head_dim {head_dim}) are "
                          f"not divisible by the K/V repeat {repeat}; choose width/head_dim so that the head "
                          f"count is a multiple of {repeat}")
    if head_dim % 2 and op.nonlinearity == 2:
        raise ConfigError(f"{where}: rotary embeddings need an even head_dim, got {head_dim}")
    wide = {g.name: g.expansion for g in fz.groups if g.expansion != 1}
    if wide:
        raise ConfigError(f"{where}: attention groups are heads x head_dim channels wide (heads from ModelConfig's "
                          f"width / head_dim), so their expansion is 1, but groups ask for {wide}")
    conv = _agree(i, cls, None, lambda g: g.kernel_size if g.token_mixing == 3 else 0,
                  "short-conv kernel (token_mixing 3 with a kernel_size, or token_mixing 1 for none)",
                  "the attention featurizer runs one short convolution on all of its projections")
    kind = ATTENTION_KINDS[op.nonlinearity]
    window = cfg.window if op.sparsity == 2 else 0
    feat = AttentionFeaturizer(width=cfg.width, n_heads=n_heads, n_kv_heads=n_heads // repeat, head_dim=head_dim,
                               qkv_conv=conv, differential=fz.differential)
    mix = AttentionMixer(width=cfg.width, n_heads=n_heads, n_kv_heads=n_heads // repeat, head_dim=head_dim,
                         kind=kind, window=window, rope=(kind == "softmax"), differential=fz.differential,
                         rope_base=cfg.rope_base)
    return feat, mix


def _recurrence(i: int, cls: LIVClass, cfg: ModelConfig):
    fz = cls.featurizer
    where = _liv_where(i, cls)
    _single(i, cls, None, "the recurrence featurizer does not tile its groups")
    e = _agree(i, cls, [g.name for g in fz.groups if g.name.rstrip("12") in ("b", "c")], lambda g: g.expansion,
               "expansion", "B and C are the state's input and output maps, one state expansion")
    # Mamba's causal depthwise conv + SiLU on x (B, C and dt then read the convolved x)
    xg = fz.group("x")
    conv = xg.kernel_size if xg.token_mixing == 3 else 0
    if xg.token_mixing not in (1, 3) or (xg.token_mixing == 3 and (xg.implicit or xg.nonlinearity != 4)):
        raise ConfigError(f"{where}: the recurrence featurizer's x is a projection (token_mixing 1) or Mamba's "
                          f"short causal conv followed by SiLU (token_mixing 3 with a kernel_size, nonlinearity 4), "
                          f"not token_mixing {xg.token_mixing}, nonlinearity {xg.nonlinearity}"
                          f"{', implicit' if xg.implicit else ''}")
    mixed = {g.name: g.token_mixing for g in fz.groups if g.name != "x" and g.token_mixing != 1}
    if mixed:
        raise ConfigError(f"{where}: only x can be convolved in the recurrence featurizer (B, C and dt follow it), "
                          f"but groups ask for token_mixing {mixed}")
    # Mamba's expand: x, z and dt are as wide as the SSM's channels
    channels = {g.name: g.expansion for g in fz.groups if g.name.rstrip("12") in ("x", "z", "dt")}
    if len(set(channels.values())) > 1:
        raise ConfigError(f"{where}: x, z and dt are the SSM's channels, so they need one expansion, but the groups "
                          f"ask for {channels}")
    n = next(iter(channels.values()))
    return (RecurrenceFeaturizer(width=cfg.width, state_expansion=e, x_conv=conv, expansion=n,
                                 differential=fz.differential),
            RecurrenceMixer(width=cfg.width, state_expansion=e, scan_impl=cfg.scan_impl, expansion=n,
                            differential=fz.differential))


def _gated_conv(i: int, cls: LIVClass, cfg: ModelConfig):
    fz = cls.featurizer
    filt = fz.group("filter")
    # Short convolutions on the projections (Hyena's short filters): one kernel for all groups.
    projections = [g.name for g in fz.groups if g.name != "filter"]
    short_conv = _agree(i, cls, projections, lambda g: g.kernel_size if g.token_mixing == 3 else 0,
                        "short-conv kernel (the same token_mixing and kernel_size)",
                        "the gated-convolution featurizer runs one short convolution on all of its projections",
                        who="b, c and x")
    why = "the gated-convolution featurizer multiplies its projections elementwise"
    e = _agree(i, cls, projections, lambda g: g.expansion, "expansion", why, who="b, c and x")
    r = _agree(i, cls, projections, lambda g: g.repeat, "repeat", why, who="b, c and x")
    if (e * cfg.width) % r:
        raise ConfigError(f"{_liv_where(i, cls)}: repeat {r} of b, c and x must divide their width "
                          f"expansion * width = {e} * {cfg.width}")
    _single(i, cls, ("filter",), "a filter is one per channel")
    feat = GatedConvFeaturizer(width=cfg.width, short_conv=short_conv, expansion=e, repeat=r,
                               differential=fz.differential)
    if filt.implicit:
        mix = LongConvMixer(width=cfg.width, max_len=cfg.max_len, filter_order=filt.expansion, expansion=e,
                            differential=fz.differential)
    else:
        mix = ShortConvMixer(width=cfg.width, kernel_size=filt.kernel_size, expansion=e, differential=fz.differential)
    return feat, mix


def _memoryless(i: int, cls: LIVClass, cfg: ModelConfig):
    fz = cls.featurizer
    _single(i, cls, None, "the memoryless featurizer does not tile its groups")
    act = ACTIVATIONS.get(cls.operator.nonlinearity)
    if act is None:
        raise ConfigError(f"{_liv_where(i, cls)}: memoryless LIVs support nonlinearity none/relu/swish, "
                          f"not {NONLINEARITY[cls.operator.nonlinearity]}")
    hidden = _agree(i, cls, None, lambda g: g.expansion, "expansion",
                    "the gate and the value are multiplied elementwise") * cfg.width
    return (GLUFeaturizer(width=cfg.width, hidden=hidden, activation=act, differential=fz.differential),
            GLUMixer(width=cfg.width, hidden=hidden, activation=act, differential=fz.differential))


# featurizer kind -> builder(index, class, cfg) -> (featurizer module, mixer module); the modules
# must implement star_jax.ops.contract.Featurizer and Mixer (checked by compile_genome).
FAMILY_BUILDERS: dict[str, Callable] = {
    "qkv": _attention,
    "ssm": _recurrence,
    "gated": _gated_conv,
    "glu": _memoryless,
}


def same_weights(owner, feat) -> bool:
    """Whether featurizer ``feat`` computes, from the same weights, what its sharing owner's
    ``owner`` does: equal, or equal but for fields the featurizer only records
    (``recorded_fields``, e.g. the activation a GLU featurizer notes for its mixer; a user LIV
    class may reuse SwiGLU's featurizer with another nonlinearity and share its weights)."""
    if owner == feat:
        return True
    fields = getattr(type(owner), "recorded_fields", ())
    return type(owner) is type(feat) and bool(fields) and owner.clone(**{f: getattr(feat, f) for f in fields}) == feat


def compile_genome(genome: Genome, cfg: ModelConfig) -> Program:
    """Resolve a genome into a Program for `cfg`.

    Raises:
      GenomeError: the genome is invalid (names the segment).
      ConfigError: the config cannot fit one of the LIVs (names the LIV and the conflict).
      OpContractError: a builder returned an op that does not implement the operator contract
        (star_jax.ops.contract; names the LIV, the op class and the missing methods).
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    plan = genome.sharing()  # validates
    classes = genome.classes
    built = [FAMILY_BUILDERS[c.kind](i, c, cfg) for i, c in enumerate(classes)]
    for i, (c, (feat, mix)) in enumerate(zip(classes, built)):
        check_featurizer(feat, _liv_where(i, c))
        check_mixer(mix, _liv_where(i, c))
    slots = []
    for i, c in enumerate(classes):
        feat, mix = built[i]
        owner = plan.featurizer_owner[i]
        if not same_weights(built[owner][0], feat):  # cannot happen for valid genomes; guard the invariant
            raise ConfigError(f"{_liv_where(i, c)}: featurizer differs from that of its sharing owner #{owner}")
        src = plan.feature_source[i]
        shared = tuple(feat.shareable()) if src is not None else ()
        compute = tuple(g for g in feat.groups() if g not in shared)
        cache_groups = mixer_cache_groups(mix)
        readonly = bool(src is not None and cache_groups and set(cache_groups) <= set(shared))
        slots.append(SlotSpec(i, c.class_id, c.name, built[owner][0], mix, owner, src, shared, compute, readonly))
    return Program(tuple(slots), cfg)
