"""The compiled backbone as a flax.linen Module: embedding, pre-norm residual LIV blocks,
final norm and LM head; plus the recurrent decode path (prefill + step) with explicit state.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from star_jax.genome import Genome
from star_jax.ops.primitives import rms_norm
from .config import ModelConfig
from .program import Program, compile_genome


class RMSNorm(nn.Module):
    """RMSNorm with a learnable scale (initialised to ones)."""

    width: int
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (self.width,), jnp.float32)
        return rms_norm(x, scale, self.eps)

    def param_count(self) -> int:
        return self.width


def _norm_count(cfg: ModelConfig) -> int:
    return cfg.width


class StarModel(nn.Module):
    """A backbone compiled from a genome.

    `__call__(tokens [batch, length] int32) -> logits [batch, length, vocab]` (float32).
    Decoding: `init_decode_state(batch, max_len)` (no params needed), then
    `apply(params, token_t [batch], state, method=StarModel.step) -> (logits_t, state)` or
    `method=StarModel.prefill` for a whole prompt.
    """

    program: Program

    @property
    def cfg(self) -> ModelConfig:
        return self.program.cfg

    def setup(self):
        cfg = self.cfg
        self.embed = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(cfg.embed_init_std))
        self.norms = [RMSNorm(cfg.width, cfg.norm_eps) for _ in self.program.slots]
        self.featurizers = {str(o): self.program.slots[o].featurizer.clone() for o in self.program.featurizer_owners}
        self.mixers = [s.mixer.clone() for s in self.program.slots]
        self.final_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.head = nn.Dense(cfg.vocab_size, use_bias=False,
                             kernel_init=nn.initializers.normal(1.0 / cfg.width ** 0.5))

    # ------------------------------------------------------------------ parallel forward
    def hidden(self, tokens: jax.Array) -> jax.Array:
        """Final-normalised hidden states [batch, length, width]."""
        chex.assert_rank(tokens, 2)
        x = self.embed(tokens)
        stash: dict[int, dict[str, jax.Array]] = {}
        leaders = set(self.program.leaders)
        for i, slot in enumerate(self.program.slots):
            h = self.norms[i](x)
            feats = self.featurizers[str(slot.featurizer_owner)](h, groups=slot.compute_groups)
            if slot.feature_source is not None:
                src = stash[slot.feature_source]
                feats = {**feats, **{g: src[g] for g in slot.shared_groups}}
            if i in leaders:
                stash[i] = feats
            x = x + self.mixers[i](feats)
        return self.final_norm(x)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.head(self.hidden(tokens)).astype(jnp.float32)

    # ------------------------------------------------------------------ decoding
    def init_decode_state(self, batch: int, max_len: int | None = None, dtype=jnp.float32) -> dict[str, Any]:
        """Zero decode state for `batch` sequences of up to `max_len` tokens (no params needed)."""
        return init_decode_state(self.program, batch, max_len, dtype)

    def step(self, token_t: jax.Array, state: dict[str, Any]):
        """One decode step. token_t: [batch] int32 -> (logits_t [batch, vocab], new state)."""
        chex.assert_rank(token_t, 1)
        x = self.embed(token_t)
        stash_f: dict[int, dict] = {}
        stash_s: dict[int, Any] = {}
        leaders = set(self.program.leaders)
        new_slots = []
        for i, slot in enumerate(self.program.slots):
            st = state["slots"][i]
            h = self.norms[i](x)
            feats, fst = self.featurizers[str(slot.featurizer_owner)].step(h, st["feat"], groups=slot.compute_groups)
            if slot.feature_source is not None:
                src = stash_f[slot.feature_source]
                feats = {**feats, **{g: src[g] for g in slot.shared_groups}}
            if slot.readonly_cache:
                y = self.mixers[i].step_readonly(feats, stash_s[slot.feature_source])
                mst = st["mix"]
            else:
                y, mst = self.mixers[i].step(feats, st["mix"])
            if i in leaders:
                stash_f[i], stash_s[i] = feats, mst
            new_slots.append({"feat": fst, "mix": mst})
            x = x + y
        logits = self.head(self.final_norm(x)).astype(jnp.float32)
        return logits, {"slots": new_slots}

    def prefill(self, tokens: jax.Array, state: dict[str, Any]):
        """Feed a prompt [batch, length] token by token (lax.scan) -> (logits [b, l, vocab], state)."""

        def body(mdl, carry, tok):
            logits, carry = mdl.step(tok, carry)
            return carry, logits

        scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
        state, logits = scan(self, state, tokens)
        return logits, state


def init_decode_state(program: Program, batch: int, max_len: int | None = None, dtype=jnp.float32) -> dict:
    """The zero decode state of a program: per slot, the featurizer state of the groups it
    computes and the mixer state ({} for a mixer that reads its leader's cache)."""
    max_len = max_len or program.cfg.max_len
    slots = []
    for s in program.slots:
        fst = s.featurizer.init_state(batch, groups=s.compute_groups, dtype=dtype)
        mst = {} if s.readonly_cache else s.mixer.init_state(batch, max_len, dtype=dtype)
        slots.append({"feat": fst, "mix": mst})
    return {"slots": slots}


def build_model(genome: Genome | str, cfg: ModelConfig) -> StarModel:
    """Compile a genome (or its text) into a flax.linen Module for `cfg`.

    Raises GenomeError for an invalid genome and ConfigError when cfg cannot fit an LIV.
    """
    if isinstance(genome, str):
        genome = Genome.from_string(genome)
    return StarModel(compile_genome(genome, cfg))


def generate(model: StarModel, params, prompt: jax.Array, n_new: int, *, key: jax.Array | None = None,
             temperature: float = 0.0) -> jax.Array:
    """Greedy (temperature 0) or sampled continuation of `prompt` [batch, length]; returns
    [batch, length + n_new] tokens. Uses the recurrent decode path."""
    b, l = prompt.shape
    state = model.init_decode_state(b, l + n_new)
    logits, state = model.apply(params, prompt, state, method=StarModel.prefill)
    key = key if key is not None else jax.random.key(0)

    def pick(lg, k):
        if temperature <= 0:
            return jnp.argmax(lg, axis=-1).astype(jnp.int32)
        return jax.random.categorical(k, lg / temperature).astype(jnp.int32)

    tok = pick(logits[:, -1], key)

    def body(carry, k):
        tok, state = carry
        lg, state = model.apply(params, tok, state, method=StarModel.step)
        nxt = pick(lg, k)
        return (nxt, state), tok

    (_, _), toks = jax.lax.scan(body, (tok, state), jax.random.split(key, n_new))
    return jnp.concatenate([prompt, toks.T], axis=1)
