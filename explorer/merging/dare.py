"""DARE (drop and rescale): ``c_i = lambda_i * m_i / keep``, ``m_ij ~ Bernoulli(keep)``.

Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a
Free Lunch", https://arxiv.org/abs/2311.03099 (mergekit ``dare_linear``).
"""
from __future__ import annotations

import logging

import torch

from explorer.config import MergeSpec

from .base import Coefficient, MergeInputs, masked_coefficient
from .record import MethodRecord
from .sparsify import bernoulli_mask, vector_seed

log = logging.getLogger(__name__)

# |lambda| / keep above which DARE warns that its rescale blows the kept deltas up.
WARN_RESCALE = 100.0


@torch.no_grad()
def dare(inputs: MergeInputs, spec: MergeSpec) -> list[Coefficient]:
    """``theta = pre + sum_i lambda_i (m_i ⊙ tau_i) / keep`` (https://arxiv.org/abs/2311.03099).

    ``m_i`` is an i.i.d. Bernoulli(keep) mask drawn on the taus' device from a generator seeded
    by ``vector_seed(spec.seed, i)``: deterministic, independent across vectors, and the same for
    every lambda (so an alpha sweep reuses one draw). The 1/keep rescale keeps E[c_i] = lambda_i.
    ``scope`` is irrelevant (the draw is per coordinate). keep=1 is task arithmetic exactly.
    The draw keeps each coordinate with probability keep to within 6e-5 relative at any keep
    (``sparsify.bernoulli_mask``), so the rescale stays unbiased. When ``|lambda| / keep`` exceeds
    ``WARN_RESCALE`` a warning gives the largest rescaled delta: at keep 1e-4 the kept deltas are
    multiplied by 10^4 and the merged weights reach |w| ~ 142 on the demo zoo.
    """
    if spec.keep >= 1.0:
        return [float(lam) for lam in spec.lambdas]
    coeffs: list[Coefficient] = []
    for i, (tau, lam) in enumerate(zip(inputs.taus, spec.lambdas)):
        if lam == 0.0:
            coeffs.append(0.0)
            continue
        mask = bernoulli_mask(tau.numel(), spec.keep, vector_seed(spec.seed, i), tau.device)
        coeffs.append(masked_coefficient(lam, mask, 1.0 / spec.keep))
        if abs(lam) / spec.keep > WARN_RESCALE:
            kept = tau[mask]
            top = float(kept.abs().max()) * abs(lam) / spec.keep if kept.numel() else 0.0
            log.warning("DARE at keep %g rescales the %d kept coordinates of vector %d by lambda/keep = %.3g: "
                        "deltas up to |%.3g| (the vector's own largest is |%.3g|)", spec.keep, kept.numel(), i,
                        lam / spec.keep, top, float(tau.abs().max()))
    return coeffs


RECORD = MethodRecord("dare", dare, "https://arxiv.org/abs/2311.03099", fields=("keep", "seed"),
                      dense_at_full_keep=True, lambdas_only="at_full_keep", keep_count="expected", version=2)  # 2: exact P(kept) below 2^-10
