"""The compiler: every preset and random genomes with sharing build, train-forward, decode
step-by-step exactly, are causal, and have exactly the analytic parameter and cache sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import star_jax as sj
from star_jax.genome import Genome, random_genome, register_liv_class, unregister_liv_class, class_ids
from star_jax.model import ModelConfig, ConfigError, build_model, StarModel, compile_genome

CFG = ModelConfig(width=32, vocab_size=11, max_len=12, head_dim=8, window=4)
L = 10


def _count(tree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)))


def _check(genome: Genome, cfg: ModelConfig = CFG, tol: float = 1e-4):
    model = build_model(genome, cfg)
    toks = jax.random.randint(jax.random.key(1), (2, L), 0, cfg.vocab_size, dtype=jnp.int32)
    params = model.init(jax.random.key(0), toks)
    # exact parameter accounting
    assert sj.param_count(genome, cfg) == _count(params), genome.describe()
    # parallel forward vs step-by-step decode
    full = model.apply(params, toks)
    assert full.shape == (2, L, cfg.vocab_size) and bool(jnp.all(jnp.isfinite(full)))
    state = model.init_decode_state(2, L)
    stepped, state = jax.jit(lambda p, t, s: model.apply(p, t, s, method=StarModel.prefill))(params, toks, state)
    err = float(jnp.max(jnp.abs(stepped - full)) / (jnp.max(jnp.abs(full)) + 1e-9))
    assert err < tol, (err, genome.describe())
    # exact cache accounting: float elements of the state after L tokens with max_len = L
    assert sj.cache_bytes(genome, cfg, seq_len=L, bytes_per_elem=4) == 4 * _count(state) // 2, genome.describe()  # batch 2
    return model, params


# The 17 paper classes, a few per model to keep compiles few: every class decodes exactly and
# counts exactly (a wrong LIV would break its model's check).
CLASS_CHUNKS = [(1, 2, 3, 4, 9), (5, 6, 7, 8), (10, 11, 12, 13), (14, 15, 16, 17)]


@pytest.mark.parametrize("chunk", CLASS_CHUNKS)
def test_every_paper_class_decodes_exactly_and_counts_exactly(chunk):
    _check(Genome([[cid, 1, 1, 1, 1] for cid in chunk]))


@pytest.mark.parametrize("seed", range(3))
def test_random_genomes_with_sharing(seed):
    rng = np.random.default_rng(seed)
    g = random_genome(6, rng, classes=tuple(range(1, 18)), share_prob=0.7)
    _check(g)


def test_shared_kv_and_featurizer_sharing_saves_params_and_cache():
    plain = Genome.from_string("1.1.1.1.1-9.1.1.1.1-1.1.1.1.1-9.1.1.1.1")
    kv = Genome.from_string("1.1.1.1.2-9.1.1.1.1-1.1.1.1.2-9.1.1.1.1")
    fs = Genome.from_string("1.1.2.1.1-9.1.1.1.1-1.1.2.1.1-9.1.1.1.1")
    _check(kv); _check(fs)
    w = CFG.width
    assert sj.param_count(plain, CFG) - sj.param_count(kv, CFG) == 2 * w * w  # member has no K, V projections
    assert sj.param_count(plain, CFG) - sj.param_count(fs, CFG) == 3 * w * w  # one Q, K, V set
    assert sj.cache_bytes(kv, CFG, seq_len=100) * 2 == sj.cache_bytes(plain, CFG, seq_len=100)
    assert sj.cache_bytes(fs, CFG, seq_len=100) == sj.cache_bytes(plain, CFG, seq_len=100)


def test_transformer_pp_cache_matches_paper():
    cfg = ModelConfig(width=2048, vocab_size=32000, max_len=4096, head_dim=64)
    g = sj.baselines.transformer_pp(n_liv=48)
    assert sum(s.liv_class == 1 for s in g) == 24
    assert sj.cache_bytes(g, cfg, seq_len=4096, bytes_per_elem=2) == 805_306_368


def test_cache_formulas_per_family():
    cfg = ModelConfig(width=64, vocab_size=11, max_len=256, head_dim=16)
    d, Lq = 64, 256
    one = lambda c: sj.cache_bytes(Genome([[c, 1, 1, 1, 1]]), cfg, seq_len=Lq, bytes_per_elem=1)
    assert one(1) == 2 * 4 * 16 * Lq            # SA-1: 2 x n_kv x head_dim x L
    assert one(3) == 2 * 1 * 16 * Lq            # SA-3: K/V repeat 4
    assert one(5) == d * 16                      # Rec-1: d x state expansion
    assert one(6) == d * 2
    assert one(7) == d * 2                       # GConv-1: d x (k - 1)
    assert one(8) == d * Lq + 3 * d * 2          # GConv-2 (Hyena): the input history + b, c, x short convs
    assert one(17) == 2 * d * Lq + 5 * d * 2     # GConv-2-Diff: two histories + b1, c1, b2, c2, x short convs
    assert one(9) == 0                           # SwiGLU


@pytest.mark.parametrize("cid", list(range(1, 18)))
def test_causality(cid):
    g = Genome([[cid, 1, 1, 1, 1]])
    model = build_model(g, CFG)
    toks = jax.random.randint(jax.random.key(3), (1, L), 0, CFG.vocab_size, dtype=jnp.int32)
    params = model.init(jax.random.key(0), toks)
    t = 4
    toks2 = toks.at[:, t + 1:].set((toks[:, t + 1:] + 1) % CFG.vocab_size)
    a, b = model.apply(params, toks), model.apply(params, toks2)
    np.testing.assert_allclose(np.asarray(a[:, :t + 1]), np.asarray(b[:, :t + 1]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(a[:, t + 1:]), np.asarray(b[:, t + 1:]))


def test_linear_and_sliding_window_attention_from_operator_genomes():
    lin = register_liv_class("LinAttn-m", "1.2.1.1.3", class_id=95)
    swa = register_liv_class("SWA-m", "1.2.2.2.3", class_id=96)
    try:
        prog = compile_genome(Genome.from_string("95.1.1.1.1-96.1.1.1.1"), CFG)
        assert prog.slots[0].mixer.kind == "linear" and prog.slots[0].mixer.window == 0
        assert prog.slots[1].mixer.kind == "softmax" and prog.slots[1].mixer.window == CFG.window
        _check(Genome.from_string("95.1.2.1.1-96.1.2.1.1-1.1.2.1.1"))  # sharing SA-1's featurizer weights
        # a sliding window bounds the cache
        assert sj.cache_bytes(Genome.from_string("96.1.1.1.1"), CFG, seq_len=1000, bytes_per_elem=1) == \
            2 * 4 * 8 * CFG.window
    finally:
        unregister_liv_class(95); unregister_liv_class(96)


def test_config_that_cannot_fit_names_the_liv():
    cfg = ModelConfig(width=16, vocab_size=11, max_len=12, head_dim=8)  # 2 heads, SA-3 needs 4
    with pytest.raises(ConfigError, match=r"LIV #1 \(SA-3.*repeat 4"):
        build_model(Genome.from_string("9.1.1.1.1-3.1.1.1.1"), cfg)
    with pytest.raises(ConfigError, match="divisible by head_dim"):
        ModelConfig(width=30, head_dim=8)
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"width": 32, "heads": 4})
    with pytest.raises(sj.GenomeError, match="segment 1"):
        build_model(Genome.from_string("1.1.1.1.1-1.1.2.1.1"), CFG)


def test_gated_conv_featurizer_genome_sets_short_convs_and_expansion():
    # GConv-2 is Hyena: its featurizer genome asks for k=3 short convs on b, c and x; GConv-1 (LFM2)
    # has none. A user class can turn them off or widen the gated path (expansion), and both the
    # analytic counts and the decode path follow (checked by _check).
    from star_jax.genome.classes import FeatureGroup, FeaturizerGenome, get_liv_class
    prog = compile_genome(Genome.from_string("7.1.1.1.1-8.1.1.1.1-17.1.1.1.1"), CFG)
    assert [s.featurizer.short_conv for s in prog.slots] == [0, 3, 3]
    hyena = get_liv_class(8).featurizer

    def variant(fid, **changes):
        groups = tuple(g if g.name == "filter" else FeatureGroup(g.name, **{"channel_mixing": 2, **changes})
                       for g in hyena.groups)
        return FeaturizerGenome(fid, "gated", groups)

    d = CFG.width
    # (id, name, featurizer changes, (short conv, expansion, repeat), cache bytes at L): a wider
    # gated path, and mad-lab's Hyena layer (expansion 4 from projections tiled 4 times, whose
    # short-conv state holds the untiled projections)
    cases = [(931, "Hyena-x2", dict(expansion=2), (3, 2, 1), 2 * d * L + 3 * 2 * d * 2),
             (933, "Hyena-madlab", dict(expansion=4, repeat=4), (3, 4, 4), 4 * d * L + 3 * d * 2)]
    for cid, name, changes, expected, cache in cases:
        register_liv_class(name, f"{cid}.3.1.1.1", variant(cid, token_mixing=3, kernel_size=3, **changes),
                           class_id=cid, replace=True)
        try:
            g = Genome([[cid, 1, 1, 1, 1], [9, 1, 1, 1, 1]])
            (slot, _) = compile_genome(g, CFG).slots
            f = slot.featurizer
            assert (f.short_conv, f.expansion, f.repeat) == expected and slot.mixer.expansion == f.expansion
            _check(g)
            assert sj.cache_bytes(g, CFG, seq_len=L, bytes_per_elem=1) == cache
        finally:
            unregister_liv_class(cid)
    bad = FeaturizerGenome(932, "gated", tuple(
        FeatureGroup(g.name, channel_mixing=2, token_mixing=3, kernel_size=3 if g.name == "x" else 2)
        if g.name != "filter" else g for g in hyena.groups))
    register_liv_class("BadHyena", "932.3.1.1.1", bad, class_id=932, replace=True)
    try:
        with pytest.raises(ConfigError, match=r"LIV #0 \(BadHyena.*one short-conv kernel"):
            compile_genome(Genome([[932, 1, 1, 1, 1]]), CFG)
    finally:
        unregister_liv_class(932)


def test_recurrence_featurizer_genome_sets_mambas_conv():
    # Rec-1 has no conv on x; a user class asks for Mamba's (token_mixing 3, kernel 4, SiLU) in
    # its featurizer genome, and the counts, the decode cache (d x 3 more) and decode follow.
    import dataclasses
    from star_jax.genome.classes import FeaturizerGenome, get_liv_class
    assert compile_genome(Genome([[5, 1, 1, 1, 1]]), CFG).slots[0].featurizer.x_conv == 0
    rec = get_liv_class(5).featurizer

    def variant(fid, **x):
        return FeaturizerGenome(fid, "ssm", tuple(dataclasses.replace(g, **x) if g.name == "x" else g
                                                  for g in rec.groups))

    register_liv_class("Mamba-m", "935.4.1.1.1", variant(935, token_mixing=3, kernel_size=4, nonlinearity=4),
                       class_id=935, replace=True)
    register_liv_class("BadMamba", "936.4.1.1.1", variant(936, token_mixing=3, kernel_size=4),
                       class_id=936, replace=True)
    # Mamba's expand 2 as well: x, z and dt (and the SSM) twice as wide
    wide = FeaturizerGenome(938, "ssm", tuple(
        dataclasses.replace(g, expansion=2, **(dict(token_mixing=3, kernel_size=4, nonlinearity=4) if g.name == "x"
                                               else {})) if g.name in ("x", "z", "dt") else g for g in rec.groups))
    register_liv_class("Mamba-x2", "938.4.1.1.1", wide, class_id=938, replace=True)
    uneven = FeaturizerGenome(939, "ssm", tuple(dataclasses.replace(g, expansion=2) if g.name == "z" else g
                                                 for g in rec.groups))
    register_liv_class("Uneven", "939.4.1.1.1", uneven, class_id=939, replace=True)
    try:
        # features shared by #0 and #2, featurizer weights shared by #3 and #4
        g = Genome([[935, 1, 1, 1, 2], [9, 1, 1, 1, 1], [935, 2, 1, 1, 2], [935, 3, 2, 3, 1], [935, 3, 2, 4, 1],
                    [5, 5, 1, 5, 1]])
        prog = compile_genome(g, CFG)
        assert prog.slots[0].featurizer.x_conv == 4
        _check(g)
        d, e = CFG.width, 16
        assert sj.cache_bytes(Genome([[935, 1, 1, 1, 1]]), CFG, seq_len=L, bytes_per_elem=1) == d * e + d * 3
        with pytest.raises(ConfigError, match=r"LIV #0 \(BadMamba.*SiLU.*nonlinearity 1"):
            compile_genome(Genome([[936, 1, 1, 1, 1]]), CFG)
        g2 = Genome([[938, 1, 1, 1, 2], [9, 1, 1, 1, 1], [938, 2, 1, 1, 2]])
        (slot, *_) = compile_genome(g2, CFG).slots
        assert (slot.featurizer.expansion, slot.mixer.expansion, slot.featurizer.x_conv) == (2, 2, 4)
        _check(g2)
        assert sj.cache_bytes(Genome([[938, 1, 1, 1, 1]]), CFG, seq_len=L, bytes_per_elem=1) == 2 * d * (e + 3)
        with pytest.raises(ConfigError, match=r"LIV #0 \(Uneven.*x, z and dt .* one expansion"):
            compile_genome(Genome([[939, 1, 1, 1, 1]]), CFG)
    finally:
        for cid in (935, 936, 938, 939):
            unregister_liv_class(cid)


def _refused_variant(kind: str, changes: dict, match: str) -> None:
    """A user class whose featurizer is class ``kind``'s with ``changes`` per group ({group:
    {field: value}}) is refused, as LIV #1, with a ConfigError matching ``match``."""
    import dataclasses
    from star_jax.genome.classes import FeaturizerGenome, get_liv_class
    base = {"gated": 8, "qkv": 1, "ssm": 5, "glu": 9}[kind]
    fz = get_liv_class(base).featurizer
    groups = tuple(dataclasses.replace(g, **changes.get(g.name, {})) for g in fz.groups)
    op = get_liv_class(base).operator.to_string().split(".")
    register_liv_class("Variant", ".".join(["934", *op[1:]]), FeaturizerGenome(934, kind, groups),
                       class_id=934, replace=True)
    try:
        with pytest.raises(ConfigError, match=r"LIV #1 \(Variant.*" + match):
            compile_genome(Genome([[9, 1, 1, 1, 1], [934, 1, 1, 1, 1]]), CFG)
    finally:
        unregister_liv_class(934)


@pytest.mark.parametrize("kind,repeats,match", [
    ("gated", {"b": 2}, r"b, c and x need one repeat"),
    ("gated", {"b": 3, "c": 3, "x": 3}, r"repeat 3 of b, c and x must divide"),
    ("gated", {"filter": 2}, r"\['filter'\].*a filter is one per channel"),
    ("qkv", {"q": 2}, r"\['q'\].*queries are never shared"),
    ("qkv", {"k": 2}, r"K and V .* need one repeat"),
    ("ssm", {"x": 2}, r"\['x'\].*recurrence featurizer does not tile"),
    ("glu", {"value": 3}, r"\['value'\].*memoryless featurizer does not tile"),
])
def test_featurizer_repeat_is_used_or_refused(kind, repeats, match):
    # a featurizer genome's `repeat` either changes the model or is an error naming the LIV
    _refused_variant(kind, {g: {"repeat": r} for g, r in repeats.items()}, match)


@pytest.mark.parametrize("kind,changes,match", [
    ("qkv", {"k": {"token_mixing": 3, "kernel_size": 3}, "v": {"token_mixing": 3, "kernel_size": 3}},
     r"one short convolution on all.*'q': 0, 'k': 3, 'v': 3"),
    ("qkv", {"q": {"token_mixing": 3, "kernel_size": 3}}, r"short-conv kernel.*'q': 3, 'k': 0"),
    ("qkv", {"q": {"expansion": 2}}, r"expansion is 1.*'q': 2"),
    ("ssm", {"c": {"expansion": 8}}, r"one state expansion.*'b': 16, 'c': 8"),
    ("glu", {"value": {"expansion": 4}}, r"multiplied elementwise.*'gate': 3, 'value': 4"),
])
def test_featurizer_group_settings_are_used_or_refused(kind, changes, match):
    # a builder reads one setting for several groups: groups that disagree are an error naming
    # each group's value, never a silently dropped setting
    _refused_variant(kind, changes, match)


def test_a_user_class_reusing_swiglus_featurizer_shares_its_weights_with_its_own_activation():
    # ReGLU names SwiGLU's featurizer (9) with another nonlinearity: featurizer sharing is valid,
    # builds, and each LIV's mixer applies its own activation to the shared features
    register_liv_class("ReGLU", "9.1.1.3.2", class_id=936, replace=True)
    try:
        shared, alone = Genome.from_string("9.1.2.1.1-936.1.2.1.1"), Genome.from_string("9.1.1.1.1-936.1.1.1.1")
        assert shared.sharing().featurizer_owner == (0, 0)
        toks = jax.random.randint(jax.random.key(1), (2, 12), 0, CFG.vocab_size)
        m_shared, m_alone = build_model(shared, CFG), build_model(alone, CFG)
        p = m_shared.init(jax.random.key(0), toks)
        assert "featurizers_1" not in p["params"]
        q = {"params": {**p["params"], "featurizers_1": p["params"]["featurizers_0"]}}  # written out twice
        np.testing.assert_allclose(m_shared.apply(p, toks), m_alone.apply(q, toks), rtol=1e-5, atol=1e-6)
        fz = 2 * CFG.width * 3 * CFG.width  # SwiGLU's gate and value, hidden 3 x width
        assert sj.param_count(alone, CFG) - sj.param_count(shared, CFG) == fz
        # and the part programs train it (the follower reads the owner's featurizer weights)
        r = sj.train(shared, CFG, sj.tasks.make("in_context_recall", vocab_size=8, seq_len=12),
                     sj.TrainConfig(steps=3, batch_size=4, warmup_steps=1), progress=False)
        assert np.isfinite(r.metrics["test_loss"])
    finally:
        unregister_liv_class(936)


def test_generate_uses_decode_path():
    g = Genome.from_string("1.1.1.1.1-9.1.1.1.1")
    model = build_model(g, CFG)
    toks = jnp.zeros((1, 4), jnp.int32)
    params = model.init(jax.random.key(0), toks)
    out = sj.generate(model, params, toks, 5)
    assert out.shape == (1, 9)
    full = model.apply(params, out[:, :-1])
    np.testing.assert_array_equal(np.asarray(jnp.argmax(full[:, 3:], -1)), np.asarray(out[:, 4:]))


def test_parameter_keys_come_from_the_program():
    """Every trainer addresses a LIV's parameters by ``Program.param_names``: they must be the
    keys StarModel's flax tree really has (a LIV sharing featurizer weights reads its leader's)."""
    from star_jax.model.program import parse_param_name

    cfg = ModelConfig(width=16, vocab_size=8, max_len=8, head_dim=8, window=4)
    genome = Genome.from_string("1.2.2.1.1-9.1.1.1.1-1.2.2.1.1-9.1.1.1.1")  # LIVs 0 and 2 share weights
    model = build_model(genome, cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    program = model.program
    expected = {"embed", "final_norm", "head"}
    for i in range(len(genome)):
        names = program.param_names(i)
        expected |= {names["norm"], names["mixer"], names["featurizer"]}
    assert set(params) == expected
    assert program.param_names(2)["featurizer"] == program.param_names(0)["featurizer"] == "featurizers_0"
    assert parse_param_name("mixers_12") == ("mixers", 12)
    assert parse_param_name("head") is None and parse_param_name("mixers_x") is None
