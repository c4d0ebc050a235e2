"""Exact invariants of the merge methods (explorer/merging).

The invariants every method must hold (endpoints, keep counts, zero lambdas, honest fields and
options) are in test_registry.py, parametrised over the registry; here are the method-specific ones.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from explorer.config import MergeSpec
from explorer.merging import (
    METHODS,
    MergeInputs,
    apply_coefficients,
    get_method,
    merge_coefficients,
)
from explorer.merging.sparsify import bernoulli_mask, kept_count, topk_mask, trim_mask
from explorer.merging.ties import disjoint_mean, elect_sign

# No context needed, and the endpoints are the fine-tunes (not soft masks or spectra: their record says so)
ALL = [name for name, record in METHODS.items() if record.preparer is None and record.exact_endpoints]
SEGMENTS = [(0, 7), (7, 107), (107, 110), (110, 400), (400, 1000)]


def _weights(seed: int = 0, n_ft: int = 2, n: int = 1000):
    """pre and fine-tunes of different magnitudes, so fp32 ``pre + (ft - pre) != ft`` often."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(n, generator=g)
    fts = [3 * torch.randn(n, generator=g) for _ in range(n_ft)]
    return pre, fts, MergeInputs([ft - pre for ft in fts], SEGMENTS)


def _coeff_equal(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b
    n = (a if isinstance(a, torch.Tensor) else b).numel()
    as_t = [x if isinstance(x, torch.Tensor) else torch.full((n,), x) for x in (a, b)]
    return torch.equal(*as_t)


def test_naive_form_is_not_exact():
    pre, fts, inputs = _weights()
    assert not torch.equal(pre + inputs.taus[0], fts[0])  # why the engine uses the exact form


@pytest.mark.parametrize("method", ALL)
def test_endpoints_on_a_real_module(method):
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(5, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))
    models = [make() for _ in range(3)]
    shapes = [p.numel() for p in models[0].parameters()]
    segments = [(sum(shapes[:i]), sum(shapes[:i + 1])) for i in range(len(shapes))]
    names = [k for k, _ in models[0].named_parameters()]
    pre, nat, rob = (parameters_to_vector(m.parameters()).detach() for m in models)
    inputs = MergeInputs([nat - pre, rob - pre], segments, names)
    x = torch.randn(4, 5)
    for alpha, target in [(0.0, models[1]), (1.0, models[2])]:
        spec = MergeSpec.from_alpha(alpha, method=method)
        theta = apply_coefficients(pre, [nat, rob], merge_coefficients(inputs, spec))
        vector_to_parameters(theta, models[0].parameters())
        with torch.no_grad():
            assert torch.equal(models[0](x), target(x))


@pytest.mark.parametrize("method", ["dare", "magnitude"])
@pytest.mark.parametrize("lambdas", [(0.3, 0.7), (1.0, -0.5), (0.25, 0.5)])
def test_keep_one_is_task_arithmetic(method, lambdas):
    pre, fts, inputs = _weights(1)
    ta = merge_coefficients(inputs, MergeSpec(lambdas=lambdas))
    got = merge_coefficients(inputs, MergeSpec(method=method, lambdas=lambdas, keep=1.0, seed=5))
    assert all(_coeff_equal(a, b) for a, b in zip(ta, got))
    assert torch.equal(apply_coefficients(pre, fts, ta), apply_coefficients(pre, fts, got))


@pytest.mark.parametrize("lambdas", [(0.3, 0.7), (0.1, 0.2, 0.4), (1.0, 1.0, 1.0), (0.5, -0.25, 0.75)])
def test_ties_without_conflicts_is_task_arithmetic(lambdas):
    g = torch.Generator().manual_seed(2)
    pre = torch.randn(500, generator=g)
    sign = torch.where(torch.rand(500, generator=g) < 0.5, -1.0, 1.0)
    # every lambda_i * tau_i points the same way, coordinate by coordinate, and is nonzero
    taus = [sign * (lam / abs(lam)) * (0.1 + torch.rand(500, generator=g)) for lam in lambdas]
    fts = [pre + t for t in taus]
    inputs = MergeInputs([ft - pre for ft in fts], [(0, 100), (100, 500)])
    ta = merge_coefficients(inputs, MergeSpec(lambdas=lambdas))
    ties = merge_coefficients(inputs, MergeSpec(method="ties", lambdas=lambdas, keep=1.0))
    assert all(_coeff_equal(a, b) for a, b in zip(ta, ties))
    assert torch.equal(apply_coefficients(pre, fts, ta), apply_coefficients(pre, fts, ties))


@pytest.mark.parametrize("keep", [0.013, 0.2, 0.37, 0.5, 0.9])
def test_mask_counts_global_and_per_tensor(keep):
    _, _, inputs = _weights(3)
    for method in ["magnitude", "ties"]:
        spec = MergeSpec(method=method, lambdas=(1.0, 0.0), keep=keep)
        assert int((merge_coefficients(inputs, spec)[0] != 0).sum()) == kept_count(1000, keep)
    spec = MergeSpec(method="magnitude", lambdas=(0.5, 2.0), keep=keep, scope="per_tensor")
    for c in merge_coefficients(inputs, spec):
        for a, b in SEGMENTS:
            assert int((c[a:b] != 0).sum()) == kept_count(b - a, keep)


def test_topk_mask_keeps_largest_and_exact_count_under_ties():
    x = torch.tensor([3.0, -1.0, 1.0, 1.0, -1.0, 0.0, 2.0, 1.0])
    for keep in [1 / 8, 3 / 8, 0.5, 5 / 8, 7 / 8]:
        m = topk_mask(x, keep)
        assert int(m.sum()) == kept_count(8, keep)
        assert x[m].abs().min() >= x[~m].abs().max()
    assert kept_count(10, 0.25) == round(2.5) == 2 and kept_count(3, 1e-6) == 0


def test_trim_mask_per_tensor_with_empty_segment():
    tau = torch.randn(30)
    m = trim_mask(tau, 0.5, [(0, 10), (10, 10), (10, 30)], "per_tensor")
    assert int(m[:10].sum()) == 5 and int(m[10:].sum()) == 10


def test_dare_rescale_preserves_expected_sum():
    g = torch.Generator().manual_seed(4)
    tau = torch.rand(200_000, generator=g) + 0.5
    inputs = MergeInputs([tau, tau.clone()], [(0, 200_000)])
    c, _ = merge_coefficients(inputs, MergeSpec(method="dare", lambdas=(0.8, 0.0), keep=0.3, seed=1))
    assert abs(float((c * tau).sum() / tau.sum()) - 0.8) < 0.02
    assert torch.unique(c).tolist() == [0.0, pytest.approx(0.8 / 0.3)]


def test_dare_tiny_keep_draws_with_probability_keep_and_warns_about_the_rescale(caplog):
    """keep 1e-9: float32 uniforms (multiples of 2^-24) kept 2^-24 = 60x keep of the coordinates
    while rescaling by 1/keep; keep 1e-4 multiplied the kept deltas by 10^4 silently (issue 11)."""
    n, seeds = 1 << 22, range(8)
    kept = sum(int(bernoulli_mask(n, 1e-9, s).sum()) for s in seeds)
    old = sum(int((torch.rand(n, generator=torch.Generator().manual_seed(s)) < 1e-9).sum()) for s in seeds)
    assert kept == 0 and old >= 2           # expected: 0.03 now, 2 with the float32 draw
    tau = torch.linspace(-1.0, 1.0, 100_000)
    inputs = MergeInputs([tau, tau.clone()], [(0, 100_000)])
    with caplog.at_level("WARNING", logger="explorer.merging.dare"):
        merge_coefficients(inputs, MergeSpec(method="dare", lambdas=(0.8, 0.0), keep=0.3, seed=1))
        assert not caplog.records
        c, _ = merge_coefficients(inputs, MergeSpec(method="dare", lambdas=(1.0, 0.0), keep=1e-4, seed=1))
    top = float((c * tau).abs().max())
    assert top > 100 and len(caplog.records) == 1
    assert "keep 0.0001 rescales" in caplog.text and "lambda/keep = 1e+04" in caplog.text
    assert f"|{top:.3g}|" in caplog.text


def test_dare_is_seeded_and_its_mask_is_independent_of_lambdas():
    _, _, inputs = _weights(5)
    spec = lambda seed, lambdas=(0.4, 0.6): MergeSpec(method="dare", lambdas=lambdas, keep=0.5, seed=seed)
    a, b, c = (merge_coefficients(inputs, spec(s)) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0] != 0, a[1] != 0)  # vectors get independent draws
    other_alpha = merge_coefficients(inputs, spec(7, (0.9, 0.1)))
    assert all(torch.equal(x != 0, y != 0) for x, y in zip(a, other_alpha))
    assert torch.equal(bernoulli_mask(50, 1.0, 0), torch.ones(50, dtype=torch.bool))


def test_sign_election_and_disjoint_mean_by_hand():
    t1 = torch.tensor([1.0, -2.0, 3.0, 0.0, -1.0])
    t2 = torch.tensor([-3.0, -1.0, 1.0, 2.0, 1.0])
    # sum: -2, -3, 4, 2, 0  -> elected signs
    assert elect_sign([t1, t2], [1.0, 1.0], [None, None]).tolist() == [-1, -1, 1, 1, 0]
    # a lambda flips its vector's vote: 1*t1 - 1*t2 = 4, -1, 2, -2, -2
    assert elect_sign([t1, t2], [1.0, -1.0], [None, None]).tolist() == [1, -1, 1, -1, -1]
    inputs = MergeInputs([t1, t2], [(0, 5)])
    c1, c2 = merge_coefficients(inputs, MergeSpec(method="ties", lambdas=(1.0, 1.0)))
    # agreement: coord0 only t2, coord1 both, coord2 both, coord3 only t2, coord4 nobody (tie)
    assert c1.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert c2.tolist() == [2.0, 1.0, 1.0, 2.0, 0.0]  # the lone survivor carries the total weight 2
    agree = [torch.tensor([True, True, False]), torch.tensor([True, False, True])]
    w1, w2 = disjoint_mean([0.25, 0.75], agree)
    assert w1.tolist() == [0.25, 1.0, 0.0] and w2.tolist() == [0.75, 0.0, 1.0]


def test_ties_with_one_nonzero_lambda_is_magnitude():
    _, _, inputs = _weights(6)
    for scope in ["global", "per_tensor"]:
        kw = dict(lambdas=(0.0, 1.0), keep=0.3, scope=scope)
        ties = merge_coefficients(inputs, MergeSpec(method="ties", **kw))
        mag = merge_coefficients(inputs, MergeSpec(method="magnitude", **kw))
        assert ties[0] == 0.0 == mag[0] and torch.equal(ties[1], mag[1])


def test_negation():
    pre, fts, inputs = _weights(7, n_ft=1)
    theta = apply_coefficients(pre, fts, merge_coefficients(inputs, MergeSpec(lambdas=(-1.0,))))
    torch.testing.assert_close(theta, pre - inputs.taus[0], rtol=0, atol=1e-5)
    (c,) = merge_coefficients(inputs, MergeSpec(method="ties", lambdas=(-1.0,)))
    assert torch.equal(c, torch.where(inputs.taus[0] != 0, -1.0, 0.0))
    # TIES with a negated vector that agrees once negated: task arithmetic
    t = inputs.taus[0]
    ties_in = MergeInputs([t, -2 * t], SEGMENTS)
    coeffs = merge_coefficients(ties_in, MergeSpec(method="ties", lambdas=(1.0, -1.0)))
    assert [x.unique().tolist() for x in coeffs] == [[1.0], [-1.0]]


def test_apply_writes_in_place_and_refuses_aliases():
    pre, fts, inputs = _weights(8)
    buf = torch.empty_like(pre)
    coeffs = merge_coefficients(inputs, MergeSpec(method="ties", lambdas=(0.5, 0.5), keep=0.4))
    out = apply_coefficients(pre, fts, coeffs, out=buf)
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(out, pre + coeffs[0] * inputs.taus[0] + coeffs[1] * inputs.taus[1])
    with pytest.raises(ValueError, match="^out must not alias pre or a fine-tuned vector$"):
        apply_coefficients(pre, fts, coeffs, out=pre)
    with pytest.raises(ValueError, match="^1 coefficients for 2 fine-tuned weight vectors$"):
        apply_coefficients(pre, fts, coeffs[:1])


def test_registry_errors_and_validation():
    _, _, inputs = _weights()
    assert get_method("ties") is METHODS["ties"] and METHODS["ties"].fn.__name__ == "ties"
    assert "arxiv.org" in METHODS["dare"].paper
    with pytest.raises(KeyError, match="task_arithmetic"):
        merge_coefficients(inputs, MergeSpec(method="nope", lambdas=(1.0, 0.0)))
    with pytest.raises(ValueError, match="lambdas"):
        merge_coefficients(inputs, MergeSpec(lambdas=(1.0,)))
    with pytest.raises(ValueError, match="tile"):
        MergeInputs(inputs.taus, [(0, 500), (400, 1000)])
    with pytest.raises(ValueError, match=r"^tau\[1\] must be a flat float32 tensor, got \(1000,\) torch.float64$"):
        MergeInputs([inputs.taus[0], inputs.taus[1].double()], SEGMENTS)


def test_text_for_a_numeric_option_is_one_line_naming_it():
    """`--options kappa=abc` reached the method as text and failed deep inside with Python's
    "could not convert string to float: 'abc'", naming neither the method nor the option."""
    from explorer.config import parse_options
    from explorer.merging.registry import validate_spec

    with pytest.raises(ValueError, match=r"^pistole option kappa takes a number \(default 1.0\); got 'abc'$"):
        validate_spec(MergeSpec.from_alpha(0.5, method="pistole", options=parse_options("kappa=abc")))
    with pytest.raises(ValueError, match=r"^pistole option traj_steps takes a number \(default 2\); got 'two'$"):
        validate_spec(MergeSpec.from_alpha(0.5, method="pistole", options=parse_options("traj_steps=two")))
    assert validate_spec(MergeSpec.from_alpha(0.5, method="pistole", options=parse_options("kappa=2, q=0.05,"
                                                                                          " q_scope=global"))).name == "pistole"
