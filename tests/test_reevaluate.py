"""Re-evaluation over training seeds: paired intervals, verdicts, resume, and a pure-noise search
whose every apparent improvement the re-evaluation calls noise."""
import hashlib
import json
import math

import numpy as np
import pytest

from star_jax.evolve import EvolveConfig, evolve
from star_jax.evolve.reevaluate import REEVAL_FILE, paired_interval, reevaluate, t_quantile, verdict


def _unit(genome, seed) -> float:
    h = hashlib.sha256(f"{genome.content_hash()}/{seed}".encode()).hexdigest()
    return np.random.default_rng(int(h[:12], 16)).normal()


class NoiseEvaluator:
    """Accuracy is pure noise: the same for every genome on average, fresh on every seed."""

    def __init__(self, signal=None):
        self.calls = []
        self.signal = signal or (lambda g: 0.0)

    def __call__(self, genomes, config, task, *, on_candidate=None):
        self.calls.append((config.train.seed, len(genomes)))
        out = []
        for g in genomes:
            acc = 0.5 + self.signal(g) + 0.05 * _unit(g, config.train.seed)
            out.append({"train_loss": 1.0, "test_loss": 1.0 - acc, "test_accuracy": acc, "diverged": False,
                        "steps_run": 1})
        return out


def _config(**changes):
    base = dict(n_liv=4, pop_size=8, generations=3, seed=5, strategy="sequential", baselines=True)
    base.update(changes)
    return EvolveConfig.quick(**base)


def test_t_quantiles_and_interval():
    # printed tables: t_{0.975} for df 1, 2, 4, 9, 30 and t_{0.995} for df 5
    for p, df, ref in ((0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776), (0.975, 9, 2.262),
                       (0.975, 30, 2.042), (0.995, 5, 4.032)):
        assert t_quantile(p, df) == pytest.approx(ref, abs=1e-3)
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 12, 40):
        for p in (0.9, 0.975, 0.99875):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-7)
    mean, lo, hi = paired_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert mean == 2.0 and hi - mean == pytest.approx(4.3027 * 1.0 / math.sqrt(3), rel=1e-4)
    assert paired_interval([1.0], [0.0])[1:] == (-math.inf, math.inf)
    assert verdict(-0.3, -0.1) == "better" and verdict(0.1, 0.2) == "worse" and verdict(-0.1, 0.1) == "within noise"


def test_pure_noise_search_improvements_are_flagged_as_noise(tmp_path):
    run = tmp_path / "run"
    ev = NoiseEvaluator()
    result = evolve(_config(), run, progress=False, evaluator=ev)
    base_search = {r["baseline"]: r["objectives"]["error"] for r in result.baselines}
    # the search keeps the luckiest: on its own seed, front genomes look better than baselines
    lucky = [r for r in result.front_records if r["objectives"]["error"] < min(base_search.values())]
    assert lucky, "the pure-noise search should have produced apparent improvements"
    ev.calls.clear()
    out = reevaluate(run, seeds=6, evaluator=ev)
    assert out.seeds == (1, 2, 3, 4, 5, 6) and {c[0] for c in ev.calls} == set(out.seeds)
    assert len(out.comparisons) == len(result.front_records) * 3
    assert all(c.verdict == "within noise" for c in out.comparisons), [(c.mean, c.low, c.high) for c in out.comparisons]
    # the re-evaluated means regress to the common mean: the lucky genomes lose their search advantage
    fronts = [s for s in out.summaries if s.kind == "front"]
    assert np.mean([s.mean for s in fronts]) > np.mean([s.search_value for s in fronts])
    text = (run / "reevaluation.md").read_text()
    assert "within noise" in text and "+-" in text and (run / "plots" / "reevaluation.png").exists()


def test_a_real_advantage_is_called_better_and_a_rerun_trains_nothing(tmp_path):
    run = tmp_path / "run"
    # genomes with a recurrence are truly better by 0.2 accuracy (noise sd 0.05)
    signal = lambda g: 0.2 if any(s.liv_class in (5, 6, 14, 15) for s in g) else 0.0
    ev = NoiseEvaluator(signal)
    evolve(_config(), run, progress=False, evaluator=ev)
    out = reevaluate(run, seeds=4, evaluator=ev)
    better = [c for c in out.comparisons if c.verdict == "better"]
    assert better and all(c.baseline == "Transformer++" or c.baseline == "LFM2-like" for c in better)
    lines = [json.loads(x) for x in (run / REEVAL_FILE).read_text().splitlines()]
    assert len(lines) == 4 * len({s.hash for s in out.summaries})  # one line per genome and seed
    ev.calls.clear()
    again = reevaluate(run, seeds=4, evaluator=ev)
    assert ev.calls == [] and again == out
    more = reevaluate(run, seeds=5, evaluator=ev)  # one more seed: only it is trained
    assert [c[0] for c in ev.calls] == [5] and more.seeds[-1] == 5


def test_a_genome_that_fails_on_seeds_its_baseline_trained_is_never_better():
    from star_jax.evolve.reevaluate import compare_over_seeds, failures_note

    # on the two seeds both trained the genome looks far better, but it diverged on three
    (c,) = compare_over_seeds([("g", (None, None, None, 0.10, 0.11))], [("B", (0.50, 0.52, 0.49, 0.50, 0.51))])
    assert (c.n, c.failed, c.baseline_failed) == (2, 3, 0) and c.high < 0 and c.verdict == "within noise"
    assert "3 seeds only the front genome diverged or failed on" in failures_note(c)
    # the mirror image: a baseline that failed where the genome trained is not called better by "worse"
    (c,) = compare_over_seeds([("g", (0.50, 0.52, 0.49, 0.50, 0.51))], [("B", (0.10, None, 0.11, 0.12, 0.10))])
    assert (c.failed, c.baseline_failed, c.verdict) == (0, 1, "within noise")
    # failures on both sides of one seed are no evidence either way; clean seeds keep their verdict
    (c,) = compare_over_seeds([("g", (None, 0.10, 0.11, 0.10))], [("B", (None, 0.50, 0.52, 0.51))])
    assert (c.n, c.failed, c.baseline_failed, c.verdict) == (3, 0, 0, "better") and failures_note(c) == ""


def test_the_reevaluation_report_counts_failed_seeds(tmp_path):
    run = tmp_path / "run"
    ev = NoiseEvaluator()
    result = evolve(_config(generations=1), run, progress=False, evaluator=ev)
    first = result.front_records[0]

    def failing(genomes, config, task, *, on_candidate=None):  # the first front genome diverges on seed 2
        out = ev(genomes, config, task)
        for g, r in zip(genomes, out):
            if g.content_hash() == first["hash"] and config.train.seed == 2:
                r.update(test_loss=math.inf, test_accuracy=0.0, diverged=True)
        return out

    out = reevaluate(run, seeds=3, evaluator=failing)
    (s,) = [s for s in out.summaries if s.hash == first["hash"] and s.kind == "front"]
    assert s.values[1] is None and s.values[0] is not None
    text = (run / "reevaluation.md").read_text()
    assert "(2 seeds; 1 diverged or failed)" in text and "1 seed only the front genome diverged or failed on" in text


def test_a_reevaluation_killed_mid_append_resumes_with_a_clean_file(tmp_path):
    run = tmp_path / "run"
    ev = NoiseEvaluator()
    evolve(_config(generations=1), run, progress=False, evaluator=ev)
    want = reevaluate(run, seeds=2, evaluator=ev)
    path = run / REEVAL_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])  # the last record cut short by a kill
    with pytest.warns(Warning, match="last line"):
        again = reevaluate(run, seeds=2, evaluator=ev)
    assert again == want
    assert [json.loads(x) for x in path.read_text().splitlines()][:-1] == [json.loads(x) for x in lines[:-1]]
    assert len(path.read_text().splitlines()) == len(lines)  # the cut record was trained again, once


def test_bad_seed_count(tmp_path):
    with pytest.raises(ValueError, match="seeds must be an integer >= 2"):
        reevaluate(tmp_path, seeds=1)


def test_cli_reevaluate(tmp_path, monkeypatch, capsys):
    import star_jax.evolve.loop as loop
    from star_jax.cli import main

    run = tmp_path / "run"
    ev = NoiseEvaluator()
    evolve(_config(generations=1), run, progress=False, evaluator=ev)
    monkeypatch.setattr(loop, "train_candidates", ev)
    assert main(["reevaluate", str(run), "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "error over seeds [1, 2, 3] (mean +- sd)" in out and "Transformer++" in out and "within noise" in out
    assert main(["reevaluate", str(run), "--seeds", "1"]) == 2
    assert "--seeds must be >= 2" in capsys.readouterr().err
    assert main(["reevaluate", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_noise_aware_selection_scores_the_mean_over_seeds_and_the_report_flags_noise(tmp_path):
    from star_jax.evolve import write_report

    ev = NoiseEvaluator()
    result = evolve(_config(generations=1, train_seeds=3), tmp_path / "run", progress=False, evaluator=ev)
    assert sorted({c[0] for c in ev.calls}) == [0, 1, 2]
    for r in list(result.archive.values()) + list(result.baselines):
        accs = r["seed_test_accuracy"]
        assert len(accs) == 3 and r["test_accuracy"] == pytest.approx(np.mean(accs))
        assert r["test_accuracy_sd"] == pytest.approx(np.std(accs, ddof=1))
        assert r["objectives"]["error"] == pytest.approx(1 - np.mean(accs))
    write_report(tmp_path / "run")
    text = (tmp_path / "run" / "plots" / "front.md").read_text()
    assert "over the 3 training seeds the search selected with" in text and "within noise" in text
    # the seeds that chose the front never give a verdict; a re-evaluation skips them
    table = text.split("| on the selection seeds |")[1]
    assert "better" not in table and "star-jax reevaluate" in text
    ev.calls.clear()
    out = reevaluate(tmp_path / "run", seeds=2, evaluator=ev)
    assert out.seeds == (3, 4) and {c[0] for c in ev.calls} == {3, 4}
    # one seed per genome: the report says nothing is resolved
    evolve(_config(generations=1), tmp_path / "one", progress=False, evaluator=NoiseEvaluator())
    write_report(tmp_path / "one")
    assert "not resolved" in (tmp_path / "one" / "plots" / "front.md").read_text()
    with pytest.raises(Exception, match="train_seeds"):
        _config(train_seeds=0)


def test_evolve_reevaluates_when_asked_and_a_finished_run_adopts_the_setting(tmp_path):
    from star_jax.model import ConfigError

    with pytest.raises(ConfigError, match="reevaluate_seeds"):
        _config(reevaluate_seeds=1)
    ev = NoiseEvaluator()
    result = evolve(_config(generations=1, reevaluate_seeds=3), tmp_path / "a", progress=False, evaluator=ev)
    assert result.reevaluation is not None and result.reevaluation.seeds == (1, 2, 3)
    assert (tmp_path / "a" / "reevaluation.md").exists()
    assert {c[0] for c in ev.calls} == {0, 1, 2, 3}
    # a finished run without re-evaluation, run again with it: only the new seeds train
    run = tmp_path / "b"
    evolve(_config(generations=1), run, progress=False, evaluator=ev)
    ev.calls.clear()
    again = evolve(_config(generations=1, reevaluate_seeds=2), run, progress=False, evaluator=ev)
    assert {c[0] for c in ev.calls} == {1, 2} and again.reevaluation.seeds == (1, 2)
    assert json.loads((run / "config.json").read_text())["reevaluate_seeds"] == 2


def test_a_front_genome_that_is_a_baseline_trains_once_per_seed(tmp_path):
    run = tmp_path / "run"
    # baselines seeded into the population and made the best: they are on the front
    signal = lambda g: 0.3 if g.to_string() in baseline_strings else 0.0
    from star_jax.evolve.evaluation import baseline_genomes

    baseline_strings = {g.to_string() for g in baseline_genomes(4).values()}
    ev = NoiseEvaluator(signal)
    result = evolve(_config(generations=1, seed_baselines=True), run, progress=False, evaluator=ev)
    assert any(r.genome in baseline_strings for r in result.front_records)
    ev.calls.clear()
    out = reevaluate(run, seeds=2, evaluator=ev)
    unique = {s.hash for s in out.summaries}
    assert len(unique) < len(out.summaries)
    assert sorted(ev.calls) == [(1, len(unique)), (2, len(unique))]


class SeedsEvaluator(NoiseEvaluator):
    """NoiseEvaluator that trains every seed in one call and reports each run as it finishes; it
    stops (as a killed process would) after ``stop_after`` runs."""

    def __init__(self, signal=None, stop_after=None):
        super().__init__(signal)
        self.stop_after = stop_after
        self.runs = 0

    def __call__(self, genomes, config, task, *, on_candidate=None, seeds=None, on_run=None):
        if seeds is None:
            return super().__call__(genomes, config, task, on_candidate=on_candidate)
        self.calls.append((tuple(seeds), len(genomes)))
        out = []
        for i, seed in enumerate(seeds):
            out.append(super().__call__(genomes, config.replace(train=config.train.replace(seed=seed)), task))
            self.calls.pop()
            for k, m in enumerate(out[-1]):
                if self.stop_after is not None and self.runs >= self.stop_after:
                    raise KeyboardInterrupt("killed")
                self.runs += 1
                on_run(i, k, m)
        return out


def test_all_seeds_train_in_one_call_and_a_killed_reevaluation_keeps_every_finished_run(tmp_path):
    run = tmp_path / "run"
    evolve(_config(generations=1), run, progress=False, evaluator=NoiseEvaluator())
    want = reevaluate(run, seeds=3, evaluator=NoiseEvaluator())  # one call per seed
    (run / REEVAL_FILE).unlink()
    ev = SeedsEvaluator()
    got = reevaluate(run, seeds=3, evaluator=ev)
    n = len({s.hash for s in got.summaries})
    assert ev.calls == [((1, 2, 3), n)] and got == want
    # killed after n + 2 runs: seed 1 and two runs of seed 2 are stored, and only the rest trains
    (run / REEVAL_FILE).unlink()
    with pytest.raises(KeyboardInterrupt):
        reevaluate(run, seeds=3, evaluator=SeedsEvaluator(stop_after=n + 2))
    lines = [json.loads(x) for x in (run / REEVAL_FILE).read_text().splitlines()]
    assert [line["seed"] for line in lines] == [1] * n + [2, 2]
    ev = SeedsEvaluator()
    assert reevaluate(run, seeds=3, evaluator=ev) == want
    assert ev.calls == [((2,), n - 2), ((3,), n)]  # seeds with the same genomes left go together
