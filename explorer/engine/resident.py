"""The engine's resident weights at the memory floor: theta_pre, the merged theta, one flat ft per vector.

For a base and k vectors the engine holds (2 + k) flat float32 copies of the model and nothing
else model-sized: the architecture is kept as storage-free ``meta`` tensors (shapes, dtypes),
the model's parameters are views into theta, checkpoints are read tensor by tensor into their
flat buffers (``zoo.flatload``), and a vector keeps only ``ft`` (``tau = ft - pre`` is made on
demand, by the merge methods that read it). Keeping ft rather than tau is what keeps alpha = 0 / 1
bit-exact: the merge evaluates ``(1 - sum c) pre + sum c ft`` (``merging.apply_coefficients``).

Freed memory goes back to the OS after the base and after each vector
(``heap.release_freed_heap``: glibc's ``malloc_trim(0)``, a no-op elsewhere): glibc keeps freed
blocks under 32 MiB in the process heap, so the model's random-init tensors (freed when theta is
bound) and the loaders' per-tensor scratch stayed resident, 0.2 GiB over the floor on ViT-B/32.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from explorer.config import MergeSpec
from explorer.core.heap import release_freed_heap
from explorer.core.taskvec import FlatLayout, bind_flat
from explorer.core.towers import is_vision
from explorer.merging import get_method
from explorer.merging.untouched import Untouched, find_untouched
from explorer.zoo import ModelEntry, fit_weights
from explorer.zoo.flatload import LoadReport, check_fits, load_flat

log = logging.getLogger(__name__)


def flat_digest(flat: torch.Tensor, chunk: int = 1 << 24) -> str:
    """sha256 (16 hex) of the float32 bytes, hashed chunk by chunk (no full-size copy)."""
    h = hashlib.sha256()
    for i in range(0, flat.numel(), chunk):
        h.update(memoryview(flat[i:i + chunk].detach().cpu().contiguous().numpy()))
    return h.hexdigest()[:16]


@dataclass(eq=False)
class Vector:
    """A fine-tuned model held flat on the device (``ft``); ``tau`` is computed when asked."""

    name: str
    role: str
    ft: torch.Tensor
    digest: str
    touches_text: bool
    pre: torch.Tensor = field(repr=False)
    report: LoadReport | None = field(default=None, repr=False)
    # Where ft == pre (found once at load; ``merging.untouched``): lets a merge skip comparing.
    untouched: Untouched | None = field(default=None, repr=False)

    @property
    def tau(self) -> torch.Tensor:
        """``ft - pre``: a new full-size tensor on every access (hold it only while needed)."""
        return self.ft - self.pre


def meta_reference(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as storage-free ``meta`` tensors (shapes and dtypes only)."""
    return {k: torch.empty_like(v, device="meta") for k, v in model.state_dict().items()}


def load_base(entry: ModelEntry, model: nn.Module, device: torch.device, cache_dir: str | None):
    """Bind ``model`` to a flat theta on ``device`` and read the base into a flat ``pre``.

    The model's random-init weights are freed as soon as theta is bound; at no point are more
    than two model copies held (plus one tensor of scratch).

    Returns:
        (reference, layout, pre, theta, report); ``theta`` equals ``pre`` and backs the model.
    """
    reference = meta_reference(model)
    layout = FlatLayout.from_state_dict(reference)
    nbytes = layout.numel * 4
    check_fits(2 * nbytes, device, f"the base model {entry.name!r} (theta_pre and the merged theta)")
    model.to(device).eval()
    theta = torch.empty(layout.numel, dtype=torch.float32, device=device)
    bind_flat(model, layout, theta)
    pre = torch.empty_like(theta)
    report = load_flat(entry, reference, layout, pre, fill=None, cache_dir=cache_dir)
    theta.copy_(pre)
    sd = model.state_dict()
    for k, v in report.ints.items():      # integer buffers (BatchNorm counters) from the file
        if k in sd:
            sd[k].copy_(v)
    release_freed_heap()                 # the random-init weights and the loader's scratch
    return reference, layout, pre, theta, report


def load_vector(entry: ModelEntry, reference: Mapping[str, torch.Tensor], layout: FlatLayout,
                pre: torch.Tensor, text_segments: Sequence[tuple[int, int]],
                cache_dir: str | None) -> Vector:
    """Read a fine-tune into a new flat ``ft`` (missing towers = the base's). All or nothing."""
    check_fits(layout.numel * 4, pre.device, f"loading {entry.name!r}")
    ft = torch.empty_like(pre)
    report = load_flat(entry, reference, layout, ft, fill=pre, cache_dir=cache_dir)
    vec = _vector(entry, ft, pre, layout, text_segments, report)
    release_freed_heap()
    return vec


def vector_from_tensors(entry: ModelEntry, tensors: Mapping[str, torch.Tensor],
                        reference: Mapping[str, torch.Tensor], layout: FlatLayout, pre: torch.Tensor,
                        text_segments: Sequence[tuple[int, int]]) -> Vector:
    """A fine-tune from tensors already read (an upload), validated like a file; as ``load_vector``.

    Raises:
        CheckpointError: unknown, mis-shaped, missing or non-finite weights.
    """
    sd = fit_weights(entry, dict(tensors), dict(reference))
    check_fits(layout.numel * 4, pre.device, f"loading {entry.name!r}")
    ft = pre.clone()                       # missing towers = the base's
    for key, (a, b) in zip(layout.keys, layout.segments):
        if key in sd:
            ft[a:b].copy_(sd[key].reshape(-1))
    return _vector(entry, ft, pre, layout, text_segments, None)


def _vector(entry: ModelEntry, ft: torch.Tensor, pre: torch.Tensor, layout: FlatLayout,
            text_segments: Sequence[tuple[int, int]], report: LoadReport | None) -> Vector:
    untouched = find_untouched(pre, ft, layout.segments)
    if untouched is not None:   # a text tensor equal to pre is one of its ranges: no second pass
        touches = any(not untouched.covers(a, b) for a, b in text_segments)
    else:
        touches = any(not torch.equal(ft[a:b], pre[a:b]) for a, b in text_segments)
    return Vector(entry.name, entry.role, ft, flat_digest(ft), touches, pre, report, untouched)


def text_segments(layout: FlatLayout) -> list[tuple[int, int]]:
    """Flat (start, end) of every tensor outside the visual tower."""
    return [s for k, s in zip(layout.keys, layout.segments) if not is_vision(k)]


def constant_coefficients(spec: MergeSpec) -> list[float] | None:
    """The coefficients when the method is task arithmetic in effect (no tau read; its record's
    ``lambdas_only``), else None."""
    if get_method(spec.method).is_lambdas(spec):
        return [float(lam) for lam in spec.lambdas]
    return None
