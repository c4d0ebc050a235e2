"""Merge methods: a registry of small pure functions ``(MergeInputs, MergeSpec) -> coefficients``.

Adding a method = one module defining ``def name(inputs, spec) -> list[float | Tensor]`` plus one
line in ``METHODS``. The engine then calls :func:`merge_coefficients` and
:func:`apply_coefficients` (``theta = (1 - sum c) ⊙ pre + sum c_i ⊙ ft_i``, exact at endpoints).
"""
from __future__ import annotations

import dataclasses

from explorer.config import MergeSpec
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
    "variational": 2,  # 2: keep = magnitude mask under the block multipliers (was: a block fraction)
}


def method_version(name: str) -> int:
    return METHOD_VERSIONS.get(name, 1)


# The MergeSpec fields each method reads. ``canonical_spec`` resets the others to their defaults,
# so a setting a method ignores (task arithmetic at keep 0.2, DARE's scope) neither mislabels its
# points nor stores the same model under several keys. Absent = reads them all.
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "task_arithmetic": (),
    "ties": ("keep", "scope"),
    "dare": ("keep", "seed"),
    "magnitude": ("keep", "scope"),
    "stability": ("keep", "scope"),
    "variational": ("keep", "scope", "seed"),
}
# Methods whose scope and seed act only through the mask, which keep = 1 turns off.
_DENSE_AT_FULL_KEEP = {"ties", "dare", "magnitude", "stability"}


def canonical_spec(spec: MergeSpec) -> MergeSpec:
    """``spec`` with the fields its method ignores set to their defaults (keep 1, global, seed 0)."""
    used = METHOD_FIELDS.get(spec.method, ("keep", "scope", "seed"))
    if spec.method in _DENSE_AT_FULL_KEEP and spec.keep >= 1.0:
        used = ("keep",)
    defaults = {"keep": 1.0, "scope": "global", "seed": 0}
    changes = {k: v for k, v in defaults.items() if k not in used and getattr(spec, k) != v}
    return dataclasses.replace(spec, **changes) if changes else spec


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


__all__ = ["METHODS", "METHOD_FIELDS", "METHOD_VERSIONS", "Coefficient", "MergeFn", "MergeInputs",
           "apply_coefficients", "canonical_spec", "describe_method", "get_method", "merge_coefficients",
           "merge_weights", "method_version"]
