"""Plots a researcher can trust: each plane's own Pareto front, labelled front points, baselines
that dominate a front point called out, axes that say what they show, hypervolume in [0, 1]
against stated points, integer generation ticks, genome strings in the terminal front table."""
from __future__ import annotations

import io
import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rich.console import Console  # noqa: E402

from star_jax.evolve import evolve, load_run  # noqa: E402
from star_jax.evolve.hypervolume import hypervolume, normalize_hypervolume  # noqa: E402
from star_jax.evolve.loop import baseline_genomes  # noqa: E402
from star_jax.evolve.report import (  # noqa: E402
    dominated_front_points, hypervolume_figure, normalized_hypervolume, plane_figure, plane_front, print_front,
    short_label, write_report)
from star_jax.evolve import EvolveConfig  # noqa: E402

BASELINE_HASHES = {g.content_hash() for g in baseline_genomes(4).values()}


def strong_baselines(genomes, config, task, *, on_candidate=None):
    """Deterministic stand-in for training (accuracy from the genome's hash), except that the
    baselines reach 99.5% accuracy."""
    out = []
    for g in genomes:
        acc = 0.995 if g.content_hash() in BASELINE_HASHES else (int(g.content_hash()[:8], 16) % 997) / 997.0
        out.append({"train_loss": 2.0 - acc, "test_loss": 2.0 - acc, "test_accuracy": acc, "diverged": False,
                    "steps_run": 1})
    return out


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    config = EvolveConfig.quick(n_liv=4, pop_size=10, generations=3, seed=3, strategy="sequential", baselines=True)
    evolve(config, run, progress=False, evaluator=strong_baselines)
    return load_run(run)


def _record(h, error, params, cache, violation=0.0):
    return {"hash": h, "objectives": {"error": error, "cache_bytes": cache}, "params": params,
            "cache_bytes": cache, "violation": violation}


def test_plane_front_is_the_front_of_that_plane():
    records = [_record("a", 0.1, 900, 50), _record("b", 0.2, 100, 10), _record("c", 0.3, 50, 500),
               _record("d", 0.15, 1000, 5), _record("e", 0.05, 2000, 400), _record("f", 0.01, 10, 1, violation=1.0),
               _record("g", None, 5, 5)]
    # error vs params: c (50), b (100), a (900), e (2000); d is beaten by a in both
    assert [r["hash"] for r in plane_front(records, "error", "params")] == ["c", "b", "a", "e"]
    # error vs cache: d (5), a (50), e (400); b and c are beaten by d and a
    assert [r["hash"] for r in plane_front(records, "error", "cache_bytes")] == ["d", "a", "e"]


def test_each_plot_highlights_the_front_of_its_own_plane(result):
    records = list(result.archive.values())
    for x_key in ("params", "cache_bytes"):
        front = plane_front(records, "error", x_key)
        fig = plane_figure(result, x_key)
        try:
            ax = fig.axes[0]
            (red,) = [c for c in ax.collections if c.get_label().startswith("Pareto front in this plane")]
            want = sorted((float(r[x_key]), float(r["objectives"]["error"])) for r in front)
            assert sorted(map(tuple, red.get_offsets().tolist())) == want
            labels = {t.get_text() for t in ax.texts}
            assert {short_label(r["short"]) for r in front} <= labels  # every front point named (< 12 here)
            assert ax.get_ylabel() == "test error = 1 - accuracy (lower is better)"
            assert ax.get_xlabel().startswith("parameters (lower is better" if x_key == "params"
                                              else "inference cache bytes per sequence at L=4096 (lower is better")
        finally:
            plt.close(fig)
    # the fixture's two planes really differ: a plot of one would mislead in the other
    assert ({r["hash"] for r in plane_front(records, "error", "params")}
            != {r["hash"] for r in plane_front(records, "error", "cache_bytes")})


def test_a_baseline_that_dominates_a_front_point_is_annotated(result):
    records = list(result.archive.values())
    counts = []
    for x_key in ("params", "cache_bytes"):
        front = plane_front(records, "error", x_key)
        for b in result.baselines:
            dominated = dominated_front_points(b, front, "error", x_key)
            for i, r in enumerate(front):
                beats = (b[x_key] <= r[x_key] and b["objectives"]["error"] <= r["objectives"]["error"]
                         and (b[x_key], b["objectives"]["error"]) != (r[x_key], r["objectives"]["error"]))
                assert (i in dominated) == beats
        fig = plane_figure(result, x_key)
        try:
            texts = [t.get_text() for t in fig.axes[0].texts]
            assert {"baseline: Transformer++", "baseline: StripedMamba", "baseline: LFM2-like"} <= {
                c.get_label() for c in fig.axes[0].collections}
            for b in result.baselines:  # annotated exactly when it dominates some front point
                n = len(dominated_front_points(b, front, "error", x_key))
                counts.append(n)
                said = [t for t in texts if t.startswith(f"{b['baseline']} dominates")]
                assert said == ([f"{b['baseline']} dominates {n} front point{'s' if n > 1 else ''}"] if n else [])
        finally:
            plt.close(fig)
    # the baselines reach 99.5% accuracy: some dominate front points, some (in the params plane) do not
    assert min(counts) == 0 and max(counts) > 0


def test_short_labels_are_plot_sized():
    assert short_label("SA-1 > GMemless > SA-1 > GMemless > SA-1 > GMemless > SA-1 > GMemless") == "SA-1/GMemless x4"
    assert short_label("GMemless > GMemless > GMemless") == "GMemless x3"
    assert short_label("SA-1 > SA-1 > GMemless > Rec-1*") == "SA-1 x2/GMemless/Rec-1*"
    long = " > ".join(["SA-1", "Rec-1", "SA-1", "GConv-1", "SA-1", "Rec-1", "GMemless", "GMemless"])
    assert short_label(long) == "3 SA-1, 2 Rec-1, 2 GMemless, 1 GConv-1"


def test_normalised_hypervolume_matches_rescaled_points_and_stays_in_unit_interval():
    rng = np.random.default_rng(0)
    for n, d in itertools.product((1, 5, 20), (2, 3)):
        points = rng.uniform(1.0, 9.0, size=(n, d)) * np.array([1.0, 1e5, 10.0][:d])
        ref = points.max(axis=0) * 1.1
        ideal = points.min(axis=0)
        value = normalize_hypervolume(hypervolume(points, ref), ref, ideal)
        rescaled = hypervolume((points - ideal) / (ref - ideal), np.ones(d))
        assert value == pytest.approx(rescaled, rel=1e-12)
        assert 0.0 <= value <= 1.0
    assert normalize_hypervolume(hypervolume([[0.0, 0.0]], [2.0, 4.0]), [2.0, 4.0], [0.0, 0.0]) == 1.0
    assert normalize_hypervolume(hypervolume([[3.0, 1.0]], [2.0, 4.0]), [2.0, 4.0], [0.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="below the reference point"):
        normalize_hypervolume(1.0, [2.0, 4.0], [2.0, 0.0])


def test_hypervolume_plot_is_normalised_states_its_points_and_counts_generations(result):
    archive, population, ref, ideal = normalized_hypervolume(result)
    assert len(archive) == len(result.hypervolume) == 4
    assert all(0.0 <= v <= 1.0 for v in archive + population)
    assert archive == sorted(archive) and archive[-1] > 0.5
    assert ref == result.reference_point
    assert ideal[0] == min(r["objectives"]["error"] for r in result.archive.values())
    fig = hypervolume_figure(result)
    try:
        ax = fig.axes[0]
        locator = ax.xaxis.get_major_locator()
        assert isinstance(locator, matplotlib.ticker.MaxNLocator) and locator._integer
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [0, 1, 2, 3]
        assert 0.0 <= ax.get_ylim()[0] and ax.get_ylim()[1] == 1.0
        assert "ideal point" in ax.get_title() and "reference point" in ax.get_title()
        assert f"error {ref[0]:.4g}" in ax.get_title()
        (line, _) = ax.get_lines()
        assert line.get_ydata().tolist() == archive
    finally:
        plt.close(fig)


def test_report_files_state_the_hypervolume_reference(result):
    paths = write_report(result.run_dir)
    assert sorted(p.name for p in paths) == ["front.md", "front_error_vs_cache_bytes.png",
                                             "front_error_vs_params.png", "hypervolume.png"]
    text = (result.run_dir / "plots" / "front.md").read_text()
    archive, _, ref, _ = normalized_hypervolume(result)
    assert "Normalised to [0, 1]" in text and f"reference point (error {ref[0]:.4g}" in text
    assert ", ".join(f"{v:.4f}" for v in archive) in text
    assert "test error = 1 - accuracy (lower is better)" in text


def test_terminal_front_table_shows_genome_strings(result):
    buffer = io.StringIO()
    print_front(result, console=Console(file=buffer, width=240))
    text = buffer.getvalue()
    assert result.front_records
    for r in result.front_records:
        assert r["genome"] in text
    for r in result.baselines:
        assert r["genome"] in text
    assert "hypervolume" in text and "reference point" in text


def test_reports_of_other_objective_orders_constraints_and_one_generation(tmp_path):
    # the quality objective is plotted against each size whatever its position; constraint
    # violators are drawn apart and an infeasible baseline dominates nothing; a reference point
    # no genome beats is said so; one generation has the integer tick 0 only
    from star_jax.evolve.report import quality_key

    assert quality_key(("cache_bytes", "error")) == "error" and quality_key(("params", "cache_bytes")) == "params"
    run = tmp_path / "order"
    evolve(EvolveConfig.quick(n_liv=2, pop_size=4, generations=0, seed=1, baselines=True,
                              objectives=("cache_bytes", "error"), constraints=[{"objective": "params", "max_value": 13000}]),
           run, progress=False, evaluator=strong_baselines)
    names = sorted(p.name for p in write_report(run))
    assert names == ["front.md", "front_error_vs_cache_bytes.png", "front_error_vs_params.png", "hypervolume.png"]
    result = load_run(run)
    assert any(not r.feasible for r in result.archive.values()) and any(not b.feasible for b in result.baselines)
    fig = plane_figure(result, "params")
    try:
        labels = fig.axes[0].get_legend_handles_labels()[1]
        assert any(lab.startswith("infeasible: violates a constraint") for lab in labels)
        assert any(lab.endswith("(infeasible)") for lab in labels)
        assert not any("dominates" in t.get_text() and "(infeasible)" in t.get_text() for t in fig.axes[0].texts)
        for b in result.baselines:
            if not b.feasible:
                assert not any(t.get_text().startswith(f"{b.baseline} dominates") for t in fig.axes[0].texts)
    finally:
        plt.close(fig)
    fig = hypervolume_figure(result)
    try:
        assert list(fig.axes[0].get_xticks()) == [0]
    finally:
        plt.close(fig)
    far = tmp_path / "far"
    evolve(EvolveConfig.quick(n_liv=2, pop_size=4, generations=0, seed=1, reference_point=[0.001, 1.0]),
           far, progress=False, evaluator=strong_baselines)
    write_report(far)
    text = (far / "plots" / "front.md").read_text()
    assert "no genome beats the reference point" in text and "no reference point yet" not in text
