"""The run directory: one evolution's config, evaluations, checkpoints, logs and plots.

Re-running the same command on the same directory resumes it; a different config is refused
rather than silently mixing two experiments.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import socket
import warnings
from typing import Any, Callable, Iterator

from star_jax.io.checkpoint import CheckpointManager
from star_jax.io.jsonutil import (append_jsonl, read_jsonl, repair_jsonl, rewrite_jsonl,
                                  to_jsonable, write_json_atomic)


class RunDirError(RuntimeError):
    """A run directory cannot be used as asked."""


class RunConfigMismatch(RunDirError):
    """The run directory was started with a different config than the one given now."""


class RunDirBusy(RunDirError):
    """Another process is writing to the run directory."""


LOCK_FILE = "run.lock"


def _flatten_config(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts to dotted keys (lists stay whole values).

    Arguments:
      obj: a JSON value.
      prefix: the dotted path of `obj`.
    Returns:
      {dotted key: leaf value}; an empty dict is a leaf.
    """
    if isinstance(obj, dict) and obj:
        out = {}
        for key, value in obj.items():
            out.update(_flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix or "(config)": obj}


def config_diff(old: Any, new: Any) -> list[str]:
    """Lists how two configs differ, one line per dotted key.

    Arguments:
      old: the stored config (JSON values).
      new: the requested config (JSON values).
    Returns:
      Lines like "model.width: old=64 new=128", "(missing)" for an absent side; [] if equal.
    """
    a, b = _flatten_config(old), _flatten_config(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if _show(va) != _show(vb):
            lines.append(f"{key}: old={_show(va)} new={_show(vb)}")
    return lines


_MISSING = object()


def _show(value: Any) -> str:
    """A value as canonical JSON text, or "(missing)"."""
    return "(missing)" if value is _MISSING else json.dumps(value, sort_keys=True)


def _describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"process {h['pid']} on host {h['host']} (started {h['started']})"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def _holder(path: pathlib.Path) -> str:
    try:
        return _describe_holder(path.read_text(encoding="utf-8").strip())
    except OSError:
        return "an unknown process"


class RunDir:
    """Paths and append-only records of one run directory.

    Layout: `config.json`, `evaluations.jsonl` (one JSON line per evaluated genome),
    `checkpoints/` (see `CheckpointManager`), `logs/metrics.jsonl`, `logs/tensorboard/`, `plots/`.

    Arguments:
      path: the run directory (created by `init`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path).absolute()
        self.config_path = self.path / "config.json"
        self.evaluations_path = self.path / "evaluations.jsonl"
        self.checkpoints_dir = self.path / "checkpoints"
        self.logs_dir = self.path / "logs"
        self.metrics_path = self.logs_dir / "metrics.jsonl"
        self.tensorboard_dir = self.logs_dir / "tensorboard"
        self.plots_dir = self.path / "plots"
        self._evaluations_repaired = False

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory's writer lock (``run.lock``) for the block.

        One writer per run directory: the lock is an exclusive ``flock`` on ``run.lock``, which
        names its holder (pid, host, start time). The operating system releases it when the
        holder exits in any way (kill -9 included), so a lock file left by a dead process is
        taken over, with a warning naming that process. Readers (``star-jax report``) never
        take it. (``flock`` is local to one machine: on a network file system shared by
        several hosts it may not exclude a writer on another host.)

        Raises:
          RunDirBusy: another live process holds the lock; the message names it.
        """
        import fcntl

        self._check_is_directory()
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirBusy(f"run directory {self.path} is in use by {_holder(path)}; wait for it to "
                                 f"finish or stop it, or use another --run-dir") from None
            previous = os.read(fd, 4096).decode("utf-8", "replace").strip()
            if previous:
                warnings.warn(f"{path}: taking over the lock left by {_describe_holder(previous)}, "
                              f"which is no longer running", RuntimeWarning, stacklevel=3)
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
            os.fsync(fd)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # a clean exit leaves an empty (unheld) lock file
        finally:
            os.close(fd)

    def _check_is_directory(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a run directory; pass another --run-dir")

    def exists(self) -> bool:
        """Whether a run was started here (its config.json exists).

        Returns:
          True if `config.json` exists.
        """
        return self.config_path.exists()

    def read_config(self) -> dict:
        """The config this run was started with.

        Returns:
          The parsed `config.json`.
        """
        if not self.config_path.exists():
            raise RunDirError(f"{self.path} holds no run (no config.json)")
        try:
            return json.loads(self.config_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise RunDirError(f"{self.config_path} is damaged ({e}); restore it from a copy, or start a "
                              f"fresh run with another --run-dir") from None

    def init(self, config: Any, *, resume: bool = True) -> bool:
        """Starts a run here, or checks the config of the run already here and resumes it.

        Fresh directory: creates the layout and writes `config.json` atomically. Existing run:
        the stored config must equal `config` (after `to_jsonable`); a partial last line left in
        `evaluations.jsonl` by a kill is cut off (with a warning) so appends stay clean.

        Arguments:
          config: the run's config (dict or dataclass; anything `to_jsonable` accepts).
          resume: if False, an existing run here is an error instead of being resumed.
        Returns:
          True if an existing run is resumed, False if a new one was started.
        Raises:
          RunConfigMismatch: the stored config differs; the message lists each differing key.
          RunDirError: the directory has a run and `resume` is False, or has run files but no
            config.json.
        """
        new = json.loads(json.dumps(to_jsonable(config)))
        self._check_is_directory()
        if self.config_path.exists():
            if not resume:
                raise RunDirError(f"{self.path} already holds a run; resume it, or start a fresh "
                                  f"run with another --run-dir")
            old = self.read_config()
            diff = config_diff(old, new)
            if diff:
                raise RunConfigMismatch(
                    f"run directory {self.path} was started with a different config "
                    f"({len(diff)} key(s) differ):\n  " + "\n  ".join(diff)
                    + "\nTo resume it, run again with its original config (see "
                    f"{self.config_path}); to start fresh, pass another --run-dir.")
            self._make_layout()
            self._repair_evaluations()
            return True
        leftovers = [p for p in (self.evaluations_path, self.metrics_path)
                     if p.exists() and p.stat().st_size > 0]
        if self.checkpoints_dir.exists() and any(self.checkpoints_dir.iterdir()):
            leftovers.append(self.checkpoints_dir)
        if leftovers:
            raise RunDirError(f"{self.path} has run files ({', '.join(str(p) for p in leftovers)}) "
                              f"but no config.json, so it cannot be resumed safely; start fresh "
                              f"with another --run-dir")
        self._make_layout()
        write_json_atomic(self.config_path, new)
        return False

    def _make_layout(self) -> None:
        """Creates the run's directories."""
        for d in (self.path, self.checkpoints_dir, self.logs_dir, self.tensorboard_dir,
                  self.plots_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _repair_evaluations(self) -> None:
        """Cuts a partial last line off evaluations.jsonl, once, before this process appends."""
        if not self._evaluations_repaired:
            repair_jsonl(self.evaluations_path)
            self._evaluations_repaired = True

    def append_evaluation(self, record: dict) -> None:
        """Appends one evaluated genome's record as a JSON line, flushed and fsynced.

        Arguments:
          record: JSON-able dict (e.g. genome, objectives, generation); numpy values converted.
        Returns:
          None.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._repair_evaluations()
        append_jsonl(self.evaluations_path, record)

    def read_evaluations(self) -> list[dict]:
        """All evaluation records, in the order written; a last line cut by a kill is dropped.

        Returns:
          List of records (dicts).
        """
        return read_jsonl(self.evaluations_path)

    def filter_evaluations(self, keep: Callable[[dict], bool]) -> int:
        """Atomically rewrites `evaluations.jsonl` keeping the records where `keep` is true.

        On resume from generation g, dropping records of generations after g makes the resumed
        run's file identical to an uninterrupted run's.

        Arguments:
          keep: predicate on one record.
        Returns:
          The number of records dropped.
        """
        dropped = rewrite_jsonl(self.evaluations_path, keep)
        self._evaluations_repaired = True
        return dropped

    def checkpoint_manager(self, keep: int | None = 3):
        """The run's checkpoint manager.

        Arguments:
          keep: how many newest checkpoints to keep; None keeps all.
        Returns:
          A `CheckpointManager` over `checkpoints/`.
        """
        return CheckpointManager(self.checkpoints_dir, keep=keep)
