"""Exact hypervolume of a point set (all objectives minimised) w.r.t. a fixed reference point.
It measures how much an evolution run has pushed its Pareto front, generation by generation."""

# Algorithms: a sort-and-sweep for 2 objectives, and for 3 or more objectives the
# hypervolume-by-slicing-objectives recursion (slice along the last objective, add the
# (d-1)-dimensional hypervolume of the points below each slice times the slice's thickness), with
# non-dominated filtering at every level. Exact in any dimension; exponential in the dimension, so
# meant for the handful of objectives and small populations of an architecture search.

from __future__ import annotations

import math

import numpy as np

from star_jax.evolve.nsga2 import dominance_matrix

__all__ = ["hypervolume", "normalize_hypervolume"]


def _non_dominated(points: np.ndarray) -> np.ndarray:
    """Rows of ``points`` not dominated by any other row, duplicates kept once."""
    points = np.unique(points, axis=0)
    if points.shape[0] <= 1:
        return points
    dominated = dominance_matrix(points).any(axis=0)
    return points[~dominated]


def _hv2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of points [n, 2] that all strictly dominate ref [2]."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    volume = 0.0
    best_y = ref[1]
    for x, y in points[order]:
        if y < best_y:
            volume += (ref[0] - x) * (best_y - y)
            best_y = y
    return float(volume)


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume by slicing the last objective; points [n, d] strictly dominate ref [d]."""
    n, d = points.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - points[:, 0].min())
    if d == 2:
        return _hv2d(points, ref)
    points = _non_dominated(points)
    order = np.argsort(points[:, -1], kind="stable")
    points = points[order]
    z = np.append(points[:, -1], ref[-1])
    volume = 0.0
    for i in range(points.shape[0]):
        thickness = z[i + 1] - z[i]
        if thickness > 0:
            volume += thickness * _hv(points[: i + 1, :-1], ref[:-1])
    return float(volume)


def hypervolume(points, reference) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference``.

    Only points that strictly dominate the reference point (smaller in every objective) are
    counted; others, and rows with a NaN, add nothing. Matches pymoo's ``HV`` indicator.

    Arguments:
        points: [n, n_objectives] objective values, all minimised (n may be 0).
        reference: [n_objectives] reference point, typically slightly worse than the nadir.

    Returns:
        The hypervolume as a Python float (0.0 when no point dominates the reference).
    """
    pts = np.asarray(points, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if pts.ndim == 1 and pts.size == ref.size:
        pts = pts[None, :]
    if pts.size == 0:
        return 0.0
    if pts.ndim != 2 or pts.shape[1] != ref.size:
        raise ValueError(
            f"points must have shape [n, {ref.size}] to match the reference point, got {pts.shape}"
        )
    if not np.all(np.isfinite(ref)):
        raise ValueError(f"reference point must be finite, got {ref.tolist()}")
    with np.errstate(invalid="ignore"):
        inside = np.all(pts < ref, axis=1)  # NaN compares False: dropped
    pts = pts[inside]
    if pts.shape[0] == 0:
        return 0.0
    return _hv(pts, ref)


def normalize_hypervolume(value: float, reference, ideal) -> float:
    """A hypervolume as the fraction, in [0, 1], of the box from ``ideal`` to ``reference``.

    Rescaling every objective affinely to ``(f - ideal) / (reference - ideal)`` maps the box to
    the unit cube and multiplies every hypervolume by ``1 / prod(reference - ideal)``; so for
    points no better than ``ideal`` in any objective (e.g. ``ideal`` = the minimum of each
    objective over the points), ``normalize_hypervolume(hypervolume(points, reference),
    reference, ideal)`` equals ``hypervolume(rescaled points, ones)``: 1.0 when one point sits at
    ``ideal``, 0.0 when none dominates ``reference``. Values of different runs compare when they
    share the reference and ideal points.

    Arguments:
        value: a hypervolume w.r.t. ``reference`` (e.g. from ``hypervolume``).
        reference: [n_objectives] the reference point.
        ideal: [n_objectives] the ideal point, smaller than ``reference`` in every objective.

    Returns:
        ``value / prod(reference - ideal)`` as a Python float.

    Raises:
        ValueError: when the points' sizes differ, a value is not finite, or ``ideal`` is not
            below ``reference`` in every objective (the box is empty).
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    lo = np.asarray(ideal, dtype=np.float64).reshape(-1)
    if ref.shape != lo.shape:
        raise ValueError(f"reference {ref.tolist()} and ideal {lo.tolist()} must have one value per objective")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(lo)) and math.isfinite(value)):
        raise ValueError(f"reference {ref.tolist()}, ideal {lo.tolist()} and value {value} must be finite")
    if not np.all(lo < ref):
        raise ValueError(f"the ideal point {lo.tolist()} must be below the reference point {ref.tolist()} "
                         f"in every objective (else the normalising box is empty)")
    return float(value / np.prod(ref - lo))
