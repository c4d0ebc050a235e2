"""Pareto fronts and hypervolume on the clean x robust accuracy square (both maximised).

The hypervolume of a point set is the area of the union of the rectangles ``[0, clean] x [0,
robust]`` (reference point (0, 0)), i.e. the part of the unit square its Pareto front dominates.
A single point (0.5, 0.5) has 0.25; the natural and robust endpoints alone give the area under
their staircase, and a frontier that bends outward adds area.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (maximising both coordinates), by the first ascending.

    Of equal points the first given is kept; a point equal to another in one coordinate and lower
    in the other is dominated. The one Pareto implementation (plots draw by index, this module
    measures by value).
    """
    order = sorted(range(len(points)), key=lambda i: (-float(points[i][0]), -float(points[i][1])))
    front: list[int] = []
    for i in order:
        if not front or float(points[i][1]) > float(points[front[-1]][1]):
            front.append(i)
    return front[::-1]


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points (maximising both coordinates), sorted by the first ascending; duplicates
    collapse to one point (``pareto_indices``)."""
    pts = [(float(x), float(y)) for x, y in points]
    return [pts[i] for i in pareto_indices(pts)]


def hypervolume(points: Iterable[tuple[float, float]], ref: tuple[float, float] = (0.0, 0.0)) -> float:
    """Area dominated by ``points`` above ``ref`` (points not above ``ref`` in both add nothing).

    Along the front (first coordinate ascending, second descending) the area is
    ``sum_k (x_k - x_{k-1}) * (y_k - ref_y)`` with ``x_0 = ref_x``.
    """
    rx, ry = ref
    front = pareto_front((x, y) for x, y in points if x > rx and y > ry)
    area, prev = 0.0, rx
    for x, y in front:
        area += (x - prev) * (y - ry)
        prev = x
    return area
