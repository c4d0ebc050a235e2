"""``attack_outcome`` / ``run_attack``: attack the still-correct points with the attack a spec names.

Every result is labelled with ``AttackSpec.label``. What each name runs, costs and is for lives
in its record (``records.py``); this module does what every attack shares: input checks, the
clean pass that picks the points to attack, the model hygiene of ``safety.attack_context``, and
a last projection onto the eps ball.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from explorer.config import AttackSpec

from .gradient import project
from .records import RunOptions, find_attack
from .safety import AttackModel, attack_context, check_logits, model_device

log = logging.getLogger(__name__)


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


CLEAN, ROBUST = -2, -1   # ``AttackOutcome.broken`` codes besides a stage index


@dataclass
class AttackOutcome:
    """Per image, in input order: the adversarial example, what broke it and what it cost.

    ``broken[j]``: ``CLEAN`` (-2, misclassified before any attack: never attacked), ``ROBUST``
    (-1, no stage found a misclassified point), or k >= 0 (``stages[k]`` found one first).
    ``fwd_bwd`` / ``fwd``: forward+backward and forward-only passes spent on the image here
    (the clean pass included when this call made it; padding rows not counted). Flags, stages
    and x_adv depend only on (model, image, label, spec, id); the cost also on how copies were
    stacked with other images (it is what was spent).
    """
    x_adv: torch.Tensor          # [N, C, H, W] like x
    broken: torch.Tensor         # int64 [N] (CPU)
    stages: tuple[str, ...]      # what ``broken`` indexes: the protocol's stages, or (spec.name,)
    fwd_bwd: torch.Tensor        # int64 [N] (CPU)
    fwd: torch.Tensor            # int64 [N] (CPU)

    @property
    def robust(self) -> torch.Tensor:
        """bool [N]: clean-correct and unbroken."""
        return self.broken == ROBUST

    def stage_labels(self) -> list[str | None]:
        """Per image: ``"clean"``, the name of the stage that broke it, or None (robust)."""
        return ["clean" if b == CLEAN else None if b == ROBUST else self.stages[b] for b in self.broken.tolist()]


def attack_outcome(model: nn.Module | Callable, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *,
                   sample_ids: torch.Tensor | None = None, batch_size: int = 256,
                   progress: bool = False, rand_init: bool = True, assume_correct: bool = False) -> AttackOutcome:
    """Attack the points that are still correctly classified; per image x_adv, stage and cost.

    Args:
        model: pixels in [0, 1] -> logits (an ``nn.Module``; plain callables are wrapped).
            It is put in eval mode with frozen parameters during the attack, then restored.
        spec: the attack (a record of ``ATTACKS``). ``none`` or eps == 0 attacks nothing.
        sample_ids: stable per-row ids (default arange(N)). Every random draw of every stage
            derives from (spec.seed, sample_ids[j], stage, target/restart), so an image's result
            is the same whatever batch, chunk or subset it is attacked in.
        batch_size: rows per forward pass (restarts and targets of the still-robust images of
            a chunk are stacked up to this many rows).
        progress: tqdm bars per batch (fgsm / pgd).
        rand_init: pgd only; False starts at x (for comparisons with fixed-start PGD).
        assume_correct: the caller already knows every row is clean-correct (``evaluate``
            checks on the model that decides); skip the clean pass.

    Raises:
        Cancelled: the enclosing cancel scope's token was set (``explorer.core.cancel``; checked
            before every attack step, so a Stop acts within seconds). Nothing is returned.

    Shape:
        x: [N, C, H, W] float in [0, 1]; y: [N] int64. x_adv like x (same device and dtype),
        within eps of x (Linf or L2) and in [0, 1]; rows not broken are x itself.
    """
    record = find_attack(spec.name)   # the dispatch; specs are validated where they are parsed
    _check_inputs(x, y, sample_ids)
    n = len(x)
    broken = torch.full((n,), ROBUST, dtype=torch.long)
    fb, fw = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    stages = record.stage_names(spec)
    x_adv = x.clone()
    if n == 0:
        return AttackOutcome(x_adv, broken, stages, fb, fw)
    net = AttackModel(model)
    device = model_device(net)
    ids = torch.arange(n) if sample_ids is None else sample_ids.cpu()
    with attack_context(net):
        if assume_correct:
            with torch.no_grad():
                logits = net(x[:1].to(device))
            check_logits(logits)
            robust, n_classes = torch.ones(n, dtype=torch.bool), logits.shape[1]
        else:
            robust, n_classes = _clean_correct(net, x, y, batch_size, device)
            fw += 1
        broken[~robust] = CLEAN
        idx = robust.nonzero().flatten()
        if record.run is None or spec.eps == 0 or len(idx) == 0:
            return AttackOutcome(x_adv, broken, stages, fb, fw)
        log.info("%s on %d/%d clean-correct points", spec.label, len(idx), n)
        options = RunOptions(batch_size, progress, rand_init)
        res = record.run(net, x[idx], y[idx], ids[idx], spec, n_classes, options)
        x_adv[idx] = res.x_adv.to(x)
        broken[idx] = res.broken
        fb[idx] += res.fwd_bwd
        fw[idx] += res.fwd
    return AttackOutcome(_enforce_ball(x_adv, x, spec.eps, spec.norm), broken, stages, fb, fw)


def run_attack(model: nn.Module | Callable, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *,
               sample_ids: torch.Tensor | None = None, batch_size: int = 256,
               progress: bool = False, rand_init: bool = True, assume_correct: bool = False) -> torch.Tensor:
    """``attack_outcome(...).x_adv``: the adversarial batch (same arguments).

    Shape:
        x: [N, C, H, W] float in [0, 1]; y: [N] int64. Returns x_adv like x; rows
        misclassified before the attack are x itself.
    """
    record = find_attack(spec.name)
    _check_inputs(x, y, sample_ids)
    if record.run is None or spec.eps == 0 or len(x) == 0:
        return x.clone()
    return attack_outcome(model, x, y, spec, sample_ids=sample_ids, batch_size=batch_size,
                          progress=progress, rand_init=rand_init, assume_correct=assume_correct).x_adv


def _enforce_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Re-project only rows that drifted out of the ball or [0, 1] (float error in a stage)."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    bad = (size > eps) | (x_adv.flatten(1).amin(1) < 0) | (x_adv.flatten(1).amax(1) > 1)
    if bad.any():
        log.debug("re-projecting %d rows that left the eps ball by float error", int(bad.sum()))
        x_adv[bad] = project(x_adv[bad], x[bad], eps, norm)
    return x_adv
