"""PISTOLE soft stability masks, as the paper describes them: ``c_i = lambda_i * M_i`` on the vision tower.

"Tug-of-War No More: prediction stability-aware merging of naturally and robustly fine-tuned
VLMs" (PISTOLE, ICLR 2026; abstract in shared/seeds/000, method as summarised in issue 16; no
official code). Our ``stability`` method is a different, earlier reading (complementary hard
masks at a keep fraction); this module is the published one:

    g_i   = summed expected gradient of vector i's own objective (clean CE for a natural model,
            adversarial CE for a robust one), computed by ``explorer/calibrate/pistole.py``
    s_i   = (|g_i| / max_layer |g_i|) ** gamma                       in [0, 1], per layer
    s_i  <- min(s_i, t_q)    t_q the value above which the top-q most sensitive coordinates lie
    M_nat = (1 - s_rob) ** kappa,   M_rob = (1 - s_nat) ** kappa      in [0, 1]
    theta = theta_0 + lambda (M_nat ⊙ tau_nat) + (1 - lambda) (M_rob ⊙ tau_rob)   vision tower

Our choices where the description is silent (each an option of the ``pistole`` method):

- ``lambda`` is the natural weight, so our trade-off ``alpha = 1 - lambda`` (alpha = 1 is the
  robust side, as for every method; the paper's default lambda = 0.2 is alpha = 0.8). The
  coefficients are ``spec.lambdas`` (``from_alpha``: ``s (1 - alpha)``, ``s alpha``).
- A "layer" is one tensor of the state dict (one segment of the flat vector). A layer whose
  gradient is zero everywhere (BatchNorm running statistics, frozen tensors) scores 0: mask 1.
- Top-q capping (option ``q``, default 0.01): ``floor(q * n)`` coordinates are the top-q; they are
  set to the largest value below them, so the most sensitive coordinates are attenuated like the
  (1-q)-quantile instead of being zeroed. ``q_scope`` ``per_layer`` (default: each layer loses
  the same share, matching the per-layer normalisation) or ``global`` (one threshold over all
  vision coordinates). ``q = 0`` disables capping.
- ``kappa`` (default 1) may be 0 (masks are 1: plain weighted addition, the ablation's first row);
  the paper asks kappa >= 1. ``gamma`` (default 1) must be > 0.
- With several vectors of one role, a vector's mask uses the elementwise *max* of the
  counterpart role's scores (the most sensitive counterpart); with no counterpart it is 1.
- Scores and masks cover the vision tower (the paper's vectors are vision-only). Outside it
  (option ``outside``): ``weighted`` (default, method version 3) merges a vector's other
  coordinates (a text tower fine-tuned with the vision one, as the demo zoo's natural fine-tune
  is) with its plain coefficient ``lambda_i``: no counterpart touches them and no score exists
  there, which is the "mask 1 without a counterpart" rule; ``base`` keeps theta_0 there (the
  literal vision-only merge of version 2, which drops a natural text tower: on the Fashion zoo
  that costs the natural side its clean accuracy). The two agree wherever the vectors are
  vision-only.
- Masks are soft, so unlike task arithmetic neither alpha = 0 nor alpha = 1 reproduces a
  fine-tuned model unless kappa = 0; all lambdas 0 gives theta_0 exactly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from explorer.core.towers import VISION_PREFIX

from .record import CALIBRATION_OPTIONS, MethodRecord, Option, read_option

if TYPE_CHECKING:
    from explorer.config import MergeSpec

    from .base import MergeInputs

PAPER = "PISTOLE, 'Tug-of-War No More' (ICLR 2026; no official code): shared/seeds/000 + issue 16"
Q_SCOPES = ("per_layer", "global")
OUTSIDE = ("weighted", "base")

OPTIONS: dict[str, Option] = {
    **{k: v for k, v in CALIBRATION_OPTIONS.items() if k != "anchor"},  # scores at each fine-tune
    "kappa": Option(1.0, "mask exponent: M = (1 - s_counterpart)^kappa; 0 = no masks (merge time)"),
    "q": Option(0.01, "fraction of most sensitive coordinates capped at the (1-q) quantile (merge time)"),
    "q_scope": Option("per_layer", "where the cap's quantile is taken: per_layer | global (merge time)"),
    "gamma": Option(1.0, "power on the per-layer normalised |gradient|, > 0 (merge time)"),
    "outside": Option("weighted", "coordinates outside the vision tower: weighted (lambda_i, mask 1) | base "
                      "(theta_0) (merge time)"),
    "traj_steps": Option(2, "K, projected ascent steps of the parameter trajectory; 0 = single point"),
    "eta": Option(0.01, "trajectory ball radius, as a fraction of ||theta||_F of the vision tower"),
    "beta": Option(0.5, "trajectory step length, as a fraction of the ball radius"),
    "pci_samples": Option(8, "antithetic parameter perturbations (+/- Delta) per PCI estimate; 0 = uniform weights"),
    "pci_sigma": Option(0.01, "PCI perturbation size, relative to each tensor's norm"),
}


def vision_segments(names: Sequence[str], segments: Sequence[tuple[int, int]],
                    prefix: str = VISION_PREFIX) -> list[tuple[int, int]]:
    """The segments of the tensors whose key starts with ``prefix`` (the vision tower).

    Raises:
        ValueError: no tensor has that prefix.
    """
    out = [seg for name, seg in zip(names, segments) if name.startswith(prefix)]
    if not out:
        raise ValueError(f"pistole merges the vision tower only, and no tensor key starts with "
                         f"{prefix!r} (keys: {', '.join(list(names)[:3])}, ...)")
    return out


@torch.no_grad()
def normalised_scores(grad: Tensor, segments: Sequence[tuple[int, int]], gamma: float) -> Tensor:
    """``(|g| / max_layer |g|) ** gamma`` per segment; 0 outside ``segments`` and in all-zero layers.

    Shape:
        grad ``(N,)`` float (any sign); returns ``(N,)`` float32 in [0, 1], exactly 1 at each
        layer's largest ``|g|``.

    Raises:
        ValueError: ``gamma <= 0``.
    """
    if not gamma > 0:
        raise ValueError(f"pistole option gamma must be > 0, got {gamma}")
    out = torch.zeros_like(grad, dtype=torch.float32)
    for a, b in segments:
        g = grad[a:b].abs().float()
        top = g.max() if g.numel() else g.new_zeros(())
        if top > 0:
            out[a:b] = (g / top).pow_(gamma)
    return out


def _cap(values: Tensor, q: float) -> Tensor:
    """``min(values, t)`` with ``t`` the largest value outside the top ``floor(q * n)``."""
    n = values.numel()
    m = int(q * n)
    if m <= 0 or n == 0:
        return values
    t = values.min() if m >= n else torch.kthvalue(values.cpu(), n - m).values.to(values.device)
    return torch.minimum(values, t)


@torch.no_grad()
def cap_top_q(scores: Tensor, q: float, segments: Sequence[tuple[int, int]],
              scope: str = "per_layer") -> Tensor:
    """Cap the top-``q`` fraction of ``scores`` at the value just below them (a new tensor).

    ``per_layer``: within each segment; ``global``: one threshold over all ``segments`` together.
    Coordinates outside ``segments`` are copied unchanged.

    Shape:
        scores ``(N,)`` float; returns ``(N,)`` float with ``max <= `` the input's.

    Raises:
        ValueError: ``q`` outside [0, 1] or an unknown scope.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"pistole option q must lie in [0, 1], got {q}")
    if scope not in Q_SCOPES:
        raise ValueError(f"pistole option q_scope must be one of {', '.join(Q_SCOPES)}, got {scope!r}")
    out = scores.clone()
    if q == 0.0:
        return out
    if scope == "per_layer":
        for a, b in segments:
            out[a:b] = _cap(scores[a:b], q)
        return out
    idx = torch.cat([torch.arange(a, b, device=scores.device) for a, b in segments])
    out[idx] = _cap(scores[idx], q)
    return out


def soft_mask(counterpart: Tensor, kappa: float) -> Tensor:
    """``(1 - s) ** kappa``: keep what the counterpart objective is insensitive to.

    Shape:
        counterpart scores ``(N,)`` in [0, 1]; returns ``(N,)`` float32 in [0, 1], non-increasing
        in kappa (``kappa = 0`` gives 1 everywhere, ``0 ** 0 = 1``).

    Raises:
        ValueError: ``kappa < 0``.
    """
    if not kappa >= 0:
        raise ValueError(f"pistole option kappa must be >= 0, got {kappa}")
    return (1.0 - counterpart.float()).clamp_(0.0, 1.0).pow_(kappa)


@torch.no_grad()
def pistole_masks(grads: Sequence[Tensor], robust: Sequence[bool], segments: Sequence[tuple[int, int]],
                  *, kappa: float = 1.0, q: float = 0.01, gamma: float = 1.0,
                  q_scope: str = "per_layer") -> list[Tensor]:
    """One soft mask per vector: ``(1 - max over the other role of capped scores) ** kappa``.

    Args:
        grads: per vector, its summed (PCI-weighted, trajectory-summed) gradient ``(N,)``.
        robust: per vector, whether it is a robust one (the rest are natural).
        segments: the layers the masks cover (the vision tower); outside them the mask is 0.

    Returns:
        ``(N,)`` float32 masks in [0, 1] (1 on covered coordinates when no counterpart exists).
    """
    if len(grads) != len(robust):
        raise ValueError(f"{len(grads)} gradient scores for {len(robust)} vectors")
    scores = [cap_top_q(normalised_scores(g, segments, gamma), q, segments, q_scope) for g in grads]
    region = torch.zeros_like(grads[0], dtype=torch.bool)
    for a, b in segments:
        region[a:b] = True
    masks = []
    for r in robust:
        other = [s for s, r2 in zip(scores, robust) if r2 != r]
        worst = torch.stack(other).amax(0) if other else torch.zeros_like(scores[0])
        masks.append(soft_mask(worst, kappa).mul_(region))
    return masks


def _one_outside(mask: Tensor, segments: Sequence[tuple[int, int]]) -> Tensor:
    """``mask`` inside ``segments``, 1 everywhere else (a new tensor; segment copies, no index tensors)."""
    out = torch.ones_like(mask)
    for a, b in segments:
        out[a:b] = mask[a:b]
    return out


def pistole_coefficients(inputs: "MergeInputs", lambdas: Sequence[float], *, kappa: float, q: float,
                         gamma: float, q_scope: str, outside: str = "weighted") -> list[Tensor | float]:
    """``c_i = lambda_i * M_i`` on the vision tower; outside it ``lambda_i`` (``outside="weighted"``)
    or 0 (``"base"``) (module docstring).

    Reads ``inputs.context``: ``pistole_grads`` (one ``(N,)`` per vector; may be None when
    ``kappa = 0``) and ``pistole_robust`` (one bool per vector), as the preparer sets them, and
    ``memo`` (optional dict, the engine's per-scores memo) where the masks of each
    ``(kappa, q, gamma, q_scope)`` are kept, so moving alpha does not rebuild them.

    Raises:
        ValueError: missing scores for ``kappa > 0``, no ``visual.`` tensor, or an unknown ``outside``.
    """
    if outside not in OUTSIDE:
        raise ValueError(f"pistole option outside must be one of {', '.join(OUTSIDE)}, got {outside!r}")
    segments = vision_segments(inputs.names, inputs.segments)
    grads = inputs.context.get("pistole_grads")
    robust = inputs.context.get("pistole_robust")
    if kappa == 0.0:
        region = torch.full((inputs.numel,), 1.0 if outside == "weighted" else 0.0, device=inputs.device)
        for a, b in segments:
            region[a:b] = 1.0
        masks = [region] * len(inputs.taus)
    else:
        if grads is None or robust is None or len(grads) != len(inputs.taus):
            raise ValueError("pistole needs one gradient score per task vector in context['pistole_grads'] "
                             "and the roles in context['pistole_robust']: merge through the engine (which "
                             "runs the 'pistole' preparer) or pass them in MergeInputs.context")
        memo = inputs.context.get("memo")
        key = ("masks", kappa, q, gamma, q_scope, outside, tuple(segments))
        masks = None if memo is None else memo.get(key)
        if masks is None:
            masks = pistole_masks(grads, robust, segments, kappa=kappa, q=q, gamma=gamma, q_scope=q_scope)
            if outside == "weighted":
                masks = [_one_outside(m, segments) for m in masks]
            if memo is not None:
                memo.clear()   # one setting's masks at a time: memory stays that of one merge
                memo[key] = masks
    return [0.0 if float(lam) == 0.0 else m * float(lam) for lam, m in zip(lambdas, masks)]


@torch.no_grad()
def pistole(inputs: "MergeInputs", spec: "MergeSpec") -> list[Tensor | float]:
    """``theta = theta_0 + sum_i lambda_i M_i ⊙ tau_i``, ``M_i = (1 - s_other)^kappa``, vision tower (PISTOLE).

    The published merge ``lambda (M_nat ⊙ tau_nat) + (1 - lambda) (M_rob ⊙ tau_rob)`` with our
    ``alpha = 1 - lambda``; scores from the ``pistole`` preparer (explorer/calibrate/pistole_prep.py);
    every choice the paper leaves open is listed in this module's docstring.
    """
    opt = lambda key: read_option(spec, OPTIONS, key)  # noqa: E731
    return pistole_coefficients(inputs, spec.lambdas, kappa=float(opt("kappa")), q=float(opt("q")),
                                gamma=float(opt("gamma")), q_scope=str(opt("q_scope")), outside=str(opt("outside")))


# version 2: scores with PCI normalised over the trajectory and antithetic draws (calibrate/pistole.py);
# version 3: coordinates outside the vision tower merged with lambda_i by default (option outside)
RECORD = MethodRecord("pistole", pistole, PAPER, fields=(), options=OPTIONS, preparer="pistole",
                      exact_endpoints=False, version=3)
