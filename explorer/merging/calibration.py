"""Calibration for data-aware merge methods: a batch, a differentiable model, a score cache.

Shared by ``stability`` (PISTOLE-style) and ``variational`` (VTVC-style):

- :func:`calibration_batch`: a fixed, seeded subset of the task's ``train`` split. The
  held-out ``test`` split that results are reported on is never read here (enforced).
- :class:`FlatModel`: ``logits = f(theta_flat, x)`` with ``torch.func.functional_call``, so
  gradients w.r.t. the *flat* parameter vector come out directly and any parameter point can be
  evaluated without touching the engine's resident weights. The class head is recomputed from
  the text tower inside the graph (the engine's cached text head is not differentiable), with
  the same formula as ``ZeroShotClassifier`` (``logit_scale * cos``).
- :func:`adversarial_batch`: PGD (``explorer.attacks.pgd``) against a parameter point.
- :class:`ScoreCache`: tensors keyed by a content hash, in memory and as safetensors under
  ``$EXPLORER_HOME/scores`` (default ``~/.cache/trade-off-explorer/scores``); ``computed``
  counts fresh computations (tests assert reuse with it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.func import functional_call

from explorer.attacks import attack_context, pgd
from explorer.config import MergeSpec, parse_eps, resolve_defaults
from explorer.data import get_task

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
    def from_spec(cls, engine: Any, spec: MergeSpec) -> "CalibSettings":
        """Options ``calib_task, calib_n, calib_seed, calib_eps, attack_steps``; defaults from the
        manifest's ``[defaults]`` (task, eps), 64 images, seed 0, 5 PGD steps."""
        d = resolve_defaults(engine.manifest.defaults)
        return cls(task=str(spec.option("calib_task", d.task)),
                   n=int(spec.option("calib_n", 64)), seed=int(spec.option("calib_seed", 0)),
                   eps=float(parse_eps(spec.option("calib_eps", d.eps))),
                   attack_steps=int(spec.option("attack_steps", 5)))


def calibration_batch(engine: Any, settings: CalibSettings) -> tuple[Tensor, Tensor]:
    """The calibration images and labels, from the ``train`` split only.

    Shape:
        returns x ``[n, 3, H, W]`` in [0, 1] and y ``[n]`` int64, on the engine's device.
    """
    x, y = get_task(settings.task).load(CALIBRATION_SPLIT, settings.n, settings.seed)
    return x.to(engine.device), y.to(engine.device)


class FlatModel:
    """Zero-shot classifier of ``engine.model`` as a function of a flat parameter vector.

    Shape:
        ``self(flat, x)``: flat ``(N,)`` float32 (may require grad), x ``[B,3,H,W]`` in [0,1]
        -> logits ``[B, n_classes]``.
    """

    def __init__(self, engine: Any, task: str) -> None:
        clf = engine.classifier(task)
        self.engine, self.clf = engine, clf
        self.n_classes, self.n_templates = len(clf.classnames), len(clf.templates)
        prompts = [t.format(c) for c in clf.classnames for t in clf.templates]
        self.tokens = engine.tokenizer(prompts).to(engine.device)
        # Float buffers (BatchNorm running statistics) are merged like weights but are not
        # differentiable inputs: their coordinates get zero gradient.
        self.buffers = {name for name, _ in engine.model.named_buffers()}

    def __call__(self, flat: Tensor, x: Tensor) -> Tensor:
        model, layout = self.engine.model, self.engine.layout
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


def content_key(kind: str, payload: dict[str, Any]) -> str:
    """Stable content hash of a score setting (kind + JSON payload, sorted keys)."""
    text = json.dumps({"kind": kind, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def scores_dir() -> Path:
    """``$EXPLORER_HOME/scores`` (default ``~/.cache/trade-off-explorer/scores``)."""
    home = Path(os.environ.get("EXPLORER_HOME", Path.home() / ".cache" / "trade-off-explorer"))
    return home / "scores"


class ScoreCache:
    """Named tensors per content key: memory first, then ``<scores_dir>/<kind>-<key>.safetensors``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.memory: dict[str, dict[str, Tensor]] = {}
        self.computed = 0  # fresh computations (neither memory nor disk hit)

    def path(self, key: str) -> Path:
        return scores_dir() / f"{self.kind}-{key}.safetensors"

    def get_or_compute(self, key: str, compute: Callable[[], dict[str, Tensor]],
                       device: torch.device) -> dict[str, Tensor]:
        """The cached tensors for ``key`` on ``device``; ``compute()`` only on a full miss."""
        if key in self.memory:
            return self.memory[key]
        path = self.path(key)
        if path.exists():
            tensors = {k: v.to(device) for k, v in load_file(str(path)).items()}
            log.info("%s scores %s read from %s", self.kind, key, path)
        else:
            tensors = compute()
            self.computed += 1
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, path)
            tensors = {k: v.to(device) for k, v in tensors.items()}
        self.memory[key] = tensors
        return tensors


def vector_identity(engine: Any, names: list[str]) -> list[dict[str, str]]:
    """Digest and role of each named vector (what a score depends on), plus the base's digest."""
    return [{"base": engine.base_digest}] + [{"digest": engine.vector(n).digest,
                                              "role": engine.vector(n).role} for n in names]
