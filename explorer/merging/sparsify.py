"""Pure mask helpers shared by the merge methods (mergekit's ``sparsify.py``, in our convention).

``keep`` in (0, 1] is always the fraction of coordinates KEPT (mergekit ``density``; DARE's drop
rate is ``1 - keep``). Deterministic masks keep exactly :func:`kept_count` coordinates.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from explorer.config import Scope


def kept_count(numel: int, keep: float) -> int:
    """Number of coordinates a deterministic mask keeps: ``round(keep * numel)`` (Python rounding)."""
    return min(numel, max(0, round(keep * numel)))


@torch.no_grad()
def topk_mask(x: Tensor, keep: float) -> Tensor:
    """Mask of the ``kept_count(x.numel(), keep)`` entries of largest ``|x|``, exactly that many.

    Which of several entries tied at the threshold is kept is left to ``torch.topk``
    (deterministic for a given device); the count is exact either way.

    Shape:
        x: ``(N,)`` float; returns ``(N,)`` bool on x's device.
    """
    n = x.numel()
    k = kept_count(n, keep)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=x.device)
    # Select whichever side is smaller (fewer indices to materialise), then invert if needed.
    largest = k <= n - k
    idx = torch.topk(x.abs(), k if largest else n - k, largest=largest, sorted=False).indices
    mask = torch.zeros(n, dtype=torch.bool, device=x.device)
    mask[idx] = True
    return mask if largest else mask.logical_not_()


@torch.no_grad()
def trim_mask(tau: Tensor, keep: float, segments: Sequence[tuple[int, int]], scope: Scope) -> Tensor:
    """TIES "trim" / magnitude pruning: top-``keep`` ``|tau|`` over everything or per segment.

    Shape:
        tau: ``(N,)`` float; segments tile ``[0, N)``; returns ``(N,)`` bool.
    """
    if scope == "global":
        return topk_mask(tau, keep)
    if scope != "per_tensor":
        raise ValueError(f"scope must be 'global' or 'per_tensor', got {scope!r}")
    mask = torch.empty(tau.numel(), dtype=torch.bool, device=tau.device)
    for a, b in segments:
        mask[a:b] = topk_mask(tau[a:b], keep)
    return mask


def vector_seed(seed: int, index: int) -> int:
    """Seed of the random mask of task vector ``index``: independent of the lambdas, so the same
    draw is used at every alpha of a sweep (a frontier is one slice through one random draw)."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63)


# Below this keep, Bernoulli masks are drawn from float64 uniforms so that P(kept) = keep to
# within 2^-24 / keep <= 6e-5 relative (float32 above it); FINE_CHUNK bounds their memory.
FINE_KEEP = 2.0 ** -10
FINE_CHUNK = 1 << 22


@torch.no_grad()
def bernoulli_mask(numel: int, keep: float, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """I.i.d. Bernoulli(keep) keep-mask, drawn on ``device`` from a generator seeded with ``seed``.

    Deterministic for (seed, device); CPU and CUDA draws differ. ``P(kept) = keep`` to within
    6e-5 relative at every keep (``FINE_KEEP``), so DARE's 1/keep rescale is unbiased.

    Shape:
        returns ``(numel,)`` bool.
    """
    if keep >= 1.0:
        return torch.ones(numel, dtype=torch.bool, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    if keep >= FINE_KEEP:
        return torch.rand(numel, generator=gen, device=device) < keep
    # float32 uniforms are multiples of 2^-24: P(u < keep) would be ceil(keep 2^24) / 2^24, not
    # keep (at keep = 1e-9: 6e-8, 60x too many kept). Draw float64 uniforms, in chunks.
    out = torch.empty(numel, dtype=torch.bool, device=device)
    for a in range(0, numel, FINE_CHUNK):
        b = min(a + FINE_CHUNK, numel)
        out[a:b] = torch.rand(b - a, generator=gen, device=device, dtype=torch.float64) < keep
    return out
