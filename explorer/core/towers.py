"""Which tower a CLIP state-dict key belongs to: one layout fact, one place.

open_clip names every vision-tower tensor ``visual.<...>`` and everything else (the text tower,
``logit_scale``) without that prefix; vision-only releases (FARE, TeCoA, PMG-AFT) store the tower
with the prefix stripped (``zoo.layouts``' ``tower`` layout). Here in ``core`` because every layer
reads it (merging and evaluation may not import ``zoo``).
"""
from __future__ import annotations

__all__ = ["VISION_PREFIX", "is_vision", "strip_vision"]

VISION_PREFIX = "visual."


def is_vision(key: str) -> bool:
    """Whether state-dict ``key`` is a vision-tower tensor (``visual.conv1.weight``: True)."""
    return key.startswith(VISION_PREFIX)


def strip_vision(key: str) -> str:
    """``visual.conv1.weight`` -> ``conv1.weight`` (a vision-only release's key); others unchanged."""
    return key[len(VISION_PREFIX):] if is_vision(key) else key
