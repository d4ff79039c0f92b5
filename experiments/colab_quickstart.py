# %% [markdown]
# # star_jax quick start (Colab / TPU / GPU / CPU)
#
# Evolve small sequence-model backbones with STAR (NSGA-II over LIV genomes), then plot the
# Pareto front of error against inference-cache size, with Transformer++, StripedMamba and an
# LFM2-like preset trained on the same budget for comparison.
#
# Open this file in Colab (File > Upload notebook accepts `# %%` scripts via jupytext, or paste
# the cells), or run it as a script: `python experiments/colab_quickstart.py --help`.

# %% [markdown]
# ## 1. Install
#
# In a notebook cell, uncomment ONE of:
#
#     !pip install star-jax                       # the released package
#     !cd star_jax && pip install -e .            # from a clone of the repository (its root)
#
# On a Colab TPU runtime, install JAX for TPU first: `!pip install -U "jax[tpu]"`; on a GPU
# runtime, `!pip install -U "jax[cuda12]"`. Restart the runtime after installing.

# %%
import argparse
import pathlib
import sys


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except ImportError:
        return False


parser = argparse.ArgumentParser(
    description="star_jax quick start: a short evolution, its Pareto front and plots.")
parser.add_argument("--run-dir", default="runs/colab_quickstart",
                    help="run directory (resumed if it exists with the same config)")
parser.add_argument("--config", help="an EvolveConfig JSON instead of the built-in small config")
parser.add_argument("--generations", type=int, help="offspring generations (default: 3)")
parser.add_argument("--pop-size", type=int, help="population size (default: 8)")
parser.add_argument("--steps", type=int, help="training steps per candidate")
parser.add_argument("--seed", type=int, default=0, help="evolution and training seed")
parser.add_argument("--no-show", action="store_true", help="do not display the plots")
args = parser.parse_args([] if _in_notebook() else None)

# %% [markdown]
# ## 2. Pick the device
#
# JAX uses the accelerator when there is one. The population engine then trains every
# candidate of a generation in one compiled step ("static" strategy); on CPU candidates are
# trained one by one.

# %%
import jax

import star_jax as sj
from star_jax.evolve import EvolveConfig, write_report
from star_jax.evolve.report import print_front

backend = jax.default_backend()
print(f"JAX {jax.__version__}, backend {backend}, devices: {jax.devices()}")
print(f"star_jax {sj.__version__}")

# %% [markdown]
# ## 3. A small evolution config
#
# In-context recall (keys and values in one sequence; recall the value of a repeated key),
# 4-LIV backbones, population 8, 3 offspring generations; objectives: error (1 - accuracy) and
# cache bytes at sequence length 4096. On an accelerator the models are a bit wider and
# trained longer. Minutes either way.

# %%
if args.config:
    config = EvolveConfig.from_file(args.config)
elif backend == "cpu":
    config = EvolveConfig.quick(strategy="sequential")
else:
    quick = EvolveConfig.quick()
    config = quick.replace(
        model={**quick.model.to_dict(), "width": 64, "head_dim": 16},
        task={"name": "in_context_recall", "vocab_size": 16, "seq_len": 64, "num_train": 8192,
              "num_test": 512},
        train={**quick.train.to_dict(), "steps": 400, "batch_size": 32, "lr": 2e-3},
        strategy="auto")
    config = config.replace(model={**config.model.to_dict(), "max_len": config.make_task().seq_len})
train = {**config.train.to_dict(), "seed": args.seed}
if args.steps is not None:
    train.update(steps=args.steps, warmup_steps=min(train["warmup_steps"], args.steps // 10))
changes = {"seed": args.seed, "train": train}
if args.generations is not None:
    changes["generations"] = args.generations
if args.pop_size is not None:
    changes["pop_size"] = args.pop_size
    changes["elitism"] = min(config.elitism, args.pop_size)
config = config.replace(**changes)
print(config.to_json())

# %% [markdown]
# ## 4. Run it
#
# Every generation is checkpointed: re-running this cell after a disconnect resumes the run.

# %%
from star_jax.cli import setup_compilation_cache

setup_compilation_cache()
result = sj.evolve(config, args.run_dir, progress=True)
print(f"{len(result.archive)} genomes evaluated, front of {len(result.pareto_front)}")

# %% [markdown]
# ## 5. The Pareto front, and the plots

# %%
paths = write_report(args.run_dir)
print_front(result)
for p in paths:
    print(p)

# %%
pngs = [p for p in paths if pathlib.Path(p).suffix == ".png"]
if not args.no_show:
    if _in_notebook():
        from IPython.display import Image, display

        for p in pngs:
            display(Image(filename=str(p)))
    else:
        print("plots written (open them with an image viewer):", *pngs, sep="\n  ")

# %% [markdown]
# ## 6. Next steps
#
# - The paper's three studies at CPU or accelerator scale: `experiments/configs/` and
#   `python experiments/run_study.py --config experiments/configs/accel_lm_cache.json --run-dir runs/lm_cache`.
# - Retrain the best genomes larger: `python experiments/scale_up.py --run-dir runs/lm_cache`.
# - Look at one genome: `print(sj.Genome.from_string(result.front_records[0]["genome"]).describe())`.

# %%
if result.front_records:
    print(sj.Genome.from_string(result.front_records[0]["genome"]).describe())
sys.stdout.flush()
