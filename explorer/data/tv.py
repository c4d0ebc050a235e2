"""torchvision datasets as tasks: ``torchvision:CIFAR10`` etc. (download only on request)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .task import Task
from .templates import GENERIC_TEMPLATES

SUPPORTED = {"CIFAR10": "classes", "CIFAR100": "classes", "STL10": "classes", "MNIST": "classes"}


def _root() -> Path:
    return Path(os.environ.get("EXPLORER_DATA", Path.home() / ".cache" / "trade-off-explorer" / "data"))


def torchvision_task(name: str, download: bool = False) -> Task:
    """A fixed, seeded subset of a torchvision dataset; fails clearly when it is not on disk."""
    import torchvision.datasets as tvd

    if name not in SUPPORTED:
        raise KeyError(f"unsupported torchvision dataset {name!r}; supported: {sorted(SUPPORTED)}")
    cls = getattr(tvd, name)

    def make(split: str):
        kwargs = {"split": split} if name == "STL10" else {"train": split == "train"}
        try:
            return cls(str(_root()), download=download, **kwargs)
        except RuntimeError as exc:
            raise FileNotFoundError(f"{name} is not in {_root()}; pass download=True (needs network) "
                                    f"or place it there: {exc}") from exc

    probe = make("test")
    classes = tuple(getattr(probe, "classes", [str(i) for i in range(10)]))

    def loader(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds = probe if split == "test" else make(split)
        order = np.random.default_rng(seed).permutation(len(ds))[:n]
        xs, ys = [], []
        for j in order:
            img, label = ds[int(j)]
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            xs.append(torch.from_numpy(arr).permute(2, 0, 1))
            ys.append(int(label))
        return torch.stack(xs), torch.tensor(ys)

    return Task(f"torchvision:{name}", classes, GENERIC_TEMPLATES, loader, splits=("test", "train"),
                sizes={"test": len(probe)},
                description=f"torchvision {name}")
