"""The merge contract: flat inputs -> per-vector coefficients -> exact application.

A merge method never builds weights. It returns one coefficient ``c_i`` per task vector
(a Python float for a constant, or a flat fp32 tensor the shape of ``tau_i``) such that

    theta = theta_pre + sum_i c_i ⊙ tau_i,

and :func:`apply_coefficients` evaluates the algebraically equal form

    theta = (1 - sum_i c_i) ⊙ theta_pre + sum_i c_i ⊙ theta_ft_i,

which returns ``theta_ft_i`` bit for bit when ``c = e_i`` (in fp32, ``pre + (ft - pre)`` is
not always ``ft``). That is what makes alpha=0 / alpha=1 reproduce the endpoints exactly.

That form alone would move weights no vector touches: ``(1 - c) * pre + c * pre`` is not always
``pre`` in fp32 (up to 3.8e-6 on the demo's text tower at a negative lambda). So, last, every
coordinate where each merged vector is zero (``ft_i == pre`` or ``c_i == 0`` for every i) is set
back to ``pre``: untouched weights stay untouched bit for bit, for any method and any lambdas,
and the endpoints stay exact (there the two rules agree). A :class:`MergedDelta` is applied as
``pre + delta``, exact wherever ``delta`` is zero (for the spectral methods: every tensor that no
vector touches; inside a touched matrix their low-rank rebuild may move any coordinate).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch
from torch import Tensor

from .untouched import Untouched, complement, intersect

logger = logging.getLogger(__name__)

# Coordinates per block when untouched coordinates must be found by comparison (bounds the
# masks' scratch). Without comparisons a span is written whole, a few ops in all: cache-sized
# blocks (2^18) were 1.28x the bandwidth floor on a quiet 2-core CPU against 1.5x whole, but
# 5-50x under CPU contention, where every op's OpenMP barrier waits for a descheduled thread.
BLOCK = 1 << 22

Coefficient = Union[Tensor, float]


@dataclass(frozen=True)
class MergedDelta:
    """A method's result that is no per-vector scaling (Iso-C, TSV-M): ``theta = theta_pre + delta``.

    Shape:
        delta ``(N,)`` float32 on the taus' device. All-zero gives theta_pre bit for bit.
    """

    delta: Tensor


MergeResult = Union[list[Coefficient], MergedDelta]


@dataclass
class MergeInputs:
    """Everything a merge method may read.

    Shape:
        every ``taus[i]``: ``(N,)`` float32, all on one device.
    """

    taus: list[Tensor]                 # flat task vectors tau_i = ft_i - pre, natural ones first
    segments: list[tuple[int, int]]    # (start, end) of each original tensor; tiles [0, N) in order
    names: list[str] = field(default_factory=list)       # tensor keys, parallel to segments
    context: dict[str, Any] = field(default_factory=dict)  # prepared extras (explorer.calibrate)
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # tensor shapes (default: 1-D)

    def __post_init__(self) -> None:
        self.taus = list(self.taus)
        if not self.taus:
            raise ValueError("MergeInputs needs at least one task vector")
        first = self.taus[0]
        for i, tau in enumerate(self.taus):
            if tau.dim() != 1 or tau.dtype != torch.float32:
                raise ValueError(f"tau[{i}] must be a flat float32 tensor, "
                                 f"got {tuple(tau.shape)} {tau.dtype}")
            if tau.numel() != first.numel() or tau.device != first.device:
                raise ValueError(f"tau[{i}] has {tau.numel()} elements on {tau.device}; "
                                 f"tau[0] has {first.numel()} on {first.device}")
        self.segments = [(int(a), int(b)) for a, b in self.segments] or [(0, first.numel())]
        _check_tiling(self.segments, first.numel())
        self.names = list(self.names) or [f"segment{i}" for i in range(len(self.segments))]
        if len(self.names) != len(self.segments):
            raise ValueError(f"{len(self.names)} names for {len(self.segments)} segments")
        self.shapes = [tuple(int(d) for d in s) for s in self.shapes] or [(b - a,) for a, b in self.segments]
        bad = [i for i, (s, (a, b)) in enumerate(zip(self.shapes, self.segments))
               if int(torch.Size(s).numel()) != b - a]
        if len(self.shapes) != len(self.segments) or bad:
            raise ValueError(f"shapes must give each segment's size; {len(self.shapes)} shapes for "
                             f"{len(self.segments)} segments, mismatched at {bad[:3]}")

    @property
    def numel(self) -> int:
        return self.taus[0].numel()

    @property
    def device(self) -> torch.device:
        return self.taus[0].device


def _check_tiling(segments: list[tuple[int, int]], numel: int) -> None:
    pos = 0
    for a, b in segments:
        if a != pos or b < a:
            raise ValueError(f"segments must tile [0, {numel}) in order; got ({a}, {b}) at offset {pos}")
        pos = b
    if pos != numel:
        raise ValueError(f"segments end at {pos}, but the task vectors have {numel} elements")


def masked_coefficient(lam: float, mask: Tensor | None, scale: float = 1.0) -> Coefficient:
    """``lam * scale * mask`` as a coefficient; a float when there is no mask, ``0.0`` when lam is 0.

    Shape:
        mask: ``(N,)`` bool (or None for "keep everything"); result ``(N,)`` float32 or float.
    """
    if lam == 0.0:
        return 0.0
    if mask is None:
        return float(lam) * scale
    return mask.to(torch.float32).mul_(float(lam) * scale)


def _fp32(x: float) -> float:
    """Round a Python float to the nearest float32 (as a Python float)."""
    return torch.tensor(x, dtype=torch.float32).item()


@torch.no_grad()
def apply_coefficients(pre: Tensor, fts: Sequence[Tensor], coeffs: Sequence[Coefficient] | MergedDelta,
                       out: Tensor | None = None,
                       untouched: Sequence[Untouched | None] | None = None) -> Tensor:
    """``theta = (1 - sum_i c_i) ⊙ pre + sum_i c_i ⊙ ft_i``, exact at ``c = e_i``
    (or ``pre + delta`` for a :class:`MergedDelta`; ``fts`` are then not read).

    All arithmetic is float32 elementwise; float coefficients are rounded to float32 first, so a
    float ``c`` and a tensor filled with ``c`` give the same result (tested on CPU; a backend that
    fuses ``add(alpha=)`` and ``addcmul`` differently could differ in the last ulp away from the
    endpoints, which stay exact because their products are exact). Terms with ``c_i == 0.0``
    (a float) are skipped, so ``ft_i`` is not even read. Where every merged vector is zero
    (``c_i == 0`` or ``ft_i == pre`` for all i) the result is ``pre`` bit for bit.

    Speed: with ``untouched`` (one :func:`~explorer.merging.untouched.find_untouched` set per
    ft, computed once per vector) the coordinates no active vector changes are copied from
    ``pre`` without arithmetic, and for float coefficients no coordinate is compared at all: the
    rest is one multiply and one add per active vector. Without it (or for a None entry, or
    tensor coefficients) untouched coordinates are found by comparison, ``BLOCK`` coordinates at
    a time (bounded scratch). Blocks and spans change no bit (elementwise ops; tested).

    Args:
        pre: pretrained weights. Shape ``(N,)`` float32.
        fts: fine-tuned weights ``ft_i = pre + tau_i``, each ``(N,)`` float32 on pre's device.
        coeffs: one per ft, a float or an ``(N,)`` float32 tensor.
        out: optional ``(N,)`` float32 buffer written in place (e.g. the flat buffer a resident
            model's parameters are views of); must not alias ``pre`` or any ``ft``.
        untouched: optional, parallel to ``fts``: where each ``ft_i == pre`` (must be exact for
            these very tensors: a wrong set gives wrong weights).

    Returns:
        ``out`` (or a new tensor). No other full-size allocation is made.

    Raises:
        ValueError: mismatched counts, shapes, dtypes or devices; ``out`` aliasing an input.
    """
    if isinstance(coeffs, MergedDelta):
        return _apply_delta(pre, coeffs.delta, out)
    fts, coeffs = list(fts), [c if isinstance(c, Tensor) else _fp32(float(c)) for c in coeffs]
    if len(fts) != len(coeffs):
        raise ValueError(f"{len(coeffs)} coefficients for {len(fts)} fine-tuned weight vectors")
    if untouched is not None and len(untouched) != len(fts):
        raise ValueError(f"{len(untouched)} untouched sets for {len(fts)} fine-tuned weight vectors")
    for i, t in enumerate([*fts, *(c for c in coeffs if isinstance(c, Tensor))]):
        if t.shape != pre.shape or t.device != pre.device or t.dtype != pre.dtype:
            raise ValueError(f"operand {i}: {tuple(t.shape)} {t.dtype} on {t.device}; "
                             f"pre is {tuple(pre.shape)} {pre.dtype} on {pre.device}")
    if out is None:
        out = torch.empty_like(pre)
    elif (out.shape, out.dtype, out.device) != (pre.shape, pre.dtype, pre.device):
        raise ValueError(f"out is {tuple(out.shape)} {out.dtype} on {out.device}; must match pre")
    elif any(out.data_ptr() == t.data_ptr() for t in [pre, *fts]):
        raise ValueError("out must not alias pre or a fine-tuned vector")

    active = [i for i, c in enumerate(coeffs) if isinstance(c, Tensor) or c != 0.0]
    tensors = any(isinstance(coeffs[i], Tensor) for i in active)
    # The form is already exact everywhere when all coefficients are 0 (pre) or one is 1.0 (ft_i).
    exact = not active or (len(active) == 1 and not tensors and coeffs[active[0]] == 1.0)
    known = untouched is not None and bool(active) and all(untouched[i] is not None for i in active)
    common = intersect([untouched[i] for i in active]) if known else None
    compare = not exact and (tensors or common is None)    # find untouched coordinates per block
    spans = complement(common.ranges, pre.numel()) if common is not None else [(0, pre.numel())]
    for a, b in spans:
        block = BLOCK if compare else max(b - a, 1)
        for s in range(a, b, block):
            e = min(s + block, b)
            _combine(out[s:e], pre[s:e], [(coeffs[i] if not isinstance(coeffs[i], Tensor) else coeffs[i][s:e],
                                           fts[i][s:e]) for i in active], compare)
    if common is not None:
        for a, b in common.ranges:
            out[a:b].copy_(pre[a:b])
        if common.index.numel() and not exact:
            out.index_copy_(0, common.index, pre.index_select(0, common.index))
    return out


def _combine(out: Tensor, pre: Tensor, terms: list[tuple[Coefficient, Tensor]], compare: bool) -> None:
    """One block: ``out = (1 - sum c) pre + sum c ft`` over the active terms; with ``compare``,
    then ``out = pre`` where every term's vector is zero (``ft == pre`` or ``c == 0``).

    The operation order is the unblocked form's, so the bits are too. Shape: all ``(b,)``."""
    if any(isinstance(c, Tensor) for c, _ in terms):
        # The base weight 1 - sum c is a full block: build it in `out`, then scale by pre.
        out.fill_(1.0)
        for c, _ in terms:
            out.sub_(c)
        out.mul_(pre)
    else:
        w0 = 1.0
        for c, _ in terms:
            w0 = _fp32(w0 - c)  # exact fp32 subtraction (double rounding is innocuous for +,-)
        torch.mul(pre, w0, out=out)
    for c, ft in terms:
        if isinstance(c, Tensor):
            out.addcmul_(ft, c)
        else:
            out.add_(ft, alpha=c)
    if compare:
        untouched = None
        for c, ft in terms:
            zero = ft == pre
            if isinstance(c, Tensor):
                zero |= c == 0
            untouched = zero if untouched is None else untouched.logical_and_(zero)
        torch.where(untouched, pre, out, out=out)


def _apply_delta(pre: Tensor, delta: Tensor, out: Tensor | None) -> Tensor:
    """``pre + delta`` into ``out`` (checked like the coefficient path). Shape: all ``(N,)``."""
    if (delta.shape, delta.dtype, delta.device) != (pre.shape, pre.dtype, pre.device):
        raise ValueError(f"delta is {tuple(delta.shape)} {delta.dtype} on {delta.device}; must match pre")
    if out is not None and (out.shape, out.dtype, out.device) != (pre.shape, pre.dtype, pre.device):
        raise ValueError(f"out is {tuple(out.shape)} {out.dtype} on {out.device}; must match pre")
    return torch.add(pre, delta, out=out) if out is not None else pre + delta
