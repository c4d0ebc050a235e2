"""Prompt templates shared by the real-data tasks."""
from __future__ import annotations

GENERIC_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.",
    "a bright photo of a {}.", "a low resolution photo of a {}.", "a good photo of a {}.",
)
