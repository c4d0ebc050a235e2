"""Invariants every registered merge method holds, parametrised over the registry.

A new method (a module with its ``RECORD``, one line in ``explorer/merging/registry.py``) is
covered here without editing this file: alpha=0/1 at keep=1 reproduce the fine-tunes bit for
bit, keep leaves the number of coordinates its record declares, all-zero lambdas give theta_pre
bit for bit, the spec fields it declares unread do not change its coefficients, its declared
option defaults are its real defaults, and an undeclared option is refused. Methods whose
record names a preparer get their context from the real preparer on the tiny open_clip zoo.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from explorer.calibrate import PREPARERS
from explorer.config import MergeSpec
from explorer.merging import (
    METHODS,
    MergedDelta,
    MergeInputs,
    apply_coefficients,
    canonical_spec,
    merge_coefficients,
    validate_spec,
)
from explorer.merging.sparsify import kept_count

SEGMENTS = [(0, 7), (7, 107), (107, 110), (110, 400), (400, 1000)]
NAMES = ["natural", "robust"]
# Cheap calibration for the prepared contexts, where a method declares these options and the
# spec leaves them unset (so the explicit-defaults test still runs the declared defaults).
FAST = {"calib_n": 8, "attack_steps": 1, "traj_steps": 1, "vi_steps": 3}


class Case:
    """pre, two fine-tunes and ``inputs(spec)``: synthetic tensors, or the tiny zoo + preparer."""

    def __init__(self, pre, fts, segments, context_of=None, names=(), shapes=()) -> None:
        self.pre, self.fts, self.segments = pre, fts, segments
        self.taus = [ft - pre for ft in fts]
        self.context_of = context_of
        self.names, self.shapes = list(names), list(shapes)

    def inputs(self, spec: MergeSpec) -> MergeInputs:
        context = {} if self.context_of is None else self.context_of(spec)
        return MergeInputs(self.taus, self.segments, names=self.names, context=context, shapes=self.shapes)

    def coeffs(self, spec: MergeSpec) -> list:
        """The coefficients, or ``[delta]`` for a method that returns a ``MergedDelta``."""
        out = merge_coefficients(self.inputs(spec), spec)
        return [out.delta] if isinstance(out, MergedDelta) else out

    def theta(self, spec: MergeSpec) -> torch.Tensor:
        return apply_coefficients(self.pre, self.fts, merge_coefficients(self.inputs(spec), spec))


@pytest.fixture(scope="module")
def engine(tiny_zoo):
    from explorer.engine.frontier import Engine
    return Engine(tiny_zoo, device="cpu")


@pytest.fixture(params=list(METHODS))
def case(request) -> tuple[str, Case]:
    method = request.param
    if METHODS[method].preparer is None:
        g = torch.Generator().manual_seed(0)
        pre = torch.randn(1000, generator=g)
        # fine-tunes of another magnitude, so fp32 pre + (ft - pre) != ft often
        return method, Case(pre, [3 * torch.randn(1000, generator=g) for _ in range(2)], SEGMENTS)
    eng = request.getfixturevalue("engine")
    fast = {k: v for k, v in FAST.items() if k in METHODS[method].options}

    def context_of(spec: MergeSpec) -> dict:
        return eng.context(NAMES, dataclasses.replace(spec, options={**fast, **dict(spec.options)}.items()))

    return method, Case(eng.pre, [eng.vector(n).ft for n in NAMES], eng.layout.segments, context_of,
                        eng.layout.keys, eng.layout.shapes)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b
    n = (a if isinstance(a, torch.Tensor) else b).numel()
    return torch.equal(*[x if isinstance(x, torch.Tensor) else torch.full((n,), x) for x in (a, b)])


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_alpha_endpoints_are_the_fine_tunes_bit_for_bit(case, scope):
    method, c = case
    if not METHODS[method].exact_endpoints:   # soft masks, spectra: declared in the record
        pytest.skip(f"{method} reshapes even a single vector (record: exact_endpoints=False)")
    for alpha in (0.0, 1.0):
        spec = MergeSpec.from_alpha(alpha, method=method, keep=1.0, scope=scope, seed=3)
        assert torch.equal(c.theta(spec), c.fts[int(alpha)])


@pytest.mark.parametrize("keep", [0.2, 0.6])
@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_keep_leaves_the_declared_count(case, keep, scope):
    method, c = case
    record = METHODS[method]
    spec = MergeSpec.from_alpha(0.4, method=method, keep=keep, scope=scope)
    got = c.coeffs(spec)
    if "keep" not in record.fields:  # keep is not read: the dense merge
        assert all(_same(a, b) for a, b in zip(got, c.coeffs(dataclasses.replace(spec, keep=1.0))))
        return
    parts = c.segments if scope == "per_tensor" and "scope" in record.fields else [(0, c.pre.numel())]
    for coeff in got:
        for a, b in parts:
            n, k, count = b - a, kept_count(b - a, keep), int((coeff[a:b] != 0).sum())
            if record.keep_count == "exact":
                assert count == k
            elif record.keep_count == "at_most":
                assert count <= k
            else:  # random masks: the count is Binomial(n, keep); 6 standard deviations
                assert abs(count - keep * n) <= 6 * math.sqrt(n * keep * (1 - keep)) + 1


@pytest.mark.parametrize("keep", [1.0, 0.3])
def test_zero_lambdas_give_theta_pre_bit_for_bit(case, keep):
    method, c = case
    spec = MergeSpec(method=method, lambdas=(0.0, 0.0), keep=keep, scope="per_tensor", seed=2)
    assert torch.equal(c.theta(spec), c.pre)


@pytest.mark.parametrize("lambdas", [(0.3, 0.45), (-0.7, 1.3), (0.0, -1.0)])
@pytest.mark.parametrize("keep", [1.0, 0.3])
def test_untouched_weights_stay_theta_pre_bit_for_bit(case, lambdas, keep):
    """Where every merged vector is zero the merged weight is theta_pre, for any lambdas (issue 11,
    item 6: ``(1 - c) pre + c ft`` moved untouched text-tower weights by up to 3.8e-6).

    Per coordinate for per-vector coefficients; per tensor for a ``MergedDelta`` (spectral
    methods mix a matrix's coordinates, so only a tensor no vector touches is untouched).
    """
    method, c = case
    whole = torch.zeros(c.pre.numel(), dtype=torch.bool)
    for a, b in c.segments[:: max(1, len(c.segments) // 4)]:   # whole tensors no vector touches
        whole[a:b] = True
    scattered = whole.clone()
    scattered[::7] = True                                      # and scattered coordinates
    whole, scattered = whole.to(c.pre.device), scattered.to(c.pre.device)
    part = Case(c.pre, [torch.where(scattered, c.pre, ft) for ft in c.fts], c.segments, c.context_of,
                c.names, c.shapes)
    spec = MergeSpec(method=method, lambdas=lambdas, keep=keep, scope="per_tensor", seed=2)
    coordinatewise = not isinstance(merge_coefficients(part.inputs(spec), spec), MergedDelta)
    untouched = scattered if coordinatewise else whole
    assert torch.equal(part.theta(spec)[untouched], c.pre[untouched])
    if METHODS[method].exact_endpoints:   # and the endpoints stay exact
        for alpha in (0.0, 1.0):
            spec = MergeSpec.from_alpha(alpha, method=method, seed=2)
            assert torch.equal(part.theta(spec), part.fts[int(alpha)])


@pytest.mark.parametrize("keep", [1.0, 0.3])
def test_fields_a_method_does_not_declare_do_not_change_it(case, keep):
    """canonical_spec drops them from the store key, so they must really be ignored."""
    method, c = case
    spec = MergeSpec.from_alpha(0.3, method=method, keep=keep, scope="per_tensor", seed=7)
    canon = canonical_spec(spec)
    assert all(_same(a, b) for a, b in zip(c.coeffs(spec), c.coeffs(canon)))


def test_declared_option_defaults_are_the_defaults(case):
    method, c = case
    record = METHODS[method]
    if not record.options:   # nothing declared, nothing to compare (undeclared ones: the next test)
        pytest.skip(f"{method} declares no options")
    fast = {k: v for k, v in FAST.items() if k in record.options}  # both sides calibrate alike
    spec = MergeSpec.from_alpha(0.3, method=method, keep=0.5, options=fast.items())
    explicit = dataclasses.replace(spec, options={**record.options_at_default(), **fast}.items())
    # The two specs differ (every declared option spelled out in one), their merges must not.
    assert len(explicit.options) == len(record.options_at_default()) > len(spec.options) and explicit != spec
    assert all(_same(a, b) for a, b in zip(c.coeffs(spec), c.coeffs(explicit)))


@pytest.mark.parametrize("method", list(METHODS))
def test_an_undeclared_option_is_refused_with_the_valid_ones(method):
    record = METHODS[method]
    spec = MergeSpec.from_alpha(0.5, method=method, options={"no_such_option": 1}.items())
    inputs = MergeInputs([torch.ones(10)] * 2, [(0, 10)])
    for call in (lambda: validate_spec(spec), lambda: canonical_spec(spec),
                 lambda: merge_coefficients(inputs, spec)):
        with pytest.raises(ValueError, match="no_such_option") as err:
            call()
        assert all(name in str(err.value) for name in record.options)


@pytest.mark.parametrize("method", list(METHODS))
def test_record_is_complete_and_the_views_agree(method):
    record = METHODS[method]
    assert record.name == method and record.paper and record.fn.__doc__
    assert all(opt.help for opt in record.options.values())
    assert record.preparer is None or record.preparer in PREPARERS


def test_lambdas_only_is_true_of_the_method(case):
    """A record saying its coefficients are the lambdas (the engine then reads no tau) must mean
    it: the method's own coefficients equal the lambdas exactly wherever ``is_lambdas`` holds
    (saying "never" is always safe: the engine then builds the inputs and runs the method)."""
    method, c = case
    record = METHODS[method]
    specs = [MergeSpec(method=method, lambdas=(0.7, -0.4), keep=keep, scope="per_tensor", seed=1)
             for keep in (1.0, 0.3)]
    if not any(map(record.is_lambdas, specs)):
        pytest.skip(f"{method}: lambdas_only={record.lambdas_only!r}")
    for spec in filter(record.is_lambdas, specs):
        coeffs = c.coeffs(spec)
        assert len(coeffs) == 2 and all(_same(a, b) for a, b in zip(coeffs, spec.lambdas)), spec
    assert [s.keep for s in specs if record.is_lambdas(s)] == ([1.0, 0.3] if record.lambdas_only == "always"
                                                               else [1.0])


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(KeyError, match="task_arithmetic"):
        validate_spec(MergeSpec(method="nope"))


@pytest.mark.parametrize("method", list(METHODS))
def test_an_option_value_outside_its_choices_is_refused(method):
    for key, opt in METHODS[method].options.items():
        if opt.choices is None:
            continue
        assert opt.default in opt.choices
        with pytest.raises(ValueError, match=key) as err:
            canonical_spec(MergeSpec.from_alpha(0.5, method=method, options=((key, "bogus"),)))
        assert all(c in str(err.value) for c in opt.choices)
