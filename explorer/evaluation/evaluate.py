"""Clean and robust evaluation with per-sample results and sanity checks.

Robust accuracy counts a sample as robust only if it is clean-correct and no valid adversarial
example is known for it: first, when the caller passes one, the bank of examples found at other
merge points (any ``x_adv`` in the eps-ball that fools the current model is a proof; an explicit
variant, labelled ``+reuse`` by the engine, since its numbers depend on what ran before), then the
attack, run only on what survives.

No accuracy is computed from invalid numbers: images outside [0, 1] are refused up front, and
every batch of logits is checked finite (``finite.NonFiniteLogitsError``, a ``ValueError``)
before its argmax is counted.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from explorer.attacks import attack_outcome, check_gradients, check_logits, find_attack
from explorer.attacks.gradient import bucketed
from explorer.attacks.run import CLEAN, ROBUST
from explorer.config import AttackSpec
from explorer.core.finite import check_finite_logits

log = logging.getLogger(__name__)


class SanityError(AssertionError):
    """An evaluation broke an invariant (robust > clean, x_adv outside the ball, ...)."""


BANK = -3   # ``EvalResult.broken``: proved by a banked adversarial example (``+reuse`` only)


@dataclass
class EvalResult:
    """Per-sample outcome of one evaluation, in eval order. Flags are boolean CPU tensors of
    length n; ``broken`` / ``fwd_bwd`` / ``fwd`` int64 CPU tensors of length n.

    ``broken[j]``: -2 misclassified clean (never attacked), -1 robust, -3 proved by the bank,
    k >= 0 ``stage_names[k]`` broke it (decided on ``model``). ``fwd_bwd`` / ``fwd``: the attack's
    forward+backward and forward-only passes spent on image j (the clean pass not counted).
    """

    clean_correct: torch.Tensor
    robust: torch.Tensor
    attack: AttackSpec
    seconds: dict[str, float] = field(default_factory=dict)
    n_reused: int = 0        # non-robust samples proved by a banked adversarial example
    n_attacked: int = 0      # samples the attack itself ran on
    x_adv: torch.Tensor | None = None
    broken: torch.Tensor | None = None
    stage_names: tuple[str, ...] = ()     # what ``broken`` indexes: the attack's stages
    fwd_bwd: torch.Tensor | None = None
    fwd: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.n
        if self.broken is None:
            self.broken = torch.where(self.clean_correct, ROBUST, CLEAN).long()
        if self.fwd_bwd is None:
            self.fwd_bwd = torch.zeros(n, dtype=torch.long)
        if self.fwd is None:
            self.fwd = torch.zeros(n, dtype=torch.long)

    @property
    def broken_stage(self) -> list[str | None]:
        """Per image: "clean", "bank", the name of the stage that broke it, or None (robust)."""
        names = {CLEAN: "clean", ROBUST: None, BANK: "bank"}
        return [names[b] if b < 0 else self.stage_names[b] for b in self.broken.tolist()]

    @property
    def stages(self) -> list[str | None]:
        """``broken_stage`` (the per-image store's ``stage`` column)."""
        return self.broken_stage

    @property
    def costs(self) -> np.ndarray:
        """int64 [n]: forward+backward passes per image (the per-image store's ``cost``)."""
        return self.fwd_bwd.numpy()

    @property
    def n(self) -> int:
        return int(self.clean_correct.numel())

    @property
    def clean_acc(self) -> float:
        """Fraction of clean-correct images: the exact ratio k / n (a float32 mean is not)."""
        return int(self.clean_correct.sum()) / self.n if self.n else float("nan")

    @property
    def robust_acc(self) -> float:
        """Fraction of robust images, k / n exactly."""
        return int(self.robust.sum()) / self.n if self.n else float("nan")


class AdversarialBank:
    """Adversarial examples found so far for one eval set and one norm, per eps.

    An example found within a smaller radius lies inside every larger ball, so it is tried at
    every eps >= its own: robust accuracy then never rises with eps across a session.

    Shape: each entry ``x`` [n, 3, H, W] in [0, 1] with ``has`` [n] bool.
    """

    def __init__(self, x: torch.Tensor, norm: str) -> None:
        self.norm = norm
        self.shape = x.shape
        self.device = x.device
        self._entries: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def candidates(self, attack: AttackSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(x, has) for every radius <= the attack's, largest first."""
        if attack.norm != self.norm:
            return []
        return [self._entries[e] for e in sorted(self._entries, reverse=True) if e <= attack.eps]

    def update(self, eps: float, idx: torch.Tensor, x_adv: torch.Tensor) -> None:
        if eps not in self._entries:
            self._entries[eps] = (torch.zeros(self.shape, device=self.device),
                                  torch.zeros(self.shape[0], dtype=torch.bool, device=self.device))
        x, has = self._entries[eps]
        x[idx] = x_adv.to(self.device)
        has[idx] = True


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels. Shape: x [N,3,H,W] in [0,1] -> [N] int64 (on x's device).

    Batches are padded to a multiple of ``BUCKET`` rows, at most ``batch_size`` (repeats of a
    real row; each row's prediction is its own), so the few batch shapes seen reuse their kernels.

    Raises:
        NonFiniteLogitsError: the model returned NaN/inf logits (argmax would call them class 0).
    """
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        rows = bucketed(torch.arange(len(xb), device=x.device), limit=batch_size)
        logits = model(xb[rows] if len(rows) > len(xb) else xb)[:len(xb)]
        check_finite_logits(logits, offset=i, total=x.shape[0])
        out.append(logits.argmax(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)


def check_pixels(x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is float pixels in [0, 1] (the pixel-space contract).

    0-255 images would otherwise saturate the model and show up later as zero gradients
    ("gradient masking"), or as NaN; the message names the range instead.
    """
    if not x.is_floating_point():
        raise ValueError(f"images must be float pixels in [0, 1], got {x.dtype} (divide 0-255 images by 255)")
    if x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images hold NaN/inf values; pixels must be finite floats in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = " (they look like 0-255 values: divide by 255)" if hi > 1.5 and lo >= 0 else ""
        raise ValueError(f"images must be float pixels in [0, 1], got values in [{lo:.4g}, {hi:.4g}]{hint}; "
                         "normalisation belongs inside the model")


def check_ball(x: torch.Tensor, x_adv: torch.Tensor, attack: AttackSpec) -> None:
    """Raise ``SanityError`` if ``x_adv`` leaves [0,1] or the attack's eps-ball."""
    if x_adv.numel() == 0:
        return
    if not bool(torch.isfinite(x_adv).all()):
        raise SanityError(f"{attack.label}: adversarial images hold NaN/inf")
    if x_adv.min() < 0 or x_adv.max() > 1:
        raise SanityError(f"{attack.label}: adversarial images leave [0, 1]")
    d = (x_adv - x).flatten(1)
    dist = d.abs().amax(1) if attack.norm == "Linf" else d.norm(dim=1)
    if dist.max() > attack.eps + 1e-6 * (1 if attack.norm == "Linf" else 10):
        raise SanityError(f"{attack.label}: perturbation {float(dist.max()):.6f} exceeds eps {attack.eps:.6f}")


@dataclass(frozen=True)
class Images:
    """Labelled images to evaluate on.

    Shape: ``x`` [N,3,H,W] float in [0,1]; ``y`` [N] int64 labels; ``ids`` [N] int64 stable ids of
    the images (they seed the attack's per-image randomness; default ``0..N-1``), all on one device.
    """

    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def sample_ids(self) -> torch.Tensor:
        return torch.arange(self.x.shape[0], device=self.x.device) if self.ids is None else self.ids


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation runs; none of these changes a number (batches are padded per row, every
    random draw is per image id)."""

    batch_size: int = 256      # the most images per forward (and forward+backward)
    checks: bool = True        # sanity checks: logits not probabilities, non-zero input gradients,
    # x_adv in the eps-ball and in [0,1], robust <= clean
    return_adv: bool = False   # keep the adversarial images (``EvalResult.x_adv``)
    progress: bool = False     # a tqdm bar per attack stage


def evaluate(model: nn.Module, images: Images, attack: AttackSpec, options: EvalOptions = EvalOptions(), *,
             attack_model: nn.Module | None = None, bank: AdversarialBank | None = None) -> EvalResult:
    """Clean and robust accuracy of ``model`` on ``images`` under ``attack``.

    Args:
        model: pixels in [0,1] -> logits (e.g. ``ZeroShotClassifier``), in eval mode.
        images: the images, their labels and ids (``Images``).
        options: batch size, sanity checks, adversarial images kept, progress bar (``EvalOptions``).
        attack_model: the same function, faster to differentiate (``attack_twin.AttackTwin``);
            it only proposes adversarial examples: clean correctness and every proof are
            decided on ``model``.
        bank: adversarial examples from neighbouring points, tried before the attack and
            updated with what the attack finds (the labelled ``+reuse`` variant).

    Raises:
        ValueError: images that are not float pixels in [0, 1] (e.g. 0-255 values).
        NonFiniteLogitsError: the model returned NaN/inf logits on a clean or adversarial image.
        SanityError: a broken invariant (robust > clean, x_adv outside the ball).
        Cancelled: the enclosing cancel scope's token was set (``explorer.core.cancel``).
    """
    x, y, ids = images.x, images.y, images.sample_ids()
    batch_size, checks = options.batch_size, options.checks
    check_pixels(x)
    t0 = time.perf_counter()
    if checks:
        with torch.no_grad():
            check_logits(model(x[: min(8, batch_size, x.shape[0])]))
    pred = predict(model, x, batch_size)
    correct = pred == y
    t1 = time.perf_counter()
    robust = correct.clone()
    res = EvalResult(correct.cpu(), robust.cpu(), attack,
                     stage_names=find_attack(attack.name).stage_names(attack))
    broken = res.broken
    x_adv = x.clone() if options.return_adv else None
    if attack.name != "none" and attack.eps > 0 and bool(correct.any()):
        net = model if attack_model is None else attack_model
        if checks:   # on the function whose gradients the attack follows
            check_gradients(net, x[correct][:min(8, batch_size)], y[correct][:min(8, batch_size)])
        todo = correct.nonzero().flatten()
        for bx, has in (bank.candidates(attack) if bank is not None else []):
            cand = todo[has[todo]]
            if cand.numel():
                fooled = predict(model, bx[cand], batch_size) != y[cand]
                robust[cand[fooled]] = False
                broken[cand[fooled].cpu()] = BANK
                res.n_reused += int(fooled.sum())
                if x_adv is not None:
                    x_adv[cand[fooled]] = bx[cand[fooled]]
                todo = todo[robust[todo]]
        t2 = time.perf_counter()
        if todo.numel():
            out = attack_outcome(net, x[todo], y[todo], attack, sample_ids=ids[todo],
                                 batch_size=batch_size, progress=options.progress, assume_correct=True)
            adv = out.x_adv
            if checks:
                check_ball(x[todo], adv, attack)
            fooled = predict(model, adv, batch_size) != y[todo]
            robust[todo[fooled]] = False
            # The proof is decided on ``model``: a stage's claim it does not confirm is no break,
            # and a last iterate that fools it (pgd keeps one) was found by the last stage run.
            t_cpu, f_cpu = todo.cpu(), fooled.cpu()
            last = torch.full_like(out.broken, len(out.stages) - 1)
            broken[t_cpu] = torch.where(f_cpu, torch.where(out.broken >= 0, out.broken, last), ROBUST)
            res.fwd_bwd[t_cpu], res.fwd[t_cpu] = out.fwd_bwd, out.fwd
            if bank is not None:
                bank.update(attack.eps, todo[fooled], adv[fooled])
            if x_adv is not None:
                x_adv[todo] = adv
        res.n_attacked = int(todo.numel())
        res.seconds.update(bank=t2 - t1, attack=time.perf_counter() - t2)
    res.seconds["clean"] = t1 - t0
    res.robust = robust.cpu()
    res.x_adv = x_adv
    if checks and bool((res.robust & ~res.clean_correct).any()):
        raise SanityError("robust accuracy counts a sample that is not clean-correct")
    return res
