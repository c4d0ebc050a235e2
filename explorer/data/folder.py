"""Image-folder tasks: ``folder:/root`` with one sub-folder per class (its name = class name)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .task import Task
from .templates import GENERIC_TEMPLATES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """An image file as [3,H,W] float in [0,1]; a corrupt file raises ``ValueError``."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size:
                im = im.resize((size, size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{Path(path).name} is not a readable image: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@lru_cache(maxsize=8)
def folder_task(root: str, size: int = 224) -> Task:
    """A task over ``root/<class>/*.png``; ``split`` is ignored (the folder is the eval set)."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} does not exist")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"image folder {base} needs at least two class sub-folders")
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((base / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]

    def loader(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = np.random.default_rng(seed).permutation(len(files))[:n]
        xs = torch.stack([load_image(files[j][0], size) for j in order])
        return xs, torch.tensor([files[j][1] for j in order])

    names = tuple(c.replace("_", " ") for c in classes)
    return Task(f"folder:{root}", names, GENERIC_TEMPLATES, loader, splits=("test", "train"),
                description=f"{len(files)} images in {len(classes)} classes from {base}")
