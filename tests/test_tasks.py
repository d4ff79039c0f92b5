"""Tests of the fitness tasks: each MAD task's defining property on real generated data, MQAR,
the byte-level LM corpora, config validation, determinism and train/test disjointness."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import star_jax.tasks as tasks
from star_jax.tasks import IGNORE_INDEX, TaskConfigError

B = 256  # batch used for sampling: one compiled shape per task (the generation chunk size)
MAD_TASKS = ("in_context_recall", "noisy_in_context_recall", "fuzzy_in_context_recall",
             "selective_copying", "compression", "memorization")

_TASK_CACHE = {}


def get(name, **kw):
    """A task built once per (name, config) for the whole module (its test set is cached)."""
    key = (name, tuple(sorted(kw.items())))
    if key not in _TASK_CACHE:
        _TASK_CACHE[key] = tasks.make(name, **kw)
    return _TASK_CACHE[key]


def np_test(task):
    x, y = task.test_set()
    return np.asarray(x), np.asarray(y)


def np_sample(task, seed=0):
    x, y = task.sample(jax.random.key(seed), B)
    return np.asarray(x), np.asarray(y)


# ----------------------------------------------------------------------------------------
# Registry, shapes and the settings grid
# ----------------------------------------------------------------------------------------
def test_registry_names():
    assert set(MAD_TASKS) | {"mqar", "bytes_lm"} <= set(tasks.task_names())
    with pytest.raises(KeyError, match="in_context_recall"):
        tasks.make("no_such_task")


@pytest.mark.parametrize("name", MAD_TASKS + ("mqar",))
def test_shapes_dtypes_and_attributes(name):
    task = get(name)
    x, y = task.sample(jax.random.key(1), B)
    xt, yt = task.test_set()
    assert x.shape == y.shape == (B, task.seq_len)
    assert xt.shape == yt.shape == (task.num_test, task.seq_len)
    assert x.dtype == y.dtype == xt.dtype == yt.dtype == jnp.int32
    for arr in (x, xt):
        assert int(arr.min()) >= 0 and int(arr.max()) < task.vocab_size
    for arr in (y, yt):
        valid = np.asarray(arr)[np.asarray(arr) != IGNORE_INDEX]
        assert valid.size > 0 and valid.min() >= 0 and valid.max() < task.vocab_size
    assert task.readout == ("last" if name == "compression" else "all")
    assert task.vocab_size == task.config.vocab_size


def test_recall_length_is_shifted():
    assert get("in_context_recall").seq_len == 127
    assert get("noisy_in_context_recall").seq_len == 127
    assert get("fuzzy_in_context_recall").seq_len == 128
    assert get("selective_copying").seq_len == 256


def test_mad_settings_grid():
    settings_ = tasks.mad_settings()
    assert len(settings_) == 66
    counts = {}
    for s in settings_:
        counts[s.task] = counts.get(s.task, 0) + 1
    assert counts == {"in_context_recall": 11, "fuzzy_in_context_recall": 11,
                      "noisy_in_context_recall": 14, "selective_copying": 13,
                      "compression": 11, "memorization": 6}
    assert len({s.name for s in settings_}) == 66
    assert len(set(settings_)) == 66  # hashable, all distinct
    for s in settings_:  # every setting constructs (configs validate; generation is lazy)
        task = s.make()
        assert task.num_test == 1280
        assert task.config.to_dict()["num_train"] == s.config_kwargs["num_train"]
    base = {s.task: s.config_kwargs for s in tasks.mad_baselines()}
    assert len(base) == 6
    assert (base["in_context_recall"]["vocab_size"], base["in_context_recall"]["seq_len"],
            base["in_context_recall"]["num_train"]) == (16, 128, 12_800)
    assert base["noisy_in_context_recall"]["noise_vocab_size"] == 16
    assert base["noisy_in_context_recall"]["frac_noise"] == 0.2
    assert base["selective_copying"]["num_tokens_to_copy"] == 16
    assert (base["compression"]["vocab_size"], base["compression"]["seq_len"]) == (16, 32)
    assert (base["memorization"]["vocab_size"], base["memorization"]["num_train"]) == (256, 256)
    hardest = [s for s in settings_ if s.varied == "frac_noise"]
    assert [s.config_kwargs["frac_noise"] for s in hardest] == [0.4, 0.6, 0.8]


# ----------------------------------------------------------------------------------------
# Config validation
# ----------------------------------------------------------------------------------------
BAD_CONFIGS = [
    ("in_context_recall", dict(vocab_size=1), "vocab_size"),
    ("in_context_recall", dict(seq_len=127), "seq_len"),
    ("in_context_recall", dict(num_train=0), "num_train"),
    ("in_context_recall", dict(seed=-1), "seed"),
    ("in_context_recall", dict(vocab_size=16.0), "vocab_size"),
    ("in_context_recall", dict(vocab_size=True), "vocab_size"),
    ("noisy_in_context_recall", dict(frac_noise=1.0), "frac_noise"),
    ("noisy_in_context_recall", dict(frac_noise=-0.1), "frac_noise"),
    ("noisy_in_context_recall", dict(vocab_size=17, noise_vocab_size=16), "vocab_size"),
    ("noisy_in_context_recall", dict(noise_vocab_size=0, vocab_size=16), "noise_vocab_size"),
    ("fuzzy_in_context_recall", dict(vocab_size=6), "vocab_size"),
    ("fuzzy_in_context_recall", dict(seq_len=17), "seq_len"),
    ("fuzzy_in_context_recall", dict(k_motif_size=0), "k_motif_size"),
    ("selective_copying", dict(seq_len=33, num_tokens_to_copy=16), "seq_len"),
    ("selective_copying", dict(vocab_size=2), "vocab_size"),
    ("compression", dict(seq_len=1), "seq_len"),
    ("memorization", dict(seq_len=31), "seq_len"),
    ("mqar", dict(seq_len=64, num_kv_pairs=17), "num_kv_pairs"),
    ("mqar", dict(vocab_size=16, num_kv_pairs=8), "vocab_size"),
    ("mqar", dict(power_a=0.0), "power_a"),
    ("mqar", dict(random_non_queries=1), "random_non_queries"),
    ("bytes_lm", dict(vocab_size=512), "vocab_size"),
    ("bytes_lm", dict(val_fraction=0.0), "val_fraction"),
    ("bytes_lm", dict(num_train=10), "num_train"),
    ("bytes_lm", dict(corpus="a", token_file="b"), "token_file"),
]


@pytest.mark.parametrize("name,kwargs,field", BAD_CONFIGS)
def test_bad_config_raises_naming_field(name, kwargs, field):
    with pytest.raises(TaskConfigError) as info:
        tasks.make(name, **kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", MAD_TASKS + ("mqar", "bytes_lm"))
def test_unknown_field_rejected(name):
    with pytest.raises(TaskConfigError, match="num_examples") as info:
        tasks.make(name, num_examples=5)
    assert info.value.field == "num_examples"
    assert "valid fields" in str(info.value)


def test_make_with_config_object_and_overrides():
    cfg = tasks.InContextRecallConfig(vocab_size=32)
    task = tasks.make("in_context_recall", config=cfg)
    assert task.config is cfg and task.vocab_size == 32
    task2 = tasks.make("in_context_recall", config=cfg, seq_len=256)
    assert task2.config.vocab_size == 32 and task2.config.seq_len == 256
    with pytest.raises(TaskConfigError, match="InContextRecallConfig"):
        tasks.make("compression", config=cfg)
    with pytest.raises(TaskConfigError):
        tasks.make("in_context_recall", config=cfg, vocab=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.vocab_size = 64
    with pytest.raises(TaskConfigError, match="valid fields") as info:
        tasks.SelectiveCopyingConfig(num_tokens=8)  # direct construction rejects unknown keys
    assert info.value.field == "num_tokens"


@settings(max_examples=60, deadline=None)
@given(frac=st.floats(-2.0, 2.0, allow_nan=False))
def test_frac_noise_range(frac):
    if 0.0 <= frac < 1.0:
        assert tasks.NoisyInContextRecallConfig(frac_noise=frac).frac_noise == frac
    else:
        with pytest.raises(TaskConfigError, match="frac_noise"):
            tasks.NoisyInContextRecallConfig(frac_noise=frac)


@settings(max_examples=80, deadline=None)
@given(seq_len=st.integers(1, 300), n=st.integers(1, 150))
def test_selective_copying_length_rule(seq_len, n):
    if seq_len > 2 * n + 1:
        assert tasks.SelectiveCopyingConfig(seq_len=seq_len, num_tokens_to_copy=n).length == seq_len
    else:
        with pytest.raises(TaskConfigError, match="seq_len"):
            tasks.SelectiveCopyingConfig(seq_len=seq_len, num_tokens_to_copy=n)


# ----------------------------------------------------------------------------------------
# In-context recall (plain and noisy)
# ----------------------------------------------------------------------------------------
def check_recall(inputs, targets, n_keys, noise_lo=None):
    """Every answered key position's target is the value that followed that key earlier in the
    same sequence; every repeated (non-noise) key is answered; the final probe is answered."""
    n_ex, L = inputs.shape
    for x, t in zip(inputs, targets):
        seen = {}
        for p in range(0, L, 2):  # key positions (inputs are pairs, shifted by one)
            k = int(x[p])
            if noise_lo is not None and k >= noise_lo:
                assert t[p] == IGNORE_INDEX and (p + 1 >= L or t[p + 1] == IGNORE_INDEX)
                continue
            assert k < n_keys
            if p + 1 < L:
                assert t[p + 1] == IGNORE_INDEX  # value positions never carry a target
            if k in seen:
                assert t[p] == seen[k]
            else:
                assert t[p] == IGNORE_INDEX or p == L - 1
            if p + 1 < L:
                v = int(x[p + 1])
                assert seen.setdefault(k, v) == v  # one value per key within a sequence
        assert t[L - 1] != IGNORE_INDEX  # the final probe
        assert int(x[L - 1]) in seen and t[L - 1] == seen[int(x[L - 1])]


def test_in_context_recall_property():
    task = get("in_context_recall")
    x, y = np_test(task)
    check_recall(x[:300], y[:300], n_keys=8)
    assert x[:, 1::2].min() >= 8 and x[:, 0::2].max() < 8  # keys 0-7, values 8-15
    xs, ys = np_sample(task)
    np.testing.assert_array_equal(ys[:, :-1], xs[:, 1:])  # train: next token everywhere
    assert (ys != IGNORE_INDEX).all()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idx=st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
def test_in_context_recall_property_any_index(idx):
    task = get("in_context_recall")
    padded = np.zeros(B, np.int32)  # a full chunk reuses the test set's compiled generator
    padded[: len(idx)] = idx
    x, y = task.examples(padded, training=False)
    check_recall(np.asarray(x)[: len(idx)], np.asarray(y)[: len(idx)], n_keys=8)


def test_noisy_recall_property():
    task = get("noisy_in_context_recall")
    x, y = np_test(task)
    check_recall(x[:300], y[:300], n_keys=8, noise_lo=16)
    keys = x[:, 0:-1:2]
    is_noise = keys >= 16
    assert (y[:, 0:-1:2][is_noise] == IGNORE_INDEX).all()  # noise positions are -100
    assert (y[x >= 16] == IGNORE_INDEX).all()
    assert abs(is_noise.mean() - 0.2) < 0.02  # pairs become noise with p = frac_noise
    xs, ys = np_sample(task)
    assert (ys >= 16).any()  # training targets include the noise (next token everywhere)
    np.testing.assert_array_equal(ys[:, :-1], xs[:, 1:])


# ----------------------------------------------------------------------------------------
# Fuzzy recall
# ----------------------------------------------------------------------------------------
def runs(seq, n_key, pad):
    """Split a sequence into alternating (kind, tokens, start) runs of key / value tokens."""
    out = []
    for p, tok in enumerate(seq):
        if tok == pad:
            assert not out, "pad tokens only on the left"
            continue
        kind = "k" if tok < n_key else "v"
        if out and out[-1][0] == kind:
            out[-1][1].append(int(tok))
        else:
            out.append((kind, [int(tok)], p))
    return out


def test_fuzzy_recall_property():
    task = get("fuzzy_in_context_recall")
    x, y = np_test(task)
    n_key, pad = 7, 15
    for xi, yi in zip(x[:200], y[:200]):
        raw = np.concatenate([xi, yi[-1:]])  # the last target is the final probe's last token
        r = runs(raw, n_key, pad)
        assert r[0][0] == "k" and r[-1][0] == "v" and len(r) % 2 == 0
        answered = {p for p in range(len(yi)) if yi[p] != IGNORE_INDEX}
        expected = set()
        memory = {}
        for (_, key, _), (_, val, vstart) in zip(r[0::2], r[1::2]):
            assert len(key) == 3 and len(set(key)) == 3  # test keys: full motif, distinct tokens
            assert 1 <= len(val) <= 3 and len(set(val)) == len(val)
            key = tuple(key)
            if key in memory:
                assert memory[key] == val  # a key motif is always followed by the same value
                expected.update(range(vstart - 1, vstart - 1 + len(val)))
                for j, tok in enumerate(val):  # the target at the previous position is the token
                    assert yi[vstart - 1 + j] == tok
            memory.setdefault(key, val)
        final_key, final_val = tuple(r[-2][1]), r[-1][1]
        assert memory[final_key] == final_val
        assert expected == answered  # targets exactly on values of keys already shown
    xs, ys = np_sample(task)
    np.testing.assert_array_equal(ys[:, :-1], xs[:, 1:])
    key_lengths = {len(k) for row in xs[:50] for kind, k, _ in runs(row, n_key, pad) if kind == "k"}
    assert {1, 2, 3} <= key_lengths  # training keys have motifs of 1..3 tokens
    assert (xs[:, 0] == pad).all()


# ----------------------------------------------------------------------------------------
# Selective copying, compression, memorization
# ----------------------------------------------------------------------------------------
def test_selective_copying_property():
    task = get("selective_copying")
    x, y = np_test(task)
    S, n, blank, copy = 256, 16, 14, 15
    for xi, yi in zip(x, y):
        assert (yi[: S - n] == IGNORE_INDEX).all()
        data_pos = np.flatnonzero(xi < blank)
        assert len(data_pos) == n
        np.testing.assert_array_equal(yi[S - n:], xi[data_pos])  # non-blank tokens, in order
        assert xi[S - n - 1] == copy and (xi == copy).sum() == 1
        assert (xi[S - n:] == blank).all()
        assert data_pos[-1] == S - n - 2  # MAD: the last data token precedes the copy token
    assert len({tuple(np.flatnonzero(xi < blank)) for xi in x[:50]}) == 50  # positions vary


def test_compression_property():
    task = get("compression")
    x, y = np_test(task)
    np.testing.assert_array_equal(x, y)
    assert (x[:, -1] == 15).all() and x[:, :-1].max() < 15
    assert task.readout == "last"


def test_compression_sample_under_jit():
    task = get("compression")
    key = jax.random.key(3)
    eager = task.sample(key, B)
    jitted = jax.jit(lambda k: task.sample(k, B))(key)
    np.testing.assert_array_equal(np.asarray(eager[0]), np.asarray(jitted[0]))
    x5, y5 = task.sample(key, 5)  # odd batch sizes are padded internally, returned exact
    assert x5.shape == y5.shape == (5, 32)
    idx = np.asarray(jax.random.randint(key, (5,), 0, task.num_train, dtype=jnp.int32))
    np.testing.assert_array_equal(np.asarray(x5), np.asarray(task.train_examples(idx)[0]))
    big = np.asarray(task.train_examples(np.arange(600))[0])  # > one chunk: chunk by chunk
    assert big.shape == (600, 32)
    np.testing.assert_array_equal(big[256:512],
                                  np.asarray(task.train_examples(np.arange(256, 512))[0]))
    assert len({row.tobytes() for row in big}) == 600


def test_memorization_property_and_fixed_map():
    task = get("memorization")
    kv = np.asarray(tasks.memorization_map(task.config))
    assert kv.shape == (127,) and len(set(kv.tolist())) == 127
    assert kv.min() >= 127 and kv.max() <= 254
    for x, y in (np_test(task), np_sample(task)):
        assert (x[:, 1::2] == 255).all() and x[:, 0::2].max() < 127
        assert (y[:, 0::2] == IGNORE_INDEX).all()
        np.testing.assert_array_equal(y[:, 1::2], kv[x[:, 0::2]])
    again = tasks.make("memorization")
    np.testing.assert_array_equal(np.asarray(tasks.memorization_map(again.config)), kv)
    other = np.asarray(tasks.memorization_map(tasks.MemorizationConfig(seed=1)))
    assert (other != kv).mean() > 0.5


# ----------------------------------------------------------------------------------------
# MQAR
# ----------------------------------------------------------------------------------------
def test_mqar_property():
    task = get("mqar", num_train=4096)
    V, S, n = 8192, 64, 8
    x, y = np_test(task)
    keys, vals = x[:, 0:2 * n:2], x[:, 1:2 * n:2]
    assert all(len(set(k)) == n for k in keys)  # keys unique per example
    assert keys.min() >= 1 and keys.max() < V // 2 and vals.min() >= V // 2
    gaps = []
    for xi, yi, ki, vi in zip(x, y, keys, vals):
        q = np.flatnonzero(yi != IGNORE_INDEX)
        assert len(q) == n and q.min() >= 2 * n and ((q - 2 * n) % 2 == 0).all()
        kv = dict(zip(ki.tolist(), vi.tolist()))
        assert sorted(xi[q].tolist()) == sorted(kv)  # every key queried once
        assert all(yi[p] == kv[int(xi[p])] for p in q)
        gaps.extend(((q - 2 * n) // 2).tolist())
    space = (S - 2 * n) // 2
    assert np.mean(gaps) < 0.8 * np.mean(np.arange(space))  # power law favours short gaps
    xs, ys = np_sample(task)
    assert ((ys != IGNORE_INDEX).sum(1) == n).all()


# ----------------------------------------------------------------------------------------
# Determinism, disjoint streams, leakage, test batches
# ----------------------------------------------------------------------------------------
def test_determinism_and_seed():
    a = get("in_context_recall")
    b = tasks.make("in_context_recall")
    np.testing.assert_array_equal(np_test(a)[0], np_test(b)[0])
    np.testing.assert_array_equal(np_sample(a, 5)[0], np_sample(b, 5)[0])
    assert not np.array_equal(np_sample(a, 5)[0], np_sample(a, 6)[0])
    c = tasks.make("in_context_recall", seed=1)
    assert not np.array_equal(np_test(a)[0][:64], np.asarray(c.test_set()[0][:64]))


@pytest.mark.parametrize("name", MAD_TASKS)
def test_train_test_disjoint_and_no_leakage(name):
    small = 2560 if name != "memorization" else 256
    task = tasks.make(name, num_train=small)
    x_test = np_test(task)[0]
    x_train = np.asarray(task.train_examples(np.arange(min(B, small)))[0])
    assert not any(np.array_equal(a, b) for a, b in zip(x_train, x_test))
    assert tasks.leakage_check(task) == 0


def test_test_batches_padding():
    task = get("compression")
    xt, yt = np_test(task)
    batches = list(task.test_batches(300))
    assert len(batches) == task.num_test_batches(300) == 5
    assert all(bx.shape == (300, 32) and by.shape == (300, 32) for bx, by in batches)
    xs = np.concatenate([np.asarray(b[0]) for b in batches])
    ys = np.concatenate([np.asarray(b[1]) for b in batches])
    np.testing.assert_array_equal(xs[:1280], xt)
    np.testing.assert_array_equal(ys[:1280], yt)
    assert (ys[1280:] == IGNORE_INDEX).all()


# ----------------------------------------------------------------------------------------
# Byte-level language modelling
# ----------------------------------------------------------------------------------------
def test_bytes_lm_stdlib_windows_and_split():
    task = tasks.make("bytes_lm", seq_len=64, max_bytes=2**20)
    info = task.corpus_info
    assert task.vocab_size == 256 and info["source"] == "python-stdlib"
    assert info["train_tokens"] + info["val_tokens"] == 2**20
    assert info["val_files"] >= 1 and info["train_files"] > info["val_files"]
    x, y = task.sample(jax.random.key(0), 32)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape == (32, 64)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # windows of seq_len + 1 bytes
    train = task._train_np.tobytes()
    for xi, yi in zip(x, y):
        window = bytes(xi.astype(np.uint8)) + bytes(yi[-1:].astype(np.uint8))
        assert window in train
    xt, yt = np_test(task)
    val = task._val_np
    np.testing.assert_array_equal(xt[1], val[64:128])  # stride seq_len over the held-out files
    np.testing.assert_array_equal(yt[1], val[65:129])
    again = tasks.make("bytes_lm", seq_len=64, max_bytes=2**20)
    assert again.corpus_info["sha256"] == info["sha256"]
    assert tasks.leakage_check(task) <= task.num_test // 10


def test_bytes_lm_user_corpus_dir_file_and_tokens(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(40):
        (d / f"f{i:02d}.txt").write_text(f"document {i}: " + "lorem ipsum dolor " * (20 + i))
    (d / ".hidden").write_text("never read")
    task = tasks.make("bytes_lm", corpus=str(d), seq_len=16, val_fraction=0.2)
    info = task.corpus_info
    assert info["files"] == 40 and info["val_files"] >= 1
    train, val = task._train_np.tobytes(), task._val_np.tobytes()
    for name in info["val_file_names"]:  # split by file: held-out documents are not trained on
        head = (d / name).read_bytes()[:12]
        assert head in val and head not in train
    f = d / "f05.txt"
    single = tasks.make("bytes_lm", corpus=str(f), seq_len=8, val_fraction=0.25)
    n = len(f.read_bytes())
    assert single.corpus_info["train_tokens"] + single.corpus_info["val_tokens"] == n
    tokens = (np.arange(5000) * 7 % 1000).astype("<u2")
    tok_path = tmp_path / "tokens.bin"
    tokens.tofile(tok_path)
    tt = tasks.make("bytes_lm", token_file=str(tok_path), vocab_size=1000, seq_len=32)
    x, y = tt.sample(jax.random.key(1), 4)
    assert int(x.max()) < 1000 and tt.vocab_size == 1000
    np.testing.assert_array_equal(np.asarray(tt.test_set()[0][0]), tokens[4750:4782])
    with pytest.raises(TaskConfigError, match="vocab_size"):
        tasks.make("bytes_lm", token_file=str(tok_path), vocab_size=999, seq_len=32)
    with pytest.raises(TaskConfigError, match="corpus"):
        tasks.make("bytes_lm", corpus=str(tmp_path / "missing"))
    with pytest.raises(TaskConfigError, match="seq_len"):
        tasks.make("bytes_lm", corpus=str(f), seq_len=10_000)


def test_perplexity_and_bits_per_byte():
    assert tasks.perplexity(0.0) == 1.0
    assert math.isclose(tasks.bits_per_byte(math.log(256.0)), 8.0)
    np.testing.assert_allclose(np.asarray(tasks.perplexity(jnp.asarray([0.0, 1.0]))), [1.0, math.e],
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tasks.bits_per_byte(jnp.asarray(math.log(2.0)))), 1.0,
                               rtol=1e-6)


def test_stream_keys_are_the_eager_keys_in_one_program():
    import jax
    import numpy as np

    from star_jax.tasks.base import _stream_key

    for seed in (0, 1, 12345, 2**31 - 1, 2**31, 2**32 - 1):
        for stream in (0, 1, 2):
            eager = jax.random.fold_in(jax.random.key(seed), stream)
            np.testing.assert_array_equal(jax.random.key_data(_stream_key(seed, stream)), jax.random.key_data(eager))
