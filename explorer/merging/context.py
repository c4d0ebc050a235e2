"""Preparers: methods that need more than the task vectors (calibration gradients, posteriors).

``PREPARERS[name](engine, vector_names, spec) -> dict`` computes (and caches) what method
``name`` reads from ``MergeInputs.context``. It runs before each merge, so it must return a
cached result quickly once computed for a setting; changing alpha or keep must not recompute.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

Preparer = Callable[[Any, list[str], Any], dict]
PREPARERS: dict[str, Preparer] = {}
