"""Magnitude pruning of each task vector: ``c_i = lambda_i * topk_mask(|tau_i|, keep)``.

The "trim" step of TIES on its own (no sign election, no mean); mergekit's ``magnitude``
sparsification with task-arithmetic consensus. https://arxiv.org/abs/2306.01708 (Sec. 3, trim)
"""
from __future__ import annotations

import torch

from explorer.config import MergeSpec

from .base import Coefficient, MergeInputs, masked_coefficient
from .record import MethodRecord
from .sparsify import trim_mask


@torch.no_grad()
def magnitude(inputs: MergeInputs, spec: MergeSpec) -> list[Coefficient]:
    """``theta = pre + sum_i lambda_i (m_i ⊙ tau_i)``, ``m_i`` = top-``keep`` ``|tau_i|``.

    Each vector keeps exactly ``round(keep * N)`` coordinates (scope ``global``) or
    ``round(keep * n_t)`` per tensor (scope ``per_tensor``); no rescaling.
    keep=1 is task arithmetic exactly (float coefficients).
    """
    if spec.keep >= 1.0:
        return [float(lam) for lam in spec.lambdas]
    return [
        masked_coefficient(lam, trim_mask(tau, spec.keep, inputs.segments, spec.scope)) if lam else 0.0
        for tau, lam in zip(inputs.taus, spec.lambdas)
    ]


RECORD = MethodRecord("magnitude", magnitude, "https://arxiv.org/abs/2306.01708", fields=("keep", "scope"),
                      dense_at_full_keep=True, lambdas_only="at_full_keep",
                      keep_count="exact")
