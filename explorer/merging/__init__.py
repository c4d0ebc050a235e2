"""Merge methods: pure functions ``(MergeInputs, MergeSpec) -> coefficients``, one record each.

Every method is a small module ending with a :class:`MethodRecord` (function, spec fields,
options with defaults, version, paper, preparer); :mod:`explorer.merging.registry` lists them.
The engine calls :func:`merge_coefficients` and :func:`apply_coefficients`
(``theta = (1 - sum c) ⊙ pre + sum c_i ⊙ ft_i``, exact at endpoints). Data-aware preparation
(calibration scores, posteriors) lives in :mod:`explorer.calibrate`; nothing here imports the
engine, attacks, data or calibrate.
"""
from __future__ import annotations

from .base import Coefficient, MergedDelta, MergeInputs, MergeResult, apply_coefficients
from .record import MergeFn, MethodRecord, Option
from .registry import (
    METHODS,
    canonical_spec,
    get_method,
    merge_coefficients,
    method_version,
    validate_spec,
)

__all__ = ["METHODS", "Coefficient", "MergeFn", "MergeInputs", "MergedDelta", "MergeResult", "MethodRecord", "Option",
           "apply_coefficients", "canonical_spec", "get_method", "merge_coefficients", "method_version",
           "validate_spec"]
