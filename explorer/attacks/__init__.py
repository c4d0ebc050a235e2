"""Attack registry over torchattacks, with the fixes the frontier needs.

Public API: ``ATTACK_NAMES``, ``validate_attack``, ``run_attack``, ``attack_cost``,
``reference_autoattack`` and the sanity checks ``check_logits`` / ``check_gradients``.
Images are float in [0, 1] (NCHW); models map them to logits.
"""
from __future__ import annotations

from .gradient import AttackCancelled, bucketed, fgsm, pgd, project
from .registry import ATTACK_NAMES, attack_cost, pgd_steps, run_attack, validate_attack
from .safety import AttackModel, attack_context, check_gradients, check_logits
from .stages import STAGES, build_stage, reference_autoattack

__all__ = [
    "ATTACK_NAMES", "AttackCancelled", "AttackModel", "STAGES", "attack_context", "attack_cost",
    "bucketed", "build_stage", "check_gradients", "check_logits", "fgsm", "pgd", "pgd_steps", "project",
    "reference_autoattack", "run_attack", "validate_attack",
]
