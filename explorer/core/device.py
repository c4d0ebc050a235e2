"""Which torch device a run uses: the default, and a user's ``--device`` checked before any work.

A device string comes from a flag (``--device``) or an API argument; a typo or a CUDA device on a
machine without one must be one readable line (``error: ...`` on the CLI, before the app starts
serving), not torch's RuntimeError from deep inside the engine.
"""
from __future__ import annotations

import torch

__all__ = ["check_device", "default_device"]


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
