"""A genome's model as a chain of small compiled programs, one per *kind* of part.

STAR trains hundreds of small models briefly; compiling a whole model per genome costs more than
training it. Here a backbone is split into parts: the embedding, one part per LIV (its norm, its
mixer and, when it owns them, its featurizer weights) and the final part (norm, head, loss).
Every part kind has a handful of jitted programs (forward, backward, optimizer update), keyed
by what the part computes and its shapes, never by the genome it sits in. A training step chains
them on the host: forward through the parts (the evaluation runs the same forwards), then their
backwards in reverse, each recomputing its part's forward from the part's input and returning
the gradients of the part's parameters and input. A new genome made of LIV kinds already seen in
the process therefore compiles nothing; compile cost grows with the number of operator kinds and
shapes, not with the number of genomes.

Parameters of a part live in one float32 vector padded to a power-of-two bucket, so the
optimizer programs are shared by every part of a similar size. The optimizer is
``make_optimizer``'s AdamW (global-norm clipping, bias-corrected moments, decoupled masked
weight decay, warm-up + cosine schedule) with the hyper-parameters passed as data: another
learning rate or seed does not recompile either.

Initialisation: part ``k`` of a backbone (0: embedding, 1..n: the LIVs, n + 1: final) is
initialised from ``fold_in(init_key, k)`` by the flax modules' own initialisers. Their values are
drawn by one program shared by every kind of a similar size (``star_jax.train.draw``: the kind's
initialisation is traced once, its keys are derived on the host and one elementwise program draws
every parameter), bit for bit what the kind's compiled flax initialisation gives; a kind with an
initialiser that program does not know compiles its own.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import concurrent.futures
import math
import os
import threading
import weakref
from typing import Any, Hashable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from star_jax.genome import Genome
from star_jax.model import compile_genome
from star_jax.model.program import Program
from star_jax.ops import init as init_lib
from star_jax.ops.primitives import rms_norm, rows
from star_jax.train.draw import INIT_OPTIONS, InitPlan
from star_jax.train.optim import FlatLayout
from star_jax.train.step import masked_sums, step_batch_key

MIN_BUCKET = 1024
"""Smallest padded size of a part's parameter vector."""


def bucket(n: int) -> int:
    """The padded length of a part vector of ``n`` parameters: the next power of four (at least
    ``MIN_BUCKET``). Parts of similar size then share their optimizer programs (an optimizer
    step is a few vector operations, so the padding costs little)."""
    size = MIN_BUCKET
    while size < n:
        size *= 4
    return size


# ----------------------------------------------------------------------------------------------
# Part kinds: what a part computes, hashable
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EmbedKind:
    vocab_size: int
    width: int
    init_std: float

    def init_tree(self, key, seq_len: int):
        emb = nn.Embed(self.vocab_size, self.width, embedding_init=init_lib.Normal(self.init_std))
        return emb.init(key, jnp.zeros((1, seq_len), jnp.int32))["params"]


@dataclasses.dataclass(frozen=True)
class FinalKind:
    width: int
    vocab_size: int
    eps: float

    def init_tree(self, key, seq_len: int):
        head = nn.Dense(self.vocab_size, use_bias=False, kernel_init=init_lib.Normal(1.0 / self.width ** 0.5))
        kernel = head.init(key, jnp.zeros((1, seq_len, self.width), jnp.float32))["params"]
        return {"head": kernel, "norm": {"scale": init_lib.ONES(None, (self.width,))}}


@dataclasses.dataclass(frozen=True)
class SlotKind:
    """One LIV block: pre-norm, featurizer, mixer, residual.

    Fields:
        featurizer, mixer: the (unbound) flax modules.
        compute_groups: groups this LIV computes with the featurizer weights it uses.
        shared_groups: groups read from its feature-group leader.
        stash_groups: groups it hands to later LIVs (when it is a leader), else ().
        owner_groups: the groups whose featurizer weights this part holds (when it owns its
            featurizer), else None: the weights then come from another part, of kind ``owner``.
        owner: the kind of the part that holds the featurizer weights (None when it owns them).
        width, eps: the norm.
    """

    featurizer: nn.Module
    mixer: nn.Module
    compute_groups: tuple[str, ...]
    shared_groups: tuple[str, ...]
    stash_groups: tuple[str, ...]
    owner_groups: tuple[str, ...] | None
    owner: "SlotKind | None"
    width: int
    eps: float

    def init_tree(self, key, seq_len: int):
        kf, km = jax.random.split(key)
        h = jnp.zeros((1, seq_len, self.width), jnp.float32)
        tree = {"norm": {"scale": init_lib.ONES(None, (self.width,))}}
        if self.owner_groups is not None:
            tree["featurizer"] = self.featurizer.init(kf, h, groups=self.owner_groups)["params"]
        feat_shapes = _feature_shapes(self.featurizer, seq_len, self.width)
        feats = {g: jnp.zeros(s.shape, s.dtype) for g, s in feat_shapes.items()}
        tree["mixer"] = self.mixer.init(km, feats)["params"]
        return tree


@functools.lru_cache(maxsize=512)
def _feature_shapes(featurizer: nn.Module, seq_len: int, width: int) -> dict:
    h = jax.ShapeDtypeStruct((1, seq_len, width), jnp.float32)
    return jax.eval_shape(lambda x: featurizer.init_with_output(jax.random.key(0), x)[0], h)


def slot_kinds(program: Program) -> list[SlotKind]:
    """The part kind of every LIV of a program (owners resolved)."""
    cfg = program.cfg
    leaders = set(program.leaders)
    stash_of = {}
    for s in program.slots:
        if s.feature_source is not None:
            stash_of.setdefault(s.feature_source, set()).update(s.shared_groups)
    kinds: list[SlotKind] = []
    for s in program.slots:
        owns = s.featurizer_owner == s.index
        stash = tuple(g for g in s.featurizer.groups() if g in stash_of.get(s.index, ())) if s.index in leaders else ()
        kinds.append(SlotKind(
            featurizer=s.featurizer, mixer=s.mixer, compute_groups=s.compute_groups,
            shared_groups=s.shared_groups, stash_groups=stash,
            owner_groups=program.owner_groups(s.index) if owns else None,
            owner=None if owns else kinds[s.featurizer_owner],
            width=cfg.width, eps=cfg.norm_eps))
    return kinds


# ----------------------------------------------------------------------------------------------
# Compiled programs, cached by kind
# ----------------------------------------------------------------------------------------------
class _Programs:
    """The jitted programs of one part kind at one sequence length (built once per process)."""

    def __init__(self, kind, seq_len: int):
        self.kind = kind
        self.seq_len = seq_len
        shapes = jax.eval_shape(lambda: kind.init_tree(jax.random.key(0), seq_len))
        self.layout = FlatLayout(shapes)
        self.size = bucket(self.layout.size)
        self.decay = jax.device_put(np.pad(np.concatenate(
            [np.full(n, float(d), np.float32) for n, d in zip(self.layout.sizes, self.layout.decayed)]
            or [np.zeros(0, np.float32)]), (0, self.size - self.layout.size)))
        # one shared program draws the parameters of every kind whose initialisers say how
        # (star_jax.train.draw); a kind with another initialiser compiles its own, for compile
        # speed (about 30% faster), not run speed, as it runs once per candidate
        self.init = InitPlan.build(kind, seq_len, self.layout, self.size) or jax.jit(
            self._init, compiler_options=INIT_OPTIONS)
        self.warmed: set[int] = set()  # batch sizes whose programs are compiled (see warm_up)
        # forward programs keep no residuals; backward programs recompute their part's forward.
        # A forward that hands jax.vjp's residuals to a backward that applies them compiled in
        # 0.84-0.89x the time and ran single parts in 0.86-0.95x (benchmarks/results/
        # part_kinds_ways*.md), but whole backbones gained nothing end to end: the quick run took
        # 0.99x, a Transformer++ step at the peer job's shapes 1.11x, its evaluation 2.5x
        # (residuals written and read back through memory; benchmarks/results/residuals.md)
        if isinstance(kind, SlotKind):
            self.fwd = jax.jit(self._slot_forward)
            self.bwd = jax.jit(self._slot_backward)
        elif isinstance(kind, EmbedKind):
            self.fwd = jax.jit(self._embed_forward)
            self.bwd = jax.jit(self._embed_backward)
        else:
            self.fwd = jax.jit(self._final_sums)
            self.bwd = jax.jit(self._final_grad)

    def _init(self, seed, index):
        """``(params, zeros, zeros)``: the part's padded vector from ``fold_in(init_key, index)``
        (``init_key`` the first key of ``batch_keys(seed)``) and its two Adam moments."""
        init_key = jax.random.split(jax.random.key(seed))[0]
        tree = self.kind.init_tree(jax.random.fold_in(init_key, index), self.seq_len)
        vec = self.pad(self.layout.ravel(tree))
        return vec, jnp.zeros_like(vec), jnp.zeros_like(vec)

    def pad(self, flat):
        return jnp.pad(flat, (0, self.size - self.layout.size))

    def tree(self, vec):
        return self.layout.unravel(vec[: self.layout.size])

    # forwards: every argument is an array pytree, all static settings live in the kind
    def _embed_forward(self, vec, tokens):
        return jnp.take(self.tree(vec)["embedding"], tokens, axis=0)

    def _embed_backward(self, vec, tokens, dx):
        _, pullback = jax.vjp(lambda v: self._embed_forward(v, tokens), vec)
        (dvec,) = pullback(dx)
        return dvec, jnp.sum(jnp.square(dvec))

    def _final_sums(self, vec, x, targets):
        tree = self.tree(vec)
        h = rms_norm(x, tree["norm"]["scale"], self.kind.eps)
        logits = rows(lambda r: r @ tree["head"]["kernel"], h).astype(jnp.float32)
        return masked_sums(logits, targets)

    def _final_grad(self, vec, x, targets):
        """``(loss, sums), (dvec, dx), |dvec|^2``: the mean loss over counted positions."""
        def loss_fn(v, h):
            sums = self._final_sums(v, h, targets)
            return sums[0] / jnp.maximum(sums[2], 1).astype(jnp.float32), sums

        (loss, sums), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(vec, x)
        return (loss, sums), grads, jnp.sum(jnp.square(grads[0]))

    def _slot_backward(self, vec, owner_vec, x, shared, cotangent):
        _, pullback = jax.vjp(self._slot_forward, vec, owner_vec, x, shared)
        grads = pullback(cotangent)
        return grads, jnp.sum(jnp.square(grads[0]))

    def _slot_forward(self, vec, owner_vec, x, shared):
        k = self.kind
        tree = self.tree(vec)
        if k.owner_groups is not None:
            fparams = tree["featurizer"]
        else:  # the featurizer weights live in the owner's part
            fparams = _programs(k.owner, self.seq_len).tree(owner_vec)["featurizer"]
        h = rms_norm(x, tree["norm"]["scale"], k.eps)
        feats = k.featurizer.apply({"params": fparams}, h, groups=k.compute_groups)
        feats = {**feats, **shared}
        y = k.mixer.apply({"params": tree["mixer"]}, feats)
        return x + y, {g: feats[g] for g in k.stash_groups}


EVAL_WINDOW = 2
"""Test batches whose intermediates an evaluation thread holds at once (``PartModel.eval_sums``).
Holding every batch's until the end, as before, evaluated the peer job's 1,280 test sequences in
0.54 s against 0.45-0.50 s holding 1, 2 or 4, and added 442 MB of peak memory against 50-106 MB
(``benchmarks/results/eval_window.md``)."""

_CACHE: "collections.OrderedDict[Hashable, _Programs]" = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 256
"""Most part kinds whose programs are kept (least recently used dropped first)."""


_BUILDING: dict[Hashable, threading.Lock] = {}  # a lock per kind being built (under _CACHE_LOCK)


def _programs(kind, seq_len: int) -> _Programs:
    """The cached programs of ``kind`` at ``seq_len``, built once: threads that ask for a kind
    being built wait for it and share its programs (separate copies would each compile)."""
    key = (kind, seq_len)
    with _CACHE_LOCK:
        progs = _CACHE.get(key)
        if progs is not None:
            _CACHE.move_to_end(key)
            return progs
        building = _BUILDING.setdefault(key, threading.Lock())
    with building:
        with _CACHE_LOCK:
            progs = _CACHE.get(key)
            if progs is not None:  # built by the thread this one waited for
                _CACHE.move_to_end(key)
                return progs
        progs = _Programs(kind, seq_len)
        with _CACHE_LOCK:
            _CACHE[key] = progs
            _BUILDING.pop(key, None)
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return progs


def clear_program_cache() -> None:
    """Forget every cached part program (the next training compiles them again)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    _feature_shapes.cache_clear()


# ----------------------------------------------------------------------------------------------
# The optimizer, per part, hyper-parameters as data
# ----------------------------------------------------------------------------------------------
def hyper_vector(cfg) -> np.ndarray:
    """``[lr, min_lr_ratio, warmup, decay_len, b1, b2, weight_decay, clip_norm]`` float32: the
    optimizer's settings as data, so other values reuse the compiled programs."""
    clip = math.inf if cfg.clip_norm is None else float(cfg.clip_norm)
    decay_len = float(max(cfg.steps - cfg.warmup_steps - 1, 1))
    return np.array([cfg.lr, cfg.min_lr_ratio, cfg.warmup_steps, decay_len, cfg.b1, cfg.b2,
                     cfg.weight_decay, clip], np.float32)


def _schedule(hyper, count, xp=jnp):
    """``make_schedule`` with its settings as data (same formula)."""
    f32 = xp.float32
    peak, floor_ratio, warmup, decay_len = hyper[0], hyper[1], hyper[2], hyper[3]
    s = count.astype(f32)
    warm = peak * (s + f32(1.0)) / xp.maximum(warmup, f32(1.0))
    t = xp.clip((s - warmup) / decay_len, f32(0.0), f32(1.0))
    cosine = peak * (floor_ratio + (f32(1.0) - floor_ratio) * f32(0.5) * (f32(1.0) + xp.cos(f32(math.pi) * t)))
    return xp.where(s < warmup, warm, cosine)


_ZERO = np.float32(0.0)


@jax.jit
def _sqnorm(g):
    return jnp.sum(jnp.square(g))


@jax.jit
def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


@jax.jit
def _step_tail(loss, sums, sqnorms, alive, count):
    """Global gradient norm, the step's verdict and its metrics."""
    _, n_correct, n_counted = sums
    grad_norm = jnp.sqrt(sum(sqnorms)).astype(jnp.float32)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    ok = alive & finite
    accuracy = n_correct.astype(jnp.float32) / jnp.maximum(n_counted, 1).astype(jnp.float32)
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm, "finite": finite}
    return ok, grad_norm, alive & finite, count + ok.astype(jnp.int32), metrics


@functools.partial(jax.jit, donate_argnums=(0, 2, 3))
def _adamw(vec, grad, mu, nu, decay, count, ok, grad_norm, hyper):
    """One AdamW step of a part (``make_optimizer``'s chain), applied only where ``ok``."""
    b1, b2, wd, clip = hyper[4], hyper[5], hyper[6], hyper[7]
    g = jnp.where(grad_norm < clip, grad, grad / grad_norm * clip)
    mu2 = b1 * mu + (1.0 - b1) * g
    nu2 = b2 * nu + (1.0 - b2) * jnp.square(g)
    c = (count + 1).astype(jnp.float32)
    mu_hat = mu2 / (1.0 - b1 ** c)
    nu_hat = nu2 / (1.0 - b2 ** c)
    update = mu_hat / (jnp.sqrt(nu_hat) + 1e-8) + wd * decay * vec
    new = vec - _schedule(hyper, count) * update
    return jnp.where(ok, new, vec), jnp.where(ok, mu2, mu), jnp.where(ok, nu2, nu)


def lr_curve(cfg, steps_run: int) -> np.ndarray:
    """The learning rate of 0-based steps ``0..steps_run-1`` (float64 numpy; ``make_schedule``'s
    formula evaluated in float32 on the host)."""
    return np.asarray(_schedule(hyper_vector(cfg), np.arange(steps_run, dtype=np.int32), xp=np), np.float64)


# ----------------------------------------------------------------------------------------------
# A backbone as parts
# ----------------------------------------------------------------------------------------------
class PartModel:
    """A compiled backbone (``Program``) as a chain of cached part programs at one length.

    ``kinds[0]`` is the embedding, ``kinds[1..n]`` the LIVs, ``kinds[n + 1]`` the final part.
    Parameters are a list of padded float32 vectors, one per part.
    """

    def __init__(self, program: Program, seq_len: int):
        cfg = program.cfg
        self.program = program
        self.seq_len = int(seq_len)
        self.slot_kinds = slot_kinds(program)
        self.kinds = [EmbedKind(cfg.vocab_size, cfg.width, float(cfg.embed_init_std)), *self.slot_kinds,
                      FinalKind(cfg.width, cfg.vocab_size, cfg.norm_eps)]
        self.progs = [_programs(k, self.seq_len) for k in self.kinds]
        n = len(program.slots)
        self.owner_part = [None] + [None if k.owner is None else s.featurizer_owner + 1
                                    for k, s in zip(self.slot_kinds, program.slots)] + [None]
        self.source_part = [None] + [None if s.feature_source is None else s.feature_source + 1
                                     for s in program.slots] + [None]
        self.n_parts = n + 2

    # --------------------------------------------------------------- parameters
    def init(self, seed: int):
        """``(params, mu, nu)``: lists of part vectors (parameters from ``seed``, zero moments)."""
        out = [p.init(np.uint32(seed), np.int32(k)) for k, p in enumerate(self.progs)]
        return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]

    def to_flax(self, vecs) -> dict:
        """The parameters as ``StarModel``'s flax tree ``{"params": ...}`` (numpy leaves)."""
        host = jax.device_get(list(vecs))
        trees = [p.layout.unravel(np.asarray(v)[: p.layout.size]) for p, v in zip(self.progs, host)]
        out: dict[str, Any] = {"embed": trees[0]}
        for i, (k, t) in enumerate(zip(self.slot_kinds, trees[1:-1])):
            names = self.program.param_names(i)
            out[names["norm"]] = t["norm"]
            out[names["mixer"]] = t["mixer"]
            if k.owner_groups is not None:  # LIV i owns its featurizer weights
                out[names["featurizer"]] = t["featurizer"]
        out["final_norm"] = trees[-1]["norm"]
        out["head"] = trees[-1]["head"]
        return {"params": jax.device_put(out)}

    def from_flax(self, params) -> list[jax.Array]:
        """Part vectors from ``StarModel``'s flax tree (the inverse of ``to_flax``)."""
        p = params["params"] if "params" in params else params
        trees = [{"embedding": p["embed"]["embedding"]}]
        for i, k in enumerate(self.slot_kinds):
            names = self.program.param_names(i)
            t = {"norm": p[names["norm"]], "mixer": p[names["mixer"]]}
            if k.owner_groups is not None:
                t["featurizer"] = p[names["featurizer"]]
            trees.append(t)
        trees.append({"norm": p["final_norm"], "head": p["head"]})
        out = []
        names = ["the embedding", *(f"LIV #{i}" for i in range(len(self.slot_kinds))), "the head"]
        for name, prog, t in zip(names, self.progs, trees):
            try:
                leaves = prog.layout.treedef.flatten_up_to(t)
                flat = np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in leaves])
            except (ValueError, TypeError) as e:
                raise ValueError(f"the given parameters do not fit {name} of this genome's model: {e}") from None
            if flat.size != prog.layout.size:
                raise ValueError(f"the given parameters have {flat.size} values for {name} of this genome's "
                                 f"model, which has {prog.layout.size}")
            out.append(jax.device_put(np.pad(flat, (0, prog.size - flat.size))))
        return out

    # --------------------------------------------------------------- forward / backward
    def _shared(self, k: int, stash: dict) -> dict:
        src = self.source_part[k]
        if src is None:
            return {}
        kind = self.kinds[k]
        return {g: stash[src][g] for g in kind.shared_groups}

    def _forward(self, vecs, inputs):
        """Block inputs of every part and the final hidden state."""
        n = self.n_parts
        xs: list[Any] = [None] * n
        stash: dict[int, dict] = {}
        x = self.progs[0].fwd(vecs[0], inputs)
        for k in range(1, n - 1):
            xs[k] = x
            owner = self.owner_part[k]
            x, st = self.progs[k].fwd(vecs[k], None if owner is None else vecs[owner], x, self._shared(k, stash))
            if self.kinds[k].stash_groups:
                stash[k] = st
        return xs, stash, x

    def loss_and_grads(self, vecs, inputs, targets, hold: list | None = None):
        """``(loss, (loss_sum, n_correct, n_counted)), grads, sqnorms``: one gradient vector and
        its squared norm per part. Each part's backward recomputes its forward from its input.

        ``hold`` receives the step's intermediate arrays. Dropping the last reference to an array
        whose computation is still queued blocks the host until it has run, which stops the host
        from queueing ahead of the device (a toy chain of two-output programs on CPU ran 2.3x
        slower so); the caller keeps them until the next step is queued.
        """
        n = self.n_parts
        hold = [] if hold is None else hold
        xs, stash, x = self._forward(vecs, inputs)
        hold += [xs, stash]
        grads: list[Any] = [None] * n
        sq: list[Any] = [None] * n
        (loss, sums), (grads[-1], dx), sq[-1] = self.progs[-1].bwd(vecs[-1], x, targets)
        d_stash: dict[int, Any] = {}
        summed = set()  # parts whose gradient has several contributions
        for k in range(n - 2, 0, -1):
            kind = self.kinds[k]
            ct_stash = d_stash.pop(k) if kind.stash_groups else {}
            owner = self.owner_part[k]
            hold.append(dx)
            (dvec, downer, dx, dshared), sq_k = self.progs[k].bwd(
                vecs[k], None if owner is None else vecs[owner], xs[k], self._shared(k, stash), (dx, ct_stash))
            hold += [dvec, downer, dshared]
            if grads[k] is None:
                grads[k], sq[k] = dvec, sq_k
            else:
                grads[k] = _add(grads[k], dvec)
                summed.add(k)
            if owner is not None:
                grads[owner] = downer if grads[owner] is None else _add(grads[owner], downer)
                summed.add(owner)
            src = self.source_part[k]
            if src is not None:
                full = {g: dshared[g] for g in kind.shared_groups}
                prev = d_stash.get(src)
                d_stash[src] = full if prev is None else _merge_add(prev, full)
        hold.append(dx)
        grads[0], sq[0] = self.progs[0].bwd(vecs[0], inputs, dx)
        hold.append(list(grads))
        for k in summed:
            sq[k] = _sqnorm(grads[k])
        # padded with zeros to a power of two: backbones of other lengths share ``_step_tail``
        width = max(8, 1 << (n - 1).bit_length())
        return (loss, sums), grads, tuple(sq) + (_ZERO,) * (width - n)

    def eval_sums(self, vecs, inputs, targets, threads: int = 1):
        """Summed loss and counts over batches (sequences of [B, L] arrays), with the training
        forward programs (B is the training batch size, so nothing new is compiled).

        ``threads`` > 1 spreads the batches over that many host threads (batch ``b`` on thread
        ``b % threads``): on a CPU one chain of small programs leaves cores idle (the 1,280
        test sequences of in-context recall through an 8-LIV Transformer++ took 0.49-0.56 s on
        2 threads against 0.67-0.73 s on one, 2-core CPU, ``benchmarks/results/peer_job.md``). The sums are taken in batch order, so
        the result does not depend on ``threads``.
        """
        n = len(inputs)
        threads = max(1, min(int(threads), n))

        def run(first: int) -> list:
            # a batch's intermediates are dropped EVAL_WINDOW batches later: dropping one still
            # queued waits for it, which keeps the host at most that many batches ahead and the
            # memory at that many batches' worth
            outs, hold = [], collections.deque(maxlen=EVAL_WINDOW)
            for b in range(first, n, threads):
                xs, stash, x = self._forward(vecs, inputs[b])
                hold.append((xs, stash, x))
                outs.append(self.progs[-1].fwd(vecs[-1], x, targets[b]))
            jax.block_until_ready(outs)
            del hold  # all done now: releasing them does not block
            return outs

        if threads == 1:
            per_batch = run(0)
        else:
            with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="star_jax-eval") as pool:
                parts = list(pool.map(run, range(threads)))
            per_batch = [parts[b % threads][b // threads] for b in range(n)]
        total = np.zeros(3, np.float64)
        for loss_sum, n_correct, n_counted in jax.device_get(per_batch):
            total += (float(loss_sum), int(n_correct), int(n_counted))
        return total


def _zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype)  # host zeros: an eager jnp.zeros would compile per shape


def _warm_calls(model: "PartModel", k: int, batch: int) -> list:
    """The calls that compile part ``k``'s programs at ``batch`` (zeros of the real shapes)."""
    prog, kind = model.progs[k], model.kinds[k]
    cfg, seq = model.program.cfg, model.seq_len
    vec = _zeros((prog.size,))
    x = _zeros((batch, seq, cfg.width))
    tokens = _zeros((batch, seq), np.int32)
    calls = [lambda: prog.init(np.uint32(0), np.int32(k))]
    if isinstance(kind, EmbedKind):
        calls += [lambda: prog.fwd(vec, tokens), lambda: prog.bwd(vec, tokens, x)]
    elif isinstance(kind, FinalKind):
        calls += [lambda: prog.fwd(vec, x, tokens), lambda: prog.bwd(vec, x, tokens)]
    else:
        owner = model.owner_part[k]
        owner_vec = None if owner is None else _zeros((model.progs[owner].size,))
        feats = _feature_shapes(kind.featurizer, seq, cfg.width)
        like = lambda groups: {g: _zeros((batch,) + feats[g].shape[1:], feats[g].dtype) for g in groups}  # noqa: E731
        shared = like(kind.shared_groups)
        ct = (x, like(kind.stash_groups))
        calls += [lambda: prog.fwd(vec, owner_vec, x, shared), lambda: prog.bwd(vec, owner_vec, x, shared, ct)]
    return calls


def warm_up(models: "list[PartModel]", batch_size: int, workers: int | None = None) -> int:
    """Compile, on parallel threads, the programs of every part kind these models use that this
    process has not compiled for ``batch_size`` yet. XLA compiles outside Python's lock, so
    kinds compile side by side (a genome's first step would otherwise compile them one after
    another). Returns the number of part kinds compiled."""
    todo: dict[int, tuple] = {}
    for m in models:
        for k, prog in enumerate(m.progs):
            if batch_size not in prog.warmed and id(prog) not in todo:
                todo[id(prog)] = (m, k, prog)
    if not todo:
        return 0
    calls = [c for m, k, _ in todo.values() for c in _warm_calls(m, k, batch_size)]
    workers = workers or min(len(calls), os.cpu_count() or 1)
    if workers > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            outs = list(pool.map(lambda call: call(), calls))
    else:
        outs = [call() for call in calls]
    jax.block_until_ready(outs)
    for _, _, prog in todo.values():
        prog.warmed.add(batch_size)
    return len(todo)


def warm_up_genomes(genomes, cfg, task, batch_size: int) -> int:
    """``warm_up`` for the backbones of several genomes at once (before training them one by
    one), so that all their new part kinds compile side by side. Genomes that do not build are
    skipped (training them reports the error)."""
    models = []
    for g in genomes:
        try:
            g = Genome.from_string(g) if isinstance(g, str) else g
            models.append(PartModel(compile_genome(g, cfg), task.seq_len))
        except (ValueError, TypeError):
            continue
    return warm_up(models, batch_size)


def init_params(program: Program, seq_len: int, seed: int) -> dict:
    """The initial parameters ``star_jax.train`` gives a backbone, as ``StarModel``'s flax tree."""
    model = PartModel(program, seq_len)
    return model.to_flax(model.init(seed)[0])


def _merge_add(a: dict, b: dict) -> dict:
    out = dict(a)
    for g, v in b.items():
        out[g] = v if g not in out else _add(out[g], v)
    return out


# ----------------------------------------------------------------------------------------------
# Batch sampling programs, cached per task
# ----------------------------------------------------------------------------------------------
_SAMPLERS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def batch_sampler(task, batch_size: int):
    """A jitted ``sample(seed, step) -> (inputs, targets)``: step ``s``'s batch, exactly
    ``task.sample(fold_in(data_key, s), batch_size)`` with ``data_key`` the second key of
    ``batch_keys(seed)``; compiled once per task and batch size."""
    try:
        per_task = _SAMPLERS.setdefault(task, {})
        # a weak reference: the cached program must not keep its task (the cache's key) alive
        ref = weakref.ref(task)
    except TypeError:  # a task that cannot be weakly referenced: no caching
        per_task, ref = {}, (lambda: task)
    fn = per_task.get(batch_size)
    if fn is None:

        def sample(seed, step):
            data_key = jax.random.split(jax.random.key(seed))[1]
            return ref().sample(step_batch_key(data_key, step), batch_size)

        fn = jax.jit(sample)
        per_task[batch_size] = fn
    return fn
