"""AutoAttack built from torchattacks stages with the published settings.

'Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks' [https://arxiv.org/abs/2003.01690], reference code [https://github.com/fra31/auto-attack].

torchattacks 3.5.1 traps handled here:
- its ``AutoAttack`` builds APGD/APGD-T/FAB with their default ``steps=10``; we build every
  stage ourselves with 100 steps (the published protocol);
- APGD-T and FAB use ``n_classes - 1`` targets: we pass ``n_classes = min(C, 10)`` so the
  target count is capped at 9, as the reference does;
- ``seed=None`` means a clock-based seed there: every stage gets the explicit seed;
- each stage seeds the *global* RNG: callers run inside ``safety.attack_context`` (forked RNG).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchattacks
from torch import nn
from tqdm.auto import tqdm

from .gradient import check_stop

log = logging.getLogger(__name__)

MAX_TARGETS = 9          # targeted stages attack the 9 most likely wrong classes at most
STEPS = 100              # APGD / APGD-T / FAB iterations (per target)
SQUARE_QUERIES = 5000    # Square queries


@dataclass(frozen=True)
class Stage:
    name: str                                                  # stage label in logs
    build: Callable[..., torchattacks.attack.Attack]           # (model, eps, norm, seed, n_classes, queries)
    cost: int                                                  # fwd+bwd per still-robust image, worst case
    min_classes: int = 2                                       # fewer classes: stage cannot run


def _apgd_ce(model, eps, norm, seed, n_classes, queries):
    return torchattacks.APGD(model, norm=norm, eps=eps, steps=STEPS, n_restarts=1, seed=seed, loss="ce")


def _apgd_t(model, eps, norm, seed, n_classes, queries):
    return torchattacks.APGDT(model, norm=norm, eps=eps, steps=STEPS, n_restarts=1, seed=seed,
                              n_classes=min(n_classes, MAX_TARGETS + 1))


def _fab_t(model, eps, norm, seed, n_classes, queries):
    return torchattacks.FAB(model, norm=norm, eps=eps, steps=STEPS, n_restarts=1, seed=seed,
                            multi_targeted=True, n_classes=min(n_classes, MAX_TARGETS + 1))


def _square(model, eps, norm, seed, n_classes, queries):
    return torchattacks.Square(model, norm=norm, eps=eps, n_queries=queries, n_restarts=1,
                               seed=seed, p_init=0.8, loss="margin", resc_schedule=True)


# APGD-T's targeted DLR loss reads the 4th largest logit, so it needs >= 4 classes. Costs count
# forward-only passes as 1/3: FAB does one fwd+bwd and one prediction per step, Square one
# forward per query.
STAGES = {
    "apgd-ce": Stage("apgd-ce", _apgd_ce, cost=STEPS),
    "apgd-t": Stage("apgd-t", _apgd_t, cost=MAX_TARGETS * STEPS, min_classes=4),
    "fab-t": Stage("fab-t", _fab_t, cost=MAX_TARGETS * STEPS * 4 // 3),
    "square": Stage("square", _square, cost=SQUARE_QUERIES // 3),
}
# The standard AutoAttack, in its order (the reference runs these; so does our ``autoattack``).
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


def build_stage(name: str, model: nn.Module, eps: float, norm: str, seed: int, n_classes: int,
                square_queries: int | None = None) -> torchattacks.attack.Attack:
    """One torchattacks attack with the published settings and an explicit seed."""
    queries = SQUARE_QUERIES if square_queries is None else square_queries
    return STAGES[name].build(model, eps, norm, seed, n_classes, queries)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def run_stages(model: nn.Module, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor,
               stages: tuple[str, ...], eps: float, norm: str, seed: int, n_classes: int, *,
               batch_size: int = 256, progress: bool = False,
               square_queries: int | None = None,
               should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Run the stages in order, each only on the points still robust after the previous ones.

    Args:
        model: an ``AttackModel`` in eval mode, on the device of x.
        robust: bool [N], the points to attack (clean-correct ones); updated in place.
        should_stop: polled before every stage and batch (``AttackCancelled``).

    Shape:
        x: [N, C, H, W] contiguous in [0, 1]; y: [N]. Returns x_adv [N, C, H, W].
    """
    x_adv = x.clone()
    for name in stages:
        if n_classes < STAGES[name].min_classes:
            # Skipping a stage would leave a number labelled with an attack that did not run.
            raise ValueError(f"{name} needs >= {STAGES[name].min_classes} classes (its DLR loss reads "
                             f"the 4th largest logit), got {n_classes}: use apgd-ce or pgd-K")
        idx = robust.nonzero().flatten()
        if len(idx) == 0:
            break
        atk = build_stage(name, model, eps, norm, seed, n_classes, square_queries)
        chunks = idx.split(batch_size)
        for chunk in tqdm(chunks, desc=name, disable=not progress, leave=False):
            check_stop(should_stop)
            adv = atk(x[chunk], y[chunk]).detach()
            fooled = _predict(model, adv) != y[chunk]
            x_adv[chunk[fooled]] = adv[fooled]
            robust[chunk[fooled]] = False
        log.info("%s: %d -> %d robust points", name, len(idx), int(robust.sum()))
    return x_adv


def reference_autoattack(model: nn.Module | Callable, x: torch.Tensor, y: torch.Tensor, eps: float,
                         norm: str = "Linf", seed: int = 0, *, n_classes: int | None = None,
                         square_queries: int | None = None) -> torch.Tensor:
    """The reference: torchattacks' own ``MultiAttack`` over the published standard stages.

    APGD-CE 100 it, APGD-T 100 it x 9 targets, FAB multi-targeted 9 targets, Square 5000
    queries, all with the same explicit seed, on the whole batch at once (no early filtering
    beyond MultiAttack's own). For cross-checking ``run_attack(..., "autoattack")``.

    Shape:
        x: [N, C, H, W] in [0, 1]; y: [N] int64. Returns x_adv on x's device.
    """
    from .safety import AttackModel, attack_context, model_device

    net = AttackModel(model)
    device = model_device(net)
    xd, yd = x.to(device).contiguous(), y.to(device)
    with attack_context(net):
        if n_classes is None:
            n_classes = int(net(xd[:1]).shape[1])
        atks = [build_stage(s, net, eps, norm, seed, n_classes, square_queries)
                for s in STANDARD if n_classes >= STAGES[s].min_classes]
        adv = torchattacks.MultiAttack(atks)(xd, yd)
    return adv.detach().to(x.device)
