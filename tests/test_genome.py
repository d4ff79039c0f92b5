"""Genome behaviour users rely on: exact round trips, precise errors, valid variation."""
import json
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from star_jax.genome import (
    Genome, GenomeError, OperatorGenome, FeatureGroup, FeaturizerGenome, baselines, crossover, mutate,
    random_genome, register_liv_class, unregister_liv_class, get_liv_class, class_ids, flat_operators, liv_classes,
)

N_CLASSES = len(class_ids())


def test_genome_package_does_not_import_jax():
    """The genome layer is pure Python + numpy: none of its modules imports JAX or Flax."""
    import ast
    import pathlib
    import star_jax.genome as pkg
    banned = ("jax", "flax", "optax", "chex", "orbax")
    files = sorted(pathlib.Path(pkg.__file__).parent.glob("*.py"))
    assert len(files) >= 5
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.ImportFrom) and node.level > 1:
                names = ["(outside the genome package)"]
            for n in names:
                assert n.split(".")[0] not in banned and not n.startswith("star_jax") and "outside" not in n, (f.name, n)


def test_seventeen_paper_classes_have_spec_operator_genomes():
    assert class_ids()[:17] == tuple(range(1, 18))
    assert get_liv_class(1).operator.to_string() == "1.2.1.2.3"
    assert get_liv_class(5).operator.to_string() == "5.4.1.1.1"
    assert get_liv_class(7).operator.to_string() == "7.3.1.1.1"
    assert get_liv_class(8).operator.to_string() == "8.3.1.1.1"
    assert get_liv_class(9).operator.to_string() == "9.1.1.4.2"
    assert get_liv_class(3).featurizer.group("k").repeat == 4
    assert get_liv_class(4).featurizer.group("v").repeat == 2
    assert get_liv_class(5).featurizer.group("b").expansion == 16
    assert get_liv_class(6).featurizer.group("b").expansion == 2
    assert get_liv_class(2).featurizer.group("q").kernel_size == 3
    for cid in range(10, 18):
        c = get_liv_class(cid)
        assert c.differential and c.name == get_liv_class(cid - 9).name + "-Diff"


@pytest.mark.parametrize("text,compact", [
    ("1.1.1.1.1-9.1.1.1.1", "11111-91111"),
    ("21211-31112", "21211-31112"),
])
def test_text_forms_round_trip(text, compact):
    g = Genome.from_string(text)
    assert Genome.from_string(g.to_string()) == g
    assert g.to_string(compact=True) == compact
    assert Genome.from_string(compact) == g
    assert Genome.from_json(g.to_json()) == g


def test_compact_form_refuses_two_digit_values():
    g = Genome.from_string("12.1.1.1.1-9.1.1.1.1")
    with pytest.raises(GenomeError, match="compact"):
        g.to_string(compact=True)


@pytest.mark.parametrize("text,segment", [
    ("1.1.1.1.1-9.1.1", 1),
    ("1.1.1.1.1-9.1.x.1.1", 1),
    ("1111-91111", 0),
    ("1.1.1.1.1--9.1.1.1.1", 1),
    ("1.1.1.1.1-9.1.1.1.\u00b2", 1),  # a Unicode digit that int() refuses
    ("11111-1111\u00b2", 1),
])
def test_malformed_string_names_segment(text, segment):
    with pytest.raises(GenomeError) as e:
        Genome.from_string(text)
    assert e.value.segment == segment
    assert f"segment {segment}" in str(e.value)


def test_validate_names_segment_position_value_and_valid_values():
    g = Genome.from_string("1.1.1.1.1-9.1.3.1.1")
    with pytest.raises(GenomeError) as e:
        g.validate()
    err = e.value
    assert (err.segment, err.position, err.value) == (1, "featurizer_sharing", 3)
    assert "segment 1" in str(err) and "featurizer_sharing" in str(err) and "got 3" in str(err)
    assert "valid: 1..2" in str(err)


def test_lonely_sharing_strategy_is_invalid_and_repaired_to_one():
    g = Genome.from_string("1.1.2.1.1-9.1.1.1.1")
    with pytest.raises(GenomeError, match="no other compatible member"):
        g.validate()
    assert g.repair() == Genome.from_string("1.1.1.1.1-9.1.1.1.1")
    # SwiGLU has nothing shareable: feature-group sharing is repaired away even in a group of two.
    h = Genome.from_string("9.1.1.1.2-9.1.1.1.2")
    with pytest.raises(GenomeError, match="no shareable"):
        h.validate()
    assert h.repair().segments[0].feature_group_sharing == 1


def test_sharing_resolution_maps():
    g = Genome.from_string("1.1.2.2.2-9.1.1.1.1-1.1.2.2.2-5.2.2.1.1-6.2.2.1.1-1.3.1.2.2")
    with pytest.raises(GenomeError, match="segment 3"):
        g.sharing()
    plan = g.repair().sharing()
    assert plan.featurizer_owner == (0, 1, 0, 3, 4, 5)  # Rec-1 and Rec-2 have different featurizers
    assert plan.feature_source == (None, None, 0, None, None, 0)
    assert plan.feature_groups() == {0: (0, 2, 5)}
    assert g.repair() == Genome.from_string("1.1.2.2.2-9.1.1.1.1-1.1.2.2.2-5.2.1.1.1-6.2.1.1.1-1.3.1.2.2")


def test_repair_clips_to_pools():
    g = Genome([[0, 0, 0, 0, 0], [99, 7, 5, 9, 3]])
    r = g.repair()
    assert r.to_list() == [[1, 1, 1, 1, 1], [max(class_ids()), 2, 1, 2, 1]]
    r.validate()


def test_content_hash_is_canonical_and_stable():
    a = Genome.from_string("1.3.2.1.1-9.2.1.1.1-1.3.2.1.1")
    b = Genome.from_string("1.1.2.1.1-9.1.1.1.1-1.1.2.1.1")
    assert a.content_hash() == b.content_hash()
    assert a != b
    assert a.content_hash() != Genome.from_string("1.1.1.1.1-9.1.1.1.1-1.1.1.1.1").content_hash()
    # stable across processes and releases: a fixed digest
    assert Genome.from_string("1.1.1.1.1-9.1.1.1.1").content_hash() == \
        __import__("hashlib").sha256(b"1.1.1.1.1-9.1.1.1.1").hexdigest()[:16]


def test_content_hash_is_the_same_for_every_spelling_of_one_sharing_plan():
    # two incompatible pairs (SA-1, Rec-1) in one group id, or in two: the same architecture
    one = Genome.from_string("1.1.2.1.1-1.1.2.1.1-5.1.2.1.1-5.1.2.1.1")
    two = Genome.from_string("1.1.2.1.1-1.1.2.1.1-5.2.2.1.1-5.2.2.1.1")
    assert one.sharing() == two.sharing()
    assert one.canonical() == two.canonical() and one.content_hash() == two.content_hash()
    assert one.canonical().sharing() == one.sharing()
    # one group id per compatible set, the common case, keeps its labels (and its recorded hashes)
    g = Genome.from_string("5.3.2.1.1-1.2.2.1.1-5.3.2.1.1-1.2.2.1.1")
    assert g.canonical() == Genome.from_string("5.1.2.1.1-1.2.2.1.1-5.1.2.1.1-1.2.2.1.1")
    # a different plan still hashes differently
    assert one.content_hash() != Genome.from_string("1.1.2.1.1-1.1.2.1.1-5.1.1.1.1-5.1.1.1.1").content_hash()


def test_operator_genome_text_with_a_unicode_digit_is_a_genome_error():
    with pytest.raises(GenomeError, match="5 integers"):
        OperatorGenome.from_string("1.2.1.2.\u00b3")


def test_describe_shows_one_line_per_liv_with_sharing():
    g = Genome.from_string("1.1.2.1.2-9.1.1.1.1-1.1.2.1.2")
    lines = g.describe().splitlines()
    assert len(lines) == 4
    assert "SA-1" in lines[1] and "k/v read by #2" in lines[1]
    assert "featurizer weights of #0" in lines[3] and "k/v from #0" in lines[3]


def test_baselines_layouts():
    t = baselines.transformer_pp(24)
    assert len(t) == 24 and [s.liv_class for s in t][:4] == [1, 9, 1, 9]
    m = baselines.striped_mamba(8)
    assert [s.liv_class for s in m] == [5, 9, 5, 9, 5, 9, 1, 9]
    l = baselines.lfm2_like()
    mixers = [s.liv_class for s in l][::2]
    assert len(l) == 32 and [i for i, c in enumerate(mixers) if c == 3] == [2, 5, 8, 10, 12, 14]
    assert all(c == 7 for i, c in enumerate(mixers) if i not in (2, 5, 8, 10, 12, 14))
    for g in (t, m, l):
        g.validate()


def test_user_registered_class_from_operator_genome():
    lin = register_liv_class("LinAttn-test", "1.2.1.1.3", class_id=90, description="linear attention")
    swa = register_liv_class("SWA-test", "1.2.2.2.3", class_id=91, description="sliding-window attention")
    try:
        g = Genome.from_string("90.1.2.1.1-91.1.2.1.1-1.1.2.1.1")
        g.validate()
        # all three use featurizer 1, so they can share its weights
        assert g.sharing().featurizer_owner == (0, 0, 0)
        with pytest.raises(GenomeError, match="needs a 'ssm' featurizer"):
            register_liv_class("bad", "1.4.1.1.1", class_id=92)
        with pytest.raises(GenomeError, match="not available"):
            register_liv_class("bad2", "1.2.1.4.3", class_id=93)
        with pytest.raises(GenomeError, match="wrong groups"):
            FeaturizerGenome(94, "qkv", (FeatureGroup("q"), FeatureGroup("k")))
    finally:
        unregister_liv_class(90)
        unregister_liv_class(91)


# ---------------------------------------------------------------- property-based
@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(-5, 40), min_size=5, max_size=5), min_size=1, max_size=8))
def test_any_integer_array_validates_or_raises_genome_error(segs):
    try:
        g = Genome(segs)
        g.validate()
    except GenomeError:
        pass
    r = Genome(segs).repair()
    r.validate()
    assert len(r) == len(segs)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(-3, 30), min_size=0, max_size=7), min_size=0, max_size=5))
def test_ragged_input_only_raises_genome_error(segs):
    try:
        Genome(segs).validate()
    except GenomeError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="0123456789.- x", max_size=30))
def test_any_text_parses_or_raises_genome_error(text):
    try:
        g = Genome.from_string(text)
    except GenomeError:
        return
    assert Genome.from_string(g.to_string()) == g


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 10), st.integers(0, 2**31), st.floats(0.0, 1.0))
def test_mutation_and_crossover_always_validate(n, seed, p):
    rng = np.random.default_rng(seed)
    a, b = random_genome(n, rng), random_genome(n, rng)
    mutate(a, rng, p).validate()
    c1, c2 = crossover(a, b, rng, n_points=2)
    c1.validate(); c2.validate()
    assert len(c1) == len(c2) == n
    assert Genome.from_json(json.loads(a.to_json())) == a
    assert Genome.from_string(a.to_string()) == a


def test_variation_is_seeded():
    a, b = random_genome(6, 1), random_genome(6, 2)
    assert mutate(a, 7, 0.5) == mutate(a, 7, 0.5)
    assert crossover(a, b, 3) == crossover(a, b, 3)
    assert random_genome(6, 5) == random_genome(6, 5)
    assert mutate(a, 0, 0.0) == a
    m = mutate(a, 0, 1.0)
    assert m != a


def test_crossover_exchanges_flat_pieces_without_repair_needed():
    a = Genome([[1, 1, 1, 1, 1]] * 4)
    b = Genome([[9, 1, 1, 1, 1]] * 4)
    c1, c2 = crossover(a, b, 0, n_points=2)
    fa, f1, f2 = a.to_array(), c1.to_array(), c2.to_array()
    assert np.all((f1 == fa) | (f1 == b.to_array()))
    assert np.array_equal(np.minimum(f1, f2), fa) and np.array_equal(np.maximum(f1, f2), b.to_array())


def test_flat_operators_roundtrip():
    mut, cx, rep = flat_operators(4)
    a = random_genome(4, 0).to_array()
    Genome.from_array(mut(a, np.random.default_rng(0), 0.3)).validate()
    x, y = cx(a, random_genome(4, 1).to_array(), np.random.default_rng(0), 2)
    Genome.from_array(x).validate()
    Genome.from_array(rep(np.zeros(20, dtype=int))).validate()


def test_genomes_load_without_jax():
    # The genome layer (and the package's top level) needs no JAX or Flax: a genome can be
    # handled in a process without them, and the rest loads on first use of its name.
    import subprocess
    import sys

    code = ("import sys, star_jax as sj\n"
            "g = sj.Genome.from_string('1.1.1.1.1-9.1.1.1.1')\n"
            "sj.mutate(g, rng=0); sj.baselines.lfm2_like(); sj.liv_classes(); g.describe()\n"
            "heavy = sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules)\n"
            "assert not heavy, heavy\n"
            "assert callable(sj.train) and callable(sj.evolve) and sj.TrainConfig().steps > 0\n"
            "assert 'jax' in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_a_notebook_cell_registering_a_class_runs_again_with_replace():
    import dataclasses
    from star_jax.genome.classes import get_featurizer, get_liv_class, unregister_liv_class

    base = get_featurizer(5)  # Rec-1's featurizer, redefined under a user id
    def featurizer(kernel):
        groups = tuple(dataclasses.replace(g, token_mixing=3, kernel_size=kernel, nonlinearity=4) if g.name == "x" else g
                       for g in base.groups)
        return FeaturizerGenome(940, base.kind, groups, base.differential)

    first = register_liv_class("CellMamba", "940.4.1.1.1", featurizer(4))
    try:
        with pytest.raises(GenomeError, match="pass replace=True"):  # refused: nothing changes
            register_liv_class("CellMamba", "940.4.1.1.1", featurizer(3))
        assert get_featurizer(940).group("x").kernel_size == 4
        again = register_liv_class("CellMamba", "940.4.1.1.1", featurizer(3), replace=True)
        assert again.class_id == first.class_id and again.featurizer.group("x").kernel_size == 3
        # a second class on the featurizer follows a redefinition of it
        other = register_liv_class("CellMamba2", "940.4.1.1.1", replace=True)
        register_liv_class("CellMamba", "940.4.1.1.1", featurizer(2), replace=True)
        assert get_liv_class(other.class_id).featurizer.group("x").kernel_size == 2
        with pytest.raises(GenomeError, match="paper class"):
            register_liv_class("NotSA1", "1.1.1.1.1", class_id=1, replace=True)
    finally:
        for name in ("CellMamba", "CellMamba2"):
            for c in list(liv_classes().values()):
                if c.name == name:
                    unregister_liv_class(c.class_id)
