"""Evolution loop: config validation, the de-duplicating archive, resume after kill -9, reports.
Most runs use a deterministic stand-in for training so the run-state machinery is tested in seconds."""
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import warnings

from star_jax.evolve import EvolveConfig, evolve, load_run, write_report
from star_jax.evolve.config import ConfigFieldError
from star_jax.io import CheckpointWarning, RunConfigMismatch

REPO = pathlib.Path(__file__).resolve().parents[1]


def fake_metrics(genome) -> dict:
    """Deterministic stand-in for training: accuracy from the genome's hash."""
    h = int(hashlib.sha256(genome.content_hash().encode()).hexdigest()[:8], 16)
    acc = (h % 997) / 997.0
    return {"train_loss": 2.0 - acc, "test_loss": 2.0 - acc, "test_accuracy": acc, "diverged": False, "steps_run": 1}


class CountingEvaluator:
    """Records every genome it is asked to train."""

    def __init__(self):
        self.trained = []
        self.calls = 0

    def __call__(self, genomes, config, task, *, on_candidate=None):
        self.calls += 1
        self.trained += [g.content_hash() for g in genomes]
        return [fake_metrics(g) for g in genomes]


def tiny(**changes) -> EvolveConfig:
    base = dict(n_liv=4, pop_size=6, generations=4, seed=3, strategy="sequential", baselines=False)
    base.update(changes)
    return EvolveConfig.quick(**base)


def test_config_round_trip_and_unknown_keys():
    config = tiny(constraints=[{"objective": "params", "max_value": 5e4}], objectives=["error", "params"])
    assert EvolveConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigFieldError, match=r"unknown EvolveConfig field\(s\) \['popsize'\].*pop_size"):
        EvolveConfig.from_dict({"popsize": 4})
    with pytest.raises(ConfigFieldError, match="unknown objective 'speed'"):
        tiny(objectives=["error", "speed"])
    with pytest.raises(ConfigFieldError, match="reference_point"):
        tiny(reference_point=[1.0])
    with pytest.raises(ConfigFieldError, match="unknown TrainConfig"):
        EvolveConfig.from_dict({"train": {"stepz": 3}})


def test_archive_trains_every_genome_once(tmp_path):
    ev = CountingEvaluator()
    result = evolve(tiny(), tmp_path / "run", progress=False, evaluator=ev)
    assert len(ev.trained) == len(set(ev.trained)), "a genome was trained twice"
    assert set(ev.trained) == set(result.archive)
    assert ev.calls == 5  # one training call per generation
    records = [json.loads(line) for line in (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    assert [r["hash"] for r in records] == list(result.archive)
    # the population holds genomes evaluated in earlier generations, served from the archive
    assert any(r["generation"] < 4 for r in result.population_records)
    rec = records[0]
    for key in ("genome", "hash", "generation", "params", "cache_bytes", "test_accuracy", "objectives", "violation",
                "failure"):
        assert key in rec
    assert "error" not in rec and rec["failure"] is None  # objectives["error"] is the only "error"
    assert rec["objectives"]["error"] == pytest.approx(1.0 - rec["test_accuracy"])
    # the archive front is never worse than before: its hypervolume cannot drop
    assert np.all(np.diff(result.hypervolume) >= 0)
    assert result.hypervolume[-1] > 0
    # re-running a finished run trains nothing and returns the same result
    ev2 = CountingEvaluator()
    again = evolve(tiny(), tmp_path / "run", progress=False, evaluator=ev2)
    assert ev2.trained == [] and again.archive == result.archive and again.front_records == result.front_records


def test_front_is_nondominated_and_feasible(tmp_path):
    config = tiny(constraints=[{"objective": "cache_bytes", "max_value": 6e5}])
    result = evolve(config, tmp_path / "run", progress=False, evaluator=CountingEvaluator())
    front = [tuple(r["objectives"].values()) for r in result.front_records]
    assert front and all(r["violation"] == 0 for r in result.front_records)
    assert all(r["cache_bytes"] <= 6e5 for r in result.front_records)
    feasible = [tuple(r["objectives"].values()) for r in result.archive.values() if r["violation"] == 0]
    for p in front:
        assert not any(all(q_i <= p_i for q_i, p_i in zip(q, p)) and q != p for q in feasible)


def test_config_mismatch_on_resume(tmp_path):
    evolve(tiny(generations=1), tmp_path / "run", progress=False, evaluator=CountingEvaluator())
    with pytest.raises(RunConfigMismatch, match="pop_size"):
        evolve(tiny(generations=1, pop_size=8), tmp_path / "run", progress=False, evaluator=CountingEvaluator())


def test_corrupt_latest_checkpoint_falls_back(tmp_path):
    run = tmp_path / "run"
    reference = evolve(tiny(), tmp_path / "ref", progress=False, evaluator=CountingEvaluator())
    evolve(tiny(generations=4), run, progress=False, evaluator=CountingEvaluator())
    ckpts = run / "checkpoints"
    latest = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    for f in (ckpts / str(latest)).rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "meta" in str(f):
            f.write_bytes(b"garbage" * 3)
    ev = CountingEvaluator()
    with pytest.warns(CheckpointWarning, match=f"step {latest}"):
        result = evolve(tiny(generations=4), run, progress=False, evaluator=ev)
    assert 0 < len(ev.trained) < len(result.archive)  # only the last generation was redone
    assert result.archive == reference.archive and result.front_records == reference.front_records
    lines = (run / "evaluations.jsonl").read_text().splitlines()
    assert [json.loads(x)["hash"] for x in lines] == list(reference.archive)


_SCRIPT = textwrap.dedent("""
    import hashlib, sys, time
    sys.path.insert(0, {tests!r})
    from test_evolve import fake_metrics, tiny
    from star_jax.evolve import evolve
    def slow(genomes, config, task, *, on_candidate=None):
        out = []
        for g in genomes:
            time.sleep(0.25)
            out.append(fake_metrics(g))
        return out
    r = evolve(tiny(baselines=True), sys.argv[1], progress=False, evaluator=slow)
    print("DONE", len(r.archive))
""")


def _run_script(run_dir, env):
    return subprocess.Popen([sys.executable, "-c", _SCRIPT.format(tests=str(REPO / "tests")), str(run_dir)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_same_run(run, straight) -> None:
    """The run in ``run`` ended exactly as the uninterrupted one in ``straight``."""
    got, want = load_run(run), load_run(straight)
    assert got.archive == want.archive
    assert got.front_records == want.front_records
    assert got.hypervolume == want.hypervolume
    assert [g.to_string() for g in got.population] == [g.to_string() for g in want.population]
    assert (run / "evaluations.jsonl").read_text() == (straight / "evaluations.jsonl").read_text()


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = tmp_path / "killed"
    proc = _run_script(run, env)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "2").exists():
        time.sleep(0.05)
    assert (run / "checkpoints" / "2").exists(), proc.communicate()[1][-2000:]
    time.sleep(0.6)  # in the middle of generation 2's training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / "5").exists()
    partial = load_run(run)
    assert 2 <= partial.generations_done < 5
    out = _run_script(run, env).communicate(timeout=120)
    assert "DONE" in out[0], out[1][-2000:]
    evolve(tiny(baselines=True), tmp_path / "straight", progress=False, evaluator=CountingEvaluator())
    _assert_same_run(run, tmp_path / "straight")
    steps = [json.loads(x)["step"] for x in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]
    names = sorted(json.loads(x)["baseline"] for x in (run / "baselines.jsonl").read_text().splitlines())
    assert names == ["LFM2-like", "StripedMamba", "Transformer++"]


def test_report_writes_pngs(tmp_path):
    evolve(tiny(baselines=True, generations=2), tmp_path / "run", progress=False, evaluator=CountingEvaluator())
    paths = write_report(tmp_path / "run")
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 3
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    text = (tmp_path / "run" / "plots" / "front.md").read_text()
    assert "Pareto front" in text and "Transformer++" in text


def test_real_training_smoke(tmp_path):
    """Real training through the default evaluator: a genome seeded twice is trained once."""
    config = EvolveConfig.quick(
        n_liv=2, pop_size=2, generations=0, baselines=False, strategy="sequential",
        seed_genomes=["1.1.1.1.1-9.1.1.1.1", "1.1.1.1.1-9.1.1.1.1"], measure_latency=True, latency_tokens=4,
        model={"width": 16, "vocab_size": 16, "max_len": 15, "head_dim": 8, "window": 8},
        task={"name": "in_context_recall", "vocab_size": 16, "seq_len": 16, "num_train": 64, "num_test": 32},
        train={"steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_batch_size": 32, "lr": 1e-3})
    result = evolve(config, tmp_path / "run", progress=False)
    assert len(result.archive) == 1
    (r,) = result.archive.values()
    assert r["steps_run"] == 3 and 0.0 <= r["test_accuracy"] <= 1.0 and r["diverged"] is False
    assert r["objectives"]["error"] == pytest.approx(1.0 - r["test_accuracy"])
    assert r["params"] > 0 and r["cache_bytes"] == 2 * 16 * 4096 * 2  # one SA-1: K and V, 16-bit
    assert [x["hash"] for x in result.population_records] == [r["hash"]] * 2
    assert 0.0 < r["latency_ms"] < 1000.0  # measured decode latency, ms per token


def test_unreadable_checkpoints_are_rebuilt_from_the_records(tmp_path):
    run = tmp_path / "run"
    evolve(tiny(baselines=True, generations=2), run, progress=False, evaluator=CountingEvaluator())
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    from star_jax.io import CheckpointError

    with pytest.raises(CheckpointError, match="to rebuild the run from evaluations.jsonl"):
        load_run(run)  # a reader says what to do
    ev = CountingEvaluator()
    with pytest.warns(RuntimeWarning, match="rebuilding the run from the .* records"):
        rebuilt = evolve(tiny(baselines=True, generations=2), run, progress=False, evaluator=ev)
    assert ev.trained == []  # every genome was recorded: nothing trained again
    evolve(tiny(baselines=True, generations=2), tmp_path / "short", progress=False, evaluator=CountingEvaluator())
    _assert_same_run(run, tmp_path / "short")
    assert rebuilt.archive == load_run(run).archive
    assert (run / "baselines.jsonl").read_text() == (tmp_path / "short" / "baselines.jsonl").read_text()
    assert load_run(run).generations_done == 3  # checkpoints written again


@pytest.mark.parametrize("kill_at", [2, 6, 10])  # the baselines; generation 0; after the rebuild's 1st checkpoint
def test_a_rebuild_killed_half_way_trains_nothing_again(tmp_path, monkeypatch, kill_at):
    import star_jax.evolve.runstate as runstate
    from star_jax.io import RunDir

    run = tmp_path / "run"
    evolve(tiny(baselines=True, generations=2), run, progress=False, evaluator=CountingEvaluator())
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    calls = []

    def dying(write):  # the process is killed as it writes back a replayed record (16 writes in all)
        def wrapped(*args):
            calls.append(args)
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            write(*args)
        return wrapped

    with monkeypatch.context() as m:
        m.setattr(runstate, "append_jsonl", dying(runstate.append_jsonl))
        m.setattr(RunDir, "append_evaluation", dying(RunDir.append_evaluation))
        with pytest.warns(RuntimeWarning, match="rebuilding the run"), pytest.raises(KeyboardInterrupt):
            evolve(tiny(baselines=True, generations=2), run, progress=False, evaluator=CountingEvaluator())
    ev = CountingEvaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a second rebuild, or a resume from its checkpoint
        evolve(tiny(baselines=True, generations=2), run, progress=False, evaluator=ev)
    assert ev.trained == []  # every genome trained before the rebuild is served from its records
    evolve(tiny(baselines=True, generations=2), tmp_path / "short", progress=False, evaluator=CountingEvaluator())
    _assert_same_run(run, tmp_path / "short")


def test_unreadable_checkpoints_and_no_records_is_a_clear_error(tmp_path):
    from star_jax.io import CheckpointError

    run = tmp_path / "run"
    evolve(tiny(generations=1), run, progress=False, evaluator=CountingEvaluator())
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    (run / "evaluations.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="holds no records to rebuild the run from"):
        evolve(tiny(generations=1), run, progress=False, evaluator=CountingEvaluator())


def test_soak_killed_at_random_moments_ends_as_an_uninterrupted_run(tmp_path):
    """SIGKILL at random moments (during imports, training, checkpoint writes, JSONL appends),
    restarting after each, then a last run to the end: the records, front and population equal an
    uninterrupted run's, no record is duplicated and old checkpoints are pruned.
    ``STAR_JAX_SOAK_KILLS`` sets the number of kills (4 here; the recorded soak used 10)."""
    import random

    kills = int(os.environ.get("STAR_JAX_SOAK_KILLS", "4"))
    rng = random.Random(1234)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = tmp_path / "soaked"
    for _ in range(kills):
        proc = _run_script(run, env)
        try:
            proc.communicate(timeout=rng.uniform(1.0, 4.5))  # finished before its kill: fine too
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
    out = _run_script(run, env).communicate(timeout=180)
    assert "DONE" in out[0], out[1][-2000:]
    evolve(tiny(baselines=True), tmp_path / "straight", progress=False, evaluator=CountingEvaluator())
    _assert_same_run(run, tmp_path / "straight")
    hashes = [json.loads(x)["hash"] for x in (run / "evaluations.jsonl").read_text().splitlines()]
    assert len(hashes) == len(set(hashes))
    assert len([p for p in (run / "checkpoints").iterdir() if p.name.isdigit()]) <= 3


def test_extending_a_finished_run_ends_as_a_longer_run(tmp_path):
    run = tmp_path / "run"
    evolve(tiny(generations=2), run, progress=False, evaluator=CountingEvaluator())
    assert load_run(run).finished
    ev = CountingEvaluator()
    extended = evolve(tiny(generations=3), run, progress=False, evaluator=ev)
    assert ev.calls == 1  # only the new generation was trained
    assert extended.finished and extended.generations_done == 4 and extended.config.generations == 3
    evolve(tiny(generations=3), tmp_path / "straight", progress=False, evaluator=CountingEvaluator())
    _assert_same_run(run, tmp_path / "straight")
    assert (run / "config.json").read_text() == (tmp_path / "straight" / "config.json").read_text()
    (ext,) = [json.loads(x) for x in (run / "extensions.jsonl").read_text().splitlines()]
    assert (ext["from_generations"], ext["to_generations"], ext["seed"]) == (2, 3, 3)
    with pytest.raises(RunConfigMismatch, match="extended .* but not shortened"):
        evolve(tiny(generations=2), run, progress=False, evaluator=CountingEvaluator())
    with pytest.raises(RunConfigMismatch, match="pop_size"):  # another change with it: still a mismatch
        evolve(tiny(generations=5, pop_size=8), run, progress=False, evaluator=CountingEvaluator())
    assert load_run(run).config.generations == 3


def test_bad_seed_genomes_name_the_field_before_anything_is_written(tmp_path):
    four = "1.1.1.1.1-9.1.1.1.1-1.1.1.1.1-9.1.1.1.1"
    with pytest.raises(ConfigFieldError, match=r"EvolveConfig\.seed_genomes\[1\] = '1\.1\.1' is not a valid genome"):
        tiny(seed_genomes=[four, "1.1.1"])
    with pytest.raises(ConfigFieldError, match=r"EvolveConfig\.seed_genomes\[0\] .* has 2 LIVs; .* n_liv = 4"):
        EvolveConfig.from_dict({**tiny().to_dict(), "seed_genomes": ["1.1.1.1.1-9.1.1.1.1"]})
    assert not (tmp_path / "run").exists()
    result = evolve(tiny(seed_genomes=[four], generations=0), tmp_path / "run", progress=False,
                    evaluator=CountingEvaluator())
    assert result.archive[next(iter(result.archive))]["genome"] == four


def test_old_records_with_a_top_level_error_field_are_read(tmp_path):
    """Runs written before ``error`` (a failure message) was renamed ``failure`` still load, resume
    and rebuild, with the field renamed."""
    from star_jax.evolve.loop import record_failure

    run, straight = tmp_path / "run", tmp_path / "straight"
    evolve(tiny(generations=1), run, progress=False, evaluator=CountingEvaluator())

    def old_style(r):
        return {("error" if k == "failure" else k): v for k, v in r.items()}

    from star_jax.io import RunDir

    lines = [json.loads(x) for x in (run / "evaluations.jsonl").read_text().splitlines()]
    # a checkpoint as written then: format /1, with a copy of every record (ignored when read)
    manager = RunDir(run).checkpoint_manager(keep=3)
    arrays, meta, step = manager.restore()
    meta = {k: v for k, v in meta.items() if k not in ("evaluations", "baselines")}
    meta.update(format="star_jax.evolve_run/1", archive=[old_style(r) for r in lines], baselines=[])
    manager.save(step, arrays, meta=meta)
    manager.close()
    old_text = "".join(json.dumps(old_style(r)) + "\n" for r in lines)
    (run / "evaluations.jsonl").write_text(old_text)
    assert '"error": null' in old_text and '"failure"' not in old_text

    loaded = load_run(run)
    assert all("failure" in r and "error" not in r for r in loaded.archive.values())
    assert list(loaded.archive) == [r["hash"] for r in lines]
    assert record_failure({"error": "GenomeError: bad", "objectives": {"error": None}}) == "GenomeError: bad"
    assert record_failure({"failure": None, "objectives": {"error": 0.5}}) is None
    # resumed and extended, it ends as a run written with the new name from the start
    extended = evolve(tiny(generations=2), run, progress=False, evaluator=CountingEvaluator())
    want = evolve(tiny(generations=2), straight, progress=False, evaluator=CountingEvaluator())
    assert extended.archive == want.archive and extended.front_records == want.front_records
    # no readable checkpoint: the run is rebuilt from the old-style records alone
    (run / "evaluations.jsonl").write_text(old_text)
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    ev = CountingEvaluator()
    with pytest.warns(RuntimeWarning, match="rebuilding the run"):
        rebuilt = evolve(tiny(generations=2), run, progress=False, evaluator=ev)
    assert rebuilt.archive == want.archive
    assert set(ev.trained) == {h for h, r in want.archive.items() if r["generation"] == 2}


def test_each_generation_line_has_an_eta(tmp_path, capsys):
    evolve(tiny(generations=2), tmp_path / "run", progress=True, evaluator=CountingEvaluator())
    import re

    lines = [x for x in capsys.readouterr().err.splitlines() if re.match(r"generation \d+/\d+: ", x)]
    assert len(lines) == 3, lines
    assert lines[0].startswith("generation 0/2: ") and "ETA 0:00:0" in lines[0]
    assert lines[0].endswith("for 2 more generations") and lines[1].endswith("for 1 more generation")
    assert lines[2].startswith("generation 2/2: ") and lines[2].endswith(", done")


def test_a_real_run_is_the_same_with_one_or_two_workers(tmp_path):
    """Candidates trained two at a time give the very records of one at a time."""
    config = EvolveConfig.quick(
        n_liv=2, pop_size=4, generations=1, baselines=False, strategy="sequential", seed=5,
        model={"width": 16, "vocab_size": 16, "max_len": 15, "head_dim": 8, "window": 8},
        task={"name": "in_context_recall", "vocab_size": 16, "seq_len": 16, "num_train": 64, "num_test": 32},
        train={"steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_batch_size": 32, "lr": 1e-3})
    evolve(config, tmp_path / "one", progress=False, workers=1)
    evolve(config, tmp_path / "two", progress=False, workers=2)
    one = (tmp_path / "one" / "evaluations.jsonl").read_text()
    assert one.count("\n") >= 5
    assert one == (tmp_path / "two" / "evaluations.jsonl").read_text()


def test_configs_that_could_only_fail_after_training_are_refused_before_the_run_directory(tmp_path):
    from star_jax.evolve.config import ConfigFieldError

    # the default evaluator never measures mad_score: generation 0 would train, then fail to score
    with pytest.raises(ConfigFieldError, match=r"objectives\[0\]: 'mad_error' reads the record key\(s\) \['mad_score'\]"):
        evolve(tiny(objectives=("mad_error",)), tmp_path / "mad", progress=False)
    # sizes do not depend on the training seed: nothing to re-evaluate
    with pytest.raises(ConfigFieldError, match="reevaluate_seeds: the objectives .* no quality objective"):
        tiny(objectives=("params", "cache_bytes"), reevaluate_seeds=2)
    # a bad task field
    with pytest.raises(ConfigFieldError, match="task.seqlen"):
        evolve(tiny(task={**tiny().task, "seqlen": 5}), tmp_path / "task", progress=False)
    assert not (tmp_path / "mad").exists() and not (tmp_path / "task").exists()
    # an evaluator of your own may report mad_score
    class Mad(CountingEvaluator):
        def __call__(self, genomes, config, task, *, on_candidate=None):
            return [{**m, "mad_score": 0.5} for m in super().__call__(genomes, config, task)]

    result = evolve(tiny(objectives=("mad_error",), generations=0), tmp_path / "own", progress=False, evaluator=Mad())
    assert all(r["objectives"]["mad_error"] == 0.5 for r in result.archive.values())


def test_a_user_size_objective_reading_the_genome_is_measured_and_never_the_quality(tmp_path):
    from star_jax.evolve.config import ConfigFieldError
    from star_jax.evolve.objectives import is_size_objective, register_objective
    from star_jax.evolve.reevaluate import quality_objective
    from star_jax.evolve.report import quality_key
    from star_jax.genome import Genome

    from star_jax.evolve import objectives

    register_objective("n_attention", lambda r: sum(s.liv_class in (1, 2, 3, 4) for s in Genome.from_string(r["genome"])),
                       needs=("genome",), description="attention LIVs", size=True, overwrite=True)
    try:
        assert is_size_objective("n_attention") and is_size_objective("params") and not is_size_objective("error")
        config = tiny(objectives=("n_attention", "error"), generations=0)
        assert quality_objective(config) == "error" and quality_key(config.objectives) == "error"
        with pytest.raises(ConfigFieldError, match="no quality objective"):
            tiny(objectives=("n_attention", "params"), reevaluate_seeds=2)
        result = evolve(config, tmp_path / "run", progress=False, evaluator=CountingEvaluator())  # 'genome' is recorded
        assert all(r["objectives"]["n_attention"] >= 0 for r in result.archive.values())
    finally:
        objectives._REGISTRY.pop("n_attention", None)


def test_train_population_takes_train_config_overrides_as_train_does():
    import star_jax as sj

    task = sj.tasks.make("in_context_recall", vocab_size=8, seq_len=12, num_train=64, num_test=16)
    cfg = sj.ModelConfig(width=16, vocab_size=8, max_len=12, head_dim=4)
    got = sj.train_population(["9.1.1.1.1"], cfg, task, strategy="sequential", steps=3, batch_size=4, warmup_steps=1)
    want = sj.train("9.1.1.1.1", cfg, task, steps=3, batch_size=4, warmup_steps=1, progress=False)
    assert len(got.curves[0]["train_loss"]) == 3 and got.metrics[0] == want.metrics


def test_a_run_records_its_liv_classes_and_refuses_a_process_that_defines_them_otherwise(tmp_path):
    from star_jax.genome import register_liv_class, unregister_liv_class

    run = tmp_path / "run"
    register_liv_class("RunLinAttn", "1.2.1.1.3", class_id=950, replace=True)
    try:
        evolve(tiny(generations=1), run, progress=False, evaluator=CountingEvaluator())
        assert json.loads((run / "classes.json").read_text())["950"]["name"] == "RunLinAttn"
        evolve(tiny(generations=2), run, progress=False, evaluator=CountingEvaluator())  # same classes: extends
        unregister_liv_class(950)
        with pytest.raises(RunConfigMismatch, match=r"class 950 \(RunLinAttn \[1.2.1.1.3\]\) is not registered here"):
            evolve(tiny(generations=3), run, progress=False, evaluator=CountingEvaluator())
        register_liv_class("RunSWA", "1.2.2.2.3", class_id=950, replace=True)  # another class under its id
        with pytest.raises(RunConfigMismatch, match=r"class 950: the run's is RunLinAttn .* this process's RunSWA"):
            evolve(tiny(generations=3), run, progress=False, evaluator=CountingEvaluator())
        register_liv_class("RunLinAttn", "1.2.1.1.3", class_id=950, replace=True)
        register_liv_class("RunExtra", "1.2.2.2.3", class_id=951, replace=True)  # the search would draw it
        with pytest.raises(RunConfigMismatch, match=r"class 951 .* registered here but not in the run"):
            evolve(tiny(generations=3), run, progress=False, evaluator=CountingEvaluator())
        unregister_liv_class(951)
        assert evolve(tiny(generations=3), run, progress=False, evaluator=CountingEvaluator()).generations_done == 4
    finally:
        for cid in (950, 951):
            unregister_liv_class(cid)
    # a run directory from before the table adopts the classes registered now
    (run / "classes.json").unlink()
    evolve(tiny(generations=3), run, progress=False, evaluator=CountingEvaluator())
    assert "950" not in json.loads((run / "classes.json").read_text())
