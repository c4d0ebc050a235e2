"""Prompt templates shared by the real-data tasks."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

GENERIC_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.",
    "a bright photo of a {}.", "a low resolution photo of a {}.", "a good photo of a {}.",
)


_HERE = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def imagenet_classnames() -> tuple[str, ...]:
    """ImageNet-1k class names in label order (sorted WordNet ids), as CLIP's zero-shot uses them.

    Package data (``imagenet_classes.txt``) written from open_clip 3.3.0's ``zero_shot_metadata``
    (the OpenAI CLIP notebook's cleaned names): a file of ours because that module is not
    open_clip's public API, and the head cache key hashes exactly these strings.
    """
    return tuple((_HERE / "imagenet_classes.txt").read_text().splitlines())


@lru_cache(maxsize=1)
def clip_templates() -> tuple[str, ...]:
    """The 80 prompt templates of OpenAI CLIP's ImageNet zero-shot evaluation (``{}`` = class).

    Package data (``clip_templates.txt``): open_clip keeps them as lambdas; ours are the
    ``str.format`` strings every task here uses.
    """
    return tuple((_HERE / "clip_templates.txt").read_text().splitlines())
