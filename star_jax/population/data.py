"""Genome-as-data: candidates are integer arrays over superset parameters, run by `lax.switch`
inside `lax.map`, so new genomes of the same shapes reuse the compiled step (no recompilation)."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from star_jax.genome import Genome, get_liv_class, liv_classes
from star_jax.model.config import ConfigError, ModelConfig
from star_jax.model.model import RMSNorm
from star_jax.model.program import FAMILY_BUILDERS, compile_genome, param_name, parse_param_name, same_weights
from star_jax.train.config import TrainConfig
from star_jax.train.optim import FlatLayout, make_flat_optimizer
from star_jax.train.step import apply_update, batch_keys, masked_loss_and_accuracy, masked_sums

from star_jax.train.step import make_chunk

from .common import Engine, LRUCache, TraceCounter, batch_placement, init_candidates, run_population, sample_in_scan


@dataclasses.dataclass(frozen=True)
class Branch:
    """One distinct (featurizer, mixer) pair of the class pool: a `lax.switch` branch.

    Fields:
        featurizer, mixer: the unbound modules.
        feat_variant: index of the featurizer among the pool's distinct featurizers.
        shareable: the featurizer's shareable groups (those a feature-group follower reuses).
        stash_sizes: per shareable group, its per-token feature shape (after [batch, length]).
    """

    featurizer: nn.Module
    mixer: nn.Module
    feat_variant: int
    shareable: tuple[str, ...]
    stash_shapes: tuple[tuple[int, ...], ...]

    @property
    def stash_width(self) -> int:
        return sum(math.prod(s) for s in self.stash_shapes)


@dataclasses.dataclass(frozen=True)
class Pool:
    """The superset a "data" population runs over: every (featurizer, mixer) pair the class
    pool produces under a config, and which branch each class id takes."""

    cfg: ModelConfig
    branches: tuple[Branch, ...]
    featurizers: tuple[nn.Module, ...]
    class_branch: tuple[tuple[int, int], ...]  # (class id, branch index)

    @property
    def stash_width(self) -> int:
        return max([1] + [b.stash_width for b in self.branches])

    def branch_of(self, class_id: int) -> int:
        d = dict(self.class_branch)
        if class_id not in d:
            raise ValueError(f"LIV class {class_id} is not in the strategy='data' class pool "
                             f"{sorted(d)} (pass classes=... covering every class of the population)")
        return d[class_id]


def make_pool(cfg: ModelConfig, seq_len: int, classes: Sequence[int] | None = None) -> Pool:
    """The superset for ``classes`` (default: every registered class that fits ``cfg``).

    Arguments:
        cfg: the model config.
        seq_len: sequence length (to measure feature shapes).
        classes: LIV class ids; classes that cannot fit ``cfg`` are skipped when taken from
            the registry and an error when given explicitly.

    Returns:
        A ``Pool``.
    """
    explicit = classes is not None
    ids = sorted(set(classes)) if explicit else sorted(liv_classes())
    branches: list[Branch] = []
    feats: list[nn.Module] = []
    pairs: dict[tuple, int] = {}
    class_branch = []
    h = jax.ShapeDtypeStruct((1, seq_len, cfg.width), jnp.float32)
    for cid in ids:
        cls = get_liv_class(cid)
        try:
            fm, mm = FAMILY_BUILDERS[cls.kind](0, cls, cfg)
        except ConfigError:
            if explicit:
                raise
            continue
        if (fm, mm) not in pairs:
            # one weight slot per featurizer that computes the same features from the same weights
            # (``same_weights``: a user class may reuse SwiGLU's featurizer with its own activation
            # and share its owner's weights, which must then be read from the owner's slot)
            variant = next((j for j, f in enumerate(feats) if same_weights(f, fm)), None)
            if variant is None:
                feats.append(fm)
                variant = len(feats) - 1
            shapes = jax.eval_shape(lambda x, fm=fm: fm.init_with_output(jax.random.key(0), x)[0], h)
            shareable = tuple(fm.shareable())
            branches.append(Branch(fm, mm, variant, shareable,
                                   tuple(tuple(shapes[g].shape[2:]) for g in shareable)))
            pairs[(fm, mm)] = len(branches) - 1
        class_branch.append((cid, pairs[(fm, mm)]))
    if not branches:
        raise ConfigError(f"no LIV class of {ids} fits {cfg}")
    return Pool(cfg, tuple(branches), tuple(feats), tuple(class_branch))


_BASE_CACHE = LRUCache(8)
"""Superset base trees by (pool, n_liv, seq_len)."""


def _base_params(pool: Pool, n_liv: int, seq_len: int):
    """Starting values of every superset entry (per slot: all featurizers, all mixers).

    Only the shapes matter: `to_superset` writes each candidate's own parameters over the
    entries its genome uses, and an entry no candidate uses is never read by its branch. So the
    base is zeros (norm scales one) from `jax.eval_shape`: nothing is compiled or run.
    """
    return _BASE_CACHE.get((pool, n_liv, seq_len), lambda: _make_base(pool, n_liv, seq_len))


def _make_base(pool: Pool, n_liv: int, seq_len: int):
    cfg = pool.cfg
    h = jax.ShapeDtypeStruct((1, seq_len, cfg.width), jnp.float32)
    k = jax.random.key(0)
    zeros = lambda tree: jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)  # noqa: E731
    feat = [zeros(jax.eval_shape(lambda k, h, fm=fm: fm.init(k, h)["params"], k, h))
            for fm in pool.featurizers]
    mix = []
    for b in pool.branches:
        def init_mix(k, h, b=b):
            f = b.featurizer.init_with_output(k, h)[0]
            return b.mixer.init(k, f)["params"]
        mix.append(zeros(jax.eval_shape(init_mix, k, h)))
    base = {
        "norms": tuple({"scale": np.ones((cfg.width,), np.float32)} for _ in range(n_liv)),
        "feat": tuple(tuple(feat) for _ in range(n_liv)),
        "mix": tuple(tuple(mix) for _ in range(n_liv)),
    }
    return base


def _scatter(dst: dict, src: dict, where: str) -> dict:
    """A copy of ``dst`` with every leaf of ``src`` written in (``src`` is a sub-tree)."""
    out = dict(dst)
    for k, v in src.items():
        if k not in dst:
            raise ValueError(f"{where}: parameter {k!r} has no place in the superset {sorted(dst)}")
        out[k] = _scatter(dst[k], v, f"{where}/{k}") if isinstance(v, dict) else np.asarray(v)
    return out


def encode(genome: Genome, pool: Pool) -> np.ndarray:
    """A genome as data: int32 [3, n_liv] rows (branch index, featurizer-owner slot, feature
    source slot or -1)."""
    plan = genome.sharing()
    branch = [pool.branch_of(s.liv_class) for s in genome.segments]
    src = [-1 if s is None else s for s in plan.feature_source]
    return np.asarray([branch, list(plan.featurizer_owner), src], np.int32)


def to_superset(params: dict, genome: Genome, pool: Pool, base: dict) -> dict:
    """Scatter one candidate's ``StarModel`` parameters into the superset layout."""
    p = params["params"]
    code = encode(genome, pool)
    norms = list(base["norms"])
    feat = [list(f) for f in base["feat"]]
    mix = [list(m) for m in base["mix"]]
    for i in range(len(genome)):
        b = pool.branches[code[0, i]]
        norm_key, mix_key = param_name("norms", i), param_name("mixers", i)
        norms[i] = _scatter(norms[i], p[norm_key], norm_key)
        mix[i][code[0, i]] = _scatter(mix[i][code[0, i]], p[mix_key], mix_key)
        if code[1, i] == i:  # LIV i owns its featurizer weights
            feat_key = param_name("featurizers", i)
            feat[i][b.feat_variant] = _scatter(feat[i][b.feat_variant], p[feat_key], feat_key)
    return {
        "embed": jax.tree.map(np.asarray, p["embed"]),
        "final_norm": jax.tree.map(np.asarray, p["final_norm"]),
        "head": jax.tree.map(np.asarray, p["head"]),
        "norms": tuple(norms),
        "feat": tuple(tuple(f) for f in feat),
        "mix": tuple(tuple(m) for m in mix),
    }


def from_superset(sp: dict, genome: Genome, pool: Pool, like: dict) -> dict:
    """The inverse of ``to_superset``: a candidate's ``StarModel`` parameters (structure of ``like``)."""
    code = encode(genome, pool)

    def pick(dst, src):
        return {k: pick(v, src[k]) if isinstance(v, dict) else jnp.asarray(src[k]) for k, v in dst.items()}

    out = {}
    for name, sub in like["params"].items():
        if name in ("embed", "final_norm", "head"):
            out[name] = pick(sub, sp[name])
        elif (parsed := parse_param_name(name)) is not None:
            collection, i = parsed
            if collection == "norms":
                out[name] = pick(sub, sp["norms"][i])
            elif collection == "mixers":
                out[name] = pick(sub, sp["mix"][i][code[0, i]])
            else:
                out[name] = pick(sub, sp["feat"][i][pool.branches[code[0, i]].feat_variant])
    return {"params": out}


# The feature-sharing stash [n_liv, B, L, width] is carried through the scan over slots: slot i
# writes its shareable features to row i, and a feature-group follower reads its leader's row.
# Left to JAX, each scan iteration of the backward pass zero-fills and copies the whole stash
# cotangent (two full copies per slot: 16.6 MB each at width 64, L 128, batch 16). The two
# custom VJPs below update it in place instead, using what the forward guarantees: row i is
# written once, by slot i, before any slot reads it, and only later slots (src < i) read it.
@jax.custom_vjp
def _read_row(stash: jax.Array, src: jax.Array):
    """``(stash, stash[max(src, 0)])``: the stash passes through so its cotangent can be updated
    in place (the row's cotangent is added at ``src``)."""
    return stash, jax.lax.dynamic_index_in_dim(stash, jnp.maximum(src, 0), 0, keepdims=False)


def _read_row_fwd(stash, src):
    return _read_row(stash, src), src


def _read_row_bwd(src, cts):
    ct_stash, ct_row = cts
    i = jnp.maximum(src, 0)
    cur = jax.lax.dynamic_index_in_dim(ct_stash, i, 0, keepdims=False)
    return jax.lax.dynamic_update_index_in_dim(ct_stash, cur + ct_row, i, 0), None


_read_row.defvjp(_read_row_fwd, _read_row_bwd)


@jax.custom_vjp
def _write_row(stash: jax.Array, flat: jax.Array, i: jax.Array) -> jax.Array:
    """``stash`` with row ``i`` set to ``flat``. Its VJP passes the stash cotangent through
    unchanged (no zeroing of row i: the overwritten row is the initial zeros, which no
    parameter reaches, and nothing reads row i before it is written)."""
    return jax.lax.dynamic_update_index_in_dim(stash, flat, i, 0)


def _write_row_fwd(stash, flat, i):
    return _write_row(stash, flat, i), i


def _write_row_bwd(i, ct):
    return ct, jax.lax.dynamic_index_in_dim(ct, i, 0, keepdims=False), None


_write_row.defvjp(_write_row_fwd, _write_row_bwd)


class DataForward:
    """One candidate's forward over superset parameters, its genome given as data.

    ``self(sp, code [3, n_liv] int32, tokens [B, L]) -> logits [B, L, V]``; the per-slot op is a
    ``lax.switch`` on the branch index (run inside ``lax.map`` over candidates, never vmap).
    """

    def __init__(self, pool: Pool, n_liv: int):
        cfg = pool.cfg
        self.pool, self.n_liv, self.cfg = pool, n_liv, cfg
        self.embed = nn.Embed(cfg.vocab_size, cfg.width)
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.head = nn.Dense(cfg.vocab_size, use_bias=False)

    def _branch_fn(self, b: int):
        br = self.pool.branches[b]
        width = self.pool.stash_width

        def fn(feat_i, mix_i, h, row, src):
            fp = feat_i[br.feat_variant]  # the featurizer owner's weights (gathered before the scan)
            feats = br.featurizer.apply({"params": fp}, h)  # every group
            bsz, length = h.shape[:2]
            if br.shareable:
                off = 0  # row [B, L, width]: the leader's shareable features (read before the switch)
                for g, shp in zip(br.shareable, br.stash_shapes):
                    size = math.prod(shp)
                    shared = row[..., off:off + size].reshape((bsz, length) + shp)
                    feats[g] = jnp.where(src >= 0, shared, feats[g])
                    off += size
                flat = jnp.concatenate([feats[g].reshape(bsz, length, -1) for g in br.shareable], axis=-1)
                flat = jnp.pad(flat, ((0, 0), (0, 0), (0, width - flat.shape[-1])))
            else:
                flat = jnp.zeros((bsz, length, width), h.dtype)
            y = br.mixer.apply({"params": mix_i[b]}, feats)
            return y, flat

        return fn

    def __call__(self, sp: dict, code: jax.Array, tokens: jax.Array) -> jax.Array:
        """Logits [B, L, V] of one candidate (``code`` from ``encode``, ``sp`` its superset)."""
        x = self.embed.apply({"params": sp["embed"]}, tokens)  # [B, L, D]
        bsz, length = tokens.shape
        n = self.n_liv
        stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
        # slot-stacked views [n_liv, ...]: the slots run as one lax.scan (one switch to compile).
        # Each slot's featurizer weights are its owner's, gathered once here (featurizer sharing):
        # inside the scan a dynamic index would add a full-superset gradient every iteration.
        owners = code[1]
        feat_slot = tuple(jax.tree.map(lambda a: a[owners], stack([sp["feat"][j][f] for j in range(n)]))
                          for f in range(len(self.pool.featurizers)))
        mix_stacked = tuple(stack([sp["mix"][j][b] for j in range(n)]) for b in range(len(self.pool.branches)))
        norm_stacked = stack(list(sp["norms"]))
        # Each branch is rematerialised in the backward pass. Differentiating a switch makes
        # every branch return the union of all branches' residuals (zeros where not taken), so
        # without remat each slot would write out every other LIV's attention scores and
        # recurrence states; with it the residuals are the branch inputs, which all share.
        branches = [jax.checkpoint(self._branch_fn(b), prevent_cse=False) for b in range(len(self.pool.branches))]

        def body(carry, xs):
            x, stash = carry  # x: [B, L, D]; stash: [n_liv, B, L, width]
            norm_p, feat_i, mix_i, branch, src, i = xs
            h = self.norm.apply({"params": norm_p}, x)
            stash, row = _read_row(stash, src)  # outside the branches: their remat saves the row only
            y, flat = jax.lax.switch(branch, branches, feat_i, mix_i, h, row, src)
            stash = _write_row(stash, flat, i)
            return (x + y, stash), None

        stash = jnp.zeros((n, bsz, length, self.pool.stash_width), x.dtype)
        xs = (norm_stacked, feat_slot, mix_stacked, code[0], code[2], jnp.arange(n, dtype=jnp.int32))
        (x, _), _ = jax.lax.scan(body, (x, stash), xs)
        x = self.norm.apply({"params": sp["final_norm"]}, x)
        return self.head.apply({"params": sp["head"]}, x).astype(jnp.float32)


def make_data_fns(forward: DataForward, layout: FlatLayout, optimizer, counter: TraceCounter):
    """The population step and eval for genome-as-data (``lax.map`` over candidates).

    Arguments:
        forward: the one-candidate forward.
        layout: the ``FlatLayout`` of one candidate's superset parameters; the population's
            parameters are a [P, layout.size] matrix (one optimizer update is a few vector ops).
        optimizer: ``make_flat_optimizer(train_cfg, layout)``.
        counter: counts traces of the eval.

    Returns:
        ``(pop_step, eval_fn)`` with the population state ``(flat [P, size], codes [P, 3,
        n_liv], live [P] bool)`` as the parameters argument and the optimizer state stacked over
        [P]. A candidate that is not live (padding), or not active in a step (diverged, or a
        padding step of a chunk), runs nothing: ``lax.cond`` inside ``lax.map`` skips it.
    """

    def loss_fn(sp, code, inputs, targets):
        return masked_loss_and_accuracy(forward(sp, code, inputs), targets)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def pop_step(state, opt_state, inputs, targets, active):
        sp_all, codes, live = state

        def one(xs):
            flat, opt, code, act = xs

            def train(_):
                (loss, (n_correct, n_counted)), grads = grad_fn(layout.unravel(flat), code, inputs, targets)
                return apply_update(optimizer, flat, opt, layout.ravel(grads), loss, n_correct, n_counted, act)

            def skip(_):  # a padding step, a diverged or a padding candidate: no work at all
                zero = jnp.zeros((), jnp.float32)
                return flat, opt, {"loss": zero, "accuracy": zero, "grad_norm": zero,
                                   "finite": jnp.ones((), jnp.bool_)}

            # a real branch: lax.map runs one candidate at a time, so nothing here is vmapped
            return jax.lax.cond(act, train, skip, None)

        sp_all, opt_state, metrics = jax.lax.map(one, (sp_all, opt_state, codes, active & live))
        return (sp_all, codes, live), opt_state, metrics

    def eval_fn(state, inputs, targets):
        sp_all, codes, live = state

        def one(xs):
            flat, code, on = xs
            sp = layout.unravel(flat)

            def body(carry, batch):
                bi, bt = batch
                s, c, n = masked_sums(forward(sp, code, bi), bt)
                return (carry[0] + s, carry[1] + c, carry[2] + n), None

            zi = jnp.zeros((), jnp.int32)
            zeros = (jnp.zeros((), jnp.float32), zi, zi)
            evaluate = lambda _: jax.lax.scan(body, zeros, (inputs, targets))[0]  # noqa: E731
            return jax.lax.cond(on, evaluate, lambda _: zeros, None)

        return jax.lax.map(one, (sp_all, codes, live))

    return pop_step, counter.wrap(eval_fn)


_FN_CACHE = LRUCache(8)
"""Jitted chunk and eval functions by (pool, n_liv, task, train config, mesh)."""


def _spread_over_candidates(chunk, eval_fn, mesh):
    """``shard_map`` the chunk and eval over the mesh's "candidates" axis (manual there, every
    other axis automatic): each device trains its slice of the population with ``lax.map``."""
    c = P("candidates")
    rep = P()
    kw = dict(mesh=mesh, axis_names=frozenset({"candidates"}), check_vma=False)
    chunk = jax.shard_map(chunk, in_specs=((c, c, c), c, rep, rep, rep, c),
                          out_specs=((c, c, c), c, c, P(None, "candidates")), **kw)
    eval_fn = jax.shard_map(eval_fn, in_specs=((c, c, c), rep, rep), out_specs=(c, c, c), **kw)
    return chunk, eval_fn


def _compiled(pool: Pool, n_liv: int, task, train_cfg: TrainConfig, mesh, example_sp: dict):
    """The jitted chunk and eval for a pool, cached across calls (same shapes: no recompile).
    ``example_sp`` is one candidate's superset tree (its layout is fixed by the pool)."""
    return _FN_CACHE.get((pool, n_liv, task, train_cfg, mesh),
                         lambda: _build_fns(pool, n_liv, task, train_cfg, mesh, example_sp))


def _build_fns(pool: Pool, n_liv: int, task, train_cfg: TrainConfig, mesh, example_sp: dict):
    counter = TraceCounter()
    layout = FlatLayout(example_sp)
    optimizer = make_flat_optimizer(train_cfg, layout)
    pop_step, eval_fn = make_data_fns(DataForward(pool, n_liv), layout, optimizer, counter)
    in_scan = sample_in_scan(task, train_cfg.batch_size)
    bs = train_cfg.batch_size
    sample_fn = (lambda k: task.sample(k, bs)) if in_scan else None
    constrain, place = batch_placement(mesh)
    spread = mesh is not None and "candidates" in mesh.axis_names
    if spread:  # candidates over devices; inside, each device maps over its own candidates
        constrain = lambda i, t: (i, t)  # noqa: E731  (the "data" axis stays automatic)
    chunk = make_chunk(pop_step, sample_fn, constrain)
    if spread:
        chunk, eval_fn = _spread_over_candidates(chunk, eval_fn, mesh)
    return (jax.jit(counter.wrap(chunk), donate_argnums=(0, 1)), jax.jit(eval_fn),
            optimizer, counter, in_scan, place, layout)


def run_data(genomes, cfg, task, train_cfg, mesh, init_params, progress, classes=None, pad_to=None):
    """Train a population with strategy="data"; returns ``(metrics, curves, params, n_compiles,
    timings)`` as the other strategies. With ``pad_to`` > P the compiled step is built for
    ``pad_to`` candidates, and the padding ones are never run."""
    t0 = time.perf_counter()
    n_liv = len(genomes[0])
    if any(len(g) != n_liv for g in genomes):
        raise ValueError(f"all genomes of a population must have the same number of LIVs, got "
                         f"{sorted({len(g) for g in genomes})}")
    n_real = len(genomes)
    n_all = max(n_real, pad_to or 0)
    if mesh is not None and "candidates" in mesh.axis_names and n_all % mesh.shape["candidates"]:
        raise ValueError(f"strategy='data' spreads candidates over the mesh axis 'candidates' of size "
                         f"{mesh.shape['candidates']}; the population ({n_all}) must be a multiple of it")
    pool = make_pool(cfg, task.seq_len, classes)
    for g in genomes:
        compile_genome(g, cfg)  # readable errors for genomes cfg cannot fit
    models, params_list = init_candidates(genomes, cfg, task, train_cfg, init_params)
    base = _base_params(pool, n_liv, task.seq_len)
    sps = [to_superset(p, g, pool, base) for p, g in zip(params_list, genomes)]
    chunk_fn, eval_fn, optimizer, counter, in_scan, place, layout = _compiled(pool, n_liv, task, train_cfg, mesh, sps[0])
    rows = [np.asarray(layout.ravel(sp)) for sp in sps]
    code_rows = [encode(g, pool) for g in genomes]
    pad = n_all - n_real  # padding candidates: copies of the last one, never run
    sp_all = jnp.asarray(np.stack(rows + rows[-1:] * pad))  # [P, size]
    codes = jnp.asarray(np.stack(code_rows + code_rows[-1:] * pad))
    live = jnp.asarray(np.arange(n_all) < n_real)
    opt_state = jax.vmap(optimizer.init)(sp_all)
    t_init = time.perf_counter() - t0
    before = counter.count
    engine = Engine(
        n=n_all,
        n_real=n_real,
        state=((sp_all, codes, live), opt_state),
        chunk_fn=chunk_fn,
        eval_fn=eval_fn,
        unpack_params=lambda st: [
            from_superset(layout.unravel(np.asarray(st[0][c])), g, pool, like)
            for c, (g, like) in enumerate(zip(genomes, params_list))],
        sample_in_scan=in_scan,
        place_batch=place,
    )
    _, data_key = batch_keys(train_cfg.seed)
    metrics, curves, params, times = run_population(engine, task, train_cfg, data_key, progress=progress)
    times["init"] = t_init
    return metrics, curves, params, counter.count - before, times
