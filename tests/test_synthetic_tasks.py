"""The synthetic tasks and caption corpus: determinism, ranges, balance, held-out splits, captions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.data import get_task, task_names
from explorer.data import synthetic_scenes as R
from explorer.data import synthetic_tasks as S


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
    assert torch.equal(torch.bincount(y), torch.full((len(R.COLORS),), S.BLOCK // len(R.COLORS)))


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




def test_captions_mention_the_factors():
    rng = np.random.default_rng(0)
    scenes = R.sample_scenes(400, rng)
    caps = S.captions(scenes, rng)
    assert len(caps) == 400 and len(set(caps)) > 100
    for i, cap in enumerate(caps):
        words = set(cap.rstrip(".").split())
        shape, colour = R.SHAPES[scenes.shape[i]], list(R.COLORS)[scenes.color[i]]
        assert words & (set(R.SHAPES) | set(R.COLORS) | set(R.SIZES) | set(R.PATTERNS) | {"shape"})
        # named factors are the scene's own: no other shape or colour word appears
        assert not words & (set(R.SHAPES) - {shape}), cap
        assert not words & (set(R.COLORS) - {colour}), cap
    shape_named = np.mean([R.SHAPES[scenes.shape[i]] in c for i, c in enumerate(caps)])
    assert shape_named > 0.8
    assert any(c.rstrip(".") in R.SHAPES or c.startswith("a ") and len(c.split()) == 2 for c in caps)
    assert any(" on " in c or " at the " in c for c in caps)


def test_examples_are_written(tmp_path):
    from PIL import Image

    paths = S.render_examples(tmp_path, n=12)
    assert len({p.name for p in paths}) == 12
    img = Image.open(paths[0])
    assert img.size == (32, 32) and img.mode == "RGB"
    shape, colour = paths[0].stem.split("_")
    assert shape in R.SHAPES and colour in R.COLORS
