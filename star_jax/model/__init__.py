"""Genome -> program of slots -> Flax model; sharing; the decode path."""
from .config import ModelConfig, ConfigError
from .program import Program, SlotSpec, compile_genome, FAMILY_BUILDERS
from .model import StarModel, RMSNorm, build_model, init_decode_state, generate

__all__ = ["ModelConfig", "ConfigError", "Program", "SlotSpec", "compile_genome", "FAMILY_BUILDERS",
           "StarModel", "RMSNorm", "build_model", "init_decode_state", "generate"]
