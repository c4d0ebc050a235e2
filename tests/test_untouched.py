"""Untouched sets (where ft == pre, found once per vector) and the blocked merge that uses them.

The reference everywhere is the unblocked form with a per-coordinate comparison (what
``apply_coefficients`` computed before it was blocked): the blocked, set-driven merge must give
the same bits for every coefficient type, sign and block size.
"""
from __future__ import annotations

import pytest
import torch

from explorer.merging import apply_coefficients
from explorer.merging import base as merge_base
from explorer.merging.untouched import Untouched, complement, find_untouched, intersect

SEGMENTS = [(0, 300), (300, 1000), (1000, 1010), (1010, 2500), (2500, 4000)]
N = 4000


def _fixture(seed: int = 0):
    """pre and three fine-tunes: a full one, a 'visual-only' one (segments 2 and 4 equal to pre),
    and one equal to pre in segment 0 only; each with scattered single equal coordinates."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(N, generator=g)
    fts = [pre + 0.01 * torch.randn(N, generator=g) for _ in range(3)]
    for a, b in (SEGMENTS[1], SEGMENTS[3]):
        fts[1][a:b] = pre[a:b]
    fts[2][0:300] = pre[0:300]
    for ft in fts:
        idx = torch.randint(0, N, (40,), generator=g)
        ft[idx] = pre[idx]
    fts[0][1200:1300] = pre[1200:1300]     # a run inside a touched tensor stays singles
    return pre, fts


def _as_mask(u: Untouched) -> torch.Tensor:
    m = torch.zeros(u.numel, dtype=torch.bool)
    for a, b in u.ranges:
        m[a:b] = True
    assert not m[u.index].any(), "an index entry lies inside a range"
    m[u.index] = True
    return m


def _reference(pre, fts, coeffs):
    """The unblocked form, then pre wherever every active vector is zero (by comparison)."""
    cs = [c if isinstance(c, torch.Tensor) else merge_base._fp32(c) for c in coeffs]
    act = [(c, ft) for c, ft in zip(cs, fts) if isinstance(c, torch.Tensor) or c != 0.0]
    if any(isinstance(c, torch.Tensor) for c, _ in act):
        out = torch.ones_like(pre)
        for c, _ in act:
            out.sub_(c)
        out.mul_(pre)
    else:
        w0 = 1.0
        for c, _ in act:
            w0 = merge_base._fp32(w0 - c)
        out = pre * w0
    for c, ft in act:
        out = out.addcmul(ft, c) if isinstance(c, torch.Tensor) else out.add(ft, alpha=c)
    if act and not (len(act) == 1 and not isinstance(act[0][0], torch.Tensor) and act[0][0] == 1.0):
        zero = torch.ones_like(pre, dtype=torch.bool)
        for c, ft in act:
            z = ft == pre
            if isinstance(c, torch.Tensor):
                z |= c == 0
            zero &= z
        out = torch.where(zero, pre, out)
    return out


def test_find_untouched_is_exactly_the_equal_coordinates():
    pre, fts = _fixture()
    for ft in fts:
        u = find_untouched(pre, ft, SEGMENTS, max_fraction=8)
        assert torch.equal(_as_mask(u), ft == pre)
        assert u.count == int((ft == pre).sum())
    u1 = find_untouched(pre, fts[1], SEGMENTS, max_fraction=8)
    assert u1.ranges == ((300, 1000), (1010, 2500))      # whole tensors become ranges
    for u, ft in ((u1, fts[1]), (find_untouched(pre, fts[0], SEGMENTS, max_fraction=8), fts[0])):
        assert [u.covers(a, b) for a, b in SEGMENTS] == [torch.equal(ft[a:b], pre[a:b]) for a, b in SEGMENTS]
    assert find_untouched(pre, pre.clone(), SEGMENTS, max_fraction=8).ranges == ((0, N),)   # adjacent ranges merge


def test_too_many_scattered_equal_coordinates_give_no_set():
    pre, fts = _fixture()
    ft = fts[0].clone()
    ft[::20] = pre[::20]                            # 200 + ~140 singles > 4000 // 64 = 62
    assert find_untouched(pre, ft, SEGMENTS) is None
    loose = find_untouched(pre, ft, SEGMENTS, max_fraction=8)   # 4000 // 8 = 500 singles allowed
    assert torch.equal(_as_mask(loose), ft == pre) and loose.ranges == ()


@pytest.mark.parametrize("pick", [(0, 1), (1, 2), (0, 1, 2), (1,)])
def test_intersect_matches_the_elementwise_and(pick):
    pre, fts = _fixture(seed=3)
    sets = [find_untouched(pre, fts[i], SEGMENTS, max_fraction=8) for i in pick]
    want = torch.stack([fts[i] == pre for i in pick]).all(0)
    got = intersect(sets)
    assert torch.equal(_as_mask(got), want)
    assert torch.equal(got.index, torch.sort(got.index).values)


def test_complement_tiles_the_rest():
    assert complement(((0, 5), (8, 10)), 12) == [(5, 8), (10, 12)]
    assert complement((), 7) == [(0, 7)]
    assert complement(((0, 7),), 7) == []


COEFFS = [
    [0.5, 0.5, 0.0], [0.3, -0.7, 1.4], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0],
    [0.0, 0.25, 0.0], [-1.0, 0.0, 2.0],
]


@pytest.mark.parametrize("block", [997, 1 << 22])
@pytest.mark.parametrize("lams", COEFFS)
def test_blocked_merge_is_bit_identical_to_the_unblocked_form(monkeypatch, block, lams):
    monkeypatch.setattr(merge_base, "BLOCK", block)
    pre, fts = _fixture(seed=5)
    sets = [find_untouched(pre, ft, SEGMENTS, max_fraction=8) for ft in fts]
    want = _reference(pre, fts, lams)
    assert torch.equal(apply_coefficients(pre, fts, lams, untouched=sets), want)
    assert torch.equal(apply_coefficients(pre, fts, lams), want)                # comparing per block
    assert torch.equal(apply_coefficients(pre, fts, lams, untouched=[None, *sets[1:]]), want)
    nowhere = torch.stack([ft == pre for ft, c in zip(fts, lams) if c != 0.0] or [torch.ones(N, dtype=torch.bool)]).all(0)
    assert torch.equal(want[nowhere], pre[nowhere])     # untouched weights stay, bit for bit
    if sorted(lams) == [0.0, 0.0, 1.0]:
        assert torch.equal(want, fts[lams.index(1.0)])  # endpoints are the fine-tunes exactly


@pytest.mark.parametrize("block", [997, 1 << 22])
def test_blocked_merge_with_mask_coefficients_matches(monkeypatch, block):
    monkeypatch.setattr(merge_base, "BLOCK", block)
    pre, fts = _fixture(seed=7)
    g = torch.Generator().manual_seed(1)
    masks = [(torch.rand(N, generator=g) < 0.6).float() * lam for lam in (0.8, -0.4)]
    coeffs = [masks[0], 0.0, masks[1]]
    sets = [find_untouched(pre, ft, SEGMENTS, max_fraction=8) for ft in fts]
    want = _reference(pre, fts, coeffs)
    assert torch.equal(apply_coefficients(pre, fts, coeffs, untouched=sets), want)
    assert torch.equal(apply_coefficients(pre, fts, coeffs), want)


def test_untouched_sets_must_match_the_vectors():
    pre, fts = _fixture()
    with pytest.raises(ValueError, match="untouched sets"):
        apply_coefficients(pre, fts, [0.5, 0.5, 0.0], untouched=[None])
