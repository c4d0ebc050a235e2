"""Evaluation tasks: a registry of named zero-shot classification tasks.

A task gives class names, prompt templates and fixed, seeded subsets of its images as
float tensors in [0, 1] (NCHW). Names: the synthetic demo tasks (``explorer.data.synthetic_tasks``),
``folder:/path/to/root`` (one sub-folder per class) and ``torchvision:NAME`` (downloaded only
when the user passes ``download=True``).
"""
from __future__ import annotations

from .task import _FACTORIES, Task, register_task

__all__ = ["Task", "get_task", "register_task", "task_names"]


def task_names() -> list[str]:
    """Names of the registered tasks (``folder:`` and ``torchvision:`` names come on top)."""
    _ensure_builtin()
    return sorted(_FACTORIES)


def get_task(name: str, download: bool = False, preprocess: dict | None = None) -> Task:
    """Look up a task by name; unknown names raise ``KeyError`` listing the valid ones.

    ``preprocess``: the model's open_clip preprocess config (``size``, ``resize_mode``,
    ``interpolation``); ``folder:`` tasks prepare their images with it (default: 224, bicubic).
    """
    _ensure_builtin()
    if name.startswith("folder:"):
        from .folder import folder_task
        p = preprocess or {}
        size = p.get("size", 224)
        return folder_task(name[len("folder:"):], tuple(size) if isinstance(size, (list, tuple)) else size,
                           p.get("resize_mode", "shortest"), p.get("interpolation", "bicubic"))
    if name.startswith("torchvision:"):
        from .tv import torchvision_task
        return torchvision_task(name[len("torchvision:"):], download=download)
    if name not in _FACTORIES:
        raise KeyError(f"unknown task {name!r}; valid: {sorted(_FACTORIES)} "
                       "or folder:PATH or torchvision:NAME")
    return _FACTORIES[name]()


def _ensure_builtin() -> None:
    # The synthetic demo tasks, Fashion-MNIST and the digits register themselves on import.
    from . import digits, fashion, synthetic_tasks  # noqa: F401
