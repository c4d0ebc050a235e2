"""TSV-M: per matrix, the top 1/T singular components of each vector, re-orthogonalised, summed.

Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging" (CVPR
2025, https://arxiv.org/abs/2412.00081), as used for many vectors in Robust OVAR (arXiv
2606.20734). The operator, the mapping of our lambdas onto its scale alpha, what T counts, the
tensors it treats as matrices and those it averages: :mod:`explorer.merging.spectral`.
"""
from __future__ import annotations

import torch

from explorer.config import MergeSpec

from .base import MergedDelta, MergeInputs
from .record import MethodRecord, Option, read_option
from .spectral import CONV_MODES, TSV_M_PAPER, spectral_delta

OPTIONS = {"conv": Option("matrix", f"conv kernels as (out, in*kh*kw) matrices or averaged: "
                                    f"{' | '.join(CONV_MODES)}")}


@torch.no_grad()
def tsv_m(inputs: MergeInputs, spec: MergeSpec) -> MergedDelta:
    """``polar([U_1k..U_Tk]) diag(S_1k..S_Tk) polar([V_1k..V_Tk])^T`` per matrix, k = floor(r/T), of
    ``T_eff lambda_i tau_i``; other tensors ``sum_i lambda_i tau_i`` (TSV-M,
    https://arxiv.org/abs/2412.00081; choices in merging/spectral.py).

    T counts the vectors with a non-zero lambda; equal lambdas ``alpha / T`` give the published
    ``theta_0 + alpha * TSV(tau_1..tau_T)`` exactly; all lambdas 0 give theta_0 bit for bit.
    ``keep``, ``scope``, ``seed`` are not read.
    """
    return MergedDelta(spectral_delta(inputs.taus, spec.lambdas, inputs.segments, inputs.shapes,
                                      inputs.names, "tsv_m", conv=str(read_option(spec, OPTIONS, "conv"))))


RECORD = MethodRecord("tsv_m", tsv_m, TSV_M_PAPER, fields=(), options=OPTIONS, exact_endpoints=False,
                      version=2)  # 2: SVDs of the unscaled tau_i, scaled after (cacheable; rounding differs)
