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


def _scaled_tsv(taus, lambdas, segs):
    """TSV-M as it was before the cache (SVDs of the scaled matrices): the reference formula."""
    live = [(lam, t) for lam, t in zip(lambdas, taus) if lam != 0]
    t_eff = sp.effective_count([lam for lam, _ in live])
    out = torch.zeros_like(taus[0])
    for (a, b), shape, name in zip(segs, SHAPES, NAMES):
        mn = sp.matrix_shape(name, shape)
        if mn is None or min(mn) < len(live):
            for lam, t in live:
                out[a:b].add_(t[a:b], alpha=lam)
            continue
        us, ss, vs = [], [], []
        for lam, t in live:
            u, s, vh = torch.linalg.svd((t[a:b].view(mn) * (t_eff * lam)).double(), full_matrices=False)
            k = min(mn) // len(live)
            us.append(u[:, :k]), ss.append(s[:k]), vs.append(vh[:k].t())
        u, s, v = sp.polar(torch.cat(us, 1)), torch.cat(ss), sp.polar(torch.cat(vs, 1))
        out[a:b] = ((u * s) @ v.t()).float().reshape(-1)
    return out


@pytest.mark.parametrize("op", ["iso_c", "tsv_m"])
def test_cached_decompositions_give_the_uncached_merge_bit_for_bit(op):
    segs, _ = _layout()
    taus = _taus(2, seed=5)
    cache = sp.FactorCache(1 << 26)
    grid = [(1.0, 0.0), (0.8, 0.2), (0.5, 0.5), (0.2, 0.8), (0.0, 1.0), (0.7, -0.3), (0.5, 0.5)]
    for lambdas in grid:
        plain = sp.spectral_delta(taus, lambdas, segs, SHAPES, NAMES, op, cache=None)
        cached = sp.spectral_delta(taus, lambdas, segs, SHAPES, NAMES, op, cache=cache)
        assert torch.equal(plain, cached), lambdas
    matrices = sum(sp.matrix_shape(n, s) is not None for n, s in zip(NAMES, SHAPES))
    assert matrices == 3 and cache.hits + cache.misses == len(grid) * matrices
    if op == "tsv_m":   # factors once per set of live vectors: alpha = 0, alpha = 1, and both
        assert cache.misses == 3 * matrices
    else:               # Iso-C: one SVD per distinct merge; the repeated (0.5, 0.5) is all hits
        assert cache.misses == (len(grid) - 1) * matrices
    # Another set of vectors (different contents) is another key, never a stale hit.
    other = _taus(2, seed=6)
    assert torch.equal(sp.spectral_delta(other, (0.5, 0.5), segs, SHAPES, NAMES, op, cache=cache),
                       sp.spectral_delta(other, (0.5, 0.5), segs, SHAPES, NAMES, op, cache=None))


def test_tsv_m_from_unscaled_factors_is_the_scaled_formula():
    """svd(c tau) = U (|c| S) (sign(c) V)^T and polar(V D) = polar(V) D: the same merge, to rounding."""
    segs, _ = _layout()
    taus = _taus(3, seed=2)
    for lambdas in [(0.2, 0.3, 0.5), (0.6, -0.3, 0.1), (0.0, 0.4, 0.6)]:
        ours = sp.spectral_delta(taus, lambdas, segs, SHAPES, NAMES, "tsv_m", cache=None)
        assert torch.allclose(ours, _scaled_tsv(taus, lambdas, segs), rtol=1e-5, atol=1e-6)


def test_factor_cache_is_bounded_and_drops_the_least_recently_used():
    cache = sp.FactorCache(max_bytes=3 * 400)   # three 100-float32 entries
    make = lambda v: (lambda: (torch.full((100,), float(v)),))  # noqa: E731
    for key in "abc":
        cache.get((key,), make(key == "a"))
    cache.get(("a",), make(9))                   # a is now the most recent
    cache.get(("d",), make(4))                   # evicts b
    assert cache.nbytes == 1200 and cache.get(("a",), make(9))[0][0] == 1.0
    assert cache.get(("b",), make(7))[0][0] == 7.0 and cache.misses == 5 and cache.hits == 2
    assert cache.get(("big",), lambda: (torch.zeros(1000),))[0].numel() == 1000 and cache.nbytes <= 1200
