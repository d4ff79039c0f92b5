"""Progress tells the truth and goes to stderr: a compiling phase before the first step, an overall
bar for MAD scores and populations, nested bars sharing one display, nothing when switched off."""
from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

import star_jax as sj
from star_jax import tasks
from star_jax.train import mad
from star_jax.train.progress import progress_bar

TASK_FIELDS = dict(vocab_size=16, seq_len=16, num_train=64, num_test=16)
CFG = sj.ModelConfig(width=16, vocab_size=16, max_len=16, head_dim=4)
TRAIN = sj.TrainConfig(steps=4, batch_size=4, warmup_steps=0, eval_every=2, eval_batch_size=16)
GENOMES = ("1.1.1.1.1-9.1.1.1.1", "5.1.1.1.1-9.1.1.1.1")


@pytest.fixture(scope="module")
def task():
    return tasks.make("in_context_recall", **TASK_FIELDS)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_train_shows_a_compiling_phase_before_training_on_stderr(task, capfd):
    from star_jax.train.parts import clear_program_cache

    clear_program_cache()  # the genome's part programs must compile in this run
    sj.train("7.1.1.1.1-9.1.1.1.1", CFG, task, TRAIN, progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    lines = _lines(err)
    compiling = [i for i, line in enumerate(lines) if re.match(r"compiling \d+ part programs? \.\.\.", line)]
    training = [i for i, line in enumerate(lines) if line == "training ..."]
    assert compiling and training and compiling[0] < training[0], lines
    assert any(re.match(r"compiled \d+ part programs? in [\d.]+s", line) for line in lines), lines
    assert re.search(r"^train: 4/4 done in [\d.]+s, loss [\d.]+ +test loss [\d.]+ +acc [\d.]+", err, re.M), lines
    # the same genome again: nothing left to compile, so no compiling phase is claimed
    sj.train("7.1.1.1.1-9.1.1.1.1", CFG, task, TRAIN, progress=True)
    again = _lines(capfd.readouterr().err)
    assert again[0] == "training ..." and not any(line.startswith("compil") for line in again), again


def test_progress_off_prints_nothing(task, capfd):
    sj.train(GENOMES[0], CFG, task, TRAIN, progress=False)
    sj.train_population(GENOMES, CFG, task, TRAIN, strategy="sequential")  # off by default
    assert capfd.readouterr() == ("", "")


def test_mad_score_has_an_overall_bar_over_settings_and_grid(capfd):
    settings = [("in_context_recall", TASK_FIELDS), ("in_context_recall", {**TASK_FIELDS, "num_test": 8})]
    result = mad.score(GENOMES[0], CFG, settings=settings, lrs=(1e-3, 5e-4), weight_decays=(0.0,), steps=2,
                       batch_size=4, eval_batch_size=16, progress=True, workers=1)
    out, err = capfd.readouterr()
    assert out == ""
    lines = _lines(err)
    assert lines[0] == "MAD score: 4 runs ..."
    finished = [line for line in lines if re.match(r"MAD run \d/4: .*: test accuracy", line)]
    names = [s.name for s in result.settings]
    assert [line.split(": test accuracy")[0] for line in finished] == [
        f"MAD run 1/4: {names[0]} lr=0.001 wd=0", f"MAD run 2/4: {names[0]} lr=0.0005 wd=0",
        f"MAD run 3/4: {names[1]} lr=0.001 wd=0", f"MAD run 4/4: {names[1]} lr=0.0005 wd=0"]
    accuracy = float(finished[0].rsplit(" ", 1)[1])
    assert accuracy == pytest.approx(result.settings[0].grid[0].test_accuracy, abs=5e-5)
    assert re.match(r"MAD score: 4 runs: 4/4 done in [\d.]+s", lines[-1]), lines[-1]
    assert sum(line == "training ..." for line in lines) == 4  # each run's own bar, inside the overall one


def test_mad_score_with_two_workers_names_each_setting_and_every_finished_run(capfd):
    settings = [("in_context_recall", TASK_FIELDS), ("in_context_recall", {**TASK_FIELDS, "num_test": 8})]
    result = mad.score(GENOMES[0], CFG, settings=settings, lrs=(1e-3, 5e-4), weight_decays=(0.0,), steps=2,
                       batch_size=4, eval_batch_size=16, progress=True, workers=2)
    lines = _lines(capfd.readouterr().err)
    names = [s.name for s in result.settings]
    assert [line for line in lines if line.startswith("MAD runs ")] == [
        f"MAD runs 1-2/4: {names[0]}, 2 at a time ...", f"MAD runs 3-4/4: {names[1]}, 2 at a time ..."]
    finished = [line.split(": test accuracy")[0] for line in lines if ": test accuracy" in line]
    # numbered as they finish; within a setting the two runs may finish in either order
    assert [f.split(": ", 1)[0] for f in finished] == [f"MAD run {k}/4" for k in range(1, 5)]
    assert sorted(f.split(": ", 1)[1] for f in finished[:2]) == [f"{names[0]} lr=0.0005 wd=0",
                                                                 f"{names[0]} lr=0.001 wd=0"]
    assert not any(line == "training ..." for line in lines)  # no per-run bars while runs overlap
    assert re.match(r"MAD score: 4 runs: 4/4 done in [\d.]+s", lines[-1]), lines[-1]


@pytest.mark.parametrize("strategy, unit, total, workers", [("sequential", "candidates", 2, 1),
                                                            ("sequential", "candidates", 2, 2),
                                                            ("static", "candidate-steps", 8, None)])
def test_train_population_progress_counts_the_whole_population(task, capfd, strategy, unit, total, workers):
    sj.train_population(GENOMES, CFG, task, TRAIN, strategy=strategy, progress=True, workers=workers)
    out, err = capfd.readouterr()
    assert out == ""  # progress used to be printed to stdout
    lines = _lines(err)
    title = f"train_population: 2 genomes ({strategy}), {unit}"
    assert lines[0] == f"{title} ..."
    assert re.match(rf"{re.escape(title)}: {total}/{total} done in [\d.]+s", lines[-1]), lines[-1]
    assert lines[1].startswith("compiling"), lines
    if workers == 1:
        assert [line for line in lines if line.startswith("candidate ")] == [
            "candidate 1/2: SA-1 > GMemless ...", "candidate 2/2: Rec-1 > GMemless ..."]
    elif workers == 2:
        assert "training 2 candidates, 2 at a time ..." in lines
    else:
        assert "training 2 candidates (static) ..." in lines


def test_nested_bars_share_one_live_display():
    from star_jax.train import progress

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with progress_bar("outer job", 2, console=console) as outer:
        (display, interactive, _), = progress._SHARED
        assert interactive
        for i in range(2):
            with progress_bar(f"inner {i}", 3) as inner:  # joins the outer display: no second one
                inner.phase(f"inner {i} training")
                inner.update(completed=3)
                assert len(progress._SHARED) == 1
                assert [t.description for t in display.tasks] == ["outer job", f"inner {i} training"]
                display.refresh()
            assert [t.description for t in display.tasks] == ["outer job"]  # removed when done
            outer.advance()
        outer.log("a line above the bars")
    text = buffer.getvalue()
    assert "inner 1 training" in text and "a line above the bars" in text
    assert re.search(r"outer job\s.*2/2", text)
    assert progress._SHARED == []  # the display is gone once the outer block ends
