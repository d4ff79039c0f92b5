"""The STAR genome: LIV classes as data, backbone genomes, validation, repair, variation.

Pure Python and numpy; nothing here imports JAX.
"""
from .errors import GenomeError
from .classes import (
    TOKEN_MIXING, SPARSITY, NONLINEARITY, CHANNEL_MIXING, FeatureGroup, FeaturizerGenome, OperatorGenome,
    LIVClass, PAPER_CLASSES, liv_classes, class_ids, class_table, get_liv_class, get_liv_class_by_name, get_featurizer,
    register_featurizer, register_liv_class, unregister_liv_class,
)
from .genome import Genome, Segment, SharingPlan, POSITIONS
from .variation import mutate, crossover, random_genome, flat_operators
from . import baselines

__all__ = [
    "GenomeError", "TOKEN_MIXING", "SPARSITY", "NONLINEARITY", "CHANNEL_MIXING", "FeatureGroup",
    "FeaturizerGenome", "OperatorGenome", "LIVClass", "PAPER_CLASSES", "liv_classes", "class_ids", "class_table",
    "get_liv_class", "get_liv_class_by_name", "get_featurizer", "register_featurizer", "register_liv_class",
    "unregister_liv_class", "Genome", "Segment", "SharingPlan", "POSITIONS", "mutate", "crossover",
    "random_genome", "flat_operators", "baselines",
]
