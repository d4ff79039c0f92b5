"""JSON forms of configs and metadata: numpy-aware conversion, stable hashing, atomic writes.

Run state is JSON, never pickle, so every value written to a run directory passes through here.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import pathlib
import warnings
from typing import Any, Callable

import jax
import numpy as np

from star_jax.io.atomic import atomic_write_text, fsync_dir  # noqa: F401  (fsync_dir: kept importable here)


class RunStateWarning(UserWarning):
    """Run state on disk was damaged (e.g. by a kill) and part of it was skipped or repaired."""


def to_jsonable(obj: Any, *, _where: str = "value") -> Any:
    """Converts a value to plain JSON types (dict with str keys, list, str, int, float, bool, None).

    Handles numpy scalars and arrays (to Python numbers / nested lists), jax arrays, tuples,
    dataclasses (field by field), enums (their value) and paths (str).

    Arguments:
      obj: the value to convert.
    Returns:
      A new value made only of JSON types; `json.loads(json.dumps(out)) == out`.
    Raises:
      TypeError: naming where in `obj` a value has no JSON form (e.g. a typed PRNG key: store
        `jax.random.key_data(key)` instead).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, enum.Enum):
        return int(obj) if isinstance(obj, int) else float(obj)
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), _where=_where)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
                raise TypeError(f"{_where}: dict key {key!r} of type {type(key).__name__} has no "
                                f"JSON form; use str or int keys")
            skey = key if isinstance(key, str) else str(int(key))
            if skey in out:
                raise TypeError(f"{_where}: keys {key!r} and {skey!r} collide in JSON")
            out[skey] = to_jsonable(value, _where=f"{_where}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, _where=f"{_where}[{i}]") for i, v in enumerate(obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name), _where=f"{_where}.{f.name}")
                for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, _where=_where)
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if hasattr(obj, "__array__") and hasattr(obj, "dtype"):
        if _is_prng_key(obj):
            raise TypeError(f"{_where}: typed PRNG key arrays have no JSON form; store "
                            f"jax.random.key_data(key) instead")
        return to_jsonable(np.asarray(obj).tolist(), _where=_where)
    raise TypeError(f"{_where}: cannot convert {type(obj).__name__} to JSON "
                    f"(supported: dict, list, tuple, str, int, float, bool, None, numpy/jax arrays "
                    f"and scalars, dataclasses, enums, paths)")


def finite_or_none(value: Any) -> Any:
    """A JSON-safe scalar: numpy scalars become Python ones, non-finite floats become None."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


def _is_prng_key(x: Any) -> bool:
    """True for jax typed PRNG key arrays (which cannot become plain numbers)."""
    try:
        return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    except (TypeError, AttributeError):
        return False


def canonical_json(obj: Any) -> str:
    """The one canonical text of a value: sorted keys, no spaces, ASCII.

    Arguments:
      obj: any value `to_jsonable` accepts.
    Returns:
      A JSON string; equal values (after `to_jsonable`) give equal strings.
    """
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: Any) -> str:
    """A stable hash of a config: the same on every machine, Python version and key order.

    Arguments:
      config: a dict or dataclass (anything `to_jsonable` accepts).
    Returns:
      The sha256 hex digest (64 characters) of `canonical_json(config)`.
    """
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Writes JSON so that `path` holds either the old content or the complete new one.

    Through `atomic_write_text`, so a kill at any moment never leaves a partial file.

    Arguments:
      path: the destination file; its directory must exist.
      obj: the value to write (converted with `to_jsonable`).
      indent: JSON indentation; None for one line.
    Returns:
      None.
    """
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent) + "\n")


def jsonl_line(record: Any) -> str:
    """One JSONL line of ``record`` (converted with `to_jsonable`), newline included."""
    return json.dumps(to_jsonable(record), ensure_ascii=True) + "\n"


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Appends one JSON line to a file in a single write, then flushes and fsyncs it.

    Arguments:
      path: the JSONL file (created if missing).
      record: the value to write (converted with `to_jsonable`); one line, no newlines inside.
    Returns:
      None.
    """
    line = jsonl_line(record)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _parse_lines(data: bytes, path: pathlib.Path) -> tuple[list[Any], int, list[str]]:
    """Parses JSONL bytes.

    Arguments:
      data: the file content.
      path: the file, for messages.
    Returns:
      (records, offset just past the last good line, problems found as messages).
    """
    records, problems = [], []
    good_end = 0
    pos = 0
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        end = pos + len(raw) + (0 if last else 1)
        if last and raw == b"":
            break
        text = raw.strip(b"\x00 \t\r")
        if not text:
            pos = end
            if not last:
                good_end = end
            else:
                problems.append(f"{path}: dropped a truncated last line {i + 1} (blank/NUL bytes)")
            continue
        try:
            records.append(json.loads(text.decode("utf-8")))
            good_end = end
        except (ValueError, UnicodeDecodeError) as e:
            if last:
                problems.append(f"{path}: dropped a truncated last line {i + 1} "
                                f"({len(raw)} bytes, likely cut by a kill): {e}")
            else:
                problems.append(f"{path}: skipped unreadable line {i + 1} ({e}); the line is left in "
                                f"the file untouched: repair or delete it by hand")
                good_end = end
        pos = end
    return records, good_end, problems


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Reads a JSONL file written by `append_jsonl`, tolerating a last line cut by a kill.

    Does not modify the file (safe while another process appends). A truncated or garbled last
    line is dropped, and an unreadable line in the middle is skipped, each with a
    `RunStateWarning` naming the file and line.

    Arguments:
      path: the JSONL file; a missing file reads as empty.
    Returns:
      The parsed records, in file order.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records, _, problems = _parse_lines(path.read_bytes(), path)
    for message in problems:
        warnings.warn(message, RunStateWarning, stacklevel=2)
    return records


def repair_jsonl(path: str | os.PathLike) -> int:
    """Cuts a partial last line (left by a kill mid-write) off a JSONL file before appending.

    A complete last record that only lacks its newline gets the newline back. Warns with a
    `RunStateWarning` when something is dropped.

    Arguments:
      path: the JSONL file; a missing file is left missing.
    Returns:
      The number of bytes removed.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data:
        return 0
    _, good_end, problems = _parse_lines(data, path)
    removed = 0
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
        removed = len(data) - good_end
        for message in problems:
            if "last line" in message:
                warnings.warn(message, RunStateWarning, stacklevel=2)
    elif not data.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
    return removed


def rewrite_jsonl(path: str | os.PathLike, keep: Callable[[Any], bool]) -> int:
    """Atomically rewrites a JSONL file keeping only the records for which `keep` is true.

    Used on resume to drop records written after the checkpoint being resumed from.

    Arguments:
      path: the JSONL file; a missing file is left missing.
      keep: predicate on one parsed record.
    Returns:
      The number of records dropped.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    out, dropped = [], 0
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        text = raw.strip(b"\x00 \t\r")
        if not text:
            continue
        try:
            record = json.loads(text.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            if not last:  # not ours to delete: an unreadable middle line stays as it is
                out.append(raw.decode("utf-8", "surrogateescape"))
            continue
        if keep(record):
            out.append(json.dumps(record, ensure_ascii=True))
        else:
            dropped += 1
    text = "".join(line + "\n" for line in out)
    if dropped == 0 and text.encode("utf-8", "surrogateescape") == data:
        return 0
    atomic_write_text(path, text)
    return dropped
