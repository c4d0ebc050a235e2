"""One record per attack: name (or pattern), runner, cost model, tier, help line, plain twin.

Everything that lists, checks, prices or runs an attack reads ``ATTACKS``: the UI choices and
``ATTACK_NAMES``, the CLI ``--attack`` help, ``attack_cost``, ``run_attack``'s dispatch and the
bench's plain torchattacks baseline. Adding an attack is one ``AttackRecord`` here (plus its
runner, when it is not a sequence of ``stages.STAGES``).

Tiers: ``preview`` attacks (``fgsm``, ``pgd-K``: our own, early exit, batch-independent random
starts) answer live interaction; ``reported`` ones (APGD / AutoAttack, torchattacks stages with
the published settings, see ``stages.py``) give the numbers to report.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torchattacks
from torch import nn
from tqdm.auto import tqdm

from explorer.config import AttackSpec

from .gradient import fgsm, pgd
from .safety import model_device
from .stages import ROBUSTVLM, STAGES, STANDARD, ProtocolResult, build_stage, run_stages

Tier = Literal["clean", "preview", "reported"]
MAX_PGD_STEPS = 10_000


@dataclass(frozen=True)
class RunOptions:
    """How ``run_attack`` asks a runner to work (see its docstring for each)."""
    batch_size: int = 256
    progress: bool = False
    rand_init: bool = True


# (net, x, y, sample_ids, spec, n_classes, options) -> ProtocolResult. ``net`` is an
# ``AttackModel`` in ``attack_context``; x [M, C, H, W] in [0, 1] holds the clean-correct rows only
# (any device), y [M], sample_ids [M] on the CPU. The result's x_adv [M, C, H, W] is on the model's
# device; ``broken`` indexes the record's ``stage_names``.
Runner = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, AttackSpec, int, RunOptions],
                  ProtocolResult]
# (model, spec, n_classes) -> the torchattacks object a plain script would use (the bench baseline).
PlainBuilder = Callable[[nn.Module, AttackSpec, int], torchattacks.attack.Attack]


@dataclass(frozen=True)
class AttackRecord:
    """An attack as data. ``name`` is a registry name, or a pattern ending in ``-K`` (an integer
    parameter in [1, ``max_k``]) such as ``pgd-K``."""
    name: str                                  # "fgsm", or a pattern such as "pgd-K"
    tier: Tier                                 # clean | preview | reported
    help: str                                  # one line for the CLI and the UI
    run: Runner | None                         # None: no attack (x is returned)
    cost: Callable[[int], int]                 # K (1 without a parameter) -> fwd+bwd per robust image
    examples: tuple[str, ...] = ()             # concrete names offered as choices (default: name)
    example: str = ""                          # patterns: the instance error messages suggest
    stages: tuple[str, ...] = ()               # the torchattacks stages a protocol runs, in order
    plain: PlainBuilder | None = None          # the bench's baseline; None: bench refuses it
    max_k: int = MAX_PGD_STEPS                 # patterns only
    pattern: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name.endswith("-K"):
            object.__setattr__(self, "pattern", re.compile(re.escape(self.name[:-1]) + r"(\d+)"))

    @property
    def choices(self) -> tuple[str, ...]:
        return self.examples or (self.name,)

    def stage_names(self, spec: AttackSpec) -> tuple[str, ...]:
        """The stages an outcome's ``broken`` indexes: the protocol's, or the attack itself."""
        return self.stages or ((spec.name,) if self.run is not None else ())


def _gradient_runner(steps_of: Callable[[AttackSpec], int | None]) -> Runner:
    """Runner of our own gradient attacks: FGSM (``steps_of`` gives None) or K-step PGD, by batch.
    One stage (the attack itself); an image counts as broken when its final iterate is
    misclassified (one forward per image to check)."""
    def run(net, x, y, ids, spec, n_classes, o):
        device, k = model_device(net), steps_of(spec)
        out, broken = [], torch.full((len(x),), -1, dtype=torch.long)
        fb = torch.zeros(len(x), dtype=torch.long)
        for rows in tqdm(torch.arange(len(x)).split(o.batch_size), desc=spec.name, disable=not o.progress,
                         leave=False):
            xb, yb = x[rows].to(device).contiguous(), y[rows].to(device)
            passes = torch.zeros(len(rows), dtype=torch.long)
            adv = (fgsm(net, xb, yb, spec.eps, spec.norm, passes=passes) if k is None else
                   pgd(net, xb, yb, spec.eps, spec.norm, k, rand_init=o.rand_init, seed=spec.seed,
                       sample_ids=ids[rows], passes=passes))
            with torch.no_grad():
                hit = (net(adv).argmax(1) != yb).cpu()
            broken[rows[hit]] = 0
            fb[rows] = passes
            out.append(adv)
        x_adv = torch.cat(out) if out else x.to(device)
        return ProtocolResult(x_adv, broken, fb, torch.ones(len(x), dtype=torch.long))
    return run


def _stages_runner(stages: tuple[str, ...]) -> Runner:
    """Runner of a protocol: the stages in order, each on the points still robust, per image."""
    def run(net, x, y, ids, spec, n_classes, o):
        device = model_device(net)
        # Contiguous leaves: torchattacks' FAB .view()s gradients shaped like its input.
        xs = x.to(device).contiguous(memory_format=torch.contiguous_format)
        alive = torch.ones(len(x), dtype=torch.bool, device=device)
        # torchattacks' FAB and L2 Square loop internally: AttackModel checks the cancel token
        # before every forward, so a Stop acts within one of their steps.
        res = ProtocolResult(xs, alive, alive, alive)
        run_stages(net, xs, y.to(device), alive, stages, spec.eps, spec.norm, spec.seed,
                   n_classes, batch_size=o.batch_size, progress=o.progress, sample_ids=ids, result=res)
        return res
    return run


def _plain_stages(stages: tuple[str, ...]) -> PlainBuilder:
    """The same published stage settings applied the plain way (every image, MultiAttack)."""
    def build(model, spec, n_classes):
        atks = [build_stage(s, model, spec.eps, spec.norm, spec.seed, n_classes) for s in stages]
        return atks[0] if len(atks) == 1 else torchattacks.MultiAttack(atks)
    return build


def _plain_pgd(model: nn.Module, spec: AttackSpec, n_classes: int) -> torchattacks.attack.Attack:
    """torchattacks' PGD with our step rule (2.5 eps / K) and a random start."""
    k = pgd_steps(spec.name)
    return torchattacks.PGD(model, eps=spec.eps, alpha=2.5 * spec.eps / k, steps=k, random_start=True)


def _protocol(name: str, stages: tuple[str, ...], help: str, plain: bool = True) -> AttackRecord:
    return AttackRecord(name, "reported", help, _stages_runner(stages),
                        cost=lambda k: sum(STAGES[s].cost for s in stages), stages=stages,
                        plain=_plain_stages(stages) if plain else None)


def pgd_steps(name: str) -> int | None:
    """K for ``pgd-K``, None for any other name."""
    m = ATTACKS["pgd-K"].pattern.fullmatch(name)
    return int(m.group(1)) if m else None


ATTACKS: dict[str, AttackRecord] = {r.name: r for r in [
    AttackRecord("none", "clean", "no attack: clean accuracy only", None, cost=lambda k: 0),
    AttackRecord("fgsm", "preview", "one signed-gradient step of size eps (Goodfellow et al. 2015, "
                 "arXiv:1412.6572)", _gradient_runner(lambda spec: None), cost=lambda k: 1,
                 plain=lambda m, spec, c: torchattacks.FGSM(m, eps=spec.eps)),
    AttackRecord("pgd-K", "preview", "K steps of PGD (step 2.5 eps/K, seeded random start, early exit; "
                 "Madry et al. 2018, arXiv:1706.06083)",
                 _gradient_runner(lambda spec: pgd_steps(spec.name)), cost=lambda k: k,
                 examples=("pgd-2", "pgd-5", "pgd-10", "pgd-20"), example="pgd-10", plain=_plain_pgd),
    _protocol("apgd-ce", ("apgd-ce",), "APGD on the CE loss, 100 iterations, 1 restart (standard "
              "AutoAttack's first stage; Croce & Hein 2020, arXiv:2003.01690)"),
    _protocol("apgd-t", ("apgd-t",), "targeted APGD on the DLR loss, 9 targets x 100 iterations"),
    _protocol("autoattack-fast", ROBUSTVLM, "APGD-CE (100 iterations, 5 restarts), then APGD-T "
              "(9 targets x 100) on what survives: the RobustVLM protocol (Schlarmann et al. 2024)"),
    # The bench's plain path attacks every image with every stage: too slow to be a baseline.
    _protocol("autoattack", STANDARD, "standard AutoAttack: APGD-CE, APGD-T, FAB-T (9 targets), Square "
              "(5000 queries), each stage on what survives", plain=False),
]}

# Every concrete name offered as a choice (UI dropdowns, tests), in registry order.
ATTACK_NAMES: list[str] = [c for r in ATTACKS.values() for c in r.choices]


def _valid_names() -> str:
    return ", ".join(f"{r.name} (K>=1, e.g. {r.example})" if r.pattern else r.name
                     for r in ATTACKS.values())


def find_attack(name: str) -> AttackRecord:
    """The record of ``name`` (a registry name, or an instance of a pattern such as ``pgd-10``).

    Raises:
        ValueError: unknown name (the message lists the valid ones) or a parameter out of range.
    """
    if name in ATTACKS and ATTACKS[name].pattern is None:
        return ATTACKS[name]
    for r in ATTACKS.values():
        if r.pattern is not None and name.startswith(r.name[:-1].rstrip("-")):
            m = r.pattern.fullmatch(name)
            if m is None or not 1 <= int(m.group(1)) <= r.max_k:
                raise ValueError(f"attack {name!r}: use {r.name} with an integer K in [1, {r.max_k}], "
                                 f"e.g. {r.example}")
            return r
    raise ValueError(f"unknown attack {name!r}; valid names: {_valid_names()}")


def parse_attack(name: str, eps: str | float, norm: str = "Linf", seed: int = 0) -> AttackSpec:
    """The attack of user input (CLI flags, UI values), validated: the one place that checks it.

    ``eps`` takes ``"4/255"`` or a number (pixel units; at most 1 for Linf, 64 for L2).

    Raises:
        ValueError: unknown attack name, K out of range, bad eps or norm (one readable line).
    """
    name = (name or "").strip()
    find_attack(name)
    return AttackSpec(name=name, eps=eps, norm=norm, seed=int(seed))   # checks eps and norm


def validate_attack(spec: AttackSpec) -> AttackRecord:
    """Check a spec built in code (its eps and norm were checked when it was made); its record."""
    return find_attack(spec.name)


def attack_cost(spec: AttackSpec) -> int:
    """Rough forward+backward passes per still-robust image (forward-only counted as 1/3).

    Worst case: a point that survives every stage. Used for time estimates and caps only.
    """
    record = find_attack(spec.name)
    return 0 if spec.eps == 0 else record.cost(pgd_steps(spec.name) or 1)


def attack_help() -> str:
    """The ``--attack`` help line: every name or pattern, grouped by tier."""
    tiers: dict[str, list[str]] = {}
    for r in ATTACKS.values():
        tiers.setdefault(r.tier, []).append(r.name)
    return "; ".join(f"{tier}: {' | '.join(names)}" for tier, names in tiers.items())


def attack_table() -> str:
    """One line per attack (name, tier, help), for ``--help`` epilogs."""
    width = max(len(n) for n in ATTACKS)
    return "attacks:\n" + "\n".join(f"  {r.name:{width}s}  {r.tier:8s}  {r.help}" for r in ATTACKS.values())
