"""The attack registry: names, validation, cost estimates and ``run_attack``.

Every result is labelled with ``AttackSpec.label``. Two tiers: ``fgsm`` / ``pgd-K`` (our own,
with early exit and batch-independent random starts) for live previews, and the APGD /
AutoAttack family (torchattacks stages, see ``stages.py``) for reported numbers.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import AttackSpec
from .gradient import check_stop, fgsm, pgd, project
from .safety import AttackModel, attack_context, check_logits, model_device
from .stages import MAX_TARGETS, PROTOCOLS, SQUARE_QUERIES, STEPS, run_stages

log = logging.getLogger(__name__)

# Every entry is a valid name; "pgd-K" accepts any K in [1, MAX_PGD_STEPS].
ATTACK_NAMES = ["none", "fgsm", "pgd-10", "apgd-ce", "apgd-t", "autoattack-fast", "autoattack"]
MAX_PGD_STEPS = 10_000
_PGD = re.compile(r"pgd-(\d+)")


def _valid_names() -> str:
    return ", ".join(n if n != "pgd-10" else "pgd-K (K>=1, e.g. pgd-10)" for n in ATTACK_NAMES)


def pgd_steps(name: str) -> int | None:
    """K for ``pgd-K``, None for any other name."""
    m = _PGD.fullmatch(name)
    return int(m.group(1)) if m else None


def validate_attack(spec: AttackSpec) -> None:
    """Raise ``ValueError`` naming the problem (unknown name, bad K, bad eps or norm)."""
    name = spec.name
    if name.startswith("pgd"):
        k = pgd_steps(name)
        if k is None or not 1 <= k <= MAX_PGD_STEPS:
            raise ValueError(f"attack {name!r}: use pgd-K with an integer K in [1, {MAX_PGD_STEPS}], "
                             f"e.g. pgd-10")
    elif name not in ATTACK_NAMES:
        raise ValueError(f"unknown attack {name!r}; valid names: {_valid_names()}")
    eps, limit = spec.eps, (1.0 if spec.norm == "Linf" else 64.0)
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0.0 <= eps <= limit:
        raise ValueError(f"eps must be a number in [0, {limit:g}] (pixel units), got {eps!r}")
    if spec.norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {spec.norm!r}")


def attack_cost(spec: AttackSpec) -> int:
    """Rough forward+backward passes per still-robust image (forward-only counted as 1/3).

    Worst case: a point that survives every stage. Used for UI time estimates only.
    """
    validate_attack(spec)
    if spec.name == "none" or spec.eps == 0:
        return 0
    if spec.name == "fgsm":
        return 1
    k = pgd_steps(spec.name)
    if k is not None:
        return k
    per_stage = {
        "apgd-ce": STEPS,
        "apgd-t": MAX_TARGETS * STEPS,
        "fab-t": MAX_TARGETS * STEPS * 4 // 3,   # one fwd+bwd and one prediction per step
        "square": SQUARE_QUERIES // 3,           # one forward per query
    }
    return sum(per_stage[s] for s in PROTOCOLS[spec.name])


def _check_inputs(x: torch.Tensor, y: torch.Tensor, sample_ids: torch.Tensor | None) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    if y.shape != (len(x),):
        raise ValueError(f"y must have shape [{len(x)}], got {tuple(y.shape)}")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must lie in [0, 1] (pixel space): normalisation belongs inside the model")
    if sample_ids is not None and sample_ids.shape != (len(x),):
        raise ValueError(f"sample_ids must have shape [{len(x)}], got {tuple(sample_ids.shape)}")


@torch.no_grad()
def _clean_correct(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   device: torch.device) -> tuple[torch.Tensor, int]:
    correct, n_classes = [], 0
    for i in range(0, len(x), batch_size):
        logits = net(x[i:i + batch_size].to(device))
        if i == 0:
            check_logits(logits)
            n_classes = logits.shape[1]
        correct.append(logits.argmax(1).cpu() == y[i:i + batch_size].cpu())
    return torch.cat(correct), n_classes


def run_attack(model: nn.Module | Callable, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *,
               sample_ids: torch.Tensor | None = None, batch_size: int = 256,
               progress: bool = False, rand_init: bool = True, assume_correct: bool = False,
               should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Attack the points that are still correctly classified; return the adversarial batch.

    Args:
        model: pixels in [0, 1] -> logits (an ``nn.Module``; plain callables are wrapped).
            It is put in eval mode with frozen parameters during the attack, then restored.
        spec: the attack (``validate_attack`` rules). ``none`` or eps == 0 returns x.
        sample_ids: stable per-row ids (default arange(N)); fgsm/pgd random starts depend
            only on (spec.seed, sample_ids[j]), so a subset gives the same rows as the whole.
        batch_size: rows per forward pass.
        progress: tqdm bars per stage.
        rand_init: pgd only; False starts at x (for comparisons with fixed-start PGD).
        assume_correct: the caller already knows every row is clean-correct (``evaluate``
            checks on the model that decides); skip the clean pass.
        should_stop: polled between steps, stages and batches; when it returns True the
            attack raises ``AttackCancelled`` (so a Stop button acts within seconds).

    Shape:
        x: [N, C, H, W] float in [0, 1]; y: [N] int64.
        Returns x_adv like x (same device and dtype), within eps of x (Linf or L2) and in
        [0, 1]; rows misclassified before the attack are x itself.
    """
    validate_attack(spec)
    _check_inputs(x, y, sample_ids)
    if spec.name == "none" or spec.eps == 0 or len(x) == 0:
        return x.clone()
    net = AttackModel(model)
    device = model_device(net)
    ids = torch.arange(len(x)) if sample_ids is None else sample_ids.cpu()
    x_adv = x.clone()
    with attack_context(net):
        if assume_correct:
            with torch.no_grad():
                logits = net(x[:1].to(device))
            check_logits(logits)
            robust, n_classes = torch.ones(len(x), dtype=torch.bool), logits.shape[1]
        else:
            robust, n_classes = _clean_correct(net, x, y, batch_size, device)
        idx = robust.nonzero().flatten()
        log.info("%s on %d/%d clean-correct points", spec.label, len(idx), len(x))
        if spec.name in PROTOCOLS:
            # Contiguous leaves: torchattacks' FAB .view()s gradients shaped like its input.
            xs = x[idx].to(device).contiguous(memory_format=torch.contiguous_format)
            alive = torch.ones(len(idx), dtype=torch.bool, device=device)
            # torchattacks' stages loop internally (100 steps x 9 targets); polling in the
            # forward lets a Stop act within one step of them, not after the batch.
            stage_net = AttackModel(net, should_stop=should_stop) if should_stop is not None else net
            adv = run_stages(stage_net, xs, y[idx].to(device), alive, PROTOCOLS[spec.name], spec.eps,
                             spec.norm, spec.seed, n_classes, batch_size=batch_size, progress=progress,
                             should_stop=should_stop)
            x_adv[idx] = adv.to(x)
        else:
            k = pgd_steps(spec.name)
            for chunk in tqdm(idx.split(batch_size), desc=spec.name, disable=not progress, leave=False):
                xb, yb = x[chunk].to(device).contiguous(), y[chunk].to(device)
                check_stop(should_stop)
                if k is None:
                    adv = fgsm(net, xb, yb, spec.eps, spec.norm)
                else:
                    adv = pgd(net, xb, yb, spec.eps, spec.norm, k, rand_init=rand_init,
                              seed=spec.seed, sample_ids=ids[chunk], should_stop=should_stop)
                x_adv[chunk] = adv.to(x)
    return _enforce_ball(x_adv, x, spec.eps, spec.norm)


def _enforce_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Re-project only rows that drifted out of the ball or [0, 1] (float error in a stage)."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    bad = (size > eps) | (x_adv.flatten(1).amin(1) < 0) | (x_adv.flatten(1).amax(1) > 1)
    if bad.any():
        log.debug("re-projecting %d rows that left the eps ball by float error", int(bad.sum()))
        x_adv[bad] = project(x_adv[bad], x[bad], eps, norm)
    return x_adv
