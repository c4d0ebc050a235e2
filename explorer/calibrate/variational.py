"""The variational posterior of the ``variational`` merge method (VTVC reading), and its preparer.

The model (spike-and-slab block multipliers, the entropy objective on unlabelled calibration
images and their PGD twins, the relaxed-Bernoulli sampling) is described in
:mod:`explorer.merging.variational`. This module fits ``q`` once per (base and vector digests,
calibration settings, ``seed``) and caches it by content
(``$EXPLORER_HOME/scores/variational-<key>.safetensors``); alpha and keep never refit it.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from explorer.config import MergeSpec
from explorer.merging.record import read_option
from explorer.merging.variational import OPTIONS, block_index, expand

from .batch import CalibSettings, FlatModel, adversarial_batch, calibration_batch
from .cache import CalibrationCache, content_key, vector_identity
from .host import CalibrationHost

log = logging.getLogger(__name__)

POSTERIOR_VERSION = 1  # part of the cache key: bump when the posterior of a setting changes


def posterior_settings(host: CalibrationHost, spec: MergeSpec) -> dict[str, Any]:
    """Every setting the posterior depends on (not alpha, keep or the gating band).

    Defaults are the method's declared options (``explorer.merging.variational.OPTIONS``).
    """
    calib = CalibSettings.from_spec(host, spec)
    opt = lambda key: read_option(spec, OPTIONS, key)  # noqa: E731
    return {"calib": calib.__dict__, "blocks": str(opt("blocks")),
            "vi_steps": int(opt("vi_steps")), "vi_lr": float(opt("vi_lr")),
            "kl_weight": float(opt("kl_weight")),
            "prior_gate": float(opt("prior_gate")),
            "prior_std": float(opt("prior_std")), "anchor": float(opt("anchor")),
            "seed": int(spec.seed), "version": POSTERIOR_VERSION}


def _entropy(logits: Tensor) -> Tensor:
    logp = F.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1).mean()


def spike_slab_kl(phi: Tensor, mu: Tensor, sigma: Tensor, prior_gate: float, prior_std: float) -> Tensor:
    """``KL(q(z)||p(z)) + q(z=1) KL(N(mu, sigma^2)||N(1, prior_std^2))``, elementwise."""
    p = torch.sigmoid(phi)
    kl_z = p * (torch.log(p.clamp_min(1e-8)) - math.log(prior_gate)) \
        + (1 - p) * (torch.log((1 - p).clamp_min(1e-8)) - math.log(1 - prior_gate))
    kl_w = torch.log(prior_std / sigma) + (sigma ** 2 + (mu - 1) ** 2) / (2 * prior_std ** 2) - 0.5
    return kl_z + p * kl_w


def infer_posterior(host: CalibrationHost, names: Sequence[str], settings: dict[str, Any]) -> dict[str, Tensor]:
    """Fit ``q`` (module docstring). Returns ``{"mu", "sigma", "gate"}``, each ``(V, B)`` float32."""
    calib = CalibSettings(**settings["calib"])
    vecs = host.vectors(names)
    robust = [v.role == "robust" for v in vecs]
    n_rob, n_nat = sum(robust), len(vecs) - sum(robust)
    a = settings["anchor"]
    lams = torch.tensor([a / max(n_rob, 1) if r else (1 - a) / max(n_nat, 1) for r in robust],
                        device=host.device)
    blocks = block_index(host.layout.keys, settings["blocks"])
    V, B = len(vecs), max(blocks) + 1
    taus = torch.stack([v.tau for v in vecs])
    fm = FlatModel(host, calib.task, names)
    x, _ = calibration_batch(host, calib)
    anchor = host.pre + (lams[:, None] * taus).sum(0)
    with torch.no_grad():
        pseudo = fm(anchor, x).argmax(-1)
    x_adv = adversarial_batch(fm, anchor, x, pseudo, calib, seed=calib.seed)
    xs = torch.cat([x, x_adv])
    gen = torch.Generator(device="cpu").manual_seed(settings["seed"])
    mu = torch.ones(V, B, device=host.device, requires_grad=True)
    # sigma starts at the prior's: blocks the entropy never sees stay exactly at the prior (KL 0)
    rho = torch.full((V, B), math.log(math.expm1(settings["prior_std"])), device=host.device,
                     requires_grad=True)
    phi = torch.full((V, B), math.log(settings["prior_gate"] / (1 - settings["prior_gate"])),
                     device=host.device, requires_grad=True)
    opt = torch.optim.Adam([mu, rho, phi], lr=settings["vi_lr"])
    with torch.enable_grad():
        for _ in range(settings["vi_steps"]):
            eps = torch.randn(V, B, generator=gen).to(host.device)
            u = torch.rand(V, B, generator=gen).clamp(1e-6, 1 - 1e-6).to(host.device)
            sigma = F.softplus(rho)
            z = torch.sigmoid((phi + torch.log(u) - torch.log1p(-u)) / 0.5)
            m = z * (mu + sigma * eps)
            theta = host.pre + (lams[:, None] * expand(m, blocks, host.layout.segments) * taus).sum(0)
            logits = fm(theta, xs)
            ent = (_entropy(logits[: len(x)]) + _entropy(logits[len(x):])) / 2
            kl = spike_slab_kl(phi, mu, sigma, settings["prior_gate"], settings["prior_std"]).mean()
            loss = ent + settings["kl_weight"] * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
        log.info("variational posterior: final loss %.4f (entropy %.4f)", loss.item(), ent.item())
    return {"mu": mu.detach().float(), "sigma": F.softplus(rho).detach().float(),
            "gate": torch.sigmoid(phi).detach().float()}


def prepare(host: CalibrationHost, names: Sequence[str], spec: MergeSpec,
            cache: CalibrationCache) -> dict[str, Any]:
    """Preparer (``PREPARERS["variational"]``): the posterior of ``names`` for ``spec``, from
    ``cache`` (memory, then disk) or inferred once.

    Returns:
        ``{"variational_posterior": {"mu", "sigma", "gate": (V, B)}, "variational_key": str,
        "variational_blocks": [block id per tensor]}``.
    """
    names = list(names)
    settings = posterior_settings(host, spec)
    key = content_key("variational", {"vectors": vector_identity(host, names), **settings})
    post = cache.kind("variational").get_or_compute(key, lambda: infer_posterior(host, names, settings),
                                                    host.device)
    return {"variational_posterior": post, "variational_key": key,
            "variational_blocks": block_index(host.layout.keys, settings["blocks"])}
