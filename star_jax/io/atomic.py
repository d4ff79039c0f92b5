"""The one way run state replaces a file: the file holds its old content or the complete new one.

A kill or an error at any moment never leaves a partial file, so every rewrite of run state
(config, JSONL logs, baselines) goes through `atomic_write_bytes` / `atomic_write_text`.
"""
from __future__ import annotations

import os
import pathlib
import secrets


def fsync_dir(path: str | os.PathLike) -> None:
    """Fsyncs a directory so a rename inside it survives a crash (no-op where unsupported).

    Arguments:
      path: the directory.
    Returns:
      None.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replaces a file's content atomically.

    Writes `data` to a new temporary file beside `path` (`.<name>.<random>.tmp`, created with the
    permissions a plain `open` would give), fsyncs it, renames it over `path` and fsyncs the
    directory. On any failure, interruptions included, the temporary file is removed and `path`
    keeps its previous content (or stays missing).

    Arguments:
      path: the destination file; its directory must exist.
      data: the complete new content (bytes, bytearray or memoryview).
    Returns:
      None.
    Raises:
      FileNotFoundError: the directory of `path` does not exist.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` of a string as UTF-8.

    Lone surrogates (bytes that were undecodable when read with `errors="surrogateescape"`) are
    written back as the original bytes.

    Arguments:
      path: the destination file; its directory must exist.
      text: the complete new content.
    Returns:
      None.
    """
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))
