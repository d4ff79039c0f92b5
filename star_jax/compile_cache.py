"""JAX's persistent compilation cache, on by default for the command line, ``star_jax.evolve`` and
the experiment scripts.

A search compiles a few dozen small programs (one set per LIV kind, see ``star_jax.train.parts``);
a second process running the same kinds reads them from disk instead of compiling again.

Location: ``$STAR_JAX_CACHE_DIR`` when set (``off``, ``0``, ``none`` or empty switch the cache
off), else ``star_jax/xla`` under ``$XDG_CACHE_HOME`` (default ``~/.cache``). JAX keys every entry
on the program, the backend and the JAX version, and an entry it cannot read is compiled again, so
a stale, foreign or corrupt entry costs a compile, never a wrong result. An unwritable location
warns once and the run goes on without the cache.
"""
from __future__ import annotations

import os
import tempfile
import warnings

import jax
from jax.experimental.compilation_cache import compilation_cache as cc

__all__ = ["cache_dir", "enable_compilation_cache"]

ENV = "STAR_JAX_CACHE_DIR"
OFF = ("", "0", "off", "none", "false")
MIN_COMPILE_SECS = 0.0
"""Programs compiled in less than this are not written. Ours take 0.05-0.5 s each, and JAX's
default (1 s) would keep none of them."""

_warned: set[str] = set()


def cache_dir() -> str | None:
    """The cache directory the environment asks for, or None when switched off."""
    path = os.environ.get(ENV)
    if path is not None and path.strip().lower() in OFF:
        return None
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "star_jax", "xla")
    return os.path.abspath(os.path.expanduser(path))


def _writable(path: str) -> str | None:
    """None when ``path`` can hold cache entries, else the reason it cannot."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache for this process.

    Arguments:
        path: the directory (default: ``cache_dir()``, from the environment). A directory the
            user already configured through ``jax.config`` is kept when ``path`` is None.

    Returns:
        The directory in use, or None when the cache is off (switched off, or the location is
        not writable: then a ``RuntimeWarning`` says so, once per location).
    """
    if path is None:
        current = jax.config.jax_compilation_cache_dir
        path = current if current else cache_dir()
    if path is None:
        return None
    path = os.path.abspath(os.path.expanduser(str(path)))
    reason = _writable(path)
    if reason is not None:
        if path not in _warned:
            _warned.add(path)
            warnings.warn(f"the compilation cache at {path} is not writable ({reason}); running without "
                          f"it (set {ENV} to another directory, or to 'off')", RuntimeWarning, stacklevel=2)
        return None
    changed = jax.config.jax_compilation_cache_dir != path
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    if changed:
        cc.reset_cache()  # JAX decides once per process whether a cache is in use
    return path
