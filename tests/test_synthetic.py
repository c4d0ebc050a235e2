"""The procedural corpus: determinism, ranges, balance, held-out splits, captions, tasks."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from explorer.data import get_task, task_names
from explorer.data import synthetic as S


@pytest.mark.parametrize("name", ["shapes", "colors", "shapes-shifted"])
def test_task_registered_and_deterministic(name):
    task = get_task(name)
    assert name in task_names()
    assert set(task.splits) == {"train", "test"}
    assert all(t.count("{}") == 1 for t in task.templates) and len(task.templates) >= 3
    x1, y1 = task.load("test", 40, seed=3)
    x2, y2 = task.load("test", 40, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (40, 3, 32, 32) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert 0.0 <= x1.min() and x1.max() <= 1.0
    assert int(y1.min()) >= 0 and int(y1.max()) < len(task.classnames)
    x3, _ = task.load("test", 40, seed=4)
    assert not torch.equal(x1, x3)


def test_shapes_task_has_enough_balanced_classes():
    task = get_task("shapes")
    assert len(task.classnames) >= 8
    assert get_task("shapes-shifted").classnames == task.classnames
    _, y = task.load("train", 103, seed=0)
    counts = torch.bincount(y, minlength=len(task.classnames))
    assert counts.max() - counts.min() <= 1


def test_colors_task_balanced():
    _, y = get_task("colors").load("test", S.BLOCK, seed=0)   # a whole block of the nested test split
    assert torch.equal(torch.bincount(y), torch.full((len(S.COLORS),), S.BLOCK // len(S.COLORS)))


def _hashes(x: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in x}


def test_splits_and_corpus_disjoint():
    task = get_task("shapes")
    train, _ = task.load("train", 200, seed=0)
    test, _ = task.load("test", 200, seed=0)
    corpus, _ = next(S.caption_batches(200, seed=0))
    assert not _hashes(train) & _hashes(test)
    assert not _hashes(corpus) & _hashes(test)
    # streams are keyed by split: the same seed never yields the same draws
    a = S.stream_rng("shapes", "train", 0).integers(0, 2**31, 8)
    b = S.stream_rng("shapes", "test", 0).integers(0, 2**31, 8)
    assert not np.array_equal(a, b)


def test_shifted_style_differs_from_clean():
    scenes = S.sample_scenes(64, S.stream_rng("shapes", "test", 0))
    clean, shifted = S.render(scenes, "clean"), S.render(scenes, "shifted")
    # clean backgrounds are flat: the corner pixel equals its neighbour; shifted ones are noisy
    flat = (clean[:, :, 0, 0] - clean[:, :, 0, 1]).abs().amax(1)
    noisy = (shifted[:, :, 0, 0] - shifted[:, :, 0, 1]).abs().amax(1)
    assert (flat < 1e-6).float().mean() > 0.9 and noisy.mean() > 0.02
    with pytest.raises(ValueError, match="^style must be 'clean' or 'shifted', got 'sketch'$"):
        S.render(scenes, "sketch")


def test_shape_factor_changes_pixels_and_mask_is_centred():
    n = len(S.SHAPES)
    base = S.sample_scenes(n, np.random.default_rng(0))
    scenes = S.Scenes(shape=np.arange(n), color=np.zeros(n, int), pattern=np.zeros(n, int),
                      background=np.zeros(n, int), size=np.ones(n, int), position=np.zeros(n, int),
                      seed=base.seed)
    imgs = S.render(scenes)
    assert len(_hashes(imgs)) == n
    # a large centred red shape on black: red mass at the centre, dark corners
    assert (imgs[:, 0, 14:18, 14:18].mean((1, 2)) > 0.3).sum() >= n - 2  # ring/crescent may be hollow there
    assert imgs[:, :, 0, 0].max() < 0.2


def test_captions_mention_the_factors():
    rng = np.random.default_rng(0)
    scenes = S.sample_scenes(400, rng)
    caps = S.captions(scenes, rng)
    assert len(caps) == 400 and len(set(caps)) > 100
    for i, cap in enumerate(caps):
        words = set(cap.rstrip(".").split())
        shape, colour = S.SHAPES[scenes.shape[i]], list(S.COLORS)[scenes.color[i]]
        assert words & (set(S.SHAPES) | set(S.COLORS) | set(S.SIZES) | set(S.PATTERNS) | {"shape"})
        # named factors are the scene's own: no other shape or colour word appears
        assert not words & (set(S.SHAPES) - {shape}), cap
        assert not words & (set(S.COLORS) - {colour}), cap
    shape_named = np.mean([S.SHAPES[scenes.shape[i]] in c for i, c in enumerate(caps)])
    assert shape_named > 0.8
    assert any(c.rstrip(".") in S.SHAPES or c.startswith("a ") and len(c.split()) == 2 for c in caps)
    assert any(" on " in c or " at the " in c for c in caps)


def test_render_is_fast_and_examples_are_written(tmp_path):
    import time

    from PIL import Image

    t = time.perf_counter()
    S.render(S.sample_scenes(2000, np.random.default_rng(1)))
    assert time.perf_counter() - t < 10
    paths = S.render_examples(tmp_path, n=12)
    assert len({p.name for p in paths}) == 12
    img = Image.open(paths[0])
    assert img.size == (32, 32) and img.mode == "RGB"
    shape, colour = paths[0].stem.split("_")
    assert shape in S.SHAPES and colour in S.COLORS


@pytest.mark.parametrize("name", ["shapes", "shapes-mixed"])
def test_render_too_large_for_free_memory_is_refused_before_rendering(name, monkeypatch):
    """``--n 99999999`` once died in the allocator (a traceback, 1.6 TB asked for); now it is
    refused from the measured per-image bound before anything is drawn."""
    free = 10 * S.RENDER_BYTES_PER_IMAGE
    monkeypatch.setattr("explorer.zoo.flatload.free_bytes", lambda device: free)
    with pytest.raises(ValueError, match=re.escape("n=11 synthetic images need about 0.0 GiB of host memory to "
                                                   "render, but 0.0 GiB is free; use a smaller n")):
        get_task(name).load("test", 11, 0)
    x, _ = get_task(name).load("test", 10, 0)
    assert x.shape == (10, 3, 32, 32)
