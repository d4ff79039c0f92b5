"""The Task API shared by every fitness task: validated configs, the registry and `make`.
Train/test streams, batching, test-set padding and leakage counting live here once for all tasks."""
from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Callable, ClassVar, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from star_jax._util.validate import ConfigError, Fields, unknown_fields

IGNORE_INDEX = -100
"""Target of positions that carry no loss and no accuracy (PyTorch's convention, as in MAD)."""

_TRAIN_STREAM = 0
_TEST_STREAM = 1
_MAP_STREAM = 2  # fixed per-task structures drawn from the seed (the memorization map)


class TaskConfigError(ConfigError):
    """A task configuration is invalid: names the field, the value and what would be valid.

    A `ConfigError` (so a ``ValueError``); ``TaskConfigError(message, field=..., value=...)``
    still builds one from a plain message.

    Attributes:
        field: the offending field name (or unknown keyword).
        value: the offending value.
        field_path, accepted: see `ConfigError`.
    """

    def __init__(self, message: str | None = None, *, field: str | None = None, value: Any = None):
        super().__init__(message, field_path=field, value=value)


def config_error(config_cls: type | str, field: str, value: Any, valid: str) -> TaskConfigError:
    """Build a `TaskConfigError` with the standard message.

    Arguments:
        config_cls: the config class (or its name) the field belongs to.
        field: the field name.
        value: the rejected value.
        valid: what would be valid (``"an even integer >= 4"``), or why the value fails
            (``"no such file"``).

    Returns:
        The error (to be raised by the caller).
    """
    name = config_cls if isinstance(config_cls, str) else config_cls.__name__
    return _task_fields(name).error_for(field, valid, value=value)


def _task_fields(owner: str, obj: Any = None) -> Fields:
    """The validators of a task config: they raise `TaskConfigError` and accept numpy numbers."""
    return Fields(owner, obj, error=TaskConfigError, integral=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """Base of every task config: frozen, keyword-only, validated in `__post_init__`.

    Fields common to all tasks:
        num_train: size of the finite training set (examples are generated from (seed, index)).
        num_test: size of the fixed test set.
        seed: the task seed; fixes the training set, the test set and any fixed task structure.

    Subclasses declare `vocab_size` and `seq_len` fields, the class variable `readout` and the
    property `length` (the length L of the produced arrays, which may differ from `seq_len` where
    MAD's conventions shift the sequence).
    """

    readout: ClassVar[str] = "all"
    split_dependent: ClassVar[bool] = False  # do train and test targets follow different rules?
    seed_in_generator: ClassVar[bool] = False  # does the generator read `seed` (a fixed map)?

    num_train: int = 12_800
    num_test: int = 1_280
    seed: int = 0

    def __new__(cls, *args, **kwargs):
        # direct construction rejects unknown keys with the same readable error as from_kwargs
        error = unknown_fields(cls.__name__, kwargs, cls.field_names(), TaskConfigError)
        if error is not None:
            raise error
        return super().__new__(cls)

    def __post_init__(self):
        self._check_int("num_train", lo=1)
        self._check_int("num_test", lo=1)
        self._check_int("seed", lo=0, hi=2**32 - 1)

    @property
    def length(self) -> int:  # pragma: no cover - every subclass overrides
        """Length L of the produced `inputs`/`targets` arrays."""
        raise NotImplementedError

    # --- construction -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the config's fields, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, **kwargs):
        """Construct from keyword arguments, rejecting unknown keys (nothing is silently dropped).

        Arguments:
            **kwargs: field values.

        Returns:
            The validated config.

        Raises:
            TaskConfigError: on an unknown key or an invalid value.
        """
        error = unknown_fields(cls.__name__, kwargs, cls.field_names(), TaskConfigError)
        if error is not None:
            raise error
        return cls(**kwargs)

    def replace(self, **changes):
        """A copy with some fields changed (validated; unknown keys rejected)."""
        merged = {f: getattr(self, f) for f in self.field_names()}
        error = unknown_fields(type(self).__name__, changes, merged, TaskConfigError)
        if error is not None:
            raise error
        merged.update(changes)
        return type(self)(**merged)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict of its fields (JSON-friendly)."""
        return {f: getattr(self, f) for f in self.field_names()}

    # --- validation helpers ---------------------------------------------------------------
    def _fields(self) -> Fields:
        return _task_fields(type(self).__name__, self)

    def _fail(self, field: str, accepted: str):
        """Raises `TaskConfigError` for ``field`` (its current value); ``accepted`` says what
        would be valid."""
        self._fields().fail(field, accepted)

    def _check_int(self, field: str, lo: int | None = None, hi: int | None = None, accepted: str | None = None):
        """An integer (numpy too) in [lo, hi]; stored back as a Python int."""
        object.__setattr__(self, field, self._fields().int(field, lo, hi, accepted=accepted))

    def _check_float(self, field: str, lo: float, hi: float, hi_open: bool = True, lo_open: bool = False):
        """A finite number in [lo, hi) (or [lo, hi], (lo, hi]); stored back as a Python float."""
        value = self._fields().real(field, lo, hi, lo_open=lo_open, hi_open=hi_open)
        object.__setattr__(self, field, float(value))

    def _check_bool(self, field: str):
        """True or False (numpy too); stored back as a Python bool."""
        object.__setattr__(self, field, self._fields().bool(field))


def draw_bits(key: jax.Array, sizes: tuple[int, ...] | list[int]) -> list[jax.Array]:
    """All of an example's randomness from one `jax.random.bits` call, cut into blocks.

    One threefry call per example keeps compile times low (each call costs about half a
    second of XLA compile under vmap on CPU); the blocks are independent uniform uint32 words.

    Arguments:
        key: PRNG key.
        sizes: number of words in each block.

    Returns:
        A list of uint32 arrays, [size] each.
    """
    total = max(1, sum(sizes))
    bits = jax.random.bits(key, (total,), jnp.uint32)
    out, offset = [], 0
    for size in sizes:
        out.append(bits[offset:offset + size])
        offset += size
    return out


def bits_to_int(bits: jax.Array, lo, hi) -> jax.Array:
    """Integers in [lo, hi) from uint32 words (modulo; relative bias below (hi - lo) / 2**32).

    Arguments:
        bits: uint32 [...].
        lo, hi: Python ints or int32 scalars with hi > lo.

    Returns:
        int32 [...].
    """
    lo = jnp.asarray(lo, jnp.int32)
    span = (jnp.asarray(hi, jnp.int32) - lo).astype(jnp.uint32)
    return (bits % span).astype(jnp.int32) + lo


def bits_to_unit(bits: jax.Array) -> jax.Array:
    """Floats uniform in the open interval (0, 1) from uint32 words (24-bit resolution)."""
    return ((bits >> 8).astype(jnp.float32) + 0.5) * (2.0**-24)


def bits_to_score(bits: jax.Array) -> jax.Array:
    """Non-negative int32 random scores (for random orderings via top_k/argmax)."""
    return (bits >> 1).astype(jnp.int32)


@jax.jit
def _stream_key_jit(seed, stream):
    return jax.random.fold_in(jax.random.key(seed), stream)


def _stream_key(seed: int, stream: int) -> jax.Array:
    """The root key of one of a task's disjoint key streams (train, test, fixed map). One small
    program (the same key as the eager ``fold_in(key(seed), stream)``, tested for seeds up to
    2**32 - 1), where the eager calls compiled three."""
    return _stream_key_jit(np.uint32(seed), np.uint32(stream))


class Task:
    """A fitness task: a finite training set, a fixed test set and batching.

    Attributes:
        name: registry name.
        config: the validated, frozen config.
        vocab_size: number of token ids the model must embed/predict.
        seq_len: length L of the produced arrays (`inputs` and `targets` are [.., L]); this is
            the model's `max_len`. It can differ from `config.seq_len` where MAD shifts the
            sequence (the recall tasks produce L = seq_len - 1).
        num_train: number of training examples.
        num_test: number of test examples.
        readout: "all" (a prediction at every position, as a language model) or "last" (the
            compression task: MAD's encoder-decoder reads only the final position's hidden state
            and decodes every position from it plus a positional embedding; a model without
            such a head can still be trained per position, but does not probe compression).
        ignore_index: target value of ignored positions (-100).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, name: str, config: TaskConfig, *, vocab_size: int, seq_len: int,
                 num_train: int, num_test: int, readout: str = "all"):
        if readout not in ("all", "last"):
            raise ValueError(f"readout {readout!r} is invalid: expected 'all' or 'last'")
        self.name = name
        self.config = config
        self.vocab_size = int(vocab_size)
        self.seq_len = int(seq_len)
        self.num_train = int(num_train)
        self.num_test = int(num_test)
        self.readout = readout
        self._test_cache: tuple[jax.Array, jax.Array] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size}, "
                f"seq_len={self.seq_len}, num_train={self.num_train}, num_test={self.num_test}, "
                f"readout={self.readout!r})")

    # --- to be provided by subclasses -------------------------------------------------
    def train_examples(self, indices: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Training examples by index.

        Arguments:
            indices: int32 [n], each in [0, num_train).

        Returns:
            (inputs, targets): int32 [n, L] each; targets are -100 where ignored.
        """
        raise NotImplementedError

    def _make_test_set(self) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def count_leakage(self) -> int:
        """Number of test input sequences that also occur as a training input sequence."""
        raise NotImplementedError

    # --- shared API -----------------------------------------------------------------------
    def sample(self, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """A random training batch (example indices drawn uniformly, with replacement).

        Traceable: may be called inside `jax.jit` with `batch_size` static.

        Arguments:
            key: a PRNG key (typed or raw); the only source of randomness.
            batch_size: B, a Python int.

        Returns:
            (inputs, targets): int32 [B, L] each; targets are -100 where ignored.
        """
        batch_size = operator.index(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size} is invalid: must be >= 1")
        indices = jax.random.randint(key, (batch_size,), 0, self.num_train, dtype=jnp.int32)
        return self.train_examples(indices)

    def test_set(self) -> tuple[jax.Array, jax.Array]:
        """The fixed test set (computed once, cached).

        Returns:
            (inputs, targets): int32 [num_test, L] each; targets are -100 where ignored.
        """
        if self._test_cache is None:
            self._test_cache = self._make_test_set()
        return self._test_cache

    def test_batches(self, batch_size: int) -> Iterator[tuple[jax.Array, jax.Array]]:
        """Fixed, ordered test batches of static shape.

        The last batch is padded with rows whose inputs are 0 and whose targets are all -100,
        so padded rows contribute nothing to losses or accuracies that ignore -100.

        Arguments:
            batch_size: B.

        Returns:
            An iterator of (inputs, targets), int32 [B, L] each; ceil(num_test / B) batches.
        """
        batch_size = operator.index(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size} is invalid: must be >= 1")
        inputs, targets = self.test_set()
        n = inputs.shape[0]
        num_batches = -(-n // batch_size)
        pad = num_batches * batch_size - n
        xp = np if isinstance(inputs, np.ndarray) else jnp
        if pad:
            inputs = xp.concatenate([inputs, xp.zeros((pad, self.seq_len), xp.int32)], axis=0)
            targets = xp.concatenate(
                [targets, xp.full((pad, self.seq_len), IGNORE_INDEX, xp.int32)], axis=0)
        for b in range(num_batches):
            sl = slice(b * batch_size, (b + 1) * batch_size)
            yield inputs[sl], targets[sl]

    def num_test_batches(self, batch_size: int) -> int:
        """Number of batches `test_batches(batch_size)` yields."""
        return -(-self.num_test // operator.index(batch_size))


# ----------------------------------------------------------------------------------------
# Tasks generated from (seed, index)
# ----------------------------------------------------------------------------------------
Generator = Callable[..., tuple[jax.Array, jax.Array]]

_GEN_CHUNK = 256  # examples generated per compiled call; larger requests loop over chunks


@functools.partial(jax.jit, static_argnames=("generator", "config", "training"))
def _generate(stream: jax.Array, indices: jax.Array, *, generator: Generator, config: TaskConfig,
              training: bool) -> tuple[jax.Array, jax.Array]:
    """Examples `indices` of a key stream: int32 [n, L] each (example i uses fold_in(stream, i))."""
    keys = jax.vmap(lambda i: jax.random.fold_in(stream, i))(indices)
    return jax.vmap(lambda k: generator(k, config, training=training))(keys)


def _bucket(n: int) -> int:
    """Padded request size: the next power of two (at least 8), at most one chunk."""
    return min(_GEN_CHUNK, max(8, 1 << (n - 1).bit_length()))


class GeneratedTask(Task):
    """A task whose examples are generated deterministically from (seed, stream, index).

    Train examples come from the key stream `fold_in(key(seed), 0)`, test examples from
    `fold_in(key(seed), 1)`: example i of a stream uses `fold_in(stream, i)`, so the two sets
    never share a key. Nothing is materialised except the test set (cached on first use).
    Requests are padded to a power of two (or cut into chunks of 256) so that few shapes are
    ever compiled.
    """

    def __init__(self, name: str, config: TaskConfig, generator: Generator):
        super().__init__(name, config, vocab_size=config.vocab_size, seq_len=config.length,
                         num_train=config.num_train, num_test=config.num_test,
                         readout=type(config).readout)
        self.generator = generator
        # the compiled generator sees only the fields that shape an example, so settings that
        # differ in num_train, num_test or (usually) seed share one compilation
        cls = type(config)
        self._static_config = config.replace(
            num_train=1, num_test=1, seed=config.seed if cls.seed_in_generator else 0)
        with jax.ensure_compile_time_eval():
            self._streams = {True: _stream_key(config.seed, _TRAIN_STREAM),
                             False: _stream_key(config.seed, _TEST_STREAM)}

    def examples(self, indices: jax.Array, *, training: bool) -> tuple[jax.Array, jax.Array]:
        """Examples of the train or test stream by index.

        Arguments:
            indices: int [n] example indices (may be traced).
            training: True for the training stream (training-form targets), False for test.

        Returns:
            (inputs, targets): int32 [n, L] each.
        """
        # concrete indices (the test set, host sampling) are padded and joined with numpy: an
        # eager jnp op would compile one small program per shape
        xp = jnp if isinstance(indices, jax.core.Tracer) else np
        indices = xp.asarray(indices, dtype=xp.int32)
        n = indices.shape[0]
        form = bool(training) or not type(self.config).split_dependent
        kwargs = dict(generator=self.generator, config=self._static_config, training=form)
        stream = self._streams[bool(training)]
        out = (lambda a: a) if xp is jnp else np.asarray
        if n <= _GEN_CHUNK:
            size = _bucket(n)
            padded = xp.concatenate([indices, xp.zeros((size - n,), xp.int32)])
            inputs, targets = _generate(stream, padded, **kwargs)
            return out(inputs)[:n], out(targets)[:n]
        parts = []
        for start in range(0, n, _GEN_CHUNK):
            chunk = indices[start:start + _GEN_CHUNK]
            m = chunk.shape[0]
            chunk = xp.concatenate([chunk, xp.zeros((_GEN_CHUNK - m,), xp.int32)])
            inputs, targets = _generate(stream, chunk, **kwargs)
            parts.append((out(inputs)[:m], out(targets)[:m]))
        return (xp.concatenate([p[0] for p in parts]), xp.concatenate([p[1] for p in parts]))

    def train_examples(self, indices):
        return self.examples(indices, training=True)

    def _make_test_set(self):
        return self.examples(np.arange(self.num_test, dtype=np.int32), training=False)

    def _iter_stream_inputs(self, n: int, training: bool) -> Iterator[np.ndarray]:
        chunk = 4 * _GEN_CHUNK
        for start in range(0, n, chunk):
            idx = np.minimum(np.arange(start, start + chunk), n - 1).astype(np.int32)
            inputs, _ = self.examples(idx, training=training)
            yield np.asarray(inputs)[: min(chunk, n - start)]

    def count_leakage(self) -> int:
        train_rows = set()
        for block in self._iter_stream_inputs(self.num_train, True):
            train_rows.update(row.tobytes() for row in block)
        test_inputs = np.asarray(self.test_set()[0])
        return int(sum(row.tobytes() in train_rows for row in test_inputs))


# ----------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Entry:
    config_cls: type
    build: Callable[[str, Any], Task]
    doc: str


_REGISTRY: dict[str, _Entry] = {}


def register_task(name: str, config_cls: type, generator: Generator | None = None, *,
                  build: Callable[[str, Any], Task] | None = None, overwrite: bool = False) -> None:
    """Register a task under `name`.

    Arguments:
        name: the registry name used by `make`.
        config_cls: a frozen config dataclass with a `from_kwargs` classmethod (a `TaskConfig`).
        generator: for generated tasks, `generator(key, config, *, training) -> (inputs [L],
            targets [L])`, int32, pure jnp; the task is then a `GeneratedTask`.
        build: alternatively, `build(name, config) -> Task` for tasks with their own class.
        overwrite: allow replacing an existing registration.
    """
    if (generator is None) == (build is None):
        raise ValueError("register_task needs exactly one of `generator` or `build`")
    if generator is not None and not (isinstance(config_cls, type)
                                      and issubclass(config_cls, TaskConfig)):
        raise TypeError("a generated task's config_cls must subclass TaskConfig")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
    if build is None:
        gen = generator

        def build(task_name, config, _gen=gen):
            return GeneratedTask(task_name, config, _gen)

    doc = (generator.__doc__ if generator is not None else config_cls.__doc__) or ""
    _REGISTRY[name] = _Entry(config_cls, build, doc.strip().splitlines()[0] if doc.strip() else "")


def task_names() -> tuple[str, ...]:
    """Names of all registered tasks, sorted."""
    return tuple(sorted(_REGISTRY))


def config_class(name: str) -> type:
    """The config class registered for task `name`."""
    return _entry(name).config_cls


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered tasks are: {', '.join(task_names())}")
    return _REGISTRY[name]


def make(name: str, config: Any = None, **config_fields) -> Task:
    """Build a registered task.

    Arguments:
        name: a registered task name (see `task_names()`).
        config: optional config instance of the task's config class; keyword fields, if also
            given, override it (validated again).
        **config_fields: config field values; unknown keys raise `TaskConfigError`.

    Returns:
        The Task.

    Raises:
        KeyError: unknown task name.
        TaskConfigError: unknown field, invalid value, or a config of the wrong class.
    """
    entry = _entry(name)
    if config is None:
        config = entry.config_cls.from_kwargs(**config_fields)
    else:
        if not isinstance(config, entry.config_cls):
            raise _task_fields("tasks.make").error_for(
                "config", f"a {entry.config_cls.__name__} (the config class of task {name!r})", value=config)
        if config_fields:
            config = config.replace(**config_fields)
    return entry.build(name, config)


def leakage_check(task: Task) -> int:
    """Number of test input sequences that also occur (exactly) as a training input sequence.

    For generated tasks the whole training set is generated once and hashed; for the byte LM
    a rolling hash over every training window is used (then verified exactly). Memorization
    shares its key->value map between train and test by design (that map is what is learned);
    leakage there still means whole identical input sequences, which is expected to be 0.

    Arguments:
        task: a Task.

    Returns:
        The count (0 means no test input is a training input).
    """
    return task.count_leakage()
