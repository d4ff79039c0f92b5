"""star_jax: STAR (Synthesis of Tailored Architectures) in JAX."""
__version__ = "0.1.0"
