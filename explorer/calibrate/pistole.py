"""PISTOLE's gradient scores: PCI-weighted gradients summed along an adversarial trajectory.

Pure functions of a differentiable ``logits = f(theta_flat, x)`` and a flat parameter vector (the
engine-bound preparer in ``explorer/calibrate/pistole_prep.py`` supplies them). For each fine-tuned
model theta (the natural one with its clean loss, a robust one with its adversarial loss):

    theta_0 = theta;  for k = 0..K:
        PCI_k(x) = | E_Delta[(p_c(theta_k + Delta) - p_c(theta_k)) / p_c(theta_k)] |     >= 0
        g_k      = grad_theta sum_x PCI_k(x) CE(f(theta_k, x), c)        (x adversarial for a robust model)
        theta_{k+1} = Proj_B(theta_k + beta r g_k / ||g_k||),  B = {||theta - theta_0||_2 <= r},
                      r = eta ||theta_0||_F  (vision tower, all its tensors as one vector)
    G = sum_{k=0..K} |g_k| / sum_{k, x} PCI_k(x)     -> explorer.merging.pistole normalises, caps, masks G.

So the PCI weights are normalised over the whole trajectory, not per step: a step where the
prediction is more fragile (larger total PCI: more curvature) weighs more in G, as the abstract
says ("steps weighted by a prediction-sensitivity index"), and within a step fragile samples weigh
more (issue 16's per-sample PCI(x, c)). Score version 1 normalised each step's weights to sum 1,
so every step weighed the same.

Choices where the paper is silent (options of the ``pistole`` method):

- **Step length** ``beta`` is a fraction of the radius (step ``beta * r``), so one value fits any
  model size; the default 0.5 reaches the boundary in two steps. ``eta`` default 0.01, ``K``
  default 2 (``K = 0``: single-point scores, the ablation's rows without a trajectory).
- **Summing** magnitudes ``|g_k|``, not signed gradients: a coordinate whose gradient flips sign
  along the ascent is unstable, and a signed sum would cancel it.
- **PCI**: Delta is Gaussian per tensor with standard deviation ``pci_sigma * ||theta_l||_F /
  sqrt(n_l)`` (relative size ``pci_sigma``, default 0.01), ``pci_samples`` draws (default 8),
  vision tower only. Each draw is used as an antithetic pair ``+Delta, -Delta`` (two forward
  passes): the first-order term ``grad p . Delta``, whose mean is 0 but whose spread at sigma =
  0.01 and 8 one-sided draws is larger than the curvature term the index is meant to track
  (``E ~ sigma^2 tr(H_p) / 2p``), cancels exactly; the expectation estimated is the same. The
  ratio is ``expm1(log p_c(theta + Delta) - log p_c(theta))`` in float64 with ``log p_c`` from
  the logit margins, exact where p_c is near 1 (a confident sample's float32 probability is 1
  and does not move at all, so a float32 ratio would score it 0). The expectation is
  negative where noise lowers the true-class probability (the fragile samples the paper
  up-weights), so the index is its absolute value. ``pci_samples = 0``: PCI off, every sample
  and step weight 1.
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


def _log_true_prob(logits_fn: LogitsFn, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``log p_y(theta, x) = -softplus(logsumexp_{j != y} (l_j - l_y))`` in float64. Shape ``[B]``.

    Written this way (not ``log_softmax``, whose ``log(1 + tiny)`` rounds to 0) it stays exact for
    a confident sample, ``1 - p_y`` down to float64's smallest numbers.
    """
    logits = logits_fn(theta, x).double()
    d = logits - logits.gather(1, y.view(-1, 1))
    d = d.scatter(1, y.view(-1, 1), float("-inf"))
    return -F.softplus(torch.logsumexp(d, 1), threshold=50.0)


@torch.no_grad()
def pci_index(logits_fn: LogitsFn, theta: Tensor, x: Tensor, y: Tensor,
              segments: Sequence[tuple[int, int]], *, samples: int, sigma: float,
              generator: torch.Generator, cost: Cost | None = None) -> Tensor:
    """Per-sample prediction criticality index (module docstring): non-negative, not normalised.

    ``|mean_j (r(Delta_j) + r(-Delta_j)) / 2|`` with ``r(Delta) = p_c(theta + Delta) / p_c(theta) - 1``,
    ``samples`` antithetic pairs (``2 * samples + 1`` forward passes); all ones when off
    (``samples <= 0`` or ``sigma <= 0``).

    Shape:
        theta ``(N,)``; x ``[B, ...]``; y ``[B]`` int64; returns ``[B]`` float32.
    """
    n = y.numel()
    if samples <= 0 or sigma <= 0:
        return torch.ones(n, device=y.device)
    lp0 = _log_true_prob(logits_fn, theta, x, y)
    total = torch.zeros_like(lp0)
    for _ in range(samples):
        delta = torch.zeros_like(theta)
        for a, b in segments:
            part = theta[a:b]
            std = sigma * float(part.norm()) / max(part.numel(), 1) ** 0.5
            delta[a:b] = std * torch.randn(part.shape, generator=generator, device=generator.device).to(part)
        for sign in (1.0, -1.0):
            total += torch.expm1(_log_true_prob(logits_fn, theta + sign * delta, x, y) - lp0)
    if cost is not None:
        cost.forward += 2 * samples + 1
    return (total / (2 * samples)).abs().float()


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


def trajectory_scores(grad_fn: Callable[[Tensor, int], tuple[Tensor, float]], theta0: Tensor,
                      segments: Sequence[tuple[int, int]], *, steps: int, eta: float, beta: float
                      ) -> tuple[Tensor, list[float]]:
    """``G = sum_k |g_k| / sum_k m_k`` along K projected normalised-ascent steps, and each point's distance.

    Args:
        grad_fn: ``(theta, k) -> (g, m)``: the gradient of the model's own loss at trajectory point
            k with per-sample weights (raw PCI) and ``m``, the sum of those weights. Dividing by
            the total mass normalises the weights over the whole trajectory (module docstring).
        theta0: the fine-tuned model, ``(N,)``; only ``segments`` (the vision tower) move.
        steps: K >= 0 ascent steps (K + 1 gradients are summed).
        eta: ball radius as a fraction of ``||theta0||`` over ``segments``.
        beta: step length as a fraction of the radius.

    Returns:
        ``(N,)`` non-negative float32 (0 outside ``segments``) and ``[||theta_k - theta0||]`` for
        k = 0..K (each ``<= eta * ||theta0||`` up to rounding). The path does not depend on the
        masses (each step is a unit direction).

    Raises:
        ValueError: negative steps, eta or beta; or a total mass that is not > 0 (every PCI 0:
            no perturbation moved any probability).
    """
    if steps < 0 or eta < 0 or beta < 0:
        raise ValueError(f"pistole options K, eta, beta must be >= 0; got {steps}, {eta}, {beta}")
    region = region_mask(theta0.numel(), segments, theta0.device)
    radius = eta * float(theta0[region].norm())
    theta, total, dists, mass = theta0.clone(), torch.zeros_like(theta0), [], 0.0
    for k in range(steps + 1):
        dists.append(float((theta - theta0).norm()))
        g, m = grad_fn(theta, k)
        g = g.mul_(region)
        total.add_(g.abs())
        mass += float(m)
        if k < steps:
            u = g / g.norm().clamp_min(1e-30)
            theta = project_ball(theta + (beta * radius) * u, theta0, radius)
    if not mass > 0:
        raise ValueError("pistole: the prediction criticality index is 0 for every calibration image at "
                         "every trajectory point (no perturbation moved a probability); raise pci_sigma "
                         "or set pci_samples=0")
    return total.div_(mass), dists


def timed(fn: Callable[[Cost], Tensor]) -> tuple[Tensor, Cost]:
    """Run ``fn(cost)`` and fill in the seconds it took."""
    cost = Cost()
    t0 = time.perf_counter()
    out = fn(cost)
    cost.seconds = time.perf_counter() - t0
    return out, cost
