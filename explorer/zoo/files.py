"""Reading a checkpoint file a page user named or uploaded: regular files only, size-capped,
inside an allowed folder, and refused with one generic line.

A served app must not let its users probe the server's files. So a checkpoint file is

- named relative to a folder the operator allowed (``resolve_in_folder``; the resolved path,
  symlinks followed, must stay inside the resolved folder), or uploaded (Gradio's cache);
- opened with ``O_NONBLOCK | O_NOFOLLOW`` and checked with ``fstat`` on the open descriptor
  (``S_ISREG`` and a size cap) before one byte is read, so a FIFO or device named ``x.pt``
  returns at once instead of blocking, and a file swapped after a check is still the one checked;
- parsed from the bytes read by its suffix (``.safetensors``: safetensors; ``.pt/.pth/.bin``:
  ``torch.load(weights_only=True)``); any other suffix is refused before opening.

Every refusal on the way is :class:`CheckpointRefused` with the same message, whatever the cause
(no such file, outside the folder, not a regular file, too large, not parseable): a page user
learns nothing about which server paths exist or what a file holds. The cause is logged.
"""
from __future__ import annotations

import io
import logging
import os
import stat
from pathlib import Path

import torch

from .checkpoints import CheckpointError, unwrap_state_dict
from .manifest import LOCAL_SUFFIXES

log = logging.getLogger(__name__)


class CheckpointRefused(CheckpointError):
    """A checkpoint file refused before its tensors were known; the message is always ``REFUSED``."""


def refused_message(max_bytes: int) -> str:
    """The one line every refusal shows (it names the rules, never the file or the cause)."""
    return (f"Checkpoint refused: not a readable checkpoint file ({', '.join(LOCAL_SUFFIXES)}, "
            f"a regular file of at most {max_bytes / 2**20:.0f} MB, inside the allowed folder or uploaded).")


def _refuse(max_bytes: int, why: str, *args: object) -> CheckpointRefused:
    log.info("checkpoint refused: " + why, *args)
    return CheckpointRefused(refused_message(max_bytes))


def resolve_in_folder(root: str | Path, name: str, max_bytes: int) -> Path:
    """``root / name`` resolved (symlinks followed); refused unless it stays inside ``root``.

    Raises:
        CheckpointRefused: an empty or absolute name, or a path that leaves ``root``.
    """
    name = (name or "").strip()
    if not name or os.path.isabs(name) or "\x00" in name:
        raise _refuse(max_bytes, "name %r is empty or absolute", name)
    base = Path(root).resolve()
    path = (base / name).resolve()
    if path == base or not path.is_relative_to(base):
        raise _refuse(max_bytes, "name %r resolves outside %s", name, base)
    return path


def read_checkpoint_file(path: str | Path, max_bytes: int) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read under the rules of the module docstring.

    Raises:
        CheckpointRefused: a suffix not in ``LOCAL_SUFFIXES``, no file, not a regular file, a
            file over ``max_bytes``, or bytes the format's loader cannot parse.
        CheckpointError: a parsed file that holds no state dict (names no path).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise _refuse(max_bytes, "suffix of %s", path)
    data = _read_regular(path, max_bytes)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load as load_bytes
            return load_bytes(data)
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:   # loader messages may echo file content: logged, never shown
        raise _refuse(max_bytes, "%s did not parse (%s: %s)", path, type(exc).__name__, exc) from None
    return unwrap_state_dict(obj, "the checkpoint")


def _read_regular(path: Path, max_bytes: int) -> bytes:
    """All bytes of a regular file of at most ``max_bytes``, checked on the open descriptor."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _refuse(max_bytes, "cannot open %s (%s)", path, type(exc).__name__) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(max_bytes, "%s is not a regular file", path)
        if st.st_size > max_bytes:
            raise _refuse(max_bytes, "%s has %d bytes (cap %d)", path, st.st_size, max_bytes)
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:   # grew while being read
                raise _refuse(max_bytes, "%s grew past the cap while read", path)
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _refuse(max_bytes, "reading %s failed (%s)", path, type(exc).__name__) from None
    finally:
        os.close(fd)
