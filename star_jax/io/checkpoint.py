"""Per-generation checkpoints of arrays + JSON metadata: orbax's CheckpointManager plus a checksum.

orbax lists steps, keeps the newest few, writes each step atomically and cleans up after kills;
this layer adds a sha256 over what was saved and falls back to an earlier step when the latest
fails it. The only module that imports orbax, so its API churn stays here.
"""
from __future__ import annotations

import dataclasses

import hashlib
import math
import operator
import os
import pathlib
import shutil
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from star_jax.genome.classes import is_decimal
from star_jax.io.jsonutil import RunStateWarning, _is_prng_key, canonical_json, to_jsonable

FORMAT_VERSION = 1
_ITEMS = ("arrays", "meta")  # the orbax items of a step: `<step>/arrays`, `<step>/meta`
# Earlier versions renamed a step to "<step>.deleting-<pid>-<ns>" before removing it; a kill in
# between left such a directory, which the first save removes.
_LEGACY_TRASH = "*.deleting-*"


_DELETION_OPTIONS = ({"num_deletion_threads": 1}
                     if "num_deletion_threads" in {f.name for f in dataclasses.fields(ocp.CheckpointManagerOptions)}
                     else {})
"""Old steps are deleted on one thread where this orbax has the option (added after 0.12.0)."""


class CheckpointError(RuntimeError):
    """No usable checkpoint: missing, unreadable or failing its checksum."""


class CheckpointWarning(RunStateWarning):
    """A checkpoint was skipped (corrupt or unreadable) and an earlier one used instead."""


def _as_array(x: Any, where: str) -> np.ndarray:
    """Converts one leaf to a host numpy array.

    Arguments:
      x: a numpy/jax array or a numpy/Python scalar.
      where: the leaf's path, for messages.
    Returns:
      The numpy array.
    """
    if _is_prng_key(x):
        raise TypeError(f"arrays{where}: typed PRNG key arrays cannot be checkpointed; store "
                        f"jax.random.key_data(key) and rebuild with jax.random.wrap_key_data")
    if not (isinstance(x, (np.ndarray, np.generic, bool, int, float)) or hasattr(x, "__array__")):
        raise TypeError(f"arrays{where}: expected an array or number, got {type(x).__name__} "
                        f"(put non-array state in `meta`)")
    a = np.asarray(x)
    if a.dtype.kind in "OUSM" or a.dtype.names is not None or a.dtype.name.startswith("void"):
        raise TypeError(f"arrays{where}: dtype {a.dtype} cannot be checkpointed; use numeric or "
                        f"bool arrays (put strings and objects in `meta`)")
    return a


def _flatten(arrays: dict, prefix: tuple = ()) -> tuple[list[tuple[tuple, np.ndarray]], list]:
    """Flattens a nested dict of arrays.

    Arguments:
      arrays: nested dict with str keys and array leaves.
      prefix: the path of `arrays` itself.
    Returns:
      (leaves as (path, array) sorted by path, paths of empty dicts).
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a (nested) dict of arrays, got {type(arrays).__name__}")
    leaves, empties = [], []
    if not arrays and prefix:
        empties.append(prefix)
    for key in sorted(arrays):
        if not isinstance(key, str):
            raise TypeError(f"arrays{''.join(f'[{k!r}]' for k in prefix)}: keys must be str, "
                            f"got {key!r}")
        value = arrays[key]
        path = prefix + (key,)
        if isinstance(value, dict):
            sub_leaves, sub_empties = _flatten(value, path)
            leaves += sub_leaves
            empties += sub_empties
        else:
            leaves.append((path, _as_array(value, "".join(f"[{k!r}]" for k in path))))
    return leaves, empties


def _unflatten(leaves: list[tuple[tuple, np.ndarray]], empties: list[tuple]) -> dict:
    """Inverse of `_flatten`.

    Arguments:
      leaves: (path, array) pairs.
      empties: paths of empty dicts.
    Returns:
      The nested dict.
    """
    out: dict = {}
    for path in empties:
        node = out
        for key in path:
            node = node.setdefault(key, {})
    for path, value in leaves:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _digest(header: dict, arrays: list[np.ndarray]) -> str:
    """sha256 over the canonical JSON header (step, spec, meta) and every array's bytes.

    Arguments:
      header: the JSON record without its checksum.
      arrays: the leaves, in spec order.
    Returns:
      The hex digest.
    """
    h = hashlib.sha256(canonical_json(header).encode("ascii"))
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class CheckpointManager:
    """Saves and restores one run's state per step (generation) under `directory/<step>/`.

    Each step holds two orbax items: `arrays` (a flat pytree of the non-empty arrays) and `meta`
    (JSON: format, step, the arrays' paths/dtypes/shapes, the user metadata and a sha256 over all
    of it). Every version of star_jax wrote this layout, so earlier run directories read as is.

    orbax's `CheckpointManager` does the bookkeeping: it writes a step into a temporary directory
    renamed to `<step>` only when complete (a kill mid-save leaves no step), removes temporaries
    left by a kill when a writer starts, lists the steps and keeps the newest `keep`. This class
    adds the checksum, verified on every restore, and the fallback to an earlier step.

    Reading never changes the directory (a report may read a run another process is writing):
    orbax's manager is opened without its temporary-directory cleanup until the first `save` or
    `delete` (the writer holds the run directory's lock, so its cleanup removes only leftovers).

    Arguments:
      directory: where the step directories live (created if missing).
      keep: how many newest steps to keep after each save; None keeps all.
    """

    def __init__(self, directory: str | os.PathLike, keep: int | None = 3):
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be a positive int or None, got {keep!r}")
        self.directory = pathlib.Path(directory).absolute()
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        self._manager: ocp.CheckpointManager | None = None
        self._writable = False

    def __repr__(self) -> str:
        return f"CheckpointManager({str(self.directory)!r}, keep={self.keep})"

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Releases orbax's resources (nothing is pending: saves are synchronous).

        Returns:
          None.
        """
        if self._manager is not None:
            self._manager.close()
            self._manager = None
            self._writable = False

    def _orbax(self, write: bool = False) -> ocp.CheckpointManager:
        """orbax's manager of the directory: one that only reads, or the writer when `write` is set.

        The writer is made at most once per instance: making it removes the temporaries a killed
        writer left (so it must be the only writer: the run directory's lock).

        Arguments:
          write: whether the caller saves or deletes.
        Returns:
          The manager, its step list refreshed from disk.
        """
        if self._manager is None or (write and not self._writable):
            self.close()
            if write:
                for entry in self.directory.glob(_LEGACY_TRASH):
                    if is_decimal(entry.name.split(".", 1)[0]) and entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False,  # `save` returns with the step complete on disk
                cleanup_tmp_directories=write,  # the only change orbax makes when it opens
                preservation_policy=ocp.checkpoint_managers.LatestN(n=self.keep),
                save_root_metadata=False,
                create=False,
                **_DELETION_OPTIONS,
            )
            self._manager = ocp.CheckpointManager(self.directory, item_names=_ITEMS, options=options)
            self._writable = write
        else:
            self._manager.reload()  # another process (or instance) may have written since
        return self._manager

    def step_path(self, step: int) -> pathlib.Path:
        """The directory of one step.

        Arguments:
          step: the step number.
        Returns:
          `directory/<step>` (it may not exist).
        """
        return self.directory / str(int(step))

    def all_steps(self) -> list[int]:
        """Steps whose save completed (finalised by orbax), oldest first; not checksum-verified.

        Returns:
          Sorted list of step numbers.
        """
        if not self.directory.exists():
            return []
        return sorted(int(s) for s in self._orbax().all_steps())

    def latest_step(self) -> int | None:
        """The newest completed step (as `all_steps`; `restore` verifies it and may fall back).

        Returns:
          The step number, or None when there is no checkpoint.
        """
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, arrays: dict, meta: Any = None) -> pathlib.Path:
        """Writes one step synchronously and atomically, then prunes to the newest `keep`.

        Saving step s replaces an existing step s and discards steps newer than s (they belong
        to a timeline abandoned by resuming from an earlier checkpoint), with a warning.

        Arguments:
          step: non-negative step number (the generation).
          arrays: nested dict (str keys) of numpy/jax arrays or scalars; e.g. an RNG key as
            `jax.random.key_data(key)` (uint32). Zero-size arrays and empty dicts are kept.
          meta: JSON-able metadata (numpy scalars/arrays, tuples, dataclasses are converted).
        Returns:
          The step's directory, complete on disk when this returns.
        """
        step = operator.index(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        leaves, empties = _flatten(arrays)
        spec = [{"path": list(p), "dtype": a.dtype.name, "shape": list(a.shape)}
                for p, a in leaves]
        header = {"format": FORMAT_VERSION, "step": step, "arrays": spec,
                  "empty_dicts": [list(p) for p in empties], "meta": to_jsonable(meta)}
        record = dict(header, sha256=_digest(header, [a for _, a in leaves]))
        manager = self._orbax(write=True)
        for old in sorted(manager.all_steps()):
            if old > step:
                warnings.warn(f"discarding checkpoint step {old} at {self.step_path(old)}: it is "
                              f"newer than step {step} being saved", CheckpointWarning,
                              stacklevel=2)
            if old >= step:
                manager.delete(old)
        flat = {f"leaf_{i:05d}": a for i, (_, a) in enumerate(leaves) if a.size > 0}
        items = {"meta": ocp.args.JsonSave(record)}
        if flat:
            items["arrays"] = ocp.args.PyTreeSave(flat)
        manager.save(step, args=ocp.args.Composite(**items), force=True)
        return self.step_path(step)

    def restore(self, step: int | None = None) -> tuple[dict, Any, int]:
        """Reads and verifies a step; with `step=None`, the newest good one.

        With `step=None`, a corrupt or unreadable newest step is skipped with a
        `CheckpointWarning` naming its step and path, and the next older one is tried.

        Arguments:
          step: a specific step (no fallback), or None for the newest good step.
        Returns:
          (arrays: nested dict of numpy arrays, bit-identical to those saved;
           meta: the metadata as plain JSON values; the step restored).
        Raises:
          CheckpointError: no checkpoint exists, the requested step is bad, or every step is.
        """
        steps = self.all_steps()
        if step is not None:
            step = operator.index(step)
            if step not in steps:
                raise CheckpointError(f"no checkpoint for step {step} in {self.directory} "
                                      f"(available: {steps or 'none'})")
            arrays, meta = self._restore_step(step)
            return arrays, meta, step
        if not steps:
            raise CheckpointError(f"no checkpoints in {self.directory}; check latest_step() is "
                                  f"not None before restoring")
        failures = []
        for s in reversed(steps):
            try:
                arrays, meta = self._restore_step(s)
            except CheckpointError as e:
                failures.append(f"  step {s}: {e}")
                warnings.warn(f"checkpoint step {s} at {self.step_path(s)} is corrupt or "
                              f"unreadable ({e}); falling back to an earlier checkpoint",
                              CheckpointWarning, stacklevel=2)
                continue
            return arrays, meta, s
        raise CheckpointError(f"no readable checkpoint in {self.directory}; every step failed:\n"
                              + "\n".join(failures)
                              + "\nStart a fresh run in another run directory.")

    def _restore_step(self, step: int) -> tuple[dict, Any]:
        """Reads one step and checks its checksum.

        Arguments:
          step: an existing step.
        Returns:
          (arrays, meta).
        Raises:
          CheckpointError: naming the step, the file or directory and what is wrong.
        """
        path = self.step_path(step)
        where = f"checkpoint step {step} at {path}"
        manager = self._manager if self._manager is not None else self._orbax()
        try:
            record = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            record = record["meta"]
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            raise CheckpointError(f"{where}: cannot read metadata {path / 'meta'}: "
                                  f"{type(e).__name__}: {e}") from e
        try:
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            if record.get("format") != FORMAT_VERSION:
                raise ValueError(f"unknown format {record.get('format')!r}")
            if record["step"] != step:
                raise ValueError(f"records step {record['step']}, not {step}")
            spec = record["arrays"]
            shapes = [tuple(int(n) for n in e["shape"]) for e in spec]
            dtypes = [jnp.dtype(e["dtype"]) for e in spec]
            paths = [tuple(e["path"]) for e in spec]
            empty_dicts = [tuple(p) for p in record["empty_dicts"]]
            meta = record["meta"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: malformed metadata {path / 'meta'}: {e}") from e
        stored = {}
        names = [f"leaf_{i:05d}" for i, s in enumerate(shapes) if math.prod(s) > 0]
        if names:
            restore_args = {n: ocp.RestoreArgs(restore_type=np.ndarray) for n in names}
            try:
                stored = manager.restore(step, args=ocp.args.Composite(
                    arrays=ocp.args.PyTreeRestore(restore_args=restore_args)))["arrays"]
            except Exception as e:
                raise CheckpointError(f"{where}: cannot read arrays {path / 'arrays'}: "
                                      f"{type(e).__name__}: {e}") from e
        leaves = []
        for i, (leaf_path, shape, dtype) in enumerate(zip(paths, shapes, dtypes)):
            if math.prod(shape) == 0:
                a = np.zeros(shape, dtype)
            else:
                a = np.asarray(stored.get(f"leaf_{i:05d}") if isinstance(stored, dict) else None)
                if a.shape != shape or a.dtype != dtype:
                    raise CheckpointError(
                        f"{where}: array {list(leaf_path)} in {path / 'arrays'} is "
                        f"{a.dtype}{list(a.shape)}, expected {dtype}{list(shape)}")
            leaves.append((leaf_path, a))
        header = {k: v for k, v in record.items() if k != "sha256"}
        digest = _digest(header, [a for _, a in leaves])
        if digest != record.get("sha256"):
            raise CheckpointError(f"{where}: checksum mismatch (stored {record.get('sha256')}, "
                                  f"computed {digest}); its files {path / 'meta'} or "
                                  f"{path / 'arrays'} were changed or cut short")
        return _unflatten(leaves, empty_dicts), meta

    def delete(self, step: int) -> None:
        """Deletes one step.

        Arguments:
          step: the step to delete; a missing step is ignored.
        Returns:
          None.
        """
        step = operator.index(step)
        manager = self._orbax(write=True)
        if step in manager.all_steps():
            manager.delete(step)
