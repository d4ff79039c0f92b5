"""Training many genomes, each exactly as ``star_jax.train`` trains it alone, several at a time.

A candidate's training step is a chain of small part programs (``star_jax.train.parts``). On a
CPU one such program keeps the cores only partly busy, so training two candidates at once on two
host threads gets more done per second: 1.39x for random 8-LIV genomes and 1.26x for Transformer++ on a
2-core CPU (``benchmarks/results/workers.md``). A lone candidate's evaluation spreads its test
batches over threads the same way (``parts.PartModel.eval_sums``). XLA runs the programs outside Python's lock, and
every candidate keeps its own parameters, batches and programs' inputs, so each result is
bit-identical to training it alone (tested).
"""
from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Callable, Sequence

from star_jax.train.config import TrainConfig
from star_jax.train.loop import TrainResult, train
from star_jax.train.parts import warm_up_genomes
from star_jax.train.threads import WORKERS_ENV, check_workers, default_workers, pool_thread

__all__ = ["WORKERS_ENV", "default_workers", "check_workers", "train_many"]


def _configs(train_cfg, n: int) -> list[TrainConfig]:
    if train_cfg is None or isinstance(train_cfg, TrainConfig):
        return [train_cfg or TrainConfig()] * n
    cfgs = list(train_cfg)
    if len(cfgs) != n or not all(isinstance(c, TrainConfig) for c in cfgs):
        raise ValueError(f"train_cfg must be a TrainConfig or a sequence of {n} of them (one per genome)")
    if len({c.batch_size for c in cfgs}) > 1:
        raise ValueError(f"the train configs of one call must share a batch size, got "
                         f"{sorted({c.batch_size for c in cfgs})}")
    return cfgs


def train_many(genomes: Sequence, model_cfg, task, train_cfg: TrainConfig | Sequence[TrainConfig] | None = None, *,
               params: Sequence[Any] | None = None, workers: int | None = None,
               on_result: Callable[[int, TrainResult], None] | None = None,
               on_start: Callable[[int], None] | None = None,
               on_compiled: Callable[[int, float], None] | None = None, progress: bool = False) -> list[TrainResult]:
    """``[star_jax.train(g, model_cfg, task, c, params=p) for g, c, p in ...]``, with up to
    ``workers`` candidates in training at once.

    The part programs of every new LIV kind are compiled first, side by side
    (``parts.warm_up_genomes``), so the threads only train. Each result is the one
    ``star_jax.train`` gives the genome alone, whatever the number of workers.

    Arguments:
        genomes: ``Genome`` objects or their texts.
        model_cfg, task: as for ``star_jax.train``.
        train_cfg: a ``TrainConfig`` for all (default ``TrainConfig()``), or one per genome
            (e.g. other seeds); they must share a batch size.
        params: optional starting parameters per genome (None entries: initialised).
        workers: candidates in training at once (default ``default_workers()``); 1 trains
            them one after another on the calling thread.
        on_result: called on the calling thread as each candidate finishes, with its index
            and result (in finishing order).
        on_start: called with a candidate's index when it starts (from the thread that trains
            it).
        on_compiled: called once the new part kinds are compiled, with their number and the
            seconds it took.
        progress: each candidate's own progress bar, when they are trained one at a time.

    Returns:
        The ``TrainResult`` of every genome, in order.

    Raises:
        Whatever ``star_jax.train`` raises for a genome: the error of the first such genome
        in order (the candidates not started yet are not trained).
    """
    genomes = list(genomes)
    if params is not None and len(params) != len(genomes):
        raise ValueError(f"params has {len(params)} entries for {len(genomes)} genomes")
    workers = default_workers() if workers is None else check_workers(workers)
    if not genomes:
        return []
    cfgs = _configs(train_cfg, len(genomes))
    t0 = time.perf_counter()
    n_compiled = warm_up_genomes(genomes, model_cfg, task, cfgs[0].batch_size)  # new LIV kinds, side by side
    if on_compiled is not None:
        on_compiled(n_compiled, time.perf_counter() - t0)
    given = [None] * len(genomes) if params is None else list(params)

    workers = min(workers, len(genomes))

    def run(i: int) -> TrainResult:
        if on_start is not None:
            on_start(i)
        if workers > 1:
            with pool_thread():  # the cores are shared already: its evaluation stays on this thread
                return train(genomes[i], model_cfg, task, cfgs[i], params=given[i], progress=False)
        return train(genomes[i], model_cfg, task, cfgs[i], params=given[i], progress=progress and workers == 1)

    results: list[Any] = [None] * len(genomes)
    if workers == 1:
        for i in range(len(genomes)):
            results[i] = run(i)
            if on_result is not None:
                on_result(i, results[i])
        return results
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="star_jax-train")
    futures = {pool.submit(run, i): i for i in range(len(genomes))}
    failed: dict[int, BaseException] = {}
    try:
        for fut in concurrent.futures.as_completed(futures):
            i = futures[fut]
            if fut.cancelled():
                continue
            err = fut.exception()
            if err is not None:
                failed[i] = err
                for f in futures:  # stop starting new candidates; running ones finish
                    f.cancel()
                continue
            results[i] = fut.result()
            if on_result is not None:
                on_result(i, results[i])
    except BaseException:  # e.g. KeyboardInterrupt: do not start more candidates
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if failed:
        raise failed[min(failed)]
    return results
