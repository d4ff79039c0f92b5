"""star_jax: STAR (Synthesis of Tailored Architectures) in JAX.

Evolve sequence-model backbones over linear input-varying operators: genomes, a compiler to
Flax models, MAD tasks, single-candidate and vectorised population training, NSGA-II.

The genome layer loads with the package (it needs only numpy); everything that needs JAX or
Flax (models, metrics, tasks, training, evolution) is imported on first use of its name, so
`import star_jax` and `sj.Genome`, `sj.baselines`, `sj.mutate` work in a process without JAX.

Importing the package sets one of XLA's CPU code-generation options for its many small programs
(no LLVM loop unrolling: less compile time, same computation; ``star_jax.xla_flags`` says when
and how to switch it off).
"""
from __future__ import annotations

import importlib

from star_jax import xla_flags

xla_flags.apply_cpu_options()  # before JAX starts its backends; see star_jax/xla_flags.py

__version__ = "0.1.0"

from star_jax.genome import (
    Genome, GenomeError, Segment, OperatorGenome, FeaturizerGenome, FeatureGroup, LIVClass,
    register_liv_class, unregister_liv_class, liv_classes, get_liv_class, random_genome, mutate, crossover, baselines,
)

# name -> (module, attribute or None for the module itself). `star_jax.train` and
# `star_jax.evolve` are packages that are also callables (sj.train(...), sj.evolve(...)).
_LAZY = {
    "ModelConfig": ("star_jax.model", "ModelConfig"), "ConfigError": ("star_jax._util.validate", "ConfigError"),
    "build_model": ("star_jax.model", "build_model"), "StarModel": ("star_jax.model", "StarModel"),
    "compile_genome": ("star_jax.model", "compile_genome"), "generate": ("star_jax.model", "generate"),
    "param_count": ("star_jax.metrics", "param_count"), "cache_bytes": ("star_jax.metrics", "cache_bytes"),
    "cache_elems": ("star_jax.metrics", "cache_elems"),
    "tasks": ("star_jax.tasks", None), "mad": ("star_jax.train.mad", None),
    "TrainConfig": ("star_jax.train", "TrainConfig"), "TrainResult": ("star_jax.train", "TrainResult"),
    "train": ("star_jax.train", None),
    "train_population": ("star_jax.population", "train_population"),
    "PopulationResult": ("star_jax.population", "PopulationResult"),
    "evolve": ("star_jax.evolve", None), "EvolveConfig": ("star_jax.evolve", "EvolveConfig"),
    "EvolveResult": ("star_jax.evolve", "EvolveResult"),
    "enable_compilation_cache": ("star_jax.compile_cache", "enable_compilation_cache"),
}

__all__ = [
    "Genome", "GenomeError", "Segment", "OperatorGenome", "FeaturizerGenome", "FeatureGroup", "LIVClass",
    "register_liv_class", "unregister_liv_class", "liv_classes", "get_liv_class", "random_genome", "mutate", "crossover", "baselines",
    *_LAZY,
]


def __getattr__(name: str):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'star_jax' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    if module_name == "star_jax.train":  # load the package's submodules the callable relies on
        importlib.import_module("star_jax.train.mad")
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
