"""The procedural scene renderer: styles, factors, speed and the memory bound checked before a render."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from explorer.data import get_task
from explorer.data import synthetic_scenes as R
from explorer.data import synthetic_tasks as S


def _hashes(x: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in x}


def test_shifted_style_differs_from_clean():
    scenes = R.sample_scenes(64, S.stream_rng("shapes", "test", 0))
    clean, shifted = R.render(scenes, "clean"), R.render(scenes, "shifted")
    # clean backgrounds are flat: the corner pixel equals its neighbour; shifted ones are noisy
    flat = (clean[:, :, 0, 0] - clean[:, :, 0, 1]).abs().amax(1)
    noisy = (shifted[:, :, 0, 0] - shifted[:, :, 0, 1]).abs().amax(1)
    assert (flat < 1e-6).float().mean() > 0.9 and noisy.mean() > 0.02
    with pytest.raises(ValueError, match="^style must be 'clean' or 'shifted', got 'sketch'$"):
        R.render(scenes, "sketch")


def test_shape_factor_changes_pixels_and_mask_is_centred():
    n = len(R.SHAPES)
    base = R.sample_scenes(n, np.random.default_rng(0))
    scenes = R.Scenes(shape=np.arange(n), color=np.zeros(n, int), pattern=np.zeros(n, int),
                      background=np.zeros(n, int), size=np.ones(n, int), position=np.zeros(n, int),
                      seed=base.seed)
    imgs = R.render(scenes)
    assert len(_hashes(imgs)) == n
    # a large centred red shape on black: red mass at the centre, dark corners
    assert (imgs[:, 0, 14:18, 14:18].mean((1, 2)) > 0.3).sum() >= n - 2  # ring/crescent may be hollow there
    assert imgs[:, :, 0, 0].max() < 0.2


def test_render_is_fast():
    import time

    t = time.perf_counter()
    R.render(R.sample_scenes(2000, np.random.default_rng(1)))
    assert time.perf_counter() - t < 10


@pytest.mark.parametrize("name", ["shapes", "shapes-mixed"])
def test_render_too_large_for_free_memory_is_refused_before_rendering(name, monkeypatch):
    """``--n 99999999`` once died in the allocator (a traceback, 1.6 TB asked for); now it is
    refused from the measured per-image bound before anything is drawn."""
    free = 10 * R.RENDER_BYTES_PER_IMAGE
    monkeypatch.setattr("explorer.zoo.flatload.free_bytes", lambda device: free)
    with pytest.raises(ValueError, match=re.escape("n=11 synthetic images need about 0.0 GiB of host memory to "
                                                   "render, but 0.0 GiB is free; use a smaller n")):
        get_task(name).load("test", 11, 0)
    x, _ = get_task(name).load("test", 10, 0)
    assert x.shape == (10, 3, 32, 32)

