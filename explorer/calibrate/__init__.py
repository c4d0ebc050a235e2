"""Data-aware preparation for merge methods: calibration data, scores, posteriors, their caches.

A merge method in :mod:`explorer.merging` is pure (tensors and a spec in, coefficients out).
When it needs more than the task vectors, its record names a *preparer* here, and the engine
calls :func:`prepare_context` before the merge; the result is the method's
``MergeInputs.context``. Preparers are typed against :class:`CalibrationHost` (the Engine
implements it) and cache through the :class:`CalibrationCache` their caller owns, so changing
alpha or keep never recomputes them.

``PREPARERS[name](host, vector_names, spec, cache) -> dict``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from explorer.config import MergeSpec
from explorer.merging import get_method

from . import pistole_prep, stability, variational
from .cache import CalibrationCache, ScoreCache, content_key, scores_dir
from .host import CalibrationHost

Preparer = Callable[[CalibrationHost, Sequence[str], MergeSpec, CalibrationCache], dict[str, Any]]
PREPARERS: dict[str, Preparer] = {
    "stability": stability.prepare,
    "variational": variational.prepare,
    "pistole": pistole_prep.prepare,
}


def prepare_context(host: CalibrationHost, names: Sequence[str], spec: MergeSpec,
                    cache: CalibrationCache) -> dict[str, Any]:
    """The ``MergeInputs.context`` of ``spec.method`` for the named vectors ({} when it needs none).

    Raises:
        KeyError: unknown method, or a record naming a preparer that is not registered here.
    """
    name = get_method(spec.method).preparer
    if name is None:
        return {}
    if name not in PREPARERS:
        raise KeyError(f"method {spec.method!r} needs preparer {name!r}; registered: {sorted(PREPARERS)}")
    return PREPARERS[name](host, list(names), spec, cache)


__all__ = ["PREPARERS", "CalibrationCache", "CalibrationHost", "Preparer", "ScoreCache", "content_key",
           "prepare_context", "scores_dir"]
