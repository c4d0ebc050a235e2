"""Invariants of Iso-C and TSV-M (explorer/merging/spectral.py) on small tensors."""
from __future__ import annotations

import pytest
import torch

from explorer.merging import spectral as sp

# A layout with a matrix, a conv kernel, a bias, an embedding table and a thin matrix.
SHAPES = [(12, 8), (6, 2, 3, 3), (12,), (5, 8), (1, 8), (3, 2)]
NAMES = ["visual.fc.weight", "visual.conv1.weight", "visual.fc.bias", "visual.positional_embedding",
         "visual.thin.weight", "visual.small.weight"]


def _layout():
    segs, pos = [], 0
    for s in SHAPES:
        n = int(torch.Size(s).numel())
        segs.append((pos, pos + n))
        pos += n
    return segs, pos


def _taus(T, seed=0):
    _, N = _layout()
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, generator=g) for _ in range(T)]


def _rank(m, tol=1e-4):
    s = torch.linalg.svdvals(m.double())
    return int((s > tol * s.max()).sum())


def test_matrix_shape_rules():
    assert sp.matrix_shape("a.weight", (12, 8)) == (12, 8)
    assert sp.matrix_shape("conv.weight", (6, 2, 3, 3)) == (6, 18)
    assert sp.matrix_shape("conv.weight", (6, 2, 3, 3), conv="average") is None
    assert sp.matrix_shape("x.positional_embedding", (5, 8)) is None
    assert sp.matrix_shape("b", (12,)) is None and sp.matrix_shape("t", (1, 8)) is None
    with pytest.raises(ValueError, match="conv"):
        sp.matrix_shape("a", (2, 2), conv="flat")


@pytest.mark.parametrize("T", [1, 2, 3, 5])
def test_iso_c_singular_values_equal_per_matrix(T):
    segs, _ = _layout()
    taus = _taus(T)
    delta = sp.spectral_delta(taus, [1.0 / T] * T, segs, SHAPES, NAMES, "iso_c")
    for (a, b), shape, name in zip(segs, SHAPES, NAMES):
        mn = sp.matrix_shape(name, shape)
        if mn is None:   # averaged tensors: the lambda-weighted sum (the mean here)
            assert torch.allclose(delta[a:b], sum(t[a:b] for t in taus) / T, atol=1e-6)
            continue
        s = torch.linalg.svdvals(delta[a:b].view(mn).double())
        assert float(s.max() - s.min()) <= 1e-5 * float(s.max())
        # ... and equal to the mean singular value of the operator's input
        summed = sum(t[a:b].view(mn) for t in taus) * (T / T)   # T_eff * (1/T) * sum
        assert float(s[0]) == pytest.approx(float(torch.linalg.svdvals(summed.double()).mean()), rel=1e-5)


@pytest.mark.parametrize("T", [2, 3, 4])
def test_tsv_m_rank_within_budget(T):
    segs, _ = _layout()
    taus = _taus(T, seed=1)
    delta = sp.spectral_delta(taus, [1.0 / T] * T, segs, SHAPES, NAMES, "tsv_m")
    for (a, b), shape, name in zip(segs, SHAPES, NAMES):
        mn = sp.matrix_shape(name, shape)
        if mn is None or min(mn) < T:   # averaged, including a matrix too thin for T (3x2, T >= 3)
            assert torch.allclose(delta[a:b], sum(t[a:b] for t in taus) / T, atol=1e-6)
            continue
        assert _rank(delta[a:b].view(mn)) <= T * (min(mn) // T)


def test_tsv_m_of_one_vector_is_that_vector_and_orthogonal_inputs_are_kept():
    segs, _ = _layout()
    tau = _taus(1)[0]
    delta = sp.spectral_delta([tau, torch.zeros_like(tau)], [1.0, 0.0], segs, SHAPES, NAMES, "tsv_m")
    assert torch.allclose(delta, tau, atol=1e-5)   # T = 1 non-zero vector: its full SVD, rebuilt
    # Two rank-2 matrices in orthogonal subspaces (each keeps its top 4 // 2 = 2 components):
    # TSV-M is their plain sum, there is no interference to remove.
    u = torch.eye(4)
    m1 = 3 * torch.outer(u[0], u[1]) + torch.outer(u[1], u[0])
    m2 = 2 * torch.outer(u[2], u[3]) + 1.5 * torch.outer(u[3], u[2])
    out = sp.tsv_matrix([m1, m2])
    assert torch.allclose(out, m1 + m2, atol=1e-6)


def test_equal_lambdas_reproduce_the_published_scale():
    segs, _ = _layout()
    taus = _taus(3, seed=2)
    alpha = 0.7
    ours = sp.spectral_delta(taus, [alpha / 3] * 3, segs, SHAPES, NAMES, "iso_c")
    a, b = segs[0]
    published = alpha * sp.iso_c_matrix(sum(t[a:b].view(12, 8) for t in taus))
    assert torch.allclose(ours[a:b].view(12, 8), published, atol=1e-5)
    assert sp.effective_count([0.2, 0.2, 0.2]) == pytest.approx(3.0)
    assert sp.effective_count([0.0, 1.0]) == 1.0 and sp.effective_count([0.0, 0.0]) == 0.0


@pytest.mark.parametrize("op", ["iso_c", "tsv_m"])
def test_zero_lambdas_give_theta_0_exactly_and_results_are_deterministic(op):
    segs, _ = _layout()
    taus = _taus(2, seed=3)
    zero = sp.spectral_delta(taus, [0.0, 0.0], segs, SHAPES, NAMES, op)
    assert bool((zero == 0).all())
    pre = torch.randn_like(taus[0])
    assert torch.equal(pre + zero, pre)
    d1 = sp.spectral_delta(taus, [0.4, 0.6], segs, SHAPES, NAMES, op)
    d2 = sp.spectral_delta(taus, [0.4, 0.6], segs, SHAPES, NAMES, op)
    assert torch.equal(d1, d2)


def test_negative_lambda_negates():
    segs, _ = _layout()
    taus = _taus(2, seed=4)
    pos = sp.spectral_delta(taus, [0.5, 0.5], segs, SHAPES, NAMES, "tsv_m")
    neg = sp.spectral_delta(taus, [-0.5, -0.5], segs, SHAPES, NAMES, "tsv_m")
    assert torch.allclose(pos, -neg, atol=1e-6)
