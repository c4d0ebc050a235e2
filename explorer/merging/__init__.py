"""Merge methods: a registry of small pure functions ``(MergeInputs, MergeSpec) -> coefficients``.

Adding a method = one module defining ``def name(inputs, spec) -> list[float | Tensor]`` plus one
line in ``METHODS``. The engine then calls :func:`merge_coefficients` and
:func:`apply_coefficients` (``theta = (1 - sum c) ⊙ pre + sum c_i ⊙ ft_i``, exact at endpoints).
"""
from __future__ import annotations

from explorer.merging import dare, magnitude, stability, task_arithmetic, ties, variational
from explorer.merging.base import (Coefficient, MergeFn, MergeInputs, apply_coefficients,
                                   merge_coefficients, merge_weights)

METHODS: dict[str, MergeFn] = {
    "task_arithmetic": task_arithmetic.task_arithmetic,
    "ties": ties.ties,
    "dare": dare.dare,
    "magnitude": magnitude.magnitude,
    "stability": stability.stability,
    "variational": variational.variational,
}


# Bumped when a method's defaults or algorithm change its results; part of the store key of its
# points (with CODE_VERSION), so other methods' stored points stay valid. Absent = version 1.
METHOD_VERSIONS: dict[str, int] = {
    "stability": 2,   # 2: magnitude claims, |lambda| * |S| contests (was: signed-score ranking)
}


def method_version(name: str) -> int:
    return METHOD_VERSIONS.get(name, 1)


def get_method(name: str) -> MergeFn:
    """The registered method ``name``; a ``KeyError`` listing the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown merge method {name!r}; valid: {', '.join(sorted(METHODS))}") from None


def describe_method(name: str) -> str:
    """First line of the method's docstring (its formula and paper link), for UIs and logs."""
    doc = get_method(name).__doc__ or name
    return doc.strip().splitlines()[0]


__all__ = ["METHODS", "METHOD_VERSIONS", "Coefficient", "MergeFn", "MergeInputs", "apply_coefficients",
           "describe_method", "get_method", "merge_coefficients", "merge_weights", "method_version"]
