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
    (("describe", "1.1.1.1.1-9.1.1.1.1", "--head-dim", "0"), "head_dim"),  # 0 is not "the default"
])
def test_bad_input_one_line_exit_2(args, needle):
    out = star_jax(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert needle in lines[0]


def test_bad_workers_is_a_usage_error_naming_the_flag():
    out = star_jax("evolve", "--workers", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "argument --workers: expected an integer >= 1" in out.stderr.strip().splitlines()[-1]


def test_a_bad_workers_environment_variable_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("STAR_JAX_WORKERS", "two")
    out = star_jax("evolve", "--run-dir", str(tmp_path / "run"), "--generations", "0", "--no-progress")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "star-jax evolve: error: the environment variable STAR_JAX_WORKERS must be an integer >= 1 "
        "(candidates trained at once), got 'two'"]
    assert not (tmp_path / "run").exists()


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


def _fake_training(genomes, config, task, *, on_candidate=None, workers=None):
    assert workers is None or workers >= 1  # evolve's workers reaches the default evaluator
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


def test_init_config_writes_a_commented_config_that_loads_unchanged(tmp_path):
    from star_jax.evolve.config import preset

    out = star_jax("init-config", "--preset", "study")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["_pop_size"].startswith("NSGA-II population size") and "_about" in data
    assert data["model"]["_width"] and data["train"]["_steps"] and data["task"]["_seq_len"]
    assert EvolveConfig.from_dict(data) == preset("study")
    # the study preset is the README's CPU-scale study
    assert preset("study") == EvolveConfig.from_file(REPO / "experiments" / "configs" / "cpu_recall_cache.json")

    path = tmp_path / "study.json"
    out = star_jax("init-config", "--out", str(path))
    assert out.returncode == 0, out.stderr
    assert EvolveConfig.from_file(path) == EvolveConfig.quick()
    out = star_jax("init-config", "--out", str(path))
    assert out.returncode == 2 and "exists; pass --force" in out.stderr


def _cli_main(monkeypatch, *argv):
    """Runs ``star-jax`` in this process with training replaced by ``_fake_training``."""
    import warnings

    from star_jax import cli
    from star_jax.evolve import loop

    monkeypatch.setenv("STAR_JAX_CACHE_DIR", "off")
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it
    monkeypatch.setattr(loop, "train_candidates", _fake_training)
    return cli.main(list(argv))


def test_evolve_loads_the_written_config_with_overrides_and_extends_the_run(tmp_path, monkeypatch, capsys):
    from star_jax.evolve import load_run

    path, run = tmp_path / "study.json", tmp_path / "run"
    assert star_jax("init-config", "--out", str(path)).returncode == 0
    written = path.read_text()
    assert _cli_main(monkeypatch, "evolve", "--config", str(path), "--run-dir", str(run), "--pop-size", "3",
                     "--generations", "0", "--steps", "5", "--no-progress") == 0
    assert path.read_text() == written
    want = EvolveConfig.quick().to_dict()
    want.update(pop_size=3, generations=0)
    want["train"].update(steps=5, warmup_steps=5)  # warm-up capped at the steps
    assert json.loads((run / "config.json").read_text()) == want
    assert load_run(run).finished

    # no --config: the run's recorded config; a larger --generations extends it (workers is not
    # part of the config: another value resumes the same run)
    assert _cli_main(monkeypatch, "evolve", "--run-dir", str(run), "--generations", "1", "--no-progress",
                     "--workers", "1") == 0
    result = load_run(run)
    assert result.finished and result.generations_done == 2 and result.config.generations == 1
    assert result.config.pop_size == 3 and result.config.train.steps == 5
    assert (run / "extensions.jsonl").exists()
    assert "run directory:" in capsys.readouterr().out


def test_a_bad_seed_genome_names_the_field_and_writes_nothing(tmp_path):
    config = EvolveConfig.quick().to_dict()
    config["seed_genomes"] = ["1.1.1.1.1-9.1.1.1.1-1.1.1.1.1-9.1.1.1.1", "1.1.1.1.1-9.1.1"]
    (tmp_path / "c.json").write_text(json.dumps(config))
    out = star_jax("evolve", "--config", str(tmp_path / "c.json"), "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "EvolveConfig.seed_genomes[1]" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("error", [KeyError("a bug"), ValueError("a bug"), TypeError("a bug")])
def test_a_bug_keeps_its_traceback(monkeypatch, error):
    """Only the project's user-facing errors become one-line exit 2; a KeyError or ValueError from
    a bug propagates (its traceback is shown)."""
    import warnings

    from star_jax import cli

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    def broken(args):
        raise error

    monkeypatch.setattr(cli, "cmd_describe", broken)
    with pytest.raises(type(error), match="a bug"):
        cli.main(["describe", "1.1.1.1.1-9.1.1.1.1"])
