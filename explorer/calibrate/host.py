"""What calibration needs from its host (the Engine implements it): a small structural protocol.

Calibration reads a model as a function of flat parameters, the base and task vectors as flat
buffers, a zero-shot classifier for the calibration task, and the manifest defaults (task, eps).
It never writes the host's resident weights.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from explorer.core.taskvec import FlatLayout


class VectorView(Protocol):
    """A resident task vector. Shape: ``tau`` ``(N,)`` float32 on the host's device."""

    role: str       # "natural" | "robust"
    tau: Tensor     # ft - pre, flat
    digest: str     # content hash of the fine-tuned weights


class ClassifierView(Protocol):
    """A zero-shot classifier: its prompts and its pixel preprocessing ([0,1] NCHW in)."""

    classnames: Sequence[str]
    templates: Sequence[str]

    def preprocess(self, x: Tensor) -> Tensor: ...


class DefaultsView(Protocol):
    defaults: Mapping[str, Any]   # the manifest's [defaults] (task, eps, ...)


class CalibrationHost(Protocol):
    """The engine, as calibration sees it."""

    device: torch.device
    base_digest: str              # content hash of theta_pre (part of every cache key)
    pre: Tensor                   # theta_pre, flat ``(N,)`` float32 on ``device``
    layout: FlatLayout            # tensor keys and segments of the flat buffers
    model: nn.Module              # open_clip model whose parameters ``layout`` flattens
    tokenizer: Callable[[list[str]], Tensor]
    manifest: DefaultsView

    def classifier(self, task: str, normalize: str | None = None) -> ClassifierView: ...

    def normalization(self, names: Sequence[str]) -> str: ...   # the vectors' declared input normalisation

    def preprocess_cfg(self) -> dict: ...   # the model's open_clip eval preprocessing (size, resize)

    def vector(self, name: str) -> VectorView: ...

    def vectors(self, names: Sequence[str]) -> Sequence[VectorView]: ...
