"""Configuration: the frozen specs every result row carries (``specs``) and the readers of what a
person types into them (``parse``). Import from here: ``from explorer.config import MergeSpec``.
"""
from __future__ import annotations

from .parse import MAX_ALPHAS, eps_label, parse_alphas, parse_eps, parse_options
from .specs import (
    CODE_VERSION,
    AttackSpec,
    Defaults,
    EvalSpec,
    MergeSpec,
    Norm,
    PointSpec,
    Scope,
    SweepSpec,
    resolve_defaults,
)

__all__ = ["CODE_VERSION", "MAX_ALPHAS", "AttackSpec", "Defaults", "EvalSpec", "MergeSpec", "Norm", "PointSpec",
           "Scope", "SweepSpec", "eps_label", "parse_alphas", "parse_eps", "parse_options", "resolve_defaults"]
