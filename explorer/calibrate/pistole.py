"""PISTOLE's gradient scores: PCI-weighted gradients summed along an adversarial trajectory.

Pure functions of a differentiable ``logits = f(theta_flat, x)`` and a flat parameter vector (the
engine-bound preparer in ``explorer/calibrate/pistole_prep.py`` supplies them). For each fine-tuned
model theta (the natural one with its clean loss, a robust one with its adversarial loss):

    theta_0 = theta;  for k = 0..K:
        w_k(x) = PCI(x) / sum_x PCI(x),  PCI(x) = | E_Delta[(p_c(theta_k + Delta) - p_c(theta_k)) / p_c(theta_k)] |
        g_k    = grad_theta sum_x w_k(x) CE(f(theta_k, x), c)           (x adversarial for a robust model)
        theta_{k+1} = Proj_B(theta_k + beta r g_k / ||g_k||),  B = {||theta - theta_0||_2 <= r},
                      r = eta ||theta_0||_F  (vision tower, all its tensors as one vector)
    G = sum_{k=0..K} |g_k|          -> explorer.merging.pistole normalises, caps and masks G.

Choices where the paper is silent (options of the ``pistole`` method):

- **Step length** ``beta`` is a fraction of the radius (step ``beta * r``), so one value fits any
  model size; the default 0.5 reaches the boundary in two steps. ``eta`` default 0.01, ``K``
  default 2 (``K = 0``: single-point scores, the ablation's rows without a trajectory).
- **Summing** magnitudes ``|g_k|``, not signed gradients: a coordinate whose gradient flips sign
  along the ascent is unstable, and a signed sum would cancel it.
- **PCI**: Delta is Gaussian per tensor with standard deviation ``pci_sigma * ||theta_l||_F /
  sqrt(n_l)`` (relative size ``pci_sigma``, default 0.01), ``pci_samples`` draws (default 8),
  vision tower only. The expectation is negative where noise lowers the true-class probability
  (the fragile samples the paper up-weights), so the weight is its absolute value; weights are
  normalised to sum to 1 (uniform when all are 0, e.g. with ``pci_samples = 0``: PCI off).
  p_c is floored at 1e-12 in the ratio's denominator.
- Only the vision tower moves and only its gradient is kept (``region`` segments).
- Randomness (PCI draws) comes from ``seed``: same seed, same scores.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LogitsFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Cost:
    """What building the scores took: batch forward and backward passes, and seconds."""

    forward: int = 0
    backward: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"forward": self.forward, "backward": self.backward, "seconds": round(self.seconds, 3)}


def region_mask(numel: int, segments: Sequence[tuple[int, int]], device: torch.device | str) -> Tensor:
    """Bool ``(numel,)``: True on the coordinates of ``segments``."""
    mask = torch.zeros(numel, dtype=torch.bool, device=device)
    for a, b in segments:
        mask[a:b] = True
    return mask


def project_ball(theta: Tensor, center: Tensor, radius: float) -> Tensor:
    """``theta`` moved onto ``{||theta - center||_2 <= radius}`` (unchanged inside). Shape ``(N,)``."""
    delta = theta - center
    norm = float(delta.norm())
    if norm <= radius or norm == 0.0:
        return theta
    return center + delta * (radius / norm)


@torch.no_grad()
def pci_weights(logits_fn: LogitsFn, theta: Tensor, x: Tensor, y: Tensor,
                segments: Sequence[tuple[int, int]], *, samples: int, sigma: float,
                generator: torch.Generator, cost: Cost | None = None) -> Tensor:
    """Per-sample prediction criticality weights (module docstring), non-negative, summing to 1.

    Shape:
        theta ``(N,)``; x ``[B, ...]``; y ``[B]`` int64; returns ``[B]`` float32.
    """
    n = y.numel()
    if samples <= 0 or sigma <= 0:
        return torch.full((n,), 1.0 / n, device=y.device)
    p0 = F.softmax(logits_fn(theta, x).float(), -1).gather(1, y.view(-1, 1)).squeeze(1)
    total = torch.zeros_like(p0)
    for _ in range(samples):
        noisy = theta.clone()
        for a, b in segments:
            part = theta[a:b]
            std = sigma * float(part.norm()) / max(part.numel(), 1) ** 0.5
            noisy[a:b] += std * torch.randn(part.shape, generator=generator, device=generator.device).to(part)
        p = F.softmax(logits_fn(noisy, x).float(), -1).gather(1, y.view(-1, 1)).squeeze(1)
        total += (p - p0) / p0.clamp_min(1e-12)
    if cost is not None:
        cost.forward += samples + 1
    w = (total / samples).abs()
    s = float(w.sum())
    return torch.full_like(w, 1.0 / n) if not s > 0 else w / s


def weighted_gradient(logits_fn: LogitsFn, theta: Tensor, x: Tensor, y: Tensor, weights: Tensor,
                      cost: Cost | None = None) -> Tensor:
    """``grad_theta sum_b weights_b CE(f(theta, x_b), y_b)``. Shape: theta ``(N,)`` -> ``(N,)``."""
    th = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        ce = F.cross_entropy(logits_fn(th, x).float(), y, reduction="none")
        (grad,) = torch.autograd.grad((ce * weights).sum(), th)
    if cost is not None:
        cost.forward += 1
        cost.backward += 1
    return grad


def trajectory_scores(grad_fn: Callable[[Tensor, int], Tensor], theta0: Tensor,
                      segments: Sequence[tuple[int, int]], *, steps: int, eta: float, beta: float
                      ) -> tuple[Tensor, list[float]]:
    """``G = sum_k |g_k|`` along K projected normalised-ascent steps, and each point's distance.

    Args:
        grad_fn: ``(theta, k) -> g``, the (PCI-weighted) gradient of the model's own loss at
            trajectory point k.
        theta0: the fine-tuned model, ``(N,)``; only ``segments`` (the vision tower) move.
        steps: K >= 0 ascent steps (K + 1 gradients are summed).
        eta: ball radius as a fraction of ``||theta0||`` over ``segments``.
        beta: step length as a fraction of the radius.

    Returns:
        ``(N,)`` non-negative float32 (0 outside ``segments``) and ``[||theta_k - theta0||]`` for
        k = 0..K (each ``<= eta * ||theta0||`` up to rounding).

    Raises:
        ValueError: negative steps, eta or beta.
    """
    if steps < 0 or eta < 0 or beta < 0:
        raise ValueError(f"pistole options K, eta, beta must be >= 0; got {steps}, {eta}, {beta}")
    region = region_mask(theta0.numel(), segments, theta0.device)
    radius = eta * float(theta0[region].norm())
    theta, total, dists = theta0.clone(), torch.zeros_like(theta0), []
    for k in range(steps + 1):
        dists.append(float((theta - theta0).norm()))
        g = grad_fn(theta, k).mul_(region)
        total.add_(g.abs())
        if k < steps:
            u = g / g.norm().clamp_min(1e-30)
            theta = project_ball(theta + (beta * radius) * u, theta0, radius)
    return total, dists


def timed(fn: Callable[[Cost], Tensor]) -> tuple[Tensor, Cost]:
    """Run ``fn(cost)`` and fill in the seconds it took."""
    cost = Cost()
    t0 = time.perf_counter()
    out = fn(cost)
    cost.seconds = time.perf_counter() - t0
    return out, cost
