"""The MAD score of a genome: train on MAD settings over an lr x weight-decay grid, average accuracy.
The budget and the subset of settings are arguments: the full protocol on an accelerator, less on a CPU."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

from star_jax import tasks
from star_jax.genome import Genome
from star_jax.model import ModelConfig
from star_jax.train.config import TrainConfig
from star_jax.train.many import train_many
from star_jax.train.progress import progress_bar
from star_jax.train.threads import check_workers, default_workers

MAD_LRS = (1e-4, 5e-4, 1e-3)
MAD_WEIGHT_DECAYS = (0.0, 0.1)
MAD_EPOCHS = 200
MAD_BATCH_SIZE = 128
MAD_WIDTH = 128
MAD_MIN_LR = 1e-6


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One training run of a setting.

    Fields:
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        test_accuracy: token-level test accuracy after training (0.0 if it diverged).
        test_loss: test loss (inf if it diverged).
        diverged: whether training hit a non-finite loss.
    """

    lr: float
    weight_decay: float
    test_accuracy: float
    test_loss: float
    diverged: bool


@dataclasses.dataclass(frozen=True)
class SettingScore:
    """The result of one MAD setting.

    Fields:
        name: the setting's id, e.g. ``"in_context_recall/baseline"``.
        task: the task's registry name.
        best_accuracy: the best test accuracy over the grid.
        best_lr, best_weight_decay: the grid point that reached it (the first, on ties).
        steps: training steps per grid point.
        grid: every grid point, in ``lrs x weight_decays`` order.
    """

    name: str
    task: str
    best_accuracy: float
    best_lr: float
    best_weight_decay: float
    steps: int
    grid: tuple[GridPoint, ...]


@dataclasses.dataclass(frozen=True)
class MadScore:
    """A genome's MAD score.

    Fields:
        score: the mean over settings of the best test accuracy (MAD's score), in [0, 1].
        per_task: task name -> mean best accuracy over that task's settings.
        settings: one ``SettingScore`` per setting, in the order given.
        protocol: the training budget used (steps, batch size, grid, ...), JSON-ready.
    """

    score: float
    per_task: dict[str, float]
    settings: tuple[SettingScore, ...]
    protocol: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Returns:
        A JSON-ready dict of every field (``inf`` losses stay Python floats).
        """
        return dataclasses.asdict(self)


def _resolve_setting(setting) -> tuple[str, str, Any]:
    """(name, task name, Task) for a MADSetting, a Task, or a (task name, fields dict) pair."""
    if isinstance(setting, tasks.Task):
        return f"{setting.name}/custom", setting.name, setting
    if isinstance(setting, tuple) and len(setting) == 2 and isinstance(setting[0], str):
        task_name, fields = setting
        fields_text = ",".join(f"{k}={v}" for k, v in sorted(dict(fields).items()))
        return f"{task_name}/{fields_text or 'default'}", task_name, tasks.make(task_name, **dict(fields))
    if hasattr(setting, "make") and hasattr(setting, "task") and hasattr(setting, "name"):
        return setting.name, setting.task, setting.make()
    raise TypeError(
        f"a MAD setting must be a star_jax.tasks.MADSetting, a Task or a (task name, fields) pair; "
        f"got {setting!r}"
    )


def _model_config_for(model_cfg, task):
    if model_cfg is None:
        return ModelConfig(width=MAD_WIDTH, vocab_size=task.vocab_size, max_len=task.seq_len)
    return dataclasses.replace(
        model_cfg, vocab_size=task.vocab_size, max_len=max(model_cfg.max_len, task.seq_len)
    )


def mad_steps(num_train: int, batch_size: int = MAD_BATCH_SIZE, epochs: int = MAD_EPOCHS) -> int:
    """MAD's training length in steps: ``epochs`` passes over ``num_train`` examples.

    Arguments:
        num_train: training-set size of the setting.
        batch_size: sequences per step.
        epochs: passes over the training set (MAD: 200).

    Returns:
        ``ceil(epochs * num_train / batch_size)``.
    """
    return math.ceil(epochs * num_train / batch_size)


def score(
    genome,
    model_cfg=None,
    *,
    settings: Iterable | None = None,
    lrs: Sequence[float] = MAD_LRS,
    weight_decays: Sequence[float] = MAD_WEIGHT_DECAYS,
    steps: int | None = None,
    batch_size: int = MAD_BATCH_SIZE,
    eval_batch_size: int = 256,
    seed: int = 0,
    train_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> MadScore:
    """Score a genome with the MAD protocol (Poli et al. 2024), at a budget of your choice.

    For every setting and every ``(lr, weight_decay)`` of the grid, the genome's model is trained
    from the same seed (same init, same batches) and evaluated on the setting's fixed test set;
    the setting scores its best test accuracy; the MAD score is the mean over settings.

    MAD's own protocol: models of width 128 with two mixer blocks (build the genome that way:
    e.g. ``"1.1.1.1.1-9.1.1.1.1-1.1.1.1.1-9.1.1.1.1"`` is two attention + SwiGLU blocks), all 66
    settings (``star_jax.tasks.mad_settings()``), lr {1e-4, 5e-4, 1e-3} x weight decay {0, 0.1},
    AdamW (betas 0.9/0.999, no clipping, no warm-up), cosine decay to 1e-6, batch 128, 200
    epochs of each setting's training set (``steps=None``; 20,000 steps for 12,800 examples).
    Those are the defaults here, except that only the 6 baseline settings run unless
    ``settings`` says otherwise. On a CPU pass a reduced budget, e.g. ``steps=300,
    batch_size=32`` and a few settings. Differences from MAD's code: accuracy is token-level
    (micro-averaged) over counted positions, where MAD's torchmetrics accuracy averages over
    classes; the cosine decays per step rather than per epoch; decay skips every parameter with
    ndim < 2 (MAD: names containing "bias" or "norm"); batches are drawn with replacement
    (``Task.sample``), ``mad_steps`` = ceil(epochs x num_train / batch) rather than MAD's epochs
    of ceil(num_train / batch) steps (4-11% fewer steps for the settings of 800 and 1,600
    examples); a given ``model_cfg`` keeps a ``max_len`` above the task's length (MAD builds
    every model at the task's length; the implicit long-convolution filters depend on it, so
    give ``max_len`` equal to the task's or leave ``model_cfg`` None to match); the compression task is trained per
    position (MAD reads the last position with an encoder-decoder head), where copying the
    current token through the residual path solves it: every backbone scores about 1.0 there
    (``benchmarks/results/mad_card.md``), so compression settings add the same amount to every
    genome's score.

    Arguments:
        genome: a ``Genome`` or its text form.
        model_cfg: a ``ModelConfig`` (default: width 128); its ``vocab_size`` is set to each
            task's and ``max_len`` raised to the task's length where needed.
        settings: ``MADSetting`` records, ``Task`` objects or ``(task name, fields)`` pairs;
            default ``star_jax.tasks.mad_baselines()`` (6 settings).
        lrs: peak learning rates of the grid.
        weight_decays: weight decays of the grid.
        steps: steps per run; None = MAD's 200 epochs of each setting's ``num_train``.
        batch_size: training sequences per step.
        eval_batch_size: test sequences per evaluation batch.
        seed: training seed of every run.
        train_overrides: other ``TrainConfig`` fields (e.g. ``{"clip_norm": 1.0}``).
        progress: show, on stderr, an overall bar over the ``settings x lrs x weight_decays``
            runs (its text names the run in progress), the bar of that run (compiling, then
            training; with one worker), and one line per finished run.
        workers: grid points of a setting in training at once (``star_jax.train.many.train_many``;
            default ``star_jax.train.many.default_workers()``, 2 on a CPU of 2 or more cores). The
            result does not depend on it: every run is the one ``star_jax.train`` gives alone.

    Returns:
        A ``MadScore``.
    """
    settings = tuple(tasks.mad_baselines() if settings is None else settings)
    if not settings:
        raise ValueError("settings is empty: give at least one MAD setting")
    if not lrs or not weight_decays:
        raise ValueError(f"the grid is empty: lrs={tuple(lrs)}, weight_decays={tuple(weight_decays)}")
    overrides = dict(train_overrides or {})
    owned = sorted(set(overrides) & {"steps", "batch_size", "lr", "weight_decay", "seed", "min_lr_ratio"})
    if owned:
        raise ValueError(f"train_overrides may not set {owned}: the grid and the budget own them (pass lrs, "
                         f"weight_decays, steps, batch_size or seed instead), and the results record what they set")
    bad_lrs = [lr for lr in lrs if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0)]
    if bad_lrs:
        raise ValueError(f"lrs must be finite numbers > 0, got {bad_lrs}")
    workers = default_workers() if workers is None else check_workers(workers)
    genome = Genome.from_string(genome) if isinstance(genome, str) else genome
    results = []
    n_runs = len(settings) * len(lrs) * len(weight_decays)
    done = [0]
    with progress_bar(f"MAD score: {n_runs} runs", n_runs, enabled=progress) as overall:
        for setting in settings:
            name, task_name, task = _resolve_setting(setting)
            setting_cfg = _model_config_for(model_cfg, task)
            run_steps = mad_steps(task.num_train, batch_size) if steps is None else int(steps)
            points = [(float(lr), float(wd)) for lr in lrs for wd in weight_decays]
            cfgs = [TrainConfig.from_dict({
                "steps": run_steps,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": wd,
                "warmup_steps": 0,
                "min_lr_ratio": min(1.0, MAD_MIN_LR / lr),
                "clip_norm": None,
                "b1": 0.9,
                "b2": 0.999,
                "eval_every": 0,
                "eval_batch_size": eval_batch_size,
                "seed": seed,
                **overrides,
            }) for lr, wd in points]
            runs = [f"{name} lr={lr:g} wd={wd:g}" for lr, wd in points]
            at_once = min(workers, len(points))
            if at_once > 1:
                overall.phase(f"MAD runs {done[0] + 1}-{done[0] + len(points)}/{n_runs}: {name}, "
                              f"{at_once} at a time")

            def on_start(i, runs=runs):
                if at_once == 1:  # on this thread
                    overall.phase(f"MAD run {done[0] + 1}/{n_runs}: {runs[i]}")

            def on_result(i, result, runs=runs):
                done[0] += 1
                overall.update(completed=done[0])
                overall.log(f"MAD run {done[0]}/{n_runs}: {runs[i]}: test accuracy "
                            f"{result.metrics['test_accuracy']:.4f}"
                            + (" (diverged)" if result.metrics["diverged"] else ""))

            trained = train_many([genome] * len(points), setting_cfg, task, cfgs, workers=at_once,
                                 on_start=on_start, on_result=on_result, progress=progress)
            grid = [GridPoint(
                lr=lr,
                weight_decay=wd,
                test_accuracy=float(result.metrics["test_accuracy"]),
                test_loss=float(result.metrics["test_loss"]),
                diverged=bool(result.metrics["diverged"]),
            ) for (lr, wd), result in zip(points, trained)]
            best = max(grid, key=lambda point: point.test_accuracy)  # first of equals wins
            results.append(SettingScore(
                name=name,
                task=task_name,
                best_accuracy=best.test_accuracy,
                best_lr=best.lr,
                best_weight_decay=best.weight_decay,
                steps=run_steps,
                grid=tuple(grid),
            ))

    per_task: dict[str, list[float]] = {}
    for item in results:
        per_task.setdefault(item.task, []).append(item.best_accuracy)
    protocol = {
        "steps": steps,
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        "lrs": [float(x) for x in lrs],
        "weight_decays": [float(x) for x in weight_decays],
        "seed": seed,
        "train_overrides": overrides,
        "model_cfg": None if model_cfg is None else model_cfg.to_dict(),
    }
    return MadScore(
        score=sum(item.best_accuracy for item in results) / len(results),
        per_task={task: sum(v) / len(v) for task, v in per_task.items()},
        settings=tuple(results),
        protocol=protocol,
    )
