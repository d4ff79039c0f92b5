"""Typed records of an evolution: JSON round trips that keep the run directory's lines byte for byte,
checkpoints that hold only what the records cannot give back, and run directories written before."""
import hashlib
import json

import numpy as np
import pytest

from star_jax.evolve import Candidate, EvalRecord, RunState, evolve, load_run, write_report
from star_jax.evolve.ask_tell import state_from_json
from star_jax.genome import Genome
from star_jax.io import CheckpointError, RunDir
from test_evolve import CountingEvaluator, tiny

# Lines as runs wrote them before the records were typed: an evaluation with evaluator metrics and
# two training seeds, a baseline, and a record of an older run whose failure field was "error".
OLD_LINES = [
    '{"hash": "3384f043a4f0f46c", "genome": "17.1.1.3.1-6.3.1.2.1-10.2.1.3.1-11.3.1.1.1", "short": "GConv-2-Diff > '
    'Rec-2 > SA-1-Diff > SA-2-Diff", "generation": 0, "params": 27344, "cache_bytes": 2098560, "failure": null, '
    '"train_loss": 1.7793380140421264, "test_loss": 1.7793380140421264, "test_accuracy": 0.22066198595787362, '
    '"diverged": false, "steps_run": 1, "mad_score": 0.11033099297893681, "seconds": 1.5, "seed_test_accuracy": '
    '[0.22066198595787362, 0.22066198595787362], "test_accuracy_sd": 0.0, "loss": 1.7793380140421264, "accuracy": '
    '0.22066198595787362, "objectives": {"error": 0.7793380140421264, "params": 27344.0, "cache_bytes": 2098560.0}, '
    '"violation": 0.0}',
    '{"hash": "0fe54b1e0c7c04c1", "genome": "7.1.1.1.1-9.1.1.1.1-3.1.1.1.1-9.1.1.1.1", "short": "GConv-1 > GMemless '
    '> SA-3 > GMemless", "generation": null, "params": 26368, "cache_bytes": 131200, "failure": null, "train_loss": '
    '1.8866599799398194, "test_loss": 1.8866599799398194, "test_accuracy": 0.11334002006018054, "diverged": false, '
    '"steps_run": 1, "loss": 1.8866599799398194, "accuracy": 0.11334002006018054, "objectives": {"error": '
    '0.8866599799398195}, "violation": 0.0, "baseline": "LFM2-like"}',
    '{"hash": "aa", "genome": "1.1.1", "short": null, "generation": 3, "params": null, "cache_bytes": null, "failure": '
    '"GenomeError: bad", "train_loss": null, "test_loss": null, "test_accuracy": null, "diverged": null, '
    '"steps_run": null, "loss": null, "accuracy": null, "latency_ms": null, "objectives": {"error": null}, '
    '"violation": null}',
]


@pytest.mark.parametrize("line", OLD_LINES)
def test_an_evaluation_line_reads_typed_and_writes_back_byte_for_byte(line):
    data = json.loads(line)
    record = EvalRecord.from_json(data)
    assert json.dumps(record.to_json()) == line
    assert record == data and dict(record) == data  # the record is also a read-only mapping of its line
    assert record.objective("error") == data["objectives"]["error"] and record["objectives"] == data["objectives"]
    assert EvalRecord.from_json(record.to_json()) == record


def test_typed_fields_of_an_evaluation_record():
    seeds, base, failed = (EvalRecord.from_json(json.loads(x)) for x in OLD_LINES)
    assert seeds.generation == 0 and seeds.params == 27344 and seeds.seed_test_accuracy == (0.22066198595787362,) * 2
    assert seeds.extra == {"mad_score": 0.11033099297893681, "seconds": 1.5} and seeds.baseline is None
    assert seeds.feasible and seeds.value("params") == 27344.0 and seeds.value("cache_bytes") == 2098560.0
    assert base.baseline == "LFM2-like" and base.generation is None and base.value("params") == 26368
    assert failed.failure == "GenomeError: bad" and not failed.feasible and "latency_ms" in failed
    # an older record's top-level "error" is its failure, read under the current name in its place
    old = json.loads(OLD_LINES[2].replace('"failure"', '"error"'))
    assert EvalRecord.from_json(old) == failed and list(EvalRecord.from_json(old)) == list(failed)
    # a baseline's copy and a replay of it: the key goes at the end, and away again
    as_base = seeds.replace(generation=None, baseline="StripedMamba")
    assert list(as_base)[-1] == "baseline" and as_base["generation"] is None
    assert seeds.replace(baseline=None) == seeds and "baseline" not in base.replace(baseline=None)
    with pytest.raises(ValueError, match="evaluation record has no 'hash'"):
        EvalRecord.from_json({"genome": "1.1.1.1.1"})
    with pytest.raises(TypeError):
        hash(seeds)


def test_candidate_round_trip():
    from star_jax.genome import baselines

    g = baselines.transformer_pp(4)
    c = Candidate.of(g, 0, "baseline", "Transformer++")
    assert Candidate.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert c.to_genome() == g and c.hash == g.content_hash()
    plain = Candidate.of(g, 3)
    assert plain.to_json() == {"genome": g.to_string(), "hash": g.content_hash(), "generation": 3,
                               "origin": "offspring"}
    with pytest.raises(ValueError, match="origin must be one of"):
        Candidate(g.to_string(), g.content_hash(), 0, "mutant")
    with pytest.raises(ValueError, match="baseline name goes with origin 'baseline'"):
        Candidate(g.to_string(), g.content_hash(), 0, "offspring", "Transformer++")


def test_checkpoints_hold_the_run_state_not_the_records(tmp_path):
    run = tmp_path / "run"
    result = evolve(tiny(baselines=True, generations=1), run, progress=False, evaluator=CountingEvaluator())
    with RunDir(run).checkpoint_manager() as manager:
        arrays, meta, step = manager.restore()
    assert set(meta) == {"format", "generation", "nsga2", "hypervolume", "population_hypervolume", "reference_point",
                         "evaluations", "baselines"}
    assert meta["evaluations"] == len(result.archive) == len((run / "evaluations.jsonl").read_text().splitlines())
    assert meta["baselines"] == {r.baseline: r.hash for r in result.baselines}
    state = RunState.from_json(json.loads(json.dumps(meta)), arrays)
    assert state.generation == step == 2 and state.hypervolume == result.hypervolume
    assert json.loads(json.dumps(state.to_json())) == meta
    again = RunState.from_json(state.to_json(), state.to_arrays())
    assert again == state
    assert np.array_equal(again.nsga2.population, np.stack([g.to_array() for g in result.population]))


def test_a_run_state_of_format_1_reads_without_its_record_copy():
    from star_jax.evolve.ask_tell import state_to_json

    nsga = state_from_json(state_to_json(_toy_state()))
    arrays = RunState(1, nsga).to_arrays()
    base = json.loads(OLD_LINES[1])
    meta = {"format": "star_jax.evolve_run/1", "generation": 1, "nsga2": RunState(1, nsga).to_json()["nsga2"],
            "archive": [json.loads(OLD_LINES[0])], "hypervolume": [0.5], "population_hypervolume": [0.25],
            "reference_point": [1.0, 2.0], "baselines": [base]}
    state = RunState.from_json(meta, arrays)
    assert state.evaluations is None and state.baselines == {"LFM2-like": base["hash"]}
    assert state.reference_point == (1.0, 2.0) and state.hypervolume == (0.5,)
    with pytest.raises(ValueError, match="not an evolution run state"):
        RunState.from_json(dict(meta, format="star_jax.other/1"), arrays)
    with pytest.raises(ValueError, match="has no 'hypervolume'"):
        RunState.from_json({k: v for k, v in meta.items() if k != "hypervolume"}, arrays)


def _toy_state():
    from star_jax.evolve import NSGA2, uniform_mutation

    strategy = NSGA2(pop_size=4, n_objectives=2, mutate=uniform_mutation(0, 3))
    return strategy.init(0, np.arange(12).reshape(4, 3) % 4)


def _as_format_1(run) -> None:
    """Rewrites a run's newest checkpoint as runs wrote it before: format /1, with a copy of every
    record of the archive and of the baselines."""
    with RunDir(run).checkpoint_manager() as manager:
        arrays, meta, step = manager.restore()
        records = [json.loads(x) for x in (run / "evaluations.jsonl").read_text().splitlines()]
        bases = [json.loads(x) for x in (run / "baselines.jsonl").read_text().splitlines()]
        old = {"format": "star_jax.evolve_run/1", "generation": meta["generation"], "nsga2": meta["nsga2"],
               "archive": [r for r in records if r["generation"] < step], "hypervolume": meta["hypervolume"],
               "population_hypervolume": meta["population_hypervolume"],
               "reference_point": meta["reference_point"], "baselines": bases}
        manager.save(step, arrays, meta=old)


def test_a_run_directory_of_format_1_resumes_and_reports_the_same(tmp_path):
    run, straight = tmp_path / "old", tmp_path / "straight"
    evolve(tiny(baselines=True, generations=1), run, progress=False, evaluator=CountingEvaluator())
    write_report(run)
    report = (run / "plots" / "front.md").read_text()
    _as_format_1(run)
    loaded = load_run(run)
    assert loaded.generations_done == 2 and len(loaded.baselines) == 3
    write_report(run)
    assert (run / "plots" / "front.md").read_text() == report
    ev = CountingEvaluator()
    extended = evolve(tiny(baselines=True, generations=3), run, progress=False, evaluator=ev)
    assert ev.calls == 2  # only the two new generations were trained
    want = evolve(tiny(baselines=True, generations=3), straight, progress=False, evaluator=CountingEvaluator())
    assert extended.archive == want.archive and extended.front_records == want.front_records
    assert extended.hypervolume == want.hypervolume and extended.baselines == want.baselines
    for name in ("evaluations.jsonl", "baselines.jsonl"):
        assert (run / name).read_text() == (straight / name).read_text()
    write_report(run)
    write_report(straight)
    assert (run / "plots" / "front.md").read_text() == (straight / "plots" / "front.md").read_text()


def test_records_that_do_not_match_the_checkpoint_are_named(tmp_path):
    run = tmp_path / "run"
    evolve(tiny(baselines=True, generations=1), run, progress=False, evaluator=CountingEvaluator())
    lines = (run / "evaluations.jsonl").read_text().splitlines()
    (run / "evaluations.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    match = r"does not match the run's records: .* lack .*records of generations < 2"
    with pytest.raises(CheckpointError, match=match):
        load_run(run)
    (run / "baselines.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="lack .*baseline Transformer\\+\\+"):
        load_run(run)
    ev = CountingEvaluator()
    with pytest.warns(RuntimeWarning, match="rebuilding the run"):  # evolve rebuilds it from what is left
        rebuilt = evolve(tiny(baselines=True, generations=1), run, progress=False, evaluator=ev)
    assert 0 < len(ev.trained) <= 4  # the dropped record and the baselines are trained again
    want = evolve(tiny(baselines=True, generations=1), tmp_path / "want", progress=False, evaluator=CountingEvaluator())
    assert rebuilt.archive == want.archive and rebuilt.baselines == want.baselines


def test_a_config_recorded_before_the_nsga2_options_resumes(tmp_path):
    run = tmp_path / "run"
    evolve(tiny(generations=1), run, progress=False, evaluator=CountingEvaluator())
    path = run / "config.json"
    full = json.loads(path.read_text())
    older = {k: v for k, v in full.items()
             if k not in ("tournament_size", "crossover_prob", "n_offspring", "merge_parents", "duplicate_retries")}
    path.write_text(json.dumps(older, indent=2) + "\n")
    ev = CountingEvaluator()
    extended = evolve(tiny(generations=2), run, progress=False, evaluator=ev)
    assert ev.calls == 1 and extended.generations_done == 3
    assert json.loads(path.read_text()) == dict(full, generations=2)


def test_a_record_of_an_old_canonical_form_is_keyed_by_its_hash_now():
    # incompatible sharing pairs in one group id hashed apart from the same plan in two group ids
    # before the canonical form told sharing sets apart: such records load under today's key
    g = Genome.from_string("1.1.2.1.1-1.1.2.1.1-5.1.2.1.1-5.1.2.1.1")
    old = hashlib.sha256(b"1.1.2.1.1-1.1.2.1.1-5.1.2.1.1-5.1.2.1.1").hexdigest()[:16]
    assert old != g.content_hash()
    rec = EvalRecord.from_json({"hash": old, "genome": g.to_string(), "generation": 0})
    assert rec.hash == g.content_hash() == Genome.from_string("1.1.2.1.1-1.1.2.1.1-5.2.2.1.1-5.2.2.1.1").content_hash()
    assert EvalRecord.from_json({"hash": "abc", "genome": "not a genome"}).hash == "abc"
