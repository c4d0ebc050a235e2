"""Task vectors: ``tau = theta_ft - theta_pre`` over floating-point tensors, in float32.

Two forms: ``TaskVector`` (a dict of named tensors, with arithmetic and safetensors IO) and the
flat form (one contiguous float32 buffer per model in the fixed key order of a ``FlatLayout``),
which the merge engine keeps resident on the device.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass(frozen=True)
class FlatLayout:
    """Fixed order, shapes and offsets of the float tensors of a state dict."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "FlatLayout":
        keys = tuple(k for k, v in sd.items() if v.is_floating_point())
        return cls(keys, tuple(tuple(sd[k].shape) for k in keys))

    @cached_property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @cached_property
    def segments(self) -> list[tuple[int, int]]:
        """(start, end) of each tensor in the flat buffer."""
        out, start = [], 0
        for n in self.numels:
            out.append((start, start + n))
            start += n
        return out

    @property
    def numel(self) -> int:
        return sum(self.numels)

    def flatten(self, sd: Mapping[str, torch.Tensor], device: str | torch.device = "cpu",
                fill: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """One float32 buffer; keys absent from ``sd`` come from ``fill`` (or are zero)."""
        flat = torch.zeros(self.numel, dtype=torch.float32, device=device)
        for key, (a, b) in zip(self.keys, self.segments):
            src = sd.get(key, fill.get(key) if fill is not None else None)
            if src is not None:
                flat[a:b].copy_(src.reshape(-1))
        return flat

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views into ``flat`` keyed and shaped like the state dict."""
        return {k: flat[a:b].view(s) for k, (a, b), s in zip(self.keys, self.segments, self.shapes)}

    def mask_of(self, predicate) -> torch.Tensor:
        """Boolean flat mask of the coordinates whose key satisfies ``predicate(key)``."""
        m = torch.zeros(self.numel, dtype=torch.bool)
        for key, (a, b) in zip(self.keys, self.segments):
            if predicate(key):
                m[a:b] = True
        return m


def bind_flat(model: nn.Module, layout: FlatLayout, flat: torch.Tensor) -> None:
    """Make the model's parameters and float buffers views into ``flat``.

    Afterwards writing into ``flat`` (one fused merge) changes the model in place: no state
    dict rebuild, no re-creation.
    """
    views = layout.unflatten(flat)
    for key, view in views.items():
        module_name, _, attr = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(view, requires_grad=False)
        elif attr in module._buffers:
            module._buffers[attr] = view
        else:
            raise KeyError(f"{key} is neither a parameter nor a buffer of the model")


class TaskVector:
    """Named float32 tensors ``theta_ft - theta_pre`` (only the keys the fine-tune holds)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], name: str = "") -> None:
        self.tensors = {k: v.detach().to(torch.float32) for k, v in tensors.items()}
        self.name = name

    @classmethod
    def extract(cls, pre: Mapping[str, torch.Tensor], ft: Mapping[str, torch.Tensor],
                name: str = "") -> "TaskVector":
        """``ft - pre`` key for key over floating tensors; a visual-only ``ft`` gives a visual-only vector.

        Raises:
            ValueError: naming keys of ``ft`` absent from ``pre`` or of different shape.
        """
        extra = sorted(k for k in ft if k not in pre)
        if extra:
            raise ValueError(f"task vector {name!r}: keys not in the pretrained model: {extra[:5]}")
        shape = [f"{k}: {tuple(ft[k].shape)} vs {tuple(pre[k].shape)}"
                 for k in ft if ft[k].shape != pre[k].shape]
        if shape:
            raise ValueError(f"task vector {name!r}: shape mismatch (fine-tuned vs pretrained): {shape[:5]}")
        return cls({k: ft[k].float() - pre[k].float() for k in ft if ft[k].is_floating_point()}, name)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def _combine(self, other: "TaskVector", sign: float) -> "TaskVector":
        keys = list(dict.fromkeys([*self.tensors, *other.tensors]))
        out = {}
        for k in keys:
            a, b = self.tensors.get(k), other.tensors.get(k)
            if a is not None and b is not None and a.shape != b.shape:
                raise ValueError(f"cannot combine task vectors: {k} has shapes {a.shape} and {b.shape}")
            out[k] = b * sign if a is None else (a if b is None else a + sign * b)
        return TaskVector(out, f"({self.name}{'+' if sign > 0 else '-'}{other.name})")

    def __add__(self, other: "TaskVector") -> "TaskVector":
        return self._combine(other, 1.0)

    def __sub__(self, other: "TaskVector") -> "TaskVector":
        return self._combine(other, -1.0)

    def __neg__(self) -> "TaskVector":
        return self * -1.0

    def __mul__(self, scale: float) -> "TaskVector":
        return TaskVector({k: v * float(scale) for k, v in self.tensors.items()}, f"{scale:g}*{self.name}")

    __rmul__ = __mul__

    def norm(self) -> float:
        """L2 norm over all tensors (float64 accumulation)."""
        return math.sqrt(sum(dot(v, v) for v in self.tensors.values()))

    def layer_norms(self) -> dict[str, float]:
        """L2 norm of each tensor, by key."""
        return {k: math.sqrt(dot(v, v)) for k, v in self.tensors.items()}

    def cosine(self, other: "TaskVector") -> float:
        """Cosine similarity over the shared keys (a missing key counts as zero); 0 for a zero vector."""
        num = sum(dot(v, other.tensors[k]) for k, v in self.tensors.items() if k in other.tensors)
        return cosine_of(num, self.norm(), other.norm())

    def apply_to(self, pre: Mapping[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
        """``pre + scale * tau`` as a new state dict (the plain, per-model path)."""
        out = {k: v.clone() for k, v in pre.items()}
        for k, v in self.tensors.items():
            out[k] = (pre[k].float() + scale * v).to(pre[k].dtype)
        return out

    def to_flat(self, layout: FlatLayout, device: str | torch.device = "cpu") -> torch.Tensor:
        return layout.flatten(self.tensors, device)

    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
        meta = {"name": self.name, "kind": "task_vector", **(metadata or {})}
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path),
                  metadata={k: str(v) for k, v in meta.items()})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "TaskVector":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            name = (f.metadata() or {}).get("name", Path(path).stem)
        return cls(load_file(str(path)), name)


def sum_vectors(vectors: Iterable[TaskVector], lambdas: Iterable[float]) -> TaskVector:
    """``sum_i lambda_i * tau_i`` (plain task arithmetic on named tensors)."""
    vectors, lambdas = list(vectors), list(lambdas)
    if len(vectors) != len(lambdas) or not vectors:
        raise ValueError("give one lambda per task vector (and at least one vector)")
    total = vectors[0] * lambdas[0]
    for v, lam in zip(vectors[1:], lambdas[1:]):
        total = total + v * lam
    return total


# --------------------------------------------------------------------------- statistics
# The one implementation of task-vector statistics: ``TaskVector`` (named tensors) and
# ``flat_stats`` (the engine's resident flat buffers) both reduce through ``dot``.

_CHUNK = 1 << 22   # elements per float64 chunk: no float64 copy of a whole vector


def _chunks(t: torch.Tensor) -> Iterator[torch.Tensor]:
    flat = t.reshape(-1)
    for i in range(0, flat.numel(), _CHUNK):
        yield flat[i:i + _CHUNK]


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``sum(a * b)`` accumulated in float64, chunk by chunk; same-shaped tensors of any dtype."""
    if a.shape != b.shape:
        raise ValueError(f"dot of tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return float(sum((torch.dot(x.double(), y.double()) for x, y in zip(_chunks(a), _chunks(b))),
                     torch.zeros((), dtype=torch.float64)))


def cosine_of(inner: float, norm_a: float, norm_b: float) -> float:
    """``inner / (norm_a * norm_b)`` clamped to [-1, 1]; 0 when either norm is 0."""
    denom = norm_a * norm_b
    return max(-1.0, min(1.0, inner / denom)) if denom > 0 else 0.0


def layer_groups(keys: Sequence[str]) -> tuple[list[str], list[int]]:
    """Group state-dict keys into layers (``visual.block3``, ``text.block0``, ``visual.other``).

    Returns: (labels in model order: visual tower first, embeddings/heads before blocks; the
    label index of each key).
    """
    labels, index = [], []
    for k in keys:
        parts = k.split(".")
        tower = "visual" if parts[0] == "visual" else "text"
        block = next((parts[i + 1] for i, p in enumerate(parts[:-1])
                      if p in ("resblocks", "layers", "blocks") and parts[i + 1].isdigit()), None)
        if block is None:  # ResNet stages: visual.layer3.0.conv1.weight -> block 3
            block = next((p[len("layer"):] for p in parts if p.startswith("layer") and p[5:].isdigit()), None)
        label = f"{tower}.block{block}" if block is not None else f"{tower}.other"
        if label not in labels:
            labels.append(label)
        index.append(labels.index(label))

    def rank(lab: str) -> tuple:
        return (lab.startswith("text"), not lab.endswith("other"),
                int(lab.rsplit("block", 1)[1]) if "block" in lab else -1)

    order = sorted(range(len(labels)), key=lambda i: rank(labels[i]))
    new_pos = {old: new for new, old in enumerate(order)}
    return [labels[i] for i in order], [new_pos[i] for i in index]


@dataclass(frozen=True)
class FlatStats:
    """Statistics of task vectors in flat form (``flat_stats``)."""

    l2: list[float]                 # L2 norm of each vector
    linf: list[float]               # largest |coordinate| of each vector
    nonzero: list[float]            # fraction of non-zero coordinates, in [0, 1]
    cosine: list[list[float]]       # k x k cosine similarities, in [-1, 1]
    layers: list[str]               # layer labels in model order (``layer_groups``)
    layer_norms: list[list[float]]  # per vector, the L2 norm of each layer


def flat_stats(taus: Sequence[torch.Tensor], layout: FlatLayout) -> FlatStats:
    """Norms, non-zero fractions, pairwise cosines and per-layer norms of flat task vectors.

    Args:
        taus: k flat vectors of ``layout.numel`` coordinates each (any device, float).
        layout: the key order and offsets of the flat form.
    """
    labels, index = layer_groups(layout.keys)
    squares = []
    for tau in taus:
        sq = [0.0] * len(labels)
        for gi, (a, b) in zip(index, layout.segments):
            sq[gi] += dot(tau[a:b], tau[a:b])
        squares.append(sq)
    l2 = [math.sqrt(sum(sq)) for sq in squares]
    k = len(taus)
    cos = [[1.0 if l2[i] > 0 else 0.0] * k for i in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            cos[i][j] = cos[j][i] = cosine_of(dot(taus[i], taus[j]), l2[i], l2[j])
    return FlatStats(l2=l2, linf=[float(t.abs().max()) if t.numel() else 0.0 for t in taus],
                     nonzero=[int((t != 0).sum()) / t.numel() if t.numel() else 0.0 for t in taus],
                     cosine=cos, layers=labels,
                     layer_norms=[[math.sqrt(v) for v in sq] for sq in squares])
