"""The operator contract as code (star_jax.ops.contract): every built-in op implements it, and the
genome compiler refuses an op that lacks part of it, naming the LIV, the class and the methods."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import star_jax as sj
from star_jax.genome import Genome, get_liv_class
from star_jax.genome.classes import class_ids
from star_jax.model import FAMILY_BUILDERS, ModelConfig, StarModel, build_model, compile_genome
from star_jax.ops import attention, conv, memoryless, recurrence
from star_jax.ops.base import StatelessMixer
from star_jax.ops.contract import (
    CACHE_SHARING_METHODS, FEATURIZER_METHODS, MIXER_METHODS, CacheSharingMixer, Featurizer, Mixer,
    OpContractError, check_featurizer, check_mixer,
)

CFG = ModelConfig(width=32, vocab_size=11, max_len=12, head_dim=8, window=4)


def test_contract_methods():
    assert FEATURIZER_METHODS == ("groups", "shareable", "__call__", "step", "init_state", "param_count",
                                  "state_elems")
    assert MIXER_METHODS == ("__call__", "step", "init_state", "param_count", "state_elems")
    assert CACHE_SHARING_METHODS == ("cache_groups", "step_readonly")


@pytest.mark.parametrize("cid", class_ids())
def test_every_builtin_op_implements_the_contract(cid):
    cls = get_liv_class(cid)
    feat, mix = FAMILY_BUILDERS[cls.kind](0, cls, CFG)
    check_featurizer(feat)
    check_mixer(mix)
    assert isinstance(feat, Featurizer) and isinstance(mix, Mixer)
    assert isinstance(mix, CacheSharingMixer) == (cls.kind == "qkv")


def test_every_builtin_op_class_declares_its_contract():
    featurizers = [attention.AttentionFeaturizer, recurrence.RecurrenceFeaturizer, conv.GatedConvFeaturizer,
                   memoryless.GLUFeaturizer]
    mixers = [attention.AttentionMixer, recurrence.RecurrenceMixer, conv.ShortConvMixer, conv.LongConvMixer,
              memoryless.GLUMixer]
    assert all(issubclass(c, Featurizer) and issubclass(c, nn.Module) for c in featurizers)
    assert all(issubclass(c, Mixer) and issubclass(c, nn.Module) for c in mixers)
    assert issubclass(attention.AttentionMixer, CacheSharingMixer)


class NoStepFeaturizer(nn.Module):
    """A user-defined featurizer that forgot `step` and `state_elems` (matches the protocol
    structurally otherwise, inherits nothing)."""

    width: int
    hidden: int

    @nn.nowrap
    def groups(self):
        return ("gate", "value")

    @nn.nowrap
    def shareable(self):
        return ()

    @nn.compact
    def __call__(self, h, groups=None):
        return {g: nn.Dense(self.hidden, use_bias=False, name=g)(h) for g in groups or self.groups()}

    @nn.nowrap
    def init_state(self, batch, groups=None, dtype=jnp.float32):
        return {}

    @nn.nowrap
    def param_count(self, groups=None):
        return len(groups or self.groups()) * self.width * self.hidden


class HalfCacheMixer(memoryless.GLUMixer):
    """Declares the decode cache it could share (cache_groups) but cannot read another's."""

    @nn.nowrap
    def cache_groups(self):
        return ("value",)


class LazyMixer(StatelessMixer):
    """Inherits the contract through a base and implements neither __call__ nor param_count."""

    width: int


def _swap_glu(monkeypatch, featurizer=None, mixer=None):
    original = FAMILY_BUILDERS["glu"]

    def builder(i, cls, cfg):
        feat, mix = original(i, cls, cfg)
        return (featurizer(cfg.width, feat.hidden) if featurizer else feat,
                mixer(cfg.width, mix.hidden) if mixer else mix)

    monkeypatch.setitem(FAMILY_BUILDERS, "glu", builder)


def test_featurizer_missing_a_method_is_refused_at_build_time(monkeypatch):
    _swap_glu(monkeypatch, featurizer=NoStepFeaturizer)
    with pytest.raises(OpContractError, match=r"LIV #1 \(GMemless.*featurizer .*NoStepFeaturizer does not "
                                              r"implement the operator contract .*Featurizer\): missing "
                                              r"step\(\), state_elems\(\)"):
        build_model(Genome.from_string("1.1.1.1.1-9.1.1.1.1"), CFG)


def test_mixer_missing_a_method_is_refused(monkeypatch):
    with pytest.raises(OpContractError, match=r"mixer .*LazyMixer .*missing __call__\(\), param_count\(\)"):
        check_mixer(LazyMixer(8))
    _swap_glu(monkeypatch, mixer=HalfCacheMixer)
    with pytest.raises(OpContractError, match=r"LIV #0 \(GMemless.*HalfCacheMixer .*CacheSharingMixer\): "
                                              r"missing step_readonly\(\)"):
        compile_genome(Genome.from_string("9.1.1.1.1"), CFG)


def test_an_op_that_is_not_a_linen_module_is_refused():
    class Plain:
        def groups(self):
            return ()

    with pytest.raises(OpContractError, match=r"featurizer .*Plain is not a flax.linen.Module"):
        check_featurizer(Plain(), "here")


class ScaledGLUMixer(StatelessMixer):
    """A complete user-defined mixer built on a contract base: GLU without the output projection's
    bias, times a learnable scalar."""

    width: int
    hidden: int

    @nn.compact
    def __call__(self, feats):
        scale = self.param("scale", nn.initializers.ones, (), jnp.float32)
        y = nn.Dense(self.width, use_bias=False, name="out")(jax.nn.silu(feats["gate"]) * feats["value"])
        return y * scale.astype(y.dtype)

    @nn.nowrap
    def param_count(self):
        return self.hidden * self.width + 1


def test_a_complete_user_op_builds_trains_forward_and_decodes(monkeypatch):
    _swap_glu(monkeypatch, mixer=ScaledGLUMixer)
    g = Genome.from_string("1.1.1.1.1-9.1.1.1.1")
    model = build_model(g, CFG)
    toks = jax.random.randint(jax.random.key(1), (2, 6), 0, CFG.vocab_size, dtype=jnp.int32)
    params = model.init(jax.random.key(0), toks)
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert sj.param_count(g, CFG) == n
    full = model.apply(params, toks)
    stepped, _ = model.apply(params, toks, model.init_decode_state(2, 6), method=StarModel.prefill)
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(full), rtol=1e-4, atol=1e-5)
