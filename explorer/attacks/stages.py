"""AutoAttack and the RobustVLM protocol, stage by stage and setting by setting, per image.

'Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks' [https://arxiv.org/abs/2003.01690], reference code [https://github.com/fra31/auto-attack]
(``autoattack/autoattack.py``: the constructor, then ``set_version('standard')``). The RobustVLM
protocol (Schlarmann et al. 2024, FARE, [https://github.com/chs20/RobustVLM],
``CLIP_eval/clip_robustbench.py``) runs the same code with ``version='custom'`` and
``attacks_to_run=['apgd-ce', 'apgd-t']``: ``set_version`` is never called, so APGD-CE keeps the
constructor's ``n_restarts=5`` (the standard version sets it to 1 for Linf and L2).

Every stage's settings are data (``STAGES``: torchattacks class + constructor settings); the
README's protocol table is ``settings_table()`` and tests/test_protocols.py pins each setting of
each built object against the references. ``run_stage`` runs a stage with those same settings,
per image and batch-free: APGD-CE / APGD-T (``apgd.py``) and Linf Square (``square.py``) are our
own code with per-image generators; FAB-T (no draw with one restart) and L2 Square (image by
image) are torchattacks'. The torchattacks objects themselves serve the bench's plain baseline and
``reference_autoattack``.

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

from explorer.core.cancel import check_cancelled

from .apgd import StageResult, apgd_stage
from .safety import PassCounter
from .square import square_l2, square_linf

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
# Each reported attack's stage list, by name (what ``reference_autoattack`` takes as ``protocol``).
PROTOCOLS = {"apgd-ce": ("apgd-ce",), "apgd-t": ("apgd-t",), "autoattack-fast": ROBUSTVLM, "autoattack": STANDARD}


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


def _fab_stage(net: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, eps: float, norm: str,
               seed: int, n_classes: int, batch_rows: int) -> StageResult:
    """FAB-T: torchattacks' FAB (reference settings), target by target on the images still
    robust, as its ``perturb`` loops. With one restart FAB draws nothing (its random start is
    for restarts > 0), so an image's result is its own whatever ran beside it. Per-image cost:
    the passes of each call shared equally by its rows (FAB runs every row every step)."""
    counted = PassCounter(net)
    atk = build_stage("fab-t", counted, eps, norm, seed, n_classes)
    M = len(x)
    fooled, out = torch.zeros(M, dtype=torch.bool), x.clone()
    fb, fw = torch.zeros(M, dtype=torch.long), torch.zeros(M, dtype=torch.long)
    for chunk in torch.arange(M, device=x.device).split(batch_rows):
        for target_class in range(2, atk.n_target_classes + 2):
            alive = chunk[~fooled[chunk.cpu()].to(x.device)]
            if len(alive) == 0:
                break
            check_cancelled()
            atk.target_class = target_class
            counted.reset()
            adv = atk.attack_single_run_targeted(x[alive], y[alive], use_rand_start=False).detach()
            with torch.no_grad():
                hit = net(adv).argmax(1) != y[alive]
            d = (adv - x[alive]).flatten(1)
            hit &= (d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)) <= eps   # perturb's check
            a_cpu = alive.cpu()
            fb[a_cpu] += -(-counted.fwd_bwd // len(alive))
            fw[a_cpu] += -(-counted.fwd // len(alive)) + 1
            fooled[a_cpu[hit.cpu()]] = True
            out[alive[hit]] = adv[hit]
    return StageResult(fooled, out, fb, fw)


def run_stage(name: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, eps: float,
              norm: str, seed: int, n_classes: int, *, batch_rows: int = 256, square_queries: int | None = None) -> StageResult:
    """One stage of ``STAGES`` on (x, y), per image and batch-free, with the stage's settings."""
    kw = STAGES[name].settings(n_classes, SQUARE_QUERIES if square_queries is None else square_queries)
    if name.startswith("apgd-ce"):
        return apgd_stage(net, x, y, ids, eps=eps, norm=norm, seed=seed, steps=kw["steps"],
                          restarts=kw["n_restarts"], rho=kw["rho"], batch_rows=batch_rows, stage="apgd-ce")
    if name == "apgd-t":
        return apgd_stage(net, x, y, ids, eps=eps, norm=norm, seed=seed, steps=kw["steps"],
                          restarts=kw["n_restarts"], rho=kw["rho"], n_targets=kw["n_classes"] - 1,
                          batch_rows=batch_rows, stage="apgd-t")
    if name == "fab-t":
        return _fab_stage(net, x, y, ids, eps, norm, seed, n_classes, batch_rows)
    if norm == "Linf":
        return square_linf(net, x, y, ids, eps=eps, seed=seed, queries=kw["n_queries"], p_init=kw["p_init"],
                           batch_rows=batch_rows)
    return square_l2(net, x, y, ids, eps=eps, seed=seed, queries=kw["n_queries"], p_init=kw["p_init"])


@dataclass
class ProtocolResult:
    """Per image: the adversarial example, the stage index that broke it (-1: none) and cost."""
    x_adv: torch.Tensor          # [N, C, H, W] on the model's device
    broken: torch.Tensor         # int64 [N] (CPU): index into the stage list, -1 if robust
    fwd_bwd: torch.Tensor        # int64 [N] (CPU)
    fwd: torch.Tensor            # int64 [N] (CPU)


def run_stages(model: nn.Module, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor,
               stages: tuple[str, ...], eps: float, norm: str, seed: int, n_classes: int, *,
               batch_size: int = 256, progress: bool = False,
               square_queries: int | None = None, sample_ids: torch.Tensor | None = None,
               result: ProtocolResult | None = None) -> torch.Tensor:
    """Run the stages in order, each only on the points still robust after the previous ones.

    Every stage is per image and batch-free (``run_stage``): an image's outcome depends only
    on (model, image, label, eps, norm, seed, its id), not on the batch or what else is attacked.

    Args:
        model: an ``AttackModel`` in eval mode, on the device of x.
        robust: bool [N], the points to attack (clean-correct ones); updated in place.
        sample_ids: the images' stable ids [N] (default arange(N)): they seed every draw.
        result: filled with the per-image stage index and cost when given.

    Shape:
        x: [N, C, H, W] contiguous in [0, 1]; y: [N]. Returns x_adv [N, C, H, W].
    """
    ids = torch.arange(len(x)) if sample_ids is None else sample_ids.cpu()
    x_adv = x.clone()
    broken = torch.full((len(x),), -1, dtype=torch.long)
    fb, fw = torch.zeros(len(x), dtype=torch.long), torch.zeros(len(x), dtype=torch.long)
    for k, name in enumerate(stages):
        if n_classes < STAGES[name].min_classes:
            # Skipping a stage would leave a number labelled with an attack that did not run.
            raise ValueError(f"{name} needs >= {STAGES[name].min_classes} classes (its DLR loss reads "
                             f"the 4th largest logit), got {n_classes}: use apgd-ce or pgd-K")
        idx = robust.nonzero().flatten()
        if len(idx) == 0:
            break
        check_cancelled()
        res = run_stage(name, model, x[idx], y[idx], ids[idx.cpu()], eps, norm, seed, n_classes,
                        batch_rows=batch_size, square_queries=square_queries)
        i_cpu = idx.cpu()
        fb[i_cpu] += res.fwd_bwd
        fw[i_cpu] += res.fwd
        hit = res.fooled.to(idx.device)
        x_adv[idx[hit]] = res.x_adv[hit]
        robust[idx[hit]] = False
        broken[i_cpu[res.fooled]] = k
        log.info("%s: %d -> %d robust points", name, len(idx), int(robust.sum()))
    if result is not None:
        result.x_adv, result.broken, result.fwd_bwd, result.fwd = x_adv, broken, fb, fw
    return x_adv


def reference_autoattack(model: nn.Module | Callable, x: torch.Tensor, y: torch.Tensor, eps: float,
                         norm: str = "Linf", seed: int = 0, *, n_classes: int | None = None,
                         square_queries: int | None = None,
                         protocol: tuple[str, ...] = STANDARD) -> torch.Tensor:
    """The reference: torchattacks' own ``MultiAttack`` over the published standard stages.

    APGD-CE 100 it, APGD-T 100 it x 9 targets, FAB multi-targeted 9 targets, Square 5000
    queries, all with the same explicit seed, on the whole batch at once (no early filtering
    beyond MultiAttack's own). For cross-checking ``run_attack(..., "autoattack")``;
    ``protocol=ROBUSTVLM`` gives the reference of ``autoattack-fast``.

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
                for s in protocol if n_classes >= STAGES[s].min_classes]
        adv = torchattacks.MultiAttack(atks)(xd, yd)
    return adv.detach().to(x.device)
