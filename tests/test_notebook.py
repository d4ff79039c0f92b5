"""experiments/colab_quickstart.ipynb: it runs top to bottom on CPU (a small run, executed with
nbclient in a fresh kernel), and the configuration its GPU/TPU branch would run is valid and
builds a model that takes the task's full sequence length (the accelerator branch once set the
task's length after the model's and stopped with a ConfigFieldError)."""
from __future__ import annotations

import os
import pathlib

import jax
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

import star_jax as sj
from star_jax.evolve import EvolveConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "experiments" / "colab_quickstart.ipynb"


def _notebook():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def _config_namespace() -> dict:
    """The notebook's install cell (a no-op here: star_jax is importable) and its config cell."""
    nb = _notebook()
    code = [c for c in nb.cells if c.cell_type == "code"]
    config_cells = [c for c in code if "config" in c.metadata.get("tags", [])]
    assert len(config_cells) == 1, "the notebook needs exactly one code cell tagged 'config'"
    ns: dict = {"__name__": "__notebook__"}
    for cell in (code[0], config_cells[0]):
        exec(compile(cell.source, str(NOTEBOOK), "exec"), ns)
    return ns


def test_notebook_is_committed_without_outputs():
    for cell in _notebook().cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "clear the notebook's outputs"


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("small", [False, True])
def test_accelerator_branch_config_is_valid(backend, small):
    make_config = _config_namespace()["make_config"]
    config = make_config(backend, small=small)
    task = config.make_task()
    assert config.model.max_len >= task.seq_len == 63
    assert config.model.width == 64 and config.task["seq_len"] == 64
    assert EvolveConfig.from_json(config.to_json()) == config  # what the run directory stores
    if not small:
        assert (config.train.steps, config.train.batch_size, config.generations) == (400, 32, 3)
    # A model of this config takes a batch of the task at its full length.
    genome = sj.baselines.transformer_pp(n_liv=config.n_liv)
    model = sj.build_model(genome, config.model)
    inputs = task.sample(jax.random.key(0), 2)[0]
    assert inputs.shape == (2, task.seq_len)
    params = model.init(jax.random.key(1), inputs)
    logits = model.apply(params, inputs)
    assert logits.shape == (2, task.seq_len, config.model.vocab_size)
    assert np.isfinite(np.asarray(logits)).all()


def test_cpu_branch_config():
    make_config = _config_namespace()["make_config"]
    assert make_config("cpu") == EvolveConfig.quick().replace(generations=3)
    small = make_config("cpu", small=True)
    assert (small.pop_size, small.generations, small.train.steps) == (4, 1, 4)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_cpu(tmp_path, monkeypatch):
    cache = os.environ.get("STAR_JAX_TEST_CACHE", str(ROOT / ".jax_cache"))
    monkeypatch.setenv("STAR_JAX_QUICKSTART_SMALL", "1")
    monkeypatch.setenv("STAR_JAX_QUICKSTART_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("STAR_JAX_CACHE_DIR", os.path.abspath(cache))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = _notebook()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "backend 'cpu'" in text
    assert "genomes evaluated, Pareto front of" in text
    tables = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(tables) == 1
    rows = [r for r in tables[0].splitlines()[2:]]
    assert any(r.startswith("| front |") for r in rows)
    assert {r.split("|")[1].strip() for r in rows} >= {"Transformer++", "StripedMamba", "LFM2-like"}
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # error vs cache bytes, error vs params, hypervolume
    assert (tmp_path / "run" / "plots" / "front.md").is_file()
    assert "Genome (4 LIVs)" in text  # the last cell's describe()
