"""Which torch device a run uses: the default, and a user's ``--device`` checked before any work.

A device string comes from a flag (``--device``) or an API argument; a typo or a CUDA device on a
machine without one must be one readable line (``error: ...`` on the CLI, before the app starts
serving), not torch's RuntimeError from deep inside the engine.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = ["PRECISIONS", "check_device", "check_precision", "default_device", "float32_precision",
           "in_own_precision"]

PRECISIONS = ("fp32", "tf32")   # how CUDA runs float32 matmuls and convolutions
F = TypeVar("F", bound=Callable[..., Any])


def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | torch.device | None) -> str | None:
    """Validate a device name; ``None`` or ``""`` (= the default device) passes as ``None``.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N`` (a ``torch.device`` of those types passes too).

    Returns:
        ``device`` as a string, or ``None`` for the default.

    Raises:
        ValueError: not a device name, a type other than cpu/cuda, CUDA asked for on a machine
            without it, or a CUDA index past the devices present.
    """
    if device is None or device == "":
        return None
    shown = str(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {shown!r}: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {shown!r}: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {shown!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {shown!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return shown


def check_precision(precision: str) -> str:
    """``precision`` when it is one of ``PRECISIONS``; ``ValueError`` naming the choices otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'tf32', got {precision!r}")
    return precision


@contextmanager
def float32_precision(precision: str) -> Iterator[None]:
    """CUDA float32 matmuls and convolutions in TF32 (``"tf32"``) or full fp32 (``"fp32"``) inside;
    the caller's two switches (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.backends.cudnn.allow_tf32``) restored after, also on an exception.

    torch's switches are process-wide: set once (as an engine's constructor did), they changed
    every later computation in the process, another engine's and the attack twin's fold check
    included. Scoped here, each piece of work runs under its own. No effect on CPU computations.

    Raises:
        ValueError: ``precision`` not in ``PRECISIONS``.
    """
    allow = check_precision(precision) == "tf32"
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def in_own_precision(method: F) -> F:
    """Run a method of an object with a ``precision`` attribute under ``float32_precision``."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with float32_precision(self.precision):
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]
