"""The ``pistole`` preparer: each model's trajectory-summed, PCI-weighted gradient, cached by content.

The score recipe and every choice are in :mod:`explorer.calibrate.pistole` (trajectory, PCI) and
:mod:`explorer.merging.pistole` (normalisation, capping, masks). This module binds them to a
:class:`CalibrationHost`: the calibration images (``train`` split), the model as a function of
flat parameters, PGD for the robust objective, and the cache. Per vector i (its fine-tuned
weights ``theta_i = pre + tau_i``):

- natural: ``g = grad sum_x w(x) CE(f(theta, x), y)`` on the clean calibration images;
- robust: the same on PGD-``attack_steps`` images recomputed against every trajectory point.

Only the options the scores depend on are in the cache key (``K``, ``eta``, ``beta``, PCI,
calibration); ``kappa``, ``q``, ``q_scope``, ``gamma`` and alpha act at merge time. With
``kappa = 0`` the masks are 1 and nothing is computed. The cost of building the scores (batch
forward and backward passes, attack steps included, and seconds) is stored in the cache file,
logged, and returned as ``context["prep_cost"]``: a cache hit reports what the computation took.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from explorer.config import MergeSpec
from explorer.merging.pistole import OPTIONS, vision_segments
from explorer.merging.record import read_option

from .batch import CalibSettings, FlatModel, adversarial_batch, calibration_batch
from .cache import CalibrationCache, content_key, vector_identity
from .host import CalibrationHost
from .pistole import Cost, pci_index, timed, trajectory_scores, weighted_gradient

log = logging.getLogger(__name__)

SCORE_VERSION = 2  # part of the cache key: bump when the scores of a setting change
# 2: PCI normalised over the trajectory (steps weighted by PCI), antithetic float64 PCI draws


def score_settings(host: CalibrationHost, spec: MergeSpec) -> dict[str, Any]:
    """Every setting the gradient scores depend on (nothing that acts at merge time)."""
    opt = lambda key: read_option(spec, OPTIONS, key)  # noqa: E731
    return {"calib": CalibSettings.from_spec(host, spec).__dict__, "traj_steps": int(opt("traj_steps")),
            "eta": float(opt("eta")), "beta": float(opt("beta")), "pci_samples": int(opt("pci_samples")),
            "pci_sigma": float(opt("pci_sigma")), "version": SCORE_VERSION}


def _model_scores(fm: FlatModel, theta0: Tensor, robust: bool, x: Tensor, y: Tensor,
                  segments: Sequence[tuple[int, int]], calib: CalibSettings, settings: dict[str, Any],
                  generator: torch.Generator, cost: Cost) -> Tensor:
    """``G = sum_k |g_k| / sum_k,x PCI_k(x)`` of one fine-tuned model (its own objective)."""
    def grad_fn(theta: Tensor, k: int) -> tuple[Tensor, float]:
        inputs = x
        if robust:
            inputs = adversarial_batch(fm, theta, x, y, calib, seed=calib.seed + k)
            cost.forward += calib.attack_steps
            cost.backward += calib.attack_steps
        w = pci_index(fm, theta, inputs, y, segments, samples=settings["pci_samples"],
                      sigma=settings["pci_sigma"], generator=generator, cost=cost)
        return weighted_gradient(fm, theta, inputs, y, w, cost), float(w.sum())

    total, dists = trajectory_scores(grad_fn, theta0, segments, steps=settings["traj_steps"],
                                     eta=settings["eta"], beta=settings["beta"])
    log.info("pistole %s trajectory: distances %s", "robust" if robust else "natural",
             [round(d, 5) for d in dists])
    return total


def compute_scores(host: CalibrationHost, names: Sequence[str],
                   settings: dict[str, Any]) -> dict[str, Tensor]:
    """``{"grad_i": (N,) float32 per vector, "cost": float64 [forward, backward, seconds]}``."""
    calib = CalibSettings(**settings["calib"])
    segments = vision_segments(host.layout.keys, host.layout.segments)
    fm = FlatModel(host, calib.task, names)
    x, y = calibration_batch(host, calib)

    def run(cost: Cost) -> dict[str, Tensor]:
        out = {}
        for i, v in enumerate(host.vectors(names)):
            gen = torch.Generator(device=host.device).manual_seed(calib.seed * 1000 + i)
            out[f"grad_{i}"] = _model_scores(fm, host.pre + v.tau, v.role == "robust", x, y, segments,
                                             calib, settings, gen, cost)
        return out

    out, cost = timed(run)
    out["cost"] = torch.tensor([cost.forward, cost.backward, cost.seconds], dtype=torch.float64)
    log.info("pistole scores: %d forward + %d backward batch passes (n=%d), %.1f s", cost.forward,
             cost.backward, calib.n, cost.seconds)
    return out


def prepare(host: CalibrationHost, names: Sequence[str], spec: MergeSpec,
            cache: CalibrationCache) -> dict[str, Any]:
    """Preparer (``PREPARERS["pistole"]``): the cached gradient scores of ``names`` for ``spec``.

    Returns:
        ``{"pistole_grads": [(N,) per vector] or None (kappa = 0), "pistole_robust": [bool],
        "pistole_key": str or None, "prep_cost": {"forward", "backward", "seconds"} or None}``.
    """
    names = list(names)
    robust = [host.vector(n).role == "robust" for n in names]
    if float(read_option(spec, OPTIONS, "kappa")) == 0.0:
        return {"pistole_grads": None, "pistole_robust": robust, "pistole_key": None, "prep_cost": None}
    settings = score_settings(host, spec)
    key = content_key("pistole", {"vectors": vector_identity(host, names), **settings})
    tensors = cache.kind("pistole").get_or_compute(key, lambda: compute_scores(host, names, settings),
                                                   host.device)
    fwd, bwd, sec = tensors["cost"].tolist()
    cost = {"forward": int(fwd), "backward": int(bwd), "seconds": round(sec, 3)}
    return {"pistole_grads": [tensors[f"grad_{i}"] for i in range(len(names))], "pistole_robust": robust,
            "pistole_key": key, "prep_cost": cost, "memo": cache.memo("pistole", key)}
