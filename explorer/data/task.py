"""The task record and the registry of named tasks (filled by ``synthetic_tasks`` on import).

Kept apart from the package's ``__init__`` so that the task modules (``synthetic_tasks``, ``folder``,
``tv``) import it without importing the package that imports them.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Task:
    """A zero-shot classification task.

    Attributes:
        name: registry name.
        classnames: class names in label order.
        templates: prompt templates, each with one ``{}``.
        loader: ``loader(split, n, seed) -> (images [n,3,H,W] in [0,1], labels [n] int64)``;
            the same (split, n, seed) always gives the same images, and for held-out splits
            the first k images of (split, n, seed) are (split, k, seed) for every k <= n (one
            fixed seeded order: nested evaluation sets; a point at n=64 is the first 64 images
            of the point at n=256, so a store of per-image results grows a point image by image).
        splits: the split names the loader accepts.
        description: one line for the UI and docs.
        sizes: images each split holds, for splits of fixed size (a shipped subset, a folder, a
            dataset); a split not listed has no fixed size (procedural tasks render any n).
    """

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    loader: Callable[[str, int, int], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    splits: tuple[str, ...] = ("test",)
    description: str = ""
    sizes: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)

    def check_n(self, split: str, n: int) -> None:
        """Raise ``ValueError`` (one line) unless ``split`` exists and holds at least ``n`` images;
        cheap: nothing is loaded (a page checks its n before pricing the job)."""
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; it has {list(self.splits)}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        have = self.sizes.get(split)
        if have is not None and n > have:
            where = "" if split == "test" else f" in its {split} split"
            raise ValueError(f"task {self.name!r} has {have} images{where}; n={n} is larger")

    def load(self, split: str = "test", n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed, seeded subset of ``n`` images of ``split``. Shape: [n,3,H,W] in [0,1], [n].

        Raises:
            ValueError: no such split, n < 1, or fewer than n images in the split (checked before
                loading where the size is known, ``sizes``; after, for any loader that returns fewer).
        """
        self.check_n(split, n)
        x, y = self.loader(split, n, seed)
        if len(y) < n:
            raise ValueError(f"task {self.name!r} has {len(y)} images; n={n} is larger")
        return x.float().clamp_(0, 1), y.long()


_FACTORIES: dict[str, Callable[[], Task]] = {}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Register a task factory under ``name`` (called lazily by ``get_task``)."""
    _FACTORIES[name] = factory
