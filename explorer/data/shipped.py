"""Grey 28x28 image subsets shipped in ``assets/data`` (the Fashion-MNIST and digits tasks).

A subset file is safetensors with ``images`` (uint8 [N, 28, 28]), ``labels`` (uint8 [N]) and
``ids`` (int [N]: the images' ids in their source). A task serves the first n of one seeded order
of a subset (``seeded_order``: the same (seed, salt) always gives the same order, so n=k is a
prefix of n=k+1: nested evaluation sets), as float pixels (``to_pixels``).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [n,28,28] -> float [n,3,28,28] in [0,1] (grey repeated over RGB: CLIP towers take RGB)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def seeded_order(count: int, seed: int, salt: int) -> np.ndarray:
    """A fixed permutation of ``range(count)`` per (seed, salt); ``salt`` tells tasks apart."""
    return np.random.default_rng(np.random.SeedSequence([int(salt), int(seed)])).permutation(count)


@lru_cache(maxsize=8)
def read_subset(path: Path, hint: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N,28,28], labels uint8 [N], ids int64 [N]) of a shipped subset.

    Raises:
        FileNotFoundError: no file at ``path`` (the line ends with ``hint``: what writes it).
    """
    from safetensors.numpy import load_file
    if not path.exists():
        raise FileNotFoundError(f"the subset {path} is missing ({hint})")
    t = load_file(str(path))
    return t["images"], t["labels"], t["ids"].astype(np.int64)


def write_subset(path: Path, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, source: str,
                 selection: str) -> Path:
    """Write a subset file (module docstring) with its provenance in the metadata; readers see it next time."""
    from safetensors.numpy import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": np.ascontiguousarray(images), "labels": np.ascontiguousarray(labels),
               "ids": ids.astype(np.int32)}, str(path), metadata={"source": source, "selection": selection})
    read_subset.cache_clear()
    return path


def first_n(images: np.ndarray, labels: np.ndarray, n: int, seed: int, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the subset's seeded order, as (pixels, int64 labels)."""
    pick = seeded_order(len(labels), seed, salt)[:n]
    return to_pixels(images[pick]), torch.from_numpy(labels[pick].astype(np.int64))
