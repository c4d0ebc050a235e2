"""Stability-aware complementary masks (our reading of PISTOLE): ``c_i = lambda_i * m_i``.

PISTOLE, "prediction stability-aware merging of naturally and robustly fine-tuned VLMs" (abstract
only; see docs/DESIGN.md). Everything below is *our* concrete reading; each choice is an option.

Scores (computed once per base/vector digests + calibration settings, cached; alpha-independent):

1. Anchor ``theta_0 = pre + sum_i lambda_i^0 tau_i`` with the alpha=``anchor`` (default 0.5)
   lambdas: the middle of the trade-off, where the masks matter most.
2. Calibration set: ``calib_n`` (64) images of the ``train`` split of ``calib_task`` (manifest
   default task), never the test split. Adversarial twin: PGD-``attack_steps`` (5), Linf
   ``calib_eps`` (manifest default eps), recomputed against every trajectory point.
3. At a parameter point ``theta``: ``g_nat = grad L_CE(theta; x)``, ``g_rob = grad L_CE(theta; x_adv)``.
   For a natural vector ``own = g_nat, other = g_rob``; for a robust one the reverse. Per coordinate:
   benefit ``b_i = -own ⊙ tau_i`` (first-order drop of its own loss when tau_i is added),
   interference ``r_i = other ⊙ tau_i`` (first-order rise of the counterpart's loss), and the
   stability score ``s_i = b_i - beta * phi(r_i)`` with ``beta`` = 1 and ``phi`` by
   ``interference``: ``signed`` (default: ``s_i`` is then the first-order drop of
   ``L_own + beta L_other``, so coordinates that help both rank first), ``relu`` (only harmful
   interference penalised) or ``abs`` (any cross-objective impact penalised).
4. Adversarial parameter trajectory: ``traj_steps`` (3) steps of normalised ascent on the robust
   loss, ``theta_{t+1} = theta_t + rho g_rob/||g_rob||`` with ``rho = traj_radius`` (0.05) x
   ``||theta_0 - pre||``. Prediction-sensitivity index of step t >= 1:
   ``kappa_t = mean_x KL(p_theta0(.|x) || p_theta_t(.|x))`` on the clean calibration images.
   Final score ``S_i = (s_i^0 + sum_t w_t s_i^t) / (1 + sum_t w_t)`` with ``w_t = kappa_t /
   mean_t kappa_t`` (1 if every kappa is 0): sharper steps (larger prediction change) weigh more.

Masks at merge time (cheap: top-k only, cached per keep/scope): each vector keeps exactly
``round(keep * numel)`` coordinates (globally, or per tensor with ``scope="per_tensor"``), and the
masks are *complementary*: for two vectors and keep <= 1/2 they are disjoint (a coordinate both
want goes to the one with the larger normalised score ``S_i / mean|S_i|``; the loser takes its
next best free coordinate), for keep >= 1/2 their *drops* are disjoint (every coordinate is kept
by at least one vector). Either way the overlap is the minimum possible, ``max(0, 2k - n)``. With
more vectors the same holds while ``V k <= n`` (or ``V (n - k) <= n``); otherwise masks are
independent top-k. keep=1 keeps everything, so alpha=0/1 give the natural/robust model exactly.
No randomness (``seed`` unused): PGD starts are seeded by ``calib_seed``.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from explorer.config import MergeSpec
from explorer.merging.base import Coefficient, MergeInputs, masked_coefficient
from explorer.merging.calibration import (CalibSettings, FlatModel, ScoreCache, adversarial_batch,
                                          calibration_batch, content_key, loss_and_grad, vector_identity)
from explorer.merging.context import PREPARERS
from explorer.merging.sparsify import kept_count

log = logging.getLogger(__name__)

PAPER = "PISTOLE (prediction stability-aware task-vector merging; abstract in shared/seeds)"
SCORE_VERSION = 1
CACHE = ScoreCache("stability")
_MASKS: dict[tuple, list[Tensor]] = {}


def score_settings(engine: Any, spec: MergeSpec) -> dict[str, Any]:
    """Every setting the scores depend on (and nothing that changes with alpha or keep)."""
    calib = CalibSettings.from_spec(engine, spec)
    return {"calib": calib.__dict__, "traj_steps": int(spec.option("traj_steps", 3)),
            "traj_radius": float(spec.option("traj_radius", 0.05)), "beta": float(spec.option("beta", 1.0)),
            "interference": str(spec.option("interference", "signed")),
            "anchor": float(spec.option("anchor", 0.5)), "version": SCORE_VERSION}


def stability_score(tau: Tensor, own: Tensor, other: Tensor, beta: float, interference: str) -> Tensor:
    """``s = -own ⊙ tau - beta * phi(other ⊙ tau)``. Shape: all ``(N,)``; returns ``(N,)``."""
    inter = other * tau
    phi = {"signed": lambda r: r, "relu": torch.relu, "abs": torch.abs}[interference](inter)
    return (-own * tau).sub_(phi, alpha=beta)


def _kl(logp0: Tensor, logits: Tensor) -> float:
    """Mean over samples of KL(p0 || p). Shape: both ``[B, C]``."""
    return float(F.kl_div(F.log_softmax(logits, -1), logp0, log_target=True, reduction="batchmean"))


@torch.no_grad()
def compute_scores(engine: Any, names: Sequence[str], settings: dict[str, Any]) -> dict[str, Tensor]:
    """Trajectory-averaged stability scores ``S_i`` of the named vectors (module docstring).

    Shape:
        returns ``{"score_i": (N,) float32}`` for each vector i, on the engine's device.
    """
    calib = CalibSettings(**settings["calib"])
    vecs = engine.vectors(names)
    robust = [v.role == "robust" for v in vecs]
    n_rob = sum(robust)
    n_nat = len(vecs) - n_rob
    a = settings["anchor"]
    lams = [a / max(n_rob, 1) if r else (1 - a) / max(n_nat, 1) for r in robust]
    theta = engine.pre.clone()
    for lam, v in zip(lams, vecs):
        theta.add_(v.tau, alpha=lam)
    rho = settings["traj_radius"] * float((theta - engine.pre).norm())
    fm = FlatModel(engine, calib.task)
    x, y = calibration_batch(engine, calib)
    steps, logp0 = [], None
    for t in range(settings["traj_steps"] + 1):
        x_adv = adversarial_batch(fm, theta, x, y, calib, seed=calib.seed + t)
        _, g_nat, logits = loss_and_grad(fm, theta, x, y)
        _, g_rob, _ = loss_and_grad(fm, theta, x_adv, y)
        if t == 0:
            logp0 = F.log_softmax(logits, -1)
        kappa = 0.0 if t == 0 else _kl(logp0, logits)
        scores = [stability_score(v.tau, g_rob if r else g_nat, g_nat if r else g_rob,
                                  settings["beta"], settings["interference"]) for v, r in zip(vecs, robust)]
        steps.append((kappa, scores))
        theta = theta + rho * g_rob / g_rob.norm().clamp_min(1e-12)
    kappas = torch.tensor([k for k, _ in steps[1:]], dtype=torch.float64)
    w = [1.0] + ((kappas / kappas.mean()).tolist() if len(kappas) and kappas.mean() > 0
                 else [1.0] * len(kappas))
    log.info("stability trajectory: kappa=%s weights=%s", kappas.tolist(), w)
    out = {}
    for i in range(len(vecs)):
        total = sum(wt * s[i] for wt, (_, s) in zip(w, steps))
        out[f"score_{i}"] = (total / sum(w)).to(torch.float32)
    return out


def prepare(engine: Any, names: list[str], spec: MergeSpec) -> dict[str, Any]:
    """Preparer: cached scores of ``names`` for ``spec``'s calibration settings (PREPARERS entry)."""
    settings = score_settings(engine, spec)
    key = content_key("stability", {"vectors": vector_identity(engine, names), **settings})
    tensors = CACHE.get_or_compute(key, lambda: compute_scores(engine, names, settings), engine.device)
    return {"stability_scores": [tensors[f"score_{i}"] for i in range(len(names))], "stability_key": key}


@torch.no_grad()
def disjoint_topk(scores: Sequence[Tensor], k: int) -> list[Tensor]:
    """Each vector keeps exactly ``k`` coordinates, no coordinate kept twice (needs ``V k <= n``).

    Greedy rounds: every vector claims its best ``need`` free coordinates; a coordinate claimed by
    several goes to the largest normalised score ``s_i / mean|s_i|``; losers claim again.

    Shape:
        each score ``(n,)`` float; returns ``(n,)`` bool masks.
    """
    n, V = scores[0].numel(), len(scores)
    if V * k > n:
        raise ValueError(f"{V} disjoint masks of {k} need at least {V * k} coordinates, have {n}")
    norm = torch.stack([s / s.abs().mean().clamp_min(1e-30) for s in scores])
    masks = torch.zeros(V, n, dtype=torch.bool, device=scores[0].device)
    free = torch.ones(n, dtype=torch.bool, device=scores[0].device)
    need = [k] * V
    while any(need):
        claims = torch.zeros_like(masks)
        for i in range(V):
            if need[i]:
                claims[i, torch.topk(norm[i].masked_fill(~free, float("-inf")), need[i]).indices] = True
        best = norm.masked_fill(~claims, float("-inf")).argmax(0)
        for i in range(V):
            won = claims[i] & (best == i)
            masks[i] |= won
            need[i] -= int(won.sum())
        free &= ~claims.any(0)
    return list(masks)


@torch.no_grad()
def complementary_masks(scores: Sequence[Tensor], keep: float) -> list[Tensor]:
    """Exactly ``kept_count(n, keep)`` kept per vector, with the minimum possible overlap.

    Shape:
        each score ``(n,)``; returns ``(n,)`` bool masks.
    """
    n, V = scores[0].numel(), len(scores)
    k = kept_count(n, keep)
    if V * k <= n:
        return disjoint_topk(scores, k)
    if V * (n - k) <= n:  # disjoint drops of the lowest scores: every coordinate kept at least once
        return [m.logical_not() for m in disjoint_topk([-s for s in scores], n - k)]
    return [torch.zeros(n, dtype=torch.bool, device=s.device).index_fill_(0, torch.topk(s, k).indices, True)
            for s in scores]


def stability_masks(scores: Sequence[Tensor], keep: float, segments: Sequence[tuple[int, int]],
                    scope: str) -> list[Tensor]:
    """:func:`complementary_masks` over all coordinates (``global``) or within each tensor."""
    if keep >= 1.0:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    if scope == "global":
        return complementary_masks(scores, keep)
    masks = [torch.empty_like(s, dtype=torch.bool) for s in scores]
    for a, b in segments:
        for m, part in zip(masks, complementary_masks([s[a:b] for s in scores], keep)):
            m[a:b] = part
    return masks


@torch.no_grad()
def ranking(scores: Sequence[Tensor], taus: Sequence[Tensor], rank: str) -> list[Tensor]:
    """What the masks rank by: the stability score itself, or magnitude tilted by it.

    ``score`` (default): ``S_i``, the first-order reading as documented above. ``tilt`` (tried):
    ``|tau_i| * (1 + tanh(S_i / q))`` with ``q`` the 99th percentile of ``|S_i|`` over the vector's
    non-zero coordinates: magnitude pruning in which the most jointly stable coordinates count up
    to twice and the most counterpart-sensitive fade to zero. Why: on the demo zoo at keep 0.2,
    ranking by ``S`` (or tilting with a scale so small that ``tanh`` saturates) keeps the
    coordinates by the *sign* of ``g * tau``; that partial update broke the model (clean accuracy
    near chance even at alpha=0), while magnitude (and even random) pruning kept it intact.
    The tilt did not help: swapping the ~1% of magnitude-selected coordinates with the most
    extreme ``S`` (either sign) for others broke the model the same way, so on that model the
    coordinates with the largest first-order impact are the ones it cannot lose.
    """
    if rank == "score":
        return list(scores)
    if rank != "tilt":
        raise ValueError(f"stability option rank must be 'score' or 'tilt', got {rank!r}")
    out = []
    for tau, s in zip(taus, scores):
        nz = s[s != 0].abs()
        q = torch.quantile(nz[torch.randperm(nz.numel(), generator=torch.Generator().manual_seed(0))
                              [:1_000_000].to(nz.device)], 0.99) if nz.numel() else 0.0
        out.append(tau.abs() * (1 + torch.tanh(s / q)) if q > 0 else tau.abs())
    return out


@torch.no_grad()
def stability(inputs: MergeInputs, spec: MergeSpec) -> list[Coefficient]:
    """``c_i = lambda_i * m_i``, ``m_i`` complementary stability masks (PISTOLE reading; module doc).

    Reads ``inputs.context["stability_scores"]`` (set by the ``stability`` preparer when merged
    through the Engine; pass it yourself otherwise). Masks are cached per (scores, keep, scope).
    """
    scores = inputs.context.get("stability_scores")
    if scores is None or len(scores) != len(inputs.taus):
        raise ValueError("stability needs one calibration score per task vector in "
                         "context['stability_scores']: merge through Engine.merge (which runs the "
                         "'stability' preparer) or pass them in MergeInputs.context")
    rank = str(spec.option("rank", "score"))
    key = inputs.context.get("stability_key")
    if key is None:  # scores given by hand: nothing to key a cache on
        masks = stability_masks(ranking(scores, inputs.taus, rank), spec.keep, inputs.segments, spec.scope)
    else:
        key = (key, rank, spec.keep, spec.scope, tuple(inputs.segments) if spec.scope == "per_tensor" else None)
        if key not in _MASKS:
            if len(_MASKS) >= 8:
                _MASKS.pop(next(iter(_MASKS)))
            _MASKS[key] = stability_masks(ranking(scores, inputs.taus, rank), spec.keep,
                                          inputs.segments, spec.scope)
        masks = _MASKS[key]
    return [masked_coefficient(float(lam), None if spec.keep >= 1.0 else m)
            for lam, m in zip(spec.lambdas, masks)]


PREPARERS["stability"] = prepare
