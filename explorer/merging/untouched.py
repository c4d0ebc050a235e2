"""Where a fine-tune leaves the pretrained weights as they are, found once per vector.

:func:`explorer.merging.apply_coefficients` must return ``pre`` bit for bit wherever every merged
vector is zero (its module docstring says why). Comparing ``ft_i == pre`` at every coordinate on
every merge costs more than the merge itself (on a 2-core CPU and ViT-B/32: 2.8x the bandwidth
floor instead of 1x), yet the answer only depends on the vector, not on the lambdas. So each
vector's equal coordinates are found once, when it is loaded, and kept compactly:

- ``ranges``: whole tensors the fine-tune did not change (a frozen text tower, a visual-only
  checkpoint's text weights), as merged flat ``[a, b)`` ranges;
- ``index``: the few single coordinates elsewhere where ``ft == pre`` (int64, sorted).

A merge intersects the sets of its active vectors (cheap: a handful of ranges and a short index)
and restores ``pre`` exactly there; the ranges' arithmetic is skipped altogether. A fine-tune
with more than ``numel / MAX_INDEX_FRACTION`` scattered equal coordinates (e.g. a file rounded so
coarsely that many weights round back to the base) gets no set (``None``): its merges fall back
to comparing coordinates, which is exact too, only slower.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# Scattered equal coordinates kept at most numel / this (int64: 1/32 of the float32 model's bytes).
MAX_INDEX_FRACTION = 64
_CHUNK = 1 << 22   # coordinates compared per pass (bounded scratch for huge tensors)


@dataclass(frozen=True, eq=False)
class Untouched:
    """The coordinates where a fine-tune equals ``pre`` (or, after :func:`intersect`, where all do).

    Shape:
        ``ranges``: sorted, disjoint, non-adjacent ``(a, b)`` with ``0 <= a < b <= numel``;
        ``index``: ``(m,)`` int64, sorted, every entry outside ``ranges``, on the weights' device.
    """

    ranges: tuple[tuple[int, int], ...]
    index: Tensor
    numel: int

    def covers(self, a: int, b: int) -> bool:
        """Whether all of ``[a, b)`` lies in one range (a whole tensor equal to ``pre`` always
        does: :func:`find_untouched` keeps such tensors as ranges, never as singles)."""
        return a >= b or any(ra <= a and b <= rb for ra, rb in self.ranges)

    @property
    def count(self) -> int:
        """Number of coordinates in the set."""
        return sum(b - a for a, b in self.ranges) + int(self.index.numel())


def _merge_ranges(ranges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


@torch.no_grad()
def find_untouched(pre: Tensor, ft: Tensor, segments: Sequence[tuple[int, int]],
                   max_fraction: int = MAX_INDEX_FRACTION) -> Untouched | None:
    """The coordinates where ``ft == pre``, by tensor (``segments``), or None when too scattered.

    Args:
        pre, ft: ``(N,)`` float32 on one device.
        segments: ``(start, end)`` of each tensor, tiling ``[0, N)``.
        max_fraction: at most ``N // max_fraction`` single coordinates are kept.

    Returns:
        An :class:`Untouched`, or None when more than ``N // max_fraction`` equal coordinates lie
        in tensors the fine-tune changed. Scratch: one ``_CHUNK`` of booleans at a time.
    """
    n, limit = pre.numel(), pre.numel() // max_fraction
    ranges: list[tuple[int, int]] = []
    singles: list[Tensor] = []
    kept = 0
    for a, b in segments:
        hits = [(s, _equal_index(pre[s:min(s + _CHUNK, b)], ft[s:min(s + _CHUNK, b)]))
                for s in range(a, b, _CHUNK)]
        if sum(idx.numel() for _, idx in hits) == b - a:
            ranges.append((a, b))
            continue
        for s, idx in hits:
            kept += idx.numel()
            if kept > limit:
                return None
            if idx.numel():
                singles.append(idx.add_(s))
    index = torch.cat(singles) if singles else torch.empty(0, dtype=torch.int64, device=pre.device)
    return Untouched(_merge_ranges(ranges), index, n)


def _equal_index(pre: Tensor, ft: Tensor) -> Tensor:
    """int64 positions where ``ft == pre`` (1-D, same length). On CPU through NumPy, which
    compares and gathers ~4x faster than torch's bool kernels (2-core CPU, ViT-B/32)."""
    if pre.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(pre.numpy() == ft.numpy()))
    return (ft == pre).nonzero().flatten()


def _in_ranges(index: Tensor, ranges: tuple[tuple[int, int], ...]) -> Tensor:
    """Boolean ``(m,)``: which entries of ``index`` fall inside one of ``ranges``."""
    if not ranges or not index.numel():
        return torch.zeros(index.numel(), dtype=torch.bool, device=index.device)
    starts = torch.tensor([a for a, _ in ranges], device=index.device)
    ends = torch.tensor([b for _, b in ranges], device=index.device)
    k = torch.searchsorted(starts, index, right=True) - 1     # last range starting at or before
    ok = k >= 0
    return ok & (index < ends[k.clamp(min=0)])


def _intersect_ranges(x: tuple[tuple[int, int], ...], y: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    out, i, j = [], 0, 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return _merge_ranges(out)


def intersect(sets: Sequence[Untouched]) -> Untouched:
    """The coordinates in every one of ``sets`` (all of one ``numel`` and device).

    Raises:
        ValueError: no sets, or sets of different sizes.
    """
    if not sets:
        raise ValueError("intersect needs at least one set")
    acc = sets[0]
    for s in sets[1:]:
        if s.numel != acc.numel:
            raise ValueError(f"sets over {acc.numel} and {s.numel} coordinates")
        ranges = _intersect_ranges(acc.ranges, s.ranges)
        # singles of one set that the other holds (as a single or inside one of its ranges)
        a = acc.index[_in_ranges(acc.index, s.ranges) | torch.isin(acc.index, s.index)]
        b = s.index[_in_ranges(s.index, acc.ranges)]
        index = torch.unique(torch.cat([a, b]))     # sorted; entries inside `ranges` cannot occur
        acc = Untouched(ranges, index, acc.numel)
    return acc


def complement(ranges: tuple[tuple[int, int], ...], numel: int) -> list[tuple[int, int]]:
    """The ``[a, b)`` spans of ``[0, numel)`` outside ``ranges`` (sorted, disjoint)."""
    out, pos = [], 0
    for a, b in ranges:
        if a > pos:
            out.append((pos, a))
        pos = b
    if pos < numel:
        out.append((pos, numel))
    return out
