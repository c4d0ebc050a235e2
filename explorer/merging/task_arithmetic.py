"""Task arithmetic: ``c_i = lambda_i``.

Ilharco et al., "Editing Models with Task Arithmetic", https://arxiv.org/abs/2212.04089
"""
from __future__ import annotations

import torch

from explorer.config import MergeSpec

from .base import Coefficient, MergeInputs
from .record import MethodRecord


@torch.no_grad()
def task_arithmetic(inputs: MergeInputs, spec: MergeSpec) -> list[Coefficient]:
    """``theta = pre + sum_i lambda_i tau_i`` (https://arxiv.org/abs/2212.04089).

    Constant coefficients (floats): no tensor is read or allocated. A negative lambda negates.
    ``keep``, ``scope`` and ``seed`` are ignored.
    """
    return [float(lam) for lam in spec.lambdas]


RECORD = MethodRecord("task_arithmetic", task_arithmetic, "https://arxiv.org/abs/2212.04089", lambdas_only="always")
