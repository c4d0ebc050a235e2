"""Freed heap goes back to the OS after loading and after a text head (explorer.core.heap)."""
from __future__ import annotations

import gc
import os
import platform

import pytest
import torch

from explorer.core import heap
from explorer.engine import resident
from explorer.engine.frontier import Engine
from explorer.studies.scale_bench import _status_kib

MiB = 2 ** 20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or any(k.startswith("MALLOC_") for k in os.environ),
                    reason="glibc's default malloc settings only")
def test_freed_heap_blocks_are_returned():
    big = torch.empty(8 * MiB)     # 32 MiB freed: glibc's mmap threshold rises to 32 MiB
    del big
    blocks = [torch.ones(MiB // 4) for _ in range(128)]   # 128 x 1 MiB, now from the heap
    keep = blocks[-1]                                     # holds the heap top: no automatic trim
    del blocks
    gc.collect()
    before = _status_kib("VmRSS") * 1024
    assert heap.release_freed_heap() is True
    after = _status_kib("VmRSS") * 1024
    assert before - after >= 100 * MiB, ((before - after) / MiB)
    assert float(keep.sum()) == MiB // 4


def test_engine_releases_after_the_base_and_each_vector(tiny_zoo, monkeypatch):
    calls = []
    real = resident.release_freed_heap
    monkeypatch.setattr(resident, "release_freed_heap", lambda: calls.append(1) or real())
    eng = Engine(tiny_zoo, device="cpu")
    assert len(calls) == 1
    eng.vector("natural")
    eng.vector("robust")
    assert len(calls) == 3
