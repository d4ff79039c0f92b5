"""The vectorised population engine: train a whole population of genomes in one compiled step.
Static routing (vmap over equal-signature slots), genome-as-data (switch inside map), sequential."""
from .api import STRATEGIES, train_population
from .common import PopulationResult
from .memory import estimate_memory_bytes

__all__ = ["STRATEGIES", "PopulationResult", "estimate_memory_bytes", "train_population"]
