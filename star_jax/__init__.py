"""star_jax: STAR (Synthesis of Tailored Architectures) in JAX.

Evolve sequence-model backbones over linear input-varying operators: genomes, a compiler to
Flax models, MAD tasks, single-candidate and vectorised population training, NSGA-II.
"""
__version__ = "0.1.0"

from star_jax.genome import (
    Genome, GenomeError, Segment, OperatorGenome, FeaturizerGenome, FeatureGroup, LIVClass,
    register_liv_class, liv_classes, get_liv_class, random_genome, mutate, crossover, baselines,
)
from star_jax.model import ModelConfig, ConfigError, build_model, StarModel, compile_genome, generate
from star_jax.metrics import param_count, cache_bytes, cache_elems

__all__ = [
    "Genome", "GenomeError", "Segment", "OperatorGenome", "FeaturizerGenome", "FeatureGroup", "LIVClass",
    "register_liv_class", "liv_classes", "get_liv_class", "random_genome", "mutate", "crossover", "baselines",
    "ModelConfig", "ConfigError", "build_model", "StarModel", "compile_genome", "generate",
    "param_count", "cache_bytes", "cache_elems",
]

# Data and training. `star_jax.train` and `star_jax.evolve` are packages whose main functions
# share their names; the top level exposes the functions (sj.train(...), sj.evolve(...)), after
# the packages' submodules are loaded, so `import star_jax.train.mad` keeps working.
from star_jax import tasks
from star_jax.train import mad
from star_jax.train import TrainConfig, TrainResult
from star_jax import train  # a callable package: sj.train(genome, cfg, task, ...)

__all__ += ["tasks", "mad", "TrainConfig", "TrainResult", "train"]
from star_jax.population import train_population, PopulationResult

__all__ += ["train_population", "PopulationResult"]
from star_jax import evolve  # a callable package: sj.evolve(config, run_dir)
from star_jax.evolve import EvolveConfig, EvolveResult

__all__ += ["evolve", "EvolveConfig", "EvolveResult"]
from star_jax.compile_cache import enable_compilation_cache

__all__ += ["enable_compilation_cache"]
