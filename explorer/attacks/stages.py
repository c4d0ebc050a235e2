"""AutoAttack and the RobustVLM protocol built from torchattacks stages, setting by setting.

'Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks' [https://arxiv.org/abs/2003.01690], reference code [https://github.com/fra31/auto-attack]
(``autoattack/autoattack.py``: the constructor, then ``set_version('standard')``). The RobustVLM
protocol (Schlarmann et al. 2024, FARE, [https://github.com/chs20/RobustVLM],
``CLIP_eval/clip_robustbench.py``) runs the same code with ``version='custom'`` and
``attacks_to_run=['apgd-ce', 'apgd-t']``: ``set_version`` is never called, so APGD-CE keeps the
constructor's ``n_restarts=5`` (the standard version sets it to 1 for Linf and L2).

Every stage's settings are data (``STAGES``: torchattacks class + constructor settings); the
README's protocol table is ``settings_table()`` and tests/test_protocols.py pins each setting of
each built object against the references.

torchattacks 3.5.1 traps handled here:
- its ``AutoAttack`` builds APGD/APGD-T/FAB with their default ``steps=10``; we build every
  stage ourselves with 100 steps (the published protocol);
- APGD-T and FAB use ``n_classes - 1`` targets: we pass ``n_classes = min(C, 10)`` so the
  target count is capped at 9, as the reference does;
- its ``Square`` defaults to ``resc_schedule=True`` (the p-schedule squeezed into n_queries);
  the reference AutoAttack builds Square with ``resc_schedule=False``, and so do we;
- ``seed=None`` means a clock-based seed there: every stage gets the explicit seed;
- each stage seeds the *global* RNG: callers run inside ``safety.attack_context`` (forked RNG).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchattacks
from torch import nn
from tqdm.auto import tqdm

from explorer.core.cancel import check_cancelled

log = logging.getLogger(__name__)

MAX_TARGETS = 9          # targeted stages attack the 9 most likely wrong classes at most
STEPS = 100              # APGD / APGD-T / FAB iterations (per target, per restart)
SQUARE_QUERIES = 5000    # Square queries
ROBUSTVLM_RESTARTS = 5   # APGD-CE restarts of the RobustVLM protocol (the constructor's default)


@dataclass(frozen=True)
class Stage:
    """One torchattacks attack with fixed settings. ``settings(n_classes, queries)`` returns the
    constructor keywords besides model, norm, eps and seed (read at build time, so a test may
    shorten ``STEPS``)."""
    name: str                                                  # stage label in logs
    cls: type                                                  # the torchattacks class
    settings: Callable[[int, int], dict[str, Any]]             # (n_classes, queries) -> keywords
    cost: int                                                  # fwd+bwd per still-robust image, worst case
    min_classes: int = 2                                       # fewer classes: stage cannot run


def _targets(n_classes: int) -> int:
    """torchattacks' ``n_classes`` argument that gives min(9, C - 1) targets."""
    return min(n_classes, MAX_TARGETS + 1)


# APGD-T's targeted DLR loss reads the 4th largest logit, so it needs >= 4 classes. Costs count
# forward-only passes as 1/3: FAB does one fwd+bwd and one prediction per step, Square one
# forward per query. Settings not listed are torchattacks' defaults, equal to the reference's
# (APGD's initial step 2 eps is fixed in torchattacks, the reference's default ``alpha=2``).
STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("apgd-ce", torchattacks.APGD,
          lambda c, q: dict(loss="ce", steps=STEPS, n_restarts=1, eot_iter=1, rho=0.75),
          cost=STEPS),
    Stage("apgd-ce-x5", torchattacks.APGD,
          lambda c, q: dict(loss="ce", steps=STEPS, n_restarts=ROBUSTVLM_RESTARTS, eot_iter=1, rho=0.75),
          cost=ROBUSTVLM_RESTARTS * STEPS),
    Stage("apgd-t", torchattacks.APGDT,
          lambda c, q: dict(steps=STEPS, n_restarts=1, eot_iter=1, rho=0.75, n_classes=_targets(c)),
          cost=MAX_TARGETS * STEPS, min_classes=4),
    Stage("fab-t", torchattacks.FAB,
          lambda c, q: dict(steps=STEPS, n_restarts=1, multi_targeted=True, n_classes=_targets(c),
                            alpha_max=0.1, eta=1.05, beta=0.9),
          cost=MAX_TARGETS * STEPS * 4 // 3),
    Stage("square", torchattacks.Square,
          lambda c, q: dict(n_queries=q, n_restarts=1, p_init=0.8, loss="margin", resc_schedule=False),
          cost=SQUARE_QUERIES // 3),
]}
# The standard AutoAttack, in its order (the reference runs these; so does our ``autoattack``).
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
# The RobustVLM protocol (our ``autoattack-fast``): APGD-CE with 5 restarts, then APGD-T.
ROBUSTVLM = ("apgd-ce-x5", "apgd-t")


def build_stage(name: str, model: nn.Module, eps: float, norm: str, seed: int, n_classes: int,
                square_queries: int | None = None) -> torchattacks.attack.Attack:
    """One torchattacks attack with the published settings and an explicit seed.

    Raises:
        KeyError: an unknown stage name.
    """
    queries = SQUARE_QUERIES if square_queries is None else square_queries
    stage = STAGES[name]
    return stage.cls(model, norm=norm, eps=eps, seed=seed, **stage.settings(n_classes, queries))


# The attributes torchattacks keeps each setting under, per class (what the table and tests read).
SETTING_ATTRS: dict[type, tuple[tuple[str, str], ...]] = {
    torchattacks.APGD: (("loss", "loss"), ("iterations", "steps"), ("restarts", "n_restarts"),
                        ("eot_iter", "eot_iter"), ("rho", "thr_decr")),
    torchattacks.APGDT: (("loss", "_loss"), ("iterations", "steps"), ("restarts", "n_restarts"),
                         ("targets", "n_target_classes"), ("eot_iter", "eot_iter"), ("rho", "thr_decr")),
    torchattacks.FAB: (("iterations", "steps"), ("restarts", "n_restarts"), ("targets", "n_target_classes"),
                       ("multi_targeted", "multi_targeted"), ("alpha_max", "alpha_max"), ("eta", "eta"),
                       ("beta", "beta")),
    torchattacks.Square: (("loss", "loss"), ("queries", "n_queries"), ("restarts", "n_restarts"),
                          ("p_init", "p_init"), ("resc_schedule", "rescale_schedule")),
}


def stage_settings(atk: torchattacks.attack.Attack) -> dict[str, Any]:
    """The settings a built stage holds, read back from its attributes (APGD-T's loss is fixed
    targeted DLR in torchattacks and reported as such)."""
    out = {}
    for label, attr in SETTING_ATTRS[type(atk)]:
        out[label] = "dlr-targeted" if attr == "_loss" else getattr(atk, attr)
    return out


def settings_table(n_classes: int = 1000) -> str:
    """Markdown: one row per stage with every setting of the built torchattacks object (a
    ``n_classes``-way model; fewer than 10 classes give C - 1 targets)."""
    net = nn.Linear(1, n_classes)
    rows = ["| stage | torchattacks | settings (read from the built object) |", "|---|---|---|"]
    for name, stage in STAGES.items():
        s = stage_settings(build_stage(name, net, 4 / 255, "Linf", 0, n_classes))
        rows.append(f"| `{name}` | `{stage.cls.__name__}` | "
                    + ", ".join(f"{k} {v}" for k, v in s.items()) + " |")
    return "\n".join(rows) + "\n"


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def run_stages(model: nn.Module, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor,
               stages: tuple[str, ...], eps: float, norm: str, seed: int, n_classes: int, *,
               batch_size: int = 256, progress: bool = False,
               square_queries: int | None = None) -> torch.Tensor:
    """Run the stages in order, each only on the points still robust after the previous ones.

    Args:
        model: an ``AttackModel`` in eval mode, on the device of x.
        robust: bool [N], the points to attack (clean-correct ones); updated in place.

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
            check_cancelled()
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
