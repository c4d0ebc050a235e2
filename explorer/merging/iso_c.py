"""Iso-C: ``theta = theta_0 + tau_merged``, each matrix of ``sum_i lambda_i tau_i`` with flat singular values.

Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
Subspaces" (ICML 2025, https://arxiv.org/abs/2502.04959), as used for many vectors in Robust OVAR
(arXiv 2606.20734). The operator, the mapping of our lambdas onto its scale alpha, the tensors it
treats as matrices and those it averages: :mod:`explorer.merging.spectral`.
"""
from __future__ import annotations

import torch

from explorer.config import MergeSpec

from .base import MergedDelta, MergeInputs
from .record import MethodRecord, Option, read_option
from .spectral import CONV_MODES, ISO_C_PAPER, spectral_delta

OPTIONS = {"conv": Option("matrix", f"conv kernels as (out, in*kh*kw) matrices or averaged: "
                                    f"{' | '.join(CONV_MODES)}")}


@torch.no_grad()
def iso_c(inputs: MergeInputs, spec: MergeSpec) -> MergedDelta:
    """``U S V^T = svd(sum_i T_eff lambda_i tau_i)`` per matrix -> ``mean(S) U V^T``; other tensors
    ``sum_i lambda_i tau_i`` (Iso-C, https://arxiv.org/abs/2502.04959; choices in merging/spectral.py).

    Equal lambdas ``alpha / T`` give the published ``theta_0 + alpha * Iso(sum_i tau_i)`` exactly;
    all lambdas 0 give theta_0 bit for bit. ``keep``, ``scope``, ``seed`` are not read.
    """
    return MergedDelta(spectral_delta(inputs.taus, spec.lambdas, inputs.segments, inputs.shapes,
                                      inputs.names, "iso_c", conv=str(read_option(spec, OPTIONS, "conv"))))


RECORD = MethodRecord("iso_c", iso_c, ISO_C_PAPER, fields=(), options=OPTIONS, exact_endpoints=False)
