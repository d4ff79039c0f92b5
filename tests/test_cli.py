"""The `star-jax` command: describe, report, and one-line errors with exit status 2.
Commands run in subprocesses, as a user runs them, so exit codes and stderr are the real ones."""
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from star_jax import baselines
from star_jax.evolve import EvolveConfig, evolve

REPO = pathlib.Path(__file__).resolve().parents[1]


def star_jax(*args, cwd=REPO, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               STAR_JAX_CACHE_DIR="off")
    return subprocess.run([sys.executable, "-m", "star_jax.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_describe_prints_layers_params_and_cache():
    g = baselines.transformer_pp(4).to_string()
    out = star_jax("describe", g, "--width", "64", "--vocab", "32", "--seq-len", "128")
    assert out.returncode == 0, out.stderr
    assert "SA-1" in out.stdout and "params:" in out.stdout
    # Transformer++ cache: 2 attention LIVs x 2 (K and V) x width 64 x 4096 tokens x 2 bytes
    assert f"cache bytes: {2 * 2 * 64 * 4096 * 2:,}" in out.stdout


@pytest.mark.parametrize("args, needle", [
    (("describe", "1.1.1-9.1.1.1.1"), "segment"),
    (("describe", "99.1.1.1.1"), "value out of range"),
    (("train", "1.1.1.1.1-9.1.1.1.1", "--task", "no_such_task"), "unknown task"),
    (("train", "1.1.1.1.1-9.1.1.1.1", "--task", "in_context_recall", "--task-arg", "bogus=1"), "bogus"),
    (("report", "/nonexistent/run"), "not a run directory"),
])
def test_bad_input_one_line_exit_2(args, needle):
    out = star_jax(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert needle in lines[0]


def test_bad_config_field_and_mismatch(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pop_sise": 4}))
    out = star_jax("evolve", "--config", str(bad), "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "pop_sise" in out.stderr and "pop_size" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1

    config = EvolveConfig.quick(n_liv=2, pop_size=4, generations=0, baselines=False)
    (tmp_path / "c.json").write_text(config.to_json())
    evolve(config, tmp_path / "run", progress=False, evaluator=_fake_training)
    out = star_jax("evolve", "--config", str(tmp_path / "c.json"), "--run-dir", str(tmp_path / "run"),
                   "--seed", "7", "--no-progress")
    assert out.returncode == 2, out.stderr
    assert "different config" in out.stderr and "seed" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1

    out = star_jax("report", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert sum(line.endswith(".png") for line in out.stdout.splitlines()) == 3


def test_bad_sizes_and_run_dirs_are_one_line_errors(tmp_path):
    out = star_jax("describe", "1.1.1.1.1-9.1.1.1.1", "--cache-seq-len", "-1")
    assert out.returncode == 2 and "seq_len must be an integer >= 1, got -1" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    out = star_jax("evolve", "--run-dir", str(blocker))
    assert out.returncode == 2 and "is a file, not a run directory" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cache_metrics_reject_nonpositive_lengths():
    import star_jax as sj

    cfg = sj.ModelConfig(width=32, vocab_size=16, max_len=32, head_dim=8)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="seq_len must be an integer >= 1"):
            sj.cache_bytes("1.1.1.1.1-9.1.1.1.1", cfg, seq_len=bad)
    with pytest.raises(ValueError, match="bytes_per_elem must be an integer >= 1"):
        sj.cache_bytes("1.1.1.1.1-9.1.1.1.1", cfg, bytes_per_elem=0)


def _fake_training(genomes, config, task, *, on_candidate=None):
    acc = [int(hashlib.sha256(g.to_string().encode()).hexdigest()[:6], 16) % 100 / 100 for g in genomes]
    return [{"train_loss": 1.0, "test_loss": 1.0 - a, "test_accuracy": a, "diverged": False} for a in acc]


def test_an_unwritable_plots_directory_is_a_one_line_error(tmp_path):
    run = tmp_path / "run"
    evolve(EvolveConfig.quick(n_liv=2, pop_size=4, generations=0, baselines=False), run, progress=False,
           evaluator=_fake_training)
    plots = run / "plots"
    for p in plots.iterdir():
        p.unlink()
    plots.rmdir()
    plots.write_text("not a directory", encoding="utf-8")  # blocks every plot
    out = star_jax("report", str(run))
    assert out.returncode == 2, out.stderr
    assert "plots" in out.stderr and "check its permissions" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
