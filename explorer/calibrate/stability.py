"""Stability scores for the ``stability`` merge method (PISTOLE reading), and their preparer.

The method and every modelling choice are described in :mod:`explorer.merging.stability`
(steps 1-4 there: anchor, calibration set, per-coordinate benefit and interference, the
adversarial parameter trajectory weighted by prediction sensitivity). This module computes
``S_i`` once per (base and vector digests, calibration settings) and caches it by content
(``$EXPLORER_HOME/scores/stability-<key>.safetensors``); alpha and keep never recompute it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from explorer.config import MergeSpec
from explorer.merging.record import read_option
from explorer.merging.stability import OPTIONS

from .batch import CalibSettings, FlatModel, adversarial_batch, calibration_batch, loss_and_grad
from .cache import CalibrationCache, content_key, vector_identity
from .host import CalibrationHost

log = logging.getLogger(__name__)

SCORE_VERSION = 1  # part of the cache key: bump when the scores of a setting change


def score_settings(host: CalibrationHost, spec: MergeSpec) -> dict[str, Any]:
    """Every setting the scores depend on (and nothing that changes with alpha or keep).

    Defaults are the method's declared options (``explorer.merging.stability.OPTIONS``).
    """
    calib = CalibSettings.from_spec(host, spec)
    opt = lambda key: read_option(spec, OPTIONS, key)  # noqa: E731
    return {"calib": calib.__dict__, "traj_steps": int(opt("traj_steps")),
            "traj_radius": float(opt("traj_radius")), "beta": float(opt("beta")),
            "interference": str(opt("interference")),
            "anchor": float(opt("anchor")), "version": SCORE_VERSION}


def stability_score(tau: Tensor, own: Tensor, other: Tensor, beta: float, interference: str) -> Tensor:
    """``s = -own ⊙ tau - beta * phi(other ⊙ tau)``. Shape: all ``(N,)``; returns ``(N,)``."""
    inter = other * tau
    phi = {"signed": lambda r: r, "relu": torch.relu, "abs": torch.abs}[interference](inter)
    return (-own * tau).sub_(phi, alpha=beta)


def _kl(logp0: Tensor, logits: Tensor) -> float:
    """Mean over samples of KL(p0 || p). Shape: both ``[B, C]``."""
    return float(F.kl_div(F.log_softmax(logits, -1), logp0, log_target=True, reduction="batchmean"))


@torch.no_grad()
def compute_scores(host: CalibrationHost, names: Sequence[str], settings: dict[str, Any]) -> dict[str, Tensor]:
    """Trajectory-averaged stability scores ``S_i`` of the named vectors (module docstring).

    Shape:
        returns ``{"score_i": (N,) float32}`` for each vector i, on the host's device.
    """
    calib = CalibSettings(**settings["calib"])
    vecs = host.vectors(names)
    robust = [v.role == "robust" for v in vecs]
    n_rob = sum(robust)
    n_nat = len(vecs) - n_rob
    a = settings["anchor"]
    lams = [a / max(n_rob, 1) if r else (1 - a) / max(n_nat, 1) for r in robust]
    theta = host.pre.clone()
    for lam, v in zip(lams, vecs):
        theta.add_(v.tau, alpha=lam)
    rho = settings["traj_radius"] * float((theta - host.pre).norm())
    fm = FlatModel(host, calib.task, names)
    x, y = calibration_batch(host, calib)
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


def prepare(host: CalibrationHost, names: Sequence[str], spec: MergeSpec,
            cache: CalibrationCache) -> dict[str, Any]:
    """Preparer (``PREPARERS["stability"]``): the scores of ``names`` for ``spec``'s calibration
    settings, from ``cache`` (memory, then disk) or computed once.

    Returns:
        ``{"stability_scores": [(N,) float32 per vector], "stability_key": str, "memo": dict}``;
        the memo is where the method keeps sort orders and masks for these scores.
    """
    names = list(names)
    settings = score_settings(host, spec)
    key = content_key("stability", {"vectors": vector_identity(host, names), **settings})
    tensors = cache.kind("stability").get_or_compute(key, lambda: compute_scores(host, names, settings),
                                                     host.device)
    return {"stability_scores": [tensors[f"score_{i}"] for i in range(len(names))], "stability_key": key,
            "memo": cache.memo("stability", key)}
