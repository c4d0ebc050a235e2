"""The merge cache: which merge the resident theta holds, what it cost, and the calibration cache.

``MergeCache.merge`` writes ``theta_pre + sum_i c_i * tau_i`` (method ``spec.method``) into the
resident ``theta`` of a ``ResidentModels`` in one pass and returns a ``Merged`` record: the
names and spec it holds, the preparer cost of the method's context (stability scores, a
posterior: computed once per setting, ``explorer.calibrate``), and the key of the merged text
tower (the classifiers' text heads are recomputed when it changes). ``ensure`` skips the pass
when theta already holds that merge (a round-robin sweep coming back to a point) and returns
the record of the merge it holds, cost included.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from explorer.calibrate import CalibrationCache, CalibrationHost, prepare_context
from explorer.config import MergeSpec
from explorer.core.finite import check_merged
from explorer.merging import MergedDelta, MergeInputs, apply_coefficients, merge_coefficients, validate_spec

from .models import ResidentModels
from .resident import Vector, constant_coefficients


@dataclass(frozen=True)
class Merged:
    """A merge the resident theta holds."""

    names: tuple[str, ...]        # the vectors, in the order of ``spec.lambdas``
    spec: MergeSpec               # the merge as written
    prep_cost: dict[str, Any] | None = None   # the method's preparer cost (passes, seconds); None: none ran
    text_key: tuple = ()          # what the merged text tower is (() = the base's)


class MergeCache:
    """Merges into ``models.theta``; remembers the one it holds (see the module docstring).

    Args:
        models: the resident weights (``theta`` is written, ``pre`` and the vectors read).
    """

    def __init__(self, models: ResidentModels) -> None:
        self.models = models
        self.calibration = CalibrationCache()   # scores/posteriors of data-aware methods (explorer.calibrate)
        self.held: Merged | None = None         # None while a merge is under way or after one failed

    def ensure(self, names: Sequence[str], spec: MergeSpec, host: CalibrationHost) -> tuple[Merged, bool]:
        """``(the merge theta holds, whether it was written now)``: merged only when not held already."""
        held = self.held
        if held is not None and held.names == tuple(names) and held.spec == spec:
            return held, False
        return self.merge(names, spec, host), True

    def merge(self, names: Sequence[str], spec: MergeSpec, host: CalibrationHost) -> Merged:
        """Write the merge into theta (always) and return its record.

        ``host`` is what the method's preparer reads (``explorer.calibrate.CalibrationHost``: the engine).

        Raises:
            KeyError / ValueError: an unknown method or option, or a lambda count that does not fit.
            InvalidMergeError: non-finite weights or a negative BatchNorm variance (nothing held).
        """
        self.held = None
        validate_spec(spec)
        m = self.models
        vecs = [m.vector(n) for n in names]
        if len(spec.lambdas) != len(vecs):
            raise ValueError(f"{len(spec.lambdas)} lambdas for {len(vecs)} task vectors {list(names)}")
        if not vecs:                      # the pretrained model itself
            m.theta.copy_(m.pre)
            check_merged(m.theta, m.layout.keys, m.layout.segments, (), what=f"base {m.base!r}")
            self.held = Merged((), spec)
            return self.held
        prep_cost, coeffs = None, constant_coefficients(spec)
        if coeffs is None:   # the method reads the task vectors: tau made for this merge only
            context = prepare_context(host, names, spec, self.calibration)
            prep_cost = context.get("prep_cost")   # what the method's scores cost to build
            inputs = MergeInputs(taus=[v.tau for v in vecs], segments=m.layout.segments,
                                 names=list(m.layout.keys), shapes=list(m.layout.shapes), context=context)
            coeffs = merge_coefficients(inputs, spec)
            del inputs
        apply_coefficients(m.pre, [v.ft for v in vecs], coeffs, out=m.theta, untouched=[v.untouched for v in vecs])
        # Before anything reads the weights (twins, text head, an attack): no NaN, no negative variance.
        check_merged(m.theta, m.layout.keys, m.layout.segments, spec.lambdas,
                     what=f"{spec.method} merge of {', '.join(names)}")
        self.held = Merged(tuple(names), spec, prep_cost, _text_key(vecs, coeffs, spec))
        return self.held


def _text_key(vecs: Sequence[Vector], coeffs: Any, spec: MergeSpec) -> tuple:
    """What the merged text tower is: the text-touching vectors and their coefficients (the spec's
    digest where a coefficient is not one number); () when it is the base's."""
    if isinstance(coeffs, MergedDelta):   # no per-vector coefficients: key the text by the spec
        return (spec.digest(),) if any(v.touches_text for v in vecs) else ()
    return tuple((v.name, c if isinstance(c, float) else spec.digest())
                 for v, c in zip(vecs, coeffs) if v.touches_text and (not isinstance(c, float) or c != 0))
