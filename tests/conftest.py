"""Test-wide JAX settings: strict promotion so silent broadcasting/dtype bugs fail loudly,
and a persistent compilation cache so repeated test runs compile less."""
import os

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
_cache = os.environ.get("STAR_JAX_TEST_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
