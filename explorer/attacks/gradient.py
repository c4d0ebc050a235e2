"""FGSM and PGD with per-sample early exit and batch-independent random starts.

FGSM: 'Explaining and Harnessing Adversarial Examples' [https://arxiv.org/abs/1412.6572].
PGD: 'Towards Deep Learning Models Resistant to Adversarial Attacks'
[https://arxiv.org/abs/1706.06083].

Two departures from torchattacks' PGD, both needed by the frontier engine:
- early exit: a sample misclassified at any iterate keeps that iterate (it is a proof) and
  leaves the active set, so later steps only compute on still-robust samples;
- the random start of sample j depends only on (seed, sample_ids[j]), so attacking a subset
  gives row-for-row the same result as attacking everything.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explorer.core.cancel import check_cancelled

# Forward+backward batches are padded to a multiple of this many rows: the active set shrinks at
# every step, and each new batch shape makes oneDNN/cuDNN build new kernels (measured: a new
# shape costs ~40% more than a seen one on the demo ResNet). Padding rows repeat a real row;
# with a sum-reduced loss each row's gradient is its own, so they change nothing.
BUCKET = 16


def bucketed(idx: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    """``idx`` padded with repeats of its first entry to a multiple of ``BUCKET`` entries, but
    to no more than ``limit`` entries (the caller's batch: padding never exceeds its memory)."""
    pad = (-len(idx)) % BUCKET
    if limit is not None:
        pad = max(0, min(pad, limit - len(idx)))
    return torch.cat([idx, idx[:1].expand(pad)]) if pad and len(idx) else idx


def sample_generator(seed: int, sample_id: int, *stream: int) -> torch.Generator:
    """A CPU generator seeded from (seed, sample_id, *stream) alone (SeedSequence mixing).

    ``stream`` names the draw within the image (e.g. stage code, target, restart: see
    ``stages.stream``); PGD's starts use none, so its draws are those of earlier versions.
    """
    words = [seed % 2**63, int(sample_id) % 2**63, *(int(s) % 2**63 for s in stream)]
    state = np.random.SeedSequence(words).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


# Per-sample start noise, kept between calls: a sweep attacks the same images at every point,
# and drawing them (a SeedSequence and a generator per sample) cost ~3% of a point. Bounded by
# elements; cleared whole when full.
_STARTS: dict[tuple, tuple[torch.Tensor, float]] = {}
_STARTS_MAX_ELEMENTS = 2**26


def _unit_start(seed: int, sid: int, shape: tuple[int, ...], norm: str) -> tuple[torch.Tensor, float]:
    """(direction, radius factor) of one sample's start at eps = 1; a pure function of its
    arguments. Linf: uniform in the cube, factor 1. L2: unit direction, uniform radius."""
    key = (seed, sid, shape, norm)
    if key not in _STARTS:
        if (len(_STARTS) + 1) * math.prod(shape) > _STARTS_MAX_ELEMENTS:
            _STARTS.clear()
        g = sample_generator(seed, sid)
        if norm == "Linf":
            _STARTS[key] = (2 * torch.rand(shape, generator=g) - 1, 1.0)
        else:
            d = torch.randn(shape, generator=g)
            r = torch.rand((), generator=g)
            _STARTS[key] = (d / (d.norm() + 1e-12), float(r))
    return _STARTS[key]


def random_start(shape: torch.Size, eps: float, norm: str, seed: int,
                 sample_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample start offsets: uniform in the Linf cube, or uniform radius x direction (L2).

    Shape:
        shape: [N, C, H, W]; sample_ids: [N]. Returns delta [N, C, H, W] on the CPU.
    """
    inner = tuple(shape[1:])
    starts = [_unit_start(seed, sid, inner, norm) for sid in sample_ids.tolist()]
    if norm == "Linf":
        return torch.stack([d for d, _ in starts]) * eps
    return torch.stack([d * eps * r for d, r in starts])


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto {x' : ||x' - x|| <= eps} and then onto [0, 1] (both norms stay inside)."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
        delta = delta * torch.clamp(eps / (n + 1e-12), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _ascent(x_adv: torch.Tensor, grad: torch.Tensor, step: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return x_adv + step * grad.sign()
    g = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.ndim - 1))
    return x_adv + step * grad / (g + 1e-12)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, steps: int,
        *, step_size: float | None = None, rand_init: bool = True, seed: int = 0,
        sample_ids: torch.Tensor | None = None,
        passes: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient ascent on the CE loss with per-sample early exit.

    Args:
        model: pixels -> logits, in eval mode (see ``safety.attack_context``).
        eps, norm: the threat model ("Linf" sign steps, "L2" normalised steps).
        steps: number of gradient steps K (one forward+backward each).
        step_size: defaults to 2.5 * eps / K.
        rand_init: random start inside the ball (seeded per sample) or start at x.
        sample_ids: stable ids of the rows (default arange(N)) for the random start.
        passes: optional int64 [N] on the CPU, incremented in place by the forward+backward
            passes each row received (padding rows are not counted).

    Raises:
        Cancelled: the enclosing cancel scope's token was set (checked before every step).

    Shape:
        x: [N, C, H, W] in [0, 1] on the model's device; y: [N] int64. Returns x_adv like x.
        Fooled samples hold the first iterate that fooled the model; the others the last one.
    """
    step = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach().contiguous()
    x_adv = x.clone()
    if rand_init:
        ids = torch.arange(len(x)) if sample_ids is None else sample_ids.cpu()
        x_adv = project(x + random_start(x.shape, eps, norm, seed, ids).to(x), x, eps, norm)
    active = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        check_cancelled()
        rows = bucketed(active, limit=len(x))
        if passes is not None:
            passes[active.cpu()] += 1
        xa = x_adv[rows].clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xa)
            # Sum reduction: each sample's gradient is independent of the batch around it.
            loss = F.cross_entropy(logits, y[rows], reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        n = len(active)
        robust = logits[:n].detach().argmax(1) == y[active]
        active, xa, grad = active[robust], xa[:n].detach()[robust], grad[:n][robust]
        if len(active) == 0:
            break
        x_adv[active] = project(_ascent(xa, grad, step, norm), x[active], eps, norm)
    return x_adv


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
         passes: torch.Tensor | None = None) -> torch.Tensor:
    """One step of size eps from x (sign step for Linf, normalised-gradient step for L2)."""
    return pgd(model, x, y, eps, norm, steps=1, step_size=eps, rand_init=False, passes=passes)
