"""Packages that are also functions: `sj.train(...)` and `sj.evolve(...)` call the package's main
function, while `star_jax.train.mad` and `import star_jax.evolve.nsga2` stay ordinary imports."""
from __future__ import annotations

import sys
import types
from typing import Callable


def make_callable(module_name: str, fn: Callable) -> None:
    """Let the (already imported) module `module_name` be called as `fn`."""
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    _CallableModule.__call__.__doc__ = fn.__doc__
    _CallableModule.__name__ = f"callable module {module_name}"
    module.__class__ = _CallableModule
