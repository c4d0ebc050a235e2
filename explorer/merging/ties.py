"""TIES-Merging: trim, elect sign, disjoint (weighted) mean.

Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
https://arxiv.org/abs/2306.01708

Our generalisation to per-vector lambdas (mergekit's normalised TIES, with the total weight kept):

    c_ij = lambda_i m_ij a_ij * S / D_j,   S = sum_k |lambda_k|,   D_j = sum_k |lambda_k| m_kj a_kj,

and ``c_ij = 0`` where ``D_j = 0``. ``m_i`` is the trim mask (top-``keep`` ``|tau_i|``),
``e_j = sign(sum_k lambda_k m_kj tau_kj)`` the elected sign and
``a_ij = [sign(lambda_i tau_ij) = e_j != 0]`` the agreement.

Choices:
- A negative lambda is a *negated vector* with weight ``|lambda|``: its direction
  ``sign(lambda) tau`` enters the election and agreement; weights are ``|lambda|`` so ``D >= 0``
  and ``S`` is the kept total (``= sum lambda`` when all lambdas are >= 0). With signed weights
  ``(1, -1)`` would give ``S = 0`` and erase everything.
- Where every vector with ``lambda != 0`` agrees, ``S / D = 1`` exactly (both sums run in the same
  float32 order), so without conflicts and with keep=1 this is task arithmetic; where only some
  agree, their weighted mean is scaled back up to the total weight ``S`` (the TIES disjoint mean).
- lambdas ``(1, 0)`` with keep=1 give ``c = (1 on tau_1 != 0, 0.0)``: the endpoint, bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from explorer.config import MergeSpec

from .base import Coefficient, MergeInputs
from .record import MethodRecord
from .sparsify import trim_mask


def _fp32_sum(values: Sequence[float]) -> float:
    """Left-to-right float32 sum (the order ``disjoint_mean`` accumulates D in)."""
    total = torch.zeros((), dtype=torch.float32)
    for v in values:
        total = total + torch.tensor(v, dtype=torch.float32)
    return total.item()


@torch.no_grad()
def elect_sign(taus: Sequence[Tensor], lambdas: Sequence[float],
               masks: Sequence[Tensor | None]) -> Tensor:
    """Elected sign per coordinate, ``sign(sum_i lambda_i m_i tau_i)`` (TIES "sum" election).

    Shape:
        each tau ``(N,)`` float32, each mask ``(N,)`` bool or None (= all kept);
        returns ``(N,)`` int8 in {-1, 0, 1}.
    """
    total = torch.zeros_like(taus[0])
    for tau, lam, mask in zip(taus, lambdas, masks):
        if lam != 0.0:
            total.add_(tau if mask is None else torch.where(mask, tau, 0.0), alpha=float(lam))
    return torch.sign(total).to(torch.int8)


@torch.no_grad()
def agreement_mask(tau: Tensor, lam: float, elected: Tensor, mask: Tensor | None) -> Tensor:
    """``m ⊙ [sign(lambda tau) == elected != 0]``: kept entries pointing the elected way.

    Shape:
        tau ``(N,)`` float, elected ``(N,)`` int8, mask ``(N,)`` bool or None; returns ``(N,)`` bool.
    """
    direction = torch.sign(tau).to(torch.int8)
    if lam < 0:
        direction.neg_()
    agree = (direction == elected) & (direction != 0)
    return agree if mask is None else agree.logical_and_(mask)


@torch.no_grad()
def disjoint_mean(lambdas: Sequence[float], agree: Sequence[Tensor | None]) -> list[Coefficient]:
    """Weighted disjoint mean, total weight kept: ``c_ij = lambda_i a_ij S / sum_k |lambda_k| a_kj``.

    ``S = sum_k |lambda_k|``; ``c_ij = 0`` where no vector contributes. Vectors with
    ``lambda_i = 0`` get ``0.0`` (and their entry in ``agree`` may be None).

    Shape:
        each agree ``(N,)`` bool; returns floats or ``(N,)`` float32 tensors.
    """
    weights = [abs(float(lam)) for lam in lambdas]
    live = [(w, a) for w, a in zip(weights, agree) if w != 0.0]
    if not live:
        return [0.0] * len(lambdas)
    denom = torch.zeros(live[0][1].shape, dtype=torch.float32, device=live[0][1].device)
    for w, a in live:
        denom.add_(a, alpha=w)  # a is 0/1, so w*a is exact and this is the float32 sum S where all agree
    # ratio is inf where denom == 0, but a_ij is False there, so torch.where never selects it.
    ratio = torch.full_like(denom, _fp32_sum(w for w, _ in live)).div_(denom)
    return [torch.where(a, ratio, 0.0).mul_(float(lam)) if lam != 0.0 else 0.0
            for lam, a in zip(lambdas, agree)]


@torch.no_grad()
def ties(inputs: MergeInputs, spec: MergeSpec) -> list[Coefficient]:
    """``c_ij = lambda_i m_ij a_ij sum_k |lambda_k| / sum_k |lambda_k| m_kj a_kj`` (arxiv.org/abs/2306.01708).

    Trim ``m_i``: top-``keep`` ``|tau_i|`` (``spec.scope``: ``global`` or ``per_tensor``; the paper's
    K=20 is keep=0.2 global). Then sign election, agreement and the weighted disjoint mean
    (module docstring). No randomness (``seed`` unused).
    """
    taus, lambdas = inputs.taus, [float(lam) for lam in spec.lambdas]
    trim = spec.keep < 1.0
    masks = [trim_mask(tau, spec.keep, inputs.segments, spec.scope) if trim and lam != 0.0 else None
             for tau, lam in zip(taus, lambdas)]
    elected = elect_sign(taus, lambdas, masks)
    agree = [agreement_mask(tau, lam, elected, m) if lam != 0.0 else None
             for tau, lam, m in zip(taus, lambdas, masks)]
    return disjoint_mean(lambdas, agree)


RECORD = MethodRecord("ties", ties, "https://arxiv.org/abs/2306.01708", fields=("keep", "scope"),
                      dense_at_full_keep=True)
