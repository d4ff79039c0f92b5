"""Byte-level (or uint16-token) language modelling on real text that needs no download.
The default corpus is the running interpreter's own standard-library source, split by file."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import sys
import sysconfig
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .base import Task, TaskConfig, config_error, register_task

_EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__")
# Left out of the default standard-library corpus: the test suites (about half the bytes, with
# much near-duplicated code), the generated codec tables and the generated pydoc topics, all of
# which would let validation windows reappear verbatim in training.
_STDLIB_EXCLUDED_DIRS = _EXCLUDED_DIRS + ("test", "tests", "idle_test", "encodings", "pydoc_data")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ByteLMConfig(TaskConfig):
    """Next-token prediction on random windows of a real corpus.

    Sources (at most one of `corpus` and `token_file`):
      - default: the Python standard library's `.py` files of the running interpreter
        (`sysconfig.get_paths()["stdlib"]`), sorted by relative path, without site-packages,
        the test suites, the generated codec tables (encodings/) and pydoc_data; the corpus
        therefore depends on the Python version (see `task.corpus_info`);
      - `corpus=path`: a text file (split by position) or a directory (every regular,
        non-hidden file, or those ending in one of `suffixes`; split by file);
      - `token_file=path`: a raw little-endian uint16 token file (split by position), with
        `vocab_size` the tokenizer's vocabulary.
    Files are read in sorted order until `max_bytes` (the last file is truncated). A file goes
    to validation when crc32 of its relative path falls in the lowest `val_fraction` of the
    hash range (deterministic; at least one file each side); a single stream keeps its last
    `val_fraction` for validation.

    Examples are windows of seq_len + 1 tokens: inputs = window[:-1], targets = window[1:].
    The training set is every window start of the training stream (num_train of them); the
    test set is the validation stream cut into windows with stride seq_len (each transition
    predicted once), the first `num_test` of them (None: all).

    Fields:
        seq_len: L.
        corpus: path of a text file or directory (None: the standard library).
        token_file: path of a uint16 token file.
        vocab_size: 256 for bytes; the tokenizer's size with `token_file` (at most 65536).
        max_bytes: cap on the bytes read (8 MiB by default; for token files, 2 bytes a token).
        val_fraction: fraction of the corpus held out for validation, in (0, 0.5].
        suffixes: file-name endings to keep in a directory corpus (None: all; the standard
            library default keeps ".py").
        num_test: cap on the number of test windows (None: all).
        seed: accepted for uniformity; the splits are fixed by the corpus alone.
    """

    seq_len: int = 256
    corpus: str | None = None
    token_file: str | None = None
    vocab_size: int = 256
    max_bytes: int = 8 * 2**20
    val_fraction: float = 0.05
    suffixes: tuple[str, ...] | None = None
    num_train: int | None = None  # derived from the corpus; must be left unset
    num_test: int | None = None

    def __post_init__(self):
        self._check_int("seed", lo=0, hi=2**32 - 1)
        self._check_int("seq_len", lo=1)
        self._check_int("max_bytes", lo=2)
        self._check_float("val_fraction", 0.0, 0.5, lo_open=True, hi_open=False)
        if self.num_train is not None:
            self._fail("num_train", "None: it is derived from the corpus (every window start); "
                       "leave it unset")
        if self.num_test is not None:
            self._check_int("num_test", lo=1)
        for field in ("corpus", "token_file"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                self._fail(field, "a path (str or os.PathLike) or None")
            if value is not None:
                object.__setattr__(self, field, os.fspath(value))
        if self.corpus is not None and self.token_file is not None:
            self._fail("token_file", "None when corpus is given (give either corpus or token_file, not both)")
        self._check_int("vocab_size", lo=2, hi=65536)
        if self.token_file is None and self.vocab_size != 256:
            self._fail("vocab_size", "256 for byte-level text (set token_file for "
                       "tokenized data)")
        if self.suffixes is not None:
            if isinstance(self.suffixes, str):
                object.__setattr__(self, "suffixes", (self.suffixes,))
            if not all(isinstance(s, str) for s in self.suffixes):
                self._fail("suffixes", "a tuple of strings or None")
            object.__setattr__(self, "suffixes", tuple(self.suffixes))

    @property
    def length(self) -> int:
        return self.seq_len


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A loaded corpus: train and validation token streams plus provenance.

    Attributes:
        train: read-only uint8/uint16 [n_train] tokens.
        val: read-only uint8/uint16 [n_val] tokens.
        info: source, file counts, byte counts, a sha256 fingerprint and the Python version.
    """

    train: np.ndarray
    val: np.ndarray
    info: dict[str, Any]


def _list_files(root: str, suffixes: tuple[str, ...] | None,
                excluded: tuple[str, ...] = _EXCLUDED_DIRS) -> list[tuple[str, str]]:
    """(relative posix path, absolute path) of the corpus files under root, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in excluded)
        for name in filenames:
            if name.startswith("."):
                continue
            if suffixes is not None and not name.endswith(suffixes):
                continue
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                found.append((os.path.relpath(full, root).replace(os.sep, "/"), full))
    found.sort()
    return found


def _is_val_file(rel: str, val_fraction: float) -> bool:
    return zlib.crc32(rel.encode("utf-8")) < val_fraction * 2**32


def _freeze(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=8)
def load_corpus(corpus: str | None = None, token_file: str | None = None, *,
                max_bytes: int = 8 * 2**20, val_fraction: float = 0.05,
                suffixes: tuple[str, ...] | None = None, vocab_size: int = 256) -> Corpus:
    """Read and split a corpus (cached per arguments).

    Arguments:
        corpus: text file or directory path; None for the standard library's sources.
        token_file: uint16 token file path (exclusive with corpus).
        max_bytes: cap on bytes read.
        val_fraction: validation share.
        suffixes: file endings kept in a directory (None: all; ".py" for the standard library).
        vocab_size: for token files, every token must be below it.

    Returns:
        A Corpus.

    Raises:
        TaskConfigError: missing path, empty corpus, a split too small, or a token >= vocab_size.
    """

    if token_file is not None:
        if not os.path.isfile(token_file):
            raise config_error(ByteLMConfig, "token_file", token_file, "an existing file (no such file)")
        n_tok = min(os.path.getsize(token_file), max_bytes) // 2
        tokens = np.fromfile(token_file, dtype="<u2", count=n_tok).astype(np.uint16)
        if tokens.size and int(tokens.max()) >= vocab_size:
            raise config_error(ByteLMConfig, "vocab_size", vocab_size,
                               f"an integer > {int(tokens.max())}, the largest token in token_file")
        n_val = max(1, int(round(tokens.size * val_fraction)))
        train, val = tokens[:-n_val], tokens[-n_val:]
        info = {"source": "token_file", "files": 1, "tokens": int(tokens.size)}
        return _finish(train, val, info)

    if corpus is None:
        root = sysconfig.get_paths()["stdlib"]
        suffixes = (".py",) if suffixes is None else suffixes
        source = "python-stdlib"
        excluded = _STDLIB_EXCLUDED_DIRS
    else:
        root = corpus
        source = "path"
        excluded = _EXCLUDED_DIRS
    if os.path.isfile(root):
        with open(root, "rb") as f:
            data = np.frombuffer(f.read(max_bytes), np.uint8).copy()
        n_val = max(1, int(round(data.size * val_fraction)))
        info = {"source": source, "files": 1}
        return _finish(data[:-n_val], data[-n_val:], info)
    if not os.path.isdir(root):
        raise config_error(ByteLMConfig, "corpus", corpus, "an existing file or directory (no such file or directory)")

    train_parts, val_parts, n_train_files, n_val_files = [], [], 0, 0
    files = _list_files(root, suffixes, excluded)
    budget = max_bytes
    chosen = []
    for rel, full in files:
        if budget <= 0:
            break
        with open(full, "rb") as f:
            blob = f.read(budget)
        if not blob:
            continue
        budget -= len(blob)
        chosen.append((rel, blob))
    if not chosen:
        raise config_error(ByteLMConfig, "corpus", corpus, "a directory with (matching) files; it has none")
    flags = [_is_val_file(rel, val_fraction) for rel, _ in chosen]
    if len(chosen) >= 2 and not any(flags):
        flags[-1] = True
    if len(chosen) >= 2 and all(flags):
        flags[0] = False
    for (rel, blob), is_val in zip(chosen, flags):
        if is_val and len(chosen) >= 2:
            val_parts.append(blob)
            n_val_files += 1
        else:
            train_parts.append(blob)
            n_train_files += 1
    if len(chosen) == 1:  # a single file: split it by position
        data = np.frombuffer(chosen[0][1], np.uint8).copy()
        n_val = max(1, int(round(data.size * val_fraction)))
        return _finish(data[:-n_val], data[-n_val:], {"source": source, "files": 1})
    train = np.frombuffer(b"".join(train_parts), np.uint8).copy()
    val = np.frombuffer(b"".join(val_parts), np.uint8).copy()
    info = {"source": source, "files": len(chosen), "train_files": n_train_files,
            "val_files": n_val_files,
            "val_file_names": [rel for (rel, _), v in zip(chosen, flags) if v]}
    return _finish(train, val, info)


def _finish(train: np.ndarray, val: np.ndarray, info: dict) -> Corpus:
    digest = hashlib.sha256()
    digest.update(train.tobytes())
    digest.update(b"\x00--split--\x00")
    digest.update(val.tobytes())
    info = dict(info, train_tokens=int(train.size), val_tokens=int(val.size),
                sha256=digest.hexdigest()[:16],
                python=".".join(map(str, sys.version_info[:3])))
    return Corpus(_freeze(train), _freeze(val), info)


@functools.partial(jax.jit, static_argnames=("seq_len",))
def _windows(data: jax.Array, starts: jax.Array, *, seq_len: int) -> tuple[jax.Array, jax.Array]:
    """Windows [n, seq_len + 1] at `starts`, split into (inputs, targets) int32 [n, seq_len]."""
    idx = starts[:, None] + jnp.arange(seq_len + 1, dtype=jnp.int32)[None, :]
    win = data[idx].astype(jnp.int32)
    return win[:, :-1], win[:, 1:]


class ByteLMTask(Task):
    """Language modelling on random windows of a corpus (see `ByteLMConfig`).

    Attributes (beyond Task's):
        corpus_info: provenance of the loaded corpus (source, file counts, sha256, Python).

    `sample` is traceable, but under `jax.jit` the corpus array becomes a compile-time
    constant (megabytes); call it outside the jitted step and pass the batch in.
    """

    def __init__(self, name: str, config: ByteLMConfig):
        corpus = load_corpus(config.corpus, config.token_file, max_bytes=config.max_bytes,
                             val_fraction=config.val_fraction, suffixes=config.suffixes,
                             vocab_size=config.vocab_size)
        L = config.seq_len

        if corpus.train.size < L + 1:
            raise config_error(ByteLMConfig, "seq_len", L,
                               f"an integer <= {corpus.train.size - 1} (the training split holds "
                               f"{corpus.train.size} tokens; seq_len + 1 must fit)")
        n_val_windows = (corpus.val.size - 1) // L
        if n_val_windows < 1:
            raise config_error(ByteLMConfig, "seq_len", L,
                               f"an integer <= {corpus.val.size - 1} (the validation split holds "
                               f"{corpus.val.size} tokens; seq_len + 1 must fit: raise val_fraction "
                               f"or max_bytes)")
        num_test = n_val_windows if config.num_test is None else min(config.num_test, n_val_windows)
        super().__init__(name, config, vocab_size=config.vocab_size, seq_len=L,
                         num_train=corpus.train.size - L, num_test=num_test, readout="all")
        self.corpus_info = corpus.info
        self._train_np = corpus.train
        self._val_np = corpus.val
        self._train = jnp.asarray(corpus.train)
        self._val = jnp.asarray(corpus.val)

    def train_examples(self, indices):
        """Training windows by start index (int [n] in [0, num_train)): int32 [n, L] each."""
        return _windows(self._train, jnp.asarray(indices, jnp.int32), seq_len=self.seq_len)

    def _make_test_set(self):
        starts = jnp.arange(self.num_test, dtype=jnp.int32) * self.seq_len
        return _windows(self._val, starts, seq_len=self.seq_len)

    def count_leakage(self) -> int:
        """Test input windows (length L) found verbatim anywhere in the training stream."""
        L = self.seq_len
        train = self._train_np.astype(np.uint64)
        test_inputs = np.asarray(self.test_set()[0])
        train_h = _rolling_hashes(train, L)
        test_h = _rolling_hashes(self._val_np.astype(np.uint64), L)[np.arange(self.num_test) * L]
        order = np.argsort(train_h, kind="stable")
        sorted_h = train_h[order]
        lo = np.searchsorted(sorted_h, test_h, side="left")
        hi = np.searchsorted(sorted_h, test_h, side="right")
        leaks = 0
        for row, a, b in zip(test_inputs, lo, hi):
            for start in order[a:b]:  # verify exactly (hash collisions are not leaks)
                if np.array_equal(self._train_np[start:start + L].astype(np.int32), row):
                    leaks += 1
                    break
        return leaks


_HASH_P = 0x100000001B3  # odd, so invertible modulo 2**64


def _rolling_hashes(arr: np.ndarray, width: int) -> np.ndarray:
    """Polynomial hashes (mod 2**64) of every length-`width` window of a uint64 array."""
    n = arr.size - width + 1
    if n <= 0:
        return np.zeros((0,), np.uint64)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(arr.size, _HASH_P, np.uint64), dtype=np.uint64)
        powers = np.concatenate([np.ones(1, np.uint64), powers[:-1]])  # P**i
        inv = np.uint64(pow(_HASH_P, -1, 2**64))
        inv_powers = np.cumprod(np.full(n, inv, np.uint64), dtype=np.uint64)
        inv_powers = np.concatenate([np.ones(1, np.uint64), inv_powers[:-1]])
        prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum((arr + np.uint64(1)) * powers,
                                                                   dtype=np.uint64)])
        return (prefix[width:width + n] - prefix[:n]) * inv_powers


def perplexity(loss):
    """exp(loss): perplexity from a mean cross-entropy in nats (float or array)."""
    if isinstance(loss, (int, float)):
        return math.exp(loss)
    return jnp.exp(loss)


def bits_per_byte(loss):
    """loss / ln 2: bits per byte from a mean per-byte cross-entropy in nats (float or array).

    For token-level data this is bits per token; divide by bytes per token for bytes.
    """
    if isinstance(loss, (int, float)):
        return loss / math.log(2.0)
    return jnp.asarray(loss) / math.log(2.0)


def _build(name: str, config: ByteLMConfig) -> Task:
    return ByteLMTask(name, config)


register_task("bytes_lm", ByteLMConfig, build=_build)
