"""The `star-jax` command: evolve (resumable, extensible runs), write a study config, train one genome,
describe a genome, report a run. User errors (bad genome, unknown task, bad config, config
mismatch) print one line and exit with 2; any other exception is a bug and keeps its traceback."""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import warnings

from star_jax.genome import Genome, GenomeError

__all__ = ["main", "setup_compilation_cache"]

USAGE_ERROR = 2


class CliError(Exception):
    """A user error: printed as one line to stderr, exit status 2."""


def setup_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache for this process (see
    ``star_jax.compile_cache.enable_compilation_cache``); returns its directory or None."""
    from star_jax.compile_cache import enable_compilation_cache

    return enable_compilation_cache()


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    lines = [s.strip() for s in text.strip().splitlines() if s.strip()]
    return "; ".join(lines) if lines else type(e).__name__


def _genome(text: str):
    text = text.strip()
    g = Genome.from_json(text) if text.startswith("[") else Genome.from_string(text)
    return g.validate()


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (candidates trained at once), got {text!r}")
    return value


def _task_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _task_args(pairs) -> dict:
    out = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise CliError(f"--task-arg {pair!r} is not of the form key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = _task_value(value.strip())
    return out


# ---------------------------------------------------------------------------------- commands
def _evolve_config(args, run_dir: str):
    """The run's config: ``--config``, else the one recorded in an existing ``run_dir``, else the
    quick run; then the command-line overrides (validated before anything is written)."""
    from star_jax.evolve import EvolveConfig
    from star_jax.io import RunDir

    if args.config:
        config = EvolveConfig.from_file(args.config)
    elif RunDir(run_dir).exists():
        config = EvolveConfig.from_dict(RunDir(run_dir).read_config())  # resume or extend it
    else:
        config = EvolveConfig.quick()
    changes = {k: v for k, v in (("generations", args.generations), ("pop_size", args.pop_size),
                                 ("seed", args.seed)) if v is not None}
    if args.steps is not None:
        train = config.train.to_dict()
        train["steps"] = args.steps
        if isinstance(args.steps, int) and args.steps >= 0:
            train["warmup_steps"] = min(train["warmup_steps"], args.steps)
        changes["train"] = train
    return config.replace(**changes) if changes else config


def cmd_evolve(args) -> int:
    from star_jax.evolve import evolve, write_report

    run_dir = args.run_dir or os.path.join("runs", "quick" if not args.config else pathlib.Path(args.config).stem)
    config = _evolve_config(args, run_dir)
    setup_compilation_cache()
    result = evolve(config, run_dir, progress=not args.no_progress, workers=args.workers)
    if args.no_progress:
        from star_jax.evolve.report import print_front

        print_front(result)
    paths = write_report(run_dir)
    print(f"run directory: {result.run_dir}")
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


def cmd_init_config(args) -> int:
    from star_jax.evolve.config import commented_config

    text = json.dumps(commented_config(args.preset), indent=2) + "\n"
    if not args.out:
        sys.stdout.write(text)
        return 0
    out = pathlib.Path(args.out)
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; pass --force to overwrite it, or another --out")
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} (preset {args.preset}); run it with: star-jax evolve --config {out}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from star_jax import tasks
    from star_jax.model import ModelConfig
    from star_jax.train import TrainConfig, train

    genome = _genome(args.genome)
    try:
        task = tasks.make(args.task, **_task_args(args.task_arg))
    except KeyError as e:  # an unknown task name
        raise CliError(_one_line(e)) from None
    head_dim = min(16, args.width) if args.head_dim is None else args.head_dim
    cfg = ModelConfig(width=args.width, vocab_size=task.vocab_size, max_len=task.seq_len, head_dim=head_dim)
    train_changes = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                       ("seed", args.seed)) if v is not None}
    base = TrainConfig()
    if "steps" in train_changes:
        train_changes.setdefault("warmup_steps", min(base.warmup_steps, train_changes["steps"]))
    try:
        train_cfg = base.replace(**train_changes)
    except ValueError as e:  # TrainConfig rejects a value given on the command line
        raise CliError(str(e)) from None
    setup_compilation_cache()
    result = train(genome, cfg, task, train_cfg, progress=not args.no_progress)
    print(genome.short())
    for key, value in result.metrics.items():
        print(f"{key}: {value}")
    print(f"seconds: {result.seconds:.1f}")
    return 0


def cmd_describe(args) -> int:
    from star_jax.metrics import cache_bytes, param_count
    from star_jax.model import ModelConfig

    genome = _genome(args.genome)
    if args.cache_seq_len < 1:
        raise CliError(f"--cache-seq-len: seq_len must be an integer >= 1, got {args.cache_seq_len}")
    head_dim = min(16, args.width) if args.head_dim is None else args.head_dim
    cfg = ModelConfig(width=args.width, vocab_size=args.vocab, max_len=args.seq_len, head_dim=head_dim)
    print(genome.describe())
    print(f"params: {param_count(genome, cfg):,} (width {cfg.width}, vocab {cfg.vocab_size})")
    print(f"cache bytes: {cache_bytes(genome, cfg, seq_len=args.cache_seq_len, bytes_per_elem=2):,} "
          f"(sequence {args.cache_seq_len}, 16-bit, batch 1)")
    return 0


def cmd_report(args) -> int:
    from star_jax.evolve import write_report

    if not (pathlib.Path(args.run_dir) / "config.json").exists():
        raise CliError(f"{args.run_dir} is not a run directory (no config.json)")
    for path in write_report(args.run_dir):
        print(path)
    return 0


def cmd_reevaluate(args) -> int:
    from star_jax.evolve.display import fmt
    from star_jax.evolve.reevaluate import failures_note, reevaluate

    if not (pathlib.Path(args.run_dir) / "config.json").exists():
        raise CliError(f"{args.run_dir} is not a run directory (no config.json)")
    if args.seeds < 2:
        raise CliError(f"--seeds must be >= 2 (one seed resolves nothing), got {args.seeds}")
    setup_compilation_cache()
    evaluator = None
    if args.workers is not None:
        from star_jax.evolve.evaluation import train_candidates

        evaluator = functools.partial(train_candidates, workers=args.workers)
    out = reevaluate(args.run_dir, seeds=args.seeds, progress=True, evaluator=evaluator)
    names = {s.genome: s.name for s in out.summaries}
    print(f"{out.objective} over seeds {list(out.seeds)} (mean +- sd):")
    for s in out.summaries:
        print(f"  {s.kind:<8} {s.name:<40} {s.mean:.4f} +- {s.sd:.4f}  (search: {fmt(s.search_value, 4)})  "
              f"{s.genome}")
    print(f"front vs baselines ({out.interval}):")
    for c in out.comparisons:
        print(f"  {names.get(c.genome, c.genome):<40} vs {c.baseline:<14} {c.mean:+.4f} "
              f"[{c.low:+.4f}, {c.high:+.4f}]  {c.verdict}{failures_note(c)}")
    print(pathlib.Path(args.run_dir) / "reevaluation.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``star-jax``.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(prog="star-jax", description="STAR: evolve sequence-model backbones in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evolve", help="run or resume an evolution (no arguments: a quick default run)")
    p.add_argument("--config", help="evolution config JSON (default: the quick built-in run)")
    p.add_argument("--run-dir", help="run directory (default: runs/quick, or runs/<config name>); "
                                     "re-running resumes it (without --config, with the config it records)")
    p.add_argument("--generations", type=int, help="override the number of offspring generations; on an "
                                                   "existing run, a larger value extends it")
    p.add_argument("--pop-size", type=int, help="override the population size")
    p.add_argument("--steps", type=int, help="override the training steps per candidate (warm-up is capped "
                                             "at it)")
    p.add_argument("--seed", type=int, help="override the evolution seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=_workers, help="candidates trained at once (default: 2 on a CPU of 2 or "
                                                    "more cores, 1 on a GPU/TPU; or STAR_JAX_WORKERS); results "
                                                    "do not depend on it")
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser("init-config", help="write a commented evolution config to edit and pass to evolve --config")
    p.add_argument("--preset", choices=("quick", "study"), default="quick",
                   help="quick: the default run (minutes); study: the CPU-scale study of the README")
    p.add_argument("--out", help="file to write (default: print to stdout)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_init_config)

    p = sub.add_parser("train", help="train one genome on a task and print its metrics")
    p.add_argument("genome", help="genome text, e.g. 1.1.1.1.1-9.1.1.1.1")
    p.add_argument("--task", required=True, help="task name, e.g. in_context_recall")
    p.add_argument("--task-arg", action="append", metavar="KEY=VALUE", help="task config field (repeatable)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("describe", help="describe a genome with its parameters and cache bytes")
    p.add_argument("genome", help="genome text, e.g. 1.1.1.1.1-9.1.1.1.1")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128, help="the model's max_len")
    p.add_argument("--cache-seq-len", type=int, default=4096, help="sequence length of the cache count")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("report", help="write PNG plots and a summary of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reevaluate", help="retrain a run's front and baselines over K training seeds and "
                                          "compare them with paired intervals")
    p.add_argument("run_dir")
    p.add_argument("--seeds", type=int, default=5, help="number of fresh training seeds (default 5)")
    p.add_argument("--workers", type=_workers, help="candidates trained at once (as for evolve)")
    p.set_defaults(func=cmd_reevaluate)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {_one_line(message) if isinstance(message, BaseException) else message}",
          file=sys.stderr)


def main(argv=None) -> int:
    """Entry point of ``star-jax``.

    Arguments:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (0 ok, 2 user error, 130 interrupted). Set ``STAR_JAX_DEBUG=1`` to get
        the traceback of an error instead of its one-line message.
    """
    args = build_parser().parse_args(argv)
    # after parsing, so that --help and a usage error load no JAX
    from star_jax.evolve.config import ConfigFieldError
    from star_jax.io import CheckpointError, RunDirError
    from star_jax.model import ConfigError
    from star_jax.tasks import TaskConfigError

    warnings.showwarning = _show_warning
    # the project's user-facing errors, and the OS errors of files a command reads or writes;
    # anything else (a KeyError, a ValueError from deep inside) is a bug: its traceback is shown
    user_errors = (CliError, GenomeError, ConfigFieldError, ConfigError, TaskConfigError, RunDirError,
                   CheckpointError, FileNotFoundError, PermissionError, IsADirectoryError,
                   NotADirectoryError, FileExistsError)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except user_errors as e:
        if os.environ.get("STAR_JAX_DEBUG"):
            raise
        hint = ""
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            hint = " (a file or directory the command must write: check its permissions, or pass another --run-dir)"
        print(f"star-jax {args.command}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
