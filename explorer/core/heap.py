"""Give the C heap's freed pages back to the OS (glibc ``malloc_trim``).

glibc keeps freed blocks smaller than its mmap threshold inside the process heap, and the
threshold rises to 32 MiB as soon as one large block is freed. Every tensor under 32 MiB a forward
pass or a checkpoint loader frees then stays resident: measured on ViT-B/32, 0.2 GiB after the
random-init model is bound to the flat theta (``resident.load_base``), and 0.17 GiB after one
60-prompt text-tower forward (``zeroshot.build_text_head``). ``malloc_trim(0)`` returns those
pages (a few milliseconds); the blocks stay allocatable.
"""
from __future__ import annotations

import ctypes
import functools
import platform


def release_freed_heap() -> bool:
    """Return the C heap's freed pages to the OS: glibc ``malloc_trim(0)``.

    Returns True when it ran (glibc), False elsewhere (musl, macOS, Windows: a no-op).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None
