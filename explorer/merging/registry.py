"""The registry of merge methods: one :class:`MethodRecord` per method, and what derives from it.

Adding a method: a module ``explorer/merging/<name>.py`` with the function and its ``RECORD``,
and one entry in ``_RECORDS`` below. The UI choices, the CLI help, ``canonical_spec``, option
validation, the store key's method version and the parametrised tests read the records.
``merge_coefficients`` (run the method a spec names) lives here, by the records it dispatches on,
so that ``base`` (the contract every method imports) imports no method back.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from explorer.config import MergeSpec

from . import dare, iso_c, magnitude, pistole, stability, task_arithmetic, ties, tsv_m, variational
from .base import MergedDelta, MergeInputs, MergeResult
from .record import SPEC_FIELDS, MethodRecord

_RECORDS: tuple[MethodRecord, ...] = (
    task_arithmetic.RECORD,
    ties.RECORD,
    dare.RECORD,
    magnitude.RECORD,
    stability.RECORD,
    variational.RECORD,
    pistole.RECORD,
    iso_c.RECORD,
    tsv_m.RECORD,
)
METHODS: dict[str, MethodRecord] = {r.name: r for r in _RECORDS}



_SPEC_DEFAULTS = {"keep": 1.0, "scope": "global", "seed": 0}


def get_method(name: str) -> MethodRecord:
    """The record of method ``name``.

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown merge method {name!r}; valid: {', '.join(sorted(METHODS))}") from None


def method_version(name: str) -> int:
    """The method's version (part of its points' store key when > 1)."""
    return get_method(name).version


def validate_spec(spec: MergeSpec) -> MethodRecord:
    """Check ``spec`` against its method's record and return the record.

    Raises:
        KeyError: unknown method (the message lists the valid ones).
        ValueError: an option the method does not declare, a value outside an option's
            choices (the message lists the valid ones), or text for a numeric option.
    """
    record = get_method(spec.method)
    unknown = [k for k, _ in spec.options if k not in record.options]
    if unknown:
        valid = ", ".join(sorted(record.options)) or "none"
        raise ValueError(f"merge method {spec.method!r} has no option {', '.join(map(repr, unknown))}; "
                         f"valid: {valid}")
    for key, value in spec.options:
        choices, default = record.options[key].choices, record.options[key].default
        if choices is not None and value not in choices:
            raise ValueError(f"{spec.method} option {key} takes one of {', '.join(choices)}; got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) \
                and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{spec.method} option {key} takes a number (default {default}); got {value!r}")
    return record


def canonical_spec(spec: MergeSpec) -> MergeSpec:
    """``spec`` (validated) with the fields its method ignores set to their defaults (keep 1, global,
    seed 0), so a setting a method ignores (task arithmetic at keep 0.2, DARE's scope) neither
    mislabels its points nor stores the same model under several keys."""
    record = validate_spec(spec)
    used = record.fields
    if record.dense_at_full_keep and spec.keep >= 1.0:
        used = ("keep",)
    changes = {k: v for k, v in _SPEC_DEFAULTS.items() if k not in used and getattr(spec, k) != v}
    return dataclasses.replace(spec, **changes) if changes else spec


assert set(_SPEC_DEFAULTS) == set(SPEC_FIELDS)


@torch.no_grad()
def merge_coefficients(inputs: MergeInputs, spec: MergeSpec) -> MergeResult:
    """Run the registered method ``spec.method``: one coefficient per task vector, or the merged
    delta of a method that is no per-vector scaling (:class:`MergedDelta`).

    Raises:
        KeyError: unknown method (the message lists the valid ones).
        ValueError: an option the method does not declare, or ``len(spec.lambdas) != len(inputs.taus)``.
    """
    record = validate_spec(spec)
    if len(spec.lambdas) != len(inputs.taus):
        raise ValueError(f"merge spec has {len(spec.lambdas)} lambdas for {len(inputs.taus)} task vectors")
    result = record.fn(inputs, spec)
    if isinstance(result, MergedDelta):
        d = result.delta
        if d.shape != inputs.taus[0].shape or d.dtype != torch.float32 or d.device != inputs.device:
            raise RuntimeError(f"method {spec.method!r}: delta is {tuple(d.shape)} {d.dtype} on {d.device}, "
                               f"expected {tuple(inputs.taus[0].shape)} float32 on {inputs.device}")
        return result
    coeffs = list(result)
    if len(coeffs) != len(inputs.taus):
        raise RuntimeError(f"method {spec.method!r} returned {len(coeffs)} coefficients "
                           f"for {len(inputs.taus)} task vectors")
    for i, c in enumerate(coeffs):
        if isinstance(c, Tensor) and (c.shape != inputs.taus[i].shape or c.dtype != torch.float32):
            raise RuntimeError(f"method {spec.method!r}: coefficient {i} is {tuple(c.shape)} {c.dtype}, "
                               f"expected {tuple(inputs.taus[i].shape)} float32")
    return coeffs
