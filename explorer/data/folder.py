"""Image-folder tasks: ``folder:/root``, ImageFolder-style (one sub-folder per class).

Class names: ``root/classnames.txt`` when present (one line per class sub-folder, in sorted
folder order), else ImageNet's when the sub-folders are the 1000 ImageNet WordNet ids (then with
CLIP's 80 templates), else the folder names. Images go through the model's own open_clip eval
preprocessing (resize by the model's resize mode and interpolation, centre crop to its input
size) minus the normalisation, which ``ZeroShotClassifier.forward`` applies, so the attack acts
on the [0, 1] pixels the model sees.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .task import Task
from .templates import GENERIC_TEMPLATES, clip_templates, imagenet_classnames

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CLASSNAME_FILE = "classnames.txt"
_WNID = re.compile(r"n\d{8}")


def eval_transform(size: int | tuple[int, int] = 224, resize_mode: str = "shortest",
                   interpolation: str = "bicubic"):
    """open_clip's eval transform for these settings with identity normalisation ([0, 1] out)."""
    from open_clip import image_transform

    return image_transform(size, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                           resize_mode=resize_mode, interpolation=interpolation)


def load_preprocessed(path: Path, transform) -> torch.Tensor:
    """One image through ``transform``; a corrupt file, or one past PIL's decompression-bomb limit,
    raises ``ValueError`` naming it."""
    try:
        with Image.open(path) as im:
            return transform(im.convert("RGB")).clamp_(0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path.name} is not a readable image: {exc}") from exc


def folder_classnames(base: Path, classes: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, templates) for the sorted class sub-folders of ``base``."""
    name_file = base / CLASSNAME_FILE
    if name_file.exists():
        names = [n.strip() for n in name_file.read_text().splitlines() if n.strip()]
        if len(names) != len(classes):
            raise ValueError(f"{name_file} lists {len(names)} class names for {len(classes)} class folders")
        return tuple(names), GENERIC_TEMPLATES
    if len(classes) == 1000 and all(_WNID.fullmatch(c) for c in classes):
        return imagenet_classnames(), clip_templates()
    return tuple(c.replace("_", " ") for c in classes), GENERIC_TEMPLATES


@lru_cache(maxsize=8)
def folder_task(root: str, size: int | tuple[int, int] = 224, resize_mode: str = "shortest",
                interpolation: str = "bicubic") -> Task:
    """A task over ``root/<class>/<image>``; ``split`` is ignored (the folder is the eval set).

    Raises:
        FileNotFoundError: no such folder. ValueError: fewer than two classes, a class-name
        file of the wrong length.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} does not exist")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"image folder {base} needs at least two class sub-folders")
    names, templates = folder_classnames(base, classes)
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((base / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"image folder {base} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    transform = eval_transform(size, resize_mode, interpolation)

    def loader(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = np.random.default_rng(seed).permutation(len(files))[:n]
        xs = torch.stack([load_preprocessed(files[j][0], transform) for j in order])
        return xs, torch.tensor([files[j][1] for j in order])

    return Task(f"folder:{root}", names, templates, loader, splits=("test", "train"),
                sizes={"test": len(files), "train": len(files)},
                description=f"{len(files)} images in {len(classes)} classes from {base}")
