"""Attacks: one record per attack (``ATTACKS``) over torchattacks and our own PGD, and the checks
of auto-attack's ``checks.py``.

Public verbs: ``parse_attack`` (user input -> a validated ``AttackSpec``; the one validation),
``attack_outcome`` (per image: x_adv, the stage that broke it, cost) and its thin wrapper
``run_attack``, ``attack_cost``, ``check_logits`` / ``check_gradients`` and
``reference_autoattack``; the records ``ATTACKS`` (with ``find_attack``, ``ATTACK_NAMES``,
``attack_help``, ``attack_table``) that the UI, the CLI and the bench derive their lists from.
Images are float in [0, 1] (NCHW); models map them to logits.

Building blocks used by other packages are imported from their modules:
``attacks.safety.attack_context``, ``attacks.gradient.pgd`` / ``bucketed``, ``attacks.stages``.
"""
from __future__ import annotations

from explorer.core.cancel import Cancelled

from .records import (
    ATTACK_NAMES,
    ATTACKS,
    AttackRecord,
    attack_cost,
    attack_help,
    attack_table,
    find_attack,
    parse_attack,
    validate_attack,
)
from .run import AttackOutcome, attack_outcome, run_attack
from .safety import check_gradients, check_logits
from .stages import reference_autoattack

__all__ = [
    "ATTACKS", "ATTACK_NAMES", "AttackOutcome", "AttackRecord", "Cancelled", "attack_cost",
    "attack_help", "attack_outcome",
    "attack_table", "check_gradients", "check_logits", "find_attack", "parse_attack",
    "reference_autoattack", "run_attack", "validate_attack",
]
