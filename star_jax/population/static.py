"""Static routing: the population's genomes are known on the host, so at every slot position the
candidates whose LIV has the same operator signature run as one `jax.vmap`ped op; one compile."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from star_jax.model.config import ModelConfig
from star_jax.model.model import RMSNorm
from star_jax.model.program import Program
from star_jax.train.optim import FlatLayout
from star_jax.train.step import apply_update, masked_loss_and_accuracy, masked_sums

from .common import TraceCounter


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _layout(tree: Any) -> tuple:
    """Hashable structure + shapes + dtypes of a pytree (what must match to stack it)."""
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves))


class StaticForward:
    """The population forward pass with static routing.

    ``self(params_list, tokens [B, L]) -> list of logits [B, L, V]`` (float32), one per
    candidate, equal to ``StarModel.apply(params_list[c], tokens)``.

    Arguments:
        programs: the candidates' compiled programs (all of one ``ModelConfig`` and length).
        params_list: example parameters (for the tree layouts that decide the groups).
    """

    def __init__(self, programs: Sequence[Program], params_list: Sequence[Any]):
        self.programs = tuple(programs)
        cfg: ModelConfig = programs[0].cfg
        self.cfg = cfg
        n_liv = len(programs[0].slots)
        if any(len(p.slots) != n_liv for p in programs):
            raise ValueError("all genomes of a population must have the same number of LIVs, got "
                             f"{sorted({len(p.slots) for p in programs})}")
        self.embed = nn.Embed(cfg.vocab_size, cfg.width)
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.head = nn.Dense(cfg.vocab_size, use_bias=False)
        self.leaders = [set(p.leaders) for p in programs]
        # per slot position: list of (representative slot spec, member candidate indices)
        self.groups: list[list[tuple[Any, tuple[int, ...]]]] = []
        for i in range(n_liv):
            buckets: dict[tuple, list[int]] = {}
            specs: dict[tuple, Any] = {}
            for c, prog in enumerate(programs):
                s = prog.slots[i]
                p = params_list[c]["params"]
                names = prog.param_names(i)
                key = (s.signature, _layout(p[names["featurizer"]]), _layout(p[names["mixer"]]))
                buckets.setdefault(key, []).append(c)
                specs.setdefault(key, s)
            self.groups.append([(specs[k], tuple(v)) for k, v in buckets.items()])

    @property
    def n_groups(self) -> int:
        """Total number of batched slot ops (sum over slot positions of distinct signatures)."""
        return sum(len(g) for g in self.groups)

    def __call__(self, params_list: Sequence[Any], tokens: jax.Array) -> list[jax.Array]:
        n = len(self.programs)
        ps = [p["params"] for p in params_list]
        x_all = jax.vmap(lambda e: self.embed.apply({"params": e}, tokens))(_stack([p["embed"] for p in ps]))
        xs = [x_all[c] for c in range(n)]  # each [B, L, D]
        stash: list[dict[int, dict[str, jax.Array]]] = [{} for _ in range(n)]
        for i, groups in enumerate(self.groups):
            for spec, members in groups:
                def one(norm_p, feat_p, mix_p, x, shared, spec=spec):
                    h = self.norm.apply({"params": norm_p}, x)
                    feats = spec.featurizer.apply({"params": feat_p}, h, groups=spec.compute_groups)
                    feats = {**feats, **shared}
                    return spec.mixer.apply({"params": mix_p}, feats), feats

                progs = [self.programs[c].slots[i] for c in members]
                names = [self.programs[c].param_names(i) for c in members]
                norm_p = _stack([ps[c][n["norm"]] for c, n in zip(members, names)])
                feat_p = _stack([ps[c][n["featurizer"]] for c, n in zip(members, names)])
                mix_p = _stack([ps[c][n["mixer"]] for c, n in zip(members, names)])
                x = jnp.stack([xs[c] for c in members])
                shared = {g: jnp.stack([stash[c][s.feature_source][g] for c, s in zip(members, progs)])
                          for g in spec.shared_groups}
                y, feats = jax.vmap(one)(norm_p, feat_p, mix_p, x, shared)
                for j, c in enumerate(members):
                    if i in self.leaders[c]:
                        stash[c][i] = {g: v[j] for g, v in feats.items()}
                    xs[c] = xs[c] + y[j]
        x = jnp.stack(xs)

        def final(norm_p, head_p, x):
            return self.head.apply({"params": head_p}, self.norm.apply({"params": norm_p}, x)).astype(jnp.float32)

        logits = jax.vmap(final)(_stack([p["final_norm"] for p in ps]), _stack([p["head"] for p in ps]), x)
        return [logits[c] for c in range(n)]


def make_static_fns(forward: StaticForward, layouts: Sequence[FlatLayout], optimizers: Sequence[Any],
                    counter: TraceCounter):
    """The population step and eval for static routing, over flat parameter vectors.

    Each candidate's parameters and optimizer state are one float32 vector (its ``FlatLayout``),
    so its optimizer update is a few whole-vector operations: with a per-leaf update the
    optimizer was about two thirds of the compiled program of a 16-candidate population.

    Arguments:
        forward: the population forward.
        layouts: per candidate, the ``FlatLayout`` of its ``{'params': ...}`` tree.
        optimizers: per candidate, ``make_flat_optimizer(train_cfg, layout)``.
        counter: counts traces of the eval (the caller wraps the chunk).

    Returns:
        ``(pop_step, eval_fn)``: ``pop_step(flat_list, opt_list, inputs [B, L], targets [B, L],
        active [P]) -> (flat_list, opt_list, metrics [P])`` and ``eval_fn(flat_list, inputs
        [N, B, L], targets [N, B, L]) -> (loss_sum [P], n_correct [P], n_counted [P])``.
    """
    n = len(forward.programs)

    def trees(flat_list):
        return [layouts[c].unravel(f) for c, f in enumerate(flat_list)]

    def total_loss(params_list, inputs, targets):
        outs = [masked_loss_and_accuracy(lg, targets) for lg in forward(params_list, inputs)]
        losses = [o[0] for o in outs]
        return sum(losses[1:], losses[0]), outs  # candidates' grads stay independent

    grad_fn = jax.value_and_grad(total_loss, has_aux=True)

    def pop_step(flat_list, opt_list, inputs, targets, active):
        (_, outs), grads = grad_fn(trees(flat_list), inputs, targets)
        new_p, new_o, mets = [], [], []
        for c in range(n):
            loss, (n_correct, n_counted) = outs[c]
            p, o, m = apply_update(optimizers[c], flat_list[c], opt_list[c], layouts[c].ravel(grads[c]), loss,
                                   n_correct, n_counted, active[c])
            new_p.append(p)
            new_o.append(o)
            mets.append(m)
        metrics = {k: jnp.stack([m[k] for m in mets]) for k in mets[0]}
        return new_p, new_o, metrics

    def eval_fn(flat_list, inputs, targets):
        params_list = trees(flat_list)

        def body(carry, xs):
            bi, bt = xs
            sums = [masked_sums(lg, bt) for lg in forward(params_list, bi)]
            new = tuple(acc + jnp.stack([s[k] for s in sums]) for k, acc in enumerate(carry))
            return new, None

        zf = jnp.zeros((n,), jnp.float32)
        zi = jnp.zeros((n,), jnp.int32)
        sums, _ = jax.lax.scan(body, (zf, zi, zi), (inputs, targets))
        return sums

    return pop_step, counter.wrap(eval_fn)
