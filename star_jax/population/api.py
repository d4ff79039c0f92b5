"""`train_population`: train many genomes on one task at once, each with its own parameters and
optimizer state, reproducing `star_jax.train` of every candidate alone."""
from __future__ import annotations

import time
from typing import Any, Sequence

import jax

from star_jax.genome import Genome
from star_jax.model.config import ModelConfig
from star_jax.train.config import TrainConfig
from star_jax.train.many import check_workers, default_workers, train_many
from star_jax.train.optim import FlatLayout, make_flat_optimizer
from star_jax.train.progress import progress_bar
from star_jax.train.loop import chunk_plan
from star_jax.train.step import batch_keys

from star_jax.train.step import make_chunk

from .common import (Engine, PopulationResult, TraceCounter, batch_placement, init_candidates,
                     run_population, sample_in_scan)
from .data import run_data
from .memory import split_by_budget
from .static import StaticForward, make_static_fns

STRATEGIES = ("static", "data", "sequential")


def _genomes(genomes) -> list[Genome]:
    out = []
    for g in genomes:
        out.append(Genome.from_string(g) if isinstance(g, str) else g)
    if not out:
        raise ValueError("train_population needs at least one genome")
    return out


def _run_static(genomes, cfg, task, train_cfg, mesh, init_params, progress):
    t0 = time.perf_counter()
    models, params_list = init_candidates(genomes, cfg, task, train_cfg, init_params)
    layouts = [FlatLayout(p) for p in params_list]
    optimizers = [make_flat_optimizer(train_cfg, lay) for lay in layouts]
    flat_list = [lay.ravel(p) for lay, p in zip(layouts, params_list)]
    opt_list = [opt.init(f) for opt, f in zip(optimizers, flat_list)]
    t_init = time.perf_counter() - t0
    counter = TraceCounter()
    forward = StaticForward([m.program for m in models], params_list)
    pop_step, eval_fn = make_static_fns(forward, layouts, optimizers, counter)
    in_scan = sample_in_scan(task, train_cfg.batch_size)
    bs = train_cfg.batch_size
    sample_fn = (lambda key: task.sample(key, bs)) if in_scan else None
    constrain, place = batch_placement(mesh)
    chunk = make_chunk(pop_step, sample_fn, constrain)
    engine = Engine(
        n=len(genomes),
        state=(flat_list, opt_list),
        chunk_fn=jax.jit(counter.wrap(chunk), donate_argnums=(0, 1)),
        eval_fn=jax.jit(eval_fn),
        unpack_params=lambda flats: [lay.unravel(f) for lay, f in zip(layouts, flats)],
        sample_in_scan=in_scan,
        place_batch=place,
    )
    _, data_key = batch_keys(train_cfg.seed)
    metrics, curves, params, times = run_population(engine, task, train_cfg, data_key, progress=progress)
    times["init"] = t_init
    return metrics, curves, params, counter.count, times


def _run_sequential(genomes, cfg, task, train_cfg, init_params, bar, first: int, total: int, progress: bool,
                    workers: int | None):
    """Candidates through ``train_many`` (``workers`` at a time); ``bar`` counts candidates
    (``first`` done before this chunk)."""
    t0 = time.perf_counter()
    workers = min(default_workers() if workers is None else workers, len(genomes))
    bar.phase(f"compiling the new part programs of {len(genomes)} genomes")
    done = [0]

    def on_compiled(n_compiled, seconds):
        bar.log(f"compiled {n_compiled} part program{'s' if n_compiled != 1 else ''} in {seconds:.1f}s")
        if workers > 1:
            bar.phase(f"training {len(genomes)} candidates, {workers} at a time")

    def on_start(c):
        if workers == 1:  # called on this thread
            bar.phase(f"candidate {first + c + 1}/{total}: {genomes[c].short()}")

    def on_result(c, _):
        done[0] += 1
        bar.update(completed=first + done[0])

    results = train_many(genomes, cfg, task, train_cfg, params=init_params, workers=workers,
                         on_result=on_result, on_start=on_start, on_compiled=on_compiled, progress=progress)
    return ([r.metrics for r in results], [r.curve for r in results], [r.params for r in results], 0,
            {"train": time.perf_counter() - t0})


def train_population(genomes: Sequence[Genome | str], cfg: ModelConfig, task, train_cfg: TrainConfig | None = None,
                     *, strategy: str = "static", mesh=None, memory_budget_bytes: int | None = None,
                     keep_params: bool = False, init_params: Sequence[Any] | None = None,
                     classes: Sequence[int] | None = None, pad_to: int | None = None,
                     workers: int | None = None, progress: bool = False, **overrides) -> PopulationResult:
    """Train every genome of a population on ``task`` and evaluate it on the task's test set.

    Each candidate gets what ``star_jax.train(genome, cfg, task, train_cfg)`` would give it
    alone: the same initial parameters, batches, optimizer (AdamW with its own global-norm
    clipping), evaluation, final metrics and divergence handling. A diverging candidate is
    marked ``diverged=True`` with ``inf`` losses and stops changing; the others are unaffected.

    Arguments:
        genomes: P genomes (or their text), all with the same number of LIVs.
        cfg: the model config shared by all candidates.
        task: the task (``sample``, ``test_batches``, ``seq_len``, ``vocab_size``).
        train_cfg: the training config (default ``TrainConfig()``).
        strategy: ``"static"`` (group equal-signature slots and ``vmap`` them; one compile per
            call), ``"data"`` (genomes as integer arrays, superset parameters, ``lax.switch``
            inside ``lax.map``; one compile per run for calls with the same shapes) or
            ``"sequential"`` (``star_jax.train`` one candidate after another through its part
            programs: nothing compiled for genomes of LIV kinds already seen; what
            ``star_jax.evolve`` uses by default).
        mesh: optional ``jax.sharding.Mesh`` with axes ``("data",)`` or ``("candidates",
            "data")``: the batch is sharded over ``"data"``; ``"data"`` strategy spreads
            candidates over ``"candidates"``.
        memory_budget_bytes: when ``estimate_memory_bytes`` of the population exceeds it, the
            population is split into chunks trained one after another (same results).
        keep_params: return each candidate's final parameters.
        init_params: optional per-candidate starting parameters (None entries initialised as
            ``star_jax.train`` does).
        classes: ``"data"`` only: the LIV class pool the superset parameters cover (default:
            every registered class that fits ``cfg``). Calls with the same pool, shapes and
            config reuse one compiled step; a smaller pool compiles and runs faster.
        pad_to: ``"data"`` only: build the step for this many candidates, so that calls with
            fewer genomes (an evolution's later generations, after cached genomes are dropped)
            reuse one compiled step. Padding candidates cost no training or evaluation (they
            are skipped by ``lax.cond``) and are not returned. When the memory budget splits the
            population, every chunk is padded to the largest one (one compile for all chunks).
            Ignored by ``"static"`` and ``"sequential"``, which compile per call anyway.
        workers: ``"sequential"`` only: candidates in training at once on host threads
            (default ``star_jax.train.many.default_workers()``: 2 on a CPU of 2 or more cores,
            1 on a GPU/TPU); results do not depend on it.
        progress: show an overall bar on stderr: candidates done (``"sequential"``, with each
            candidate's own bar below it) or steps done by the whole population (``"static"``,
            ``"data"``; "compiling" until the first chunk of steps has run). Off by default.
        **overrides: ``TrainConfig`` fields to change, as for ``star_jax.train`` (e.g.
            ``steps=500, lr=1e-3``).

    Returns:
        A ``PopulationResult`` (per-candidate metrics, curves, optional params, compile count,
        timings).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    train_cfg = train_cfg or TrainConfig()
    if not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    train_cfg = train_cfg.replace(**overrides) if overrides else train_cfg
    genomes = _genomes(genomes)
    if init_params is not None and len(init_params) != len(genomes):
        raise ValueError(f"init_params has {len(init_params)} entries for {len(genomes)} genomes")
    if workers is not None:
        check_workers(workers)
    if pad_to is not None and (isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < len(genomes)):
        raise ValueError(f"pad_to must be an int >= the number of genomes ({len(genomes)}) or None, got {pad_to!r}")
    start = time.perf_counter()
    chunks = split_by_budget(genomes, cfg, train_cfg.batch_size, task.seq_len, memory_budget_bytes)
    if len(chunks) > 1:
        pad_to = max(len(idx) for idx in chunks)
    metrics: list = [None] * len(genomes)
    curves: list = [None] * len(genomes)
    params: list = [None] * len(genomes)
    n_compiles = 0
    timings: dict[str, float] = {}
    unit = "candidates" if strategy == "sequential" else "candidate-steps"
    total = len(genomes) * (1 if strategy == "sequential" else train_cfg.steps)
    done = 0
    with progress_bar(f"train_population: {len(genomes)} genomes ({strategy}), {unit}", total,
                      enabled=progress) as bar:
        for idx in chunks:
            sub = [genomes[i] for i in idx]
            sub_init = None if init_params is None else [init_params[i] for i in idx]
            if strategy == "sequential":
                out = _run_sequential(sub, cfg, task, train_cfg, sub_init, bar, done, len(genomes), progress,
                                      workers)
            else:
                offset = done * train_cfg.steps
                what = "compiling" if strategy == "static" else "compiling (or reusing) the step"
                bar.phase(f"{what} for {len(sub)} candidates, then steps 1-{chunk_plan(train_cfg)[0]}")

                def on_chunk(steps_done, alive, n, offset=offset):
                    bar.phase(f"training {n} candidates ({strategy})")
                    bar.update(completed=offset + steps_done * n, info=f"{alive}/{n} alive")

                report = on_chunk if progress else None
                if strategy == "static":
                    out = _run_static(sub, cfg, task, train_cfg, mesh, sub_init, report)
                else:

                    out = run_data(sub, cfg, task, train_cfg, mesh, sub_init, report, classes, pad_to)
            done += len(sub)
            m, cv, pr, nc, times = out
            for j, i in enumerate(idx):
                metrics[i], curves[i], params[i] = m[j], cv[j], pr[j]
            n_compiles += nc
            for k, v in times.items():
                timings[k] = timings.get(k, 0.0) + v
    timings["total"] = time.perf_counter() - start
    timings["n_chunks"] = float(len(chunks))
    return PopulationResult(metrics=metrics, curves=curves, params=params if keep_params else None,
                            n_compiles=n_compiles, timings=timings, strategy=strategy)
