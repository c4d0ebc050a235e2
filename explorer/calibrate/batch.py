"""Calibration data and a differentiable model: what the data-aware preparers share.

- :func:`calibration_batch`: a fixed, seeded subset of the task's ``train`` split. The
  held-out ``test`` split that results are reported on is never read here (enforced).
- :class:`FlatModel`: ``logits = f(theta_flat, x)`` with ``torch.func.functional_call``, so
  gradients w.r.t. the *flat* parameter vector come out directly and any parameter point can be
  evaluated without touching the host's resident weights. The class head is recomputed from
  the text tower inside the graph (the engine's cached text head is not differentiable), with
  the same formula as ``ZeroShotClassifier`` (``logit_scale * cos``).
- :func:`adversarial_batch`: PGD (``explorer.attacks.pgd``) against a parameter point.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from explorer.attacks.gradient import pgd
from explorer.attacks.safety import attack_context
from explorer.config import MergeSpec, parse_eps, resolve_defaults
from explorer.data import get_task
from explorer.merging.record import CALIBRATION_OPTIONS, read_option

from .host import CalibrationHost

log = logging.getLogger(__name__)

CALIBRATION_SPLIT = "train"


@dataclass(frozen=True)
class CalibSettings:
    """What the calibration data and its adversarial twin are (part of every cache key)."""

    task: str            # task whose train split is the calibration set
    n: int               # number of calibration images
    seed: int            # subset seed of the calibration images
    eps: float           # Linf radius of the calibration attack
    attack_steps: int    # PGD steps of the calibration attack

    @classmethod
    def from_spec(cls, host: CalibrationHost, spec: MergeSpec) -> "CalibSettings":
        """Options ``calib_task, calib_n, calib_seed, calib_eps, attack_steps`` (defaults in
        ``CALIBRATION_OPTIONS``: 64 images, seed 0, 5 PGD steps); task and eps default to the
        manifest's ``[defaults]``."""
        d = resolve_defaults(host.manifest.defaults)
        opt = lambda key: read_option(spec, CALIBRATION_OPTIONS, key)  # noqa: E731
        task, eps = opt("calib_task"), opt("calib_eps")
        return cls(task=str(d.task if task is None else task),
                   n=int(opt("calib_n")), seed=int(opt("calib_seed")),
                   eps=float(parse_eps(d.eps if eps is None else eps)),
                   attack_steps=int(opt("attack_steps")))


def calibration_batch(host: CalibrationHost, settings: CalibSettings) -> tuple[Tensor, Tensor]:
    """The calibration images and labels, from the ``train`` split only.

    Shape:
        returns x ``[n, 3, H, W]`` in [0, 1] and y ``[n]`` int64, on the host's device.
    """
    x, y = get_task(settings.task, preprocess=host.preprocess_cfg()).load(CALIBRATION_SPLIT, settings.n, settings.seed)
    return x.to(host.device), y.to(host.device)


class FlatModel:
    """Zero-shot classifier of ``host.model`` as a function of a flat parameter vector.

    Shape:
        ``self(flat, x)``: flat ``(N,)`` float32 (may require grad), x ``[B,3,H,W]`` in [0,1]
        -> logits ``[B, n_classes]``.
    """

    def __init__(self, host: CalibrationHost, task: str, names: Sequence[str]) -> None:
        clf = host.classifier(task, host.normalization(names))   # the vectors' declared normalisation
        self.host, self.clf = host, clf
        self.n_classes, self.n_templates = len(clf.classnames), len(clf.templates)
        prompts = [t.format(c) for c in clf.classnames for t in clf.templates]
        self.tokens = host.tokenizer(prompts).to(host.device)
        # Float buffers (BatchNorm running statistics) are merged like weights but are not
        # differentiable inputs: their coordinates get zero gradient.
        self.buffers = {name for name, _ in host.model.named_buffers()}

    def __call__(self, flat: Tensor, x: Tensor) -> Tensor:
        model, layout = self.host.model, self.host.layout
        params = {k: v.detach() if k in self.buffers else v for k, v in layout.unflatten(flat).items()}
        out = functional_call(model, params, args=(self.clf.preprocess(x), self.tokens), strict=False)
        if isinstance(out, dict):
            img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        else:
            img, txt, scale = out[0], out[1], out[2]
        head = F.normalize(txt.float().view(self.n_classes, self.n_templates, -1).mean(1), dim=-1)
        return scale.float() * F.normalize(img.float(), dim=-1) @ head.t()

    def at(self, flat: Tensor) -> Callable[[Tensor], Tensor]:
        """``x -> logits`` at a fixed (detached) parameter point, e.g. for an attack."""
        flat = flat.detach()
        return lambda x: self(flat, x)


class _Fixed(torch.nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def adversarial_batch(fm: FlatModel, flat: Tensor, x: Tensor, y: Tensor, settings: CalibSettings,
                      seed: int = 0) -> Tensor:
    """PGD-``attack_steps`` (Linf, ``eps``) images against the parameter point ``flat``.

    Shape:
        x ``[B,3,H,W]`` in [0,1], y ``[B]`` (labels or pseudo-labels); returns x_adv like x.
    """
    if settings.eps <= 0 or settings.attack_steps <= 0:
        return x.clone()
    net = _Fixed(fm.at(flat))
    with attack_context(net):
        return pgd(net, x, y, settings.eps, "Linf", settings.attack_steps, seed=seed).detach()


def loss_and_grad(fm: FlatModel, flat: Tensor, x: Tensor, y: Tensor) -> tuple[float, Tensor, Tensor]:
    """Mean cross-entropy at ``flat``, its gradient w.r.t. ``flat`` and the (detached) logits.

    Shape:
        returns (loss, grad ``(N,)`` float32, logits ``[B, n_classes]``).
    """
    theta = flat.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = fm(theta, x)
        loss = F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, theta)
    return float(loss), grad, logits.detach()
