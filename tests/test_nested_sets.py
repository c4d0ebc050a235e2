"""Nested evaluation sets: ``EvalSpec(n=k)`` is the first k images of one seeded order, for every
task kind (synthetic, folder, torchvision), so a point at n=16 is the first 16 images of n=256."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.data import get_task
from explorer.data import synthetic_scenes as R
from explorer.data import synthetic_tasks as S


def _assert_nested(load, sizes=(16, 64, 256)) -> None:
    sets = [load(n) for n in sizes]
    for (xs, ys), (xl, yl) in zip(sets, sets[1:]):
        assert torch.equal(xl[:len(xs)], xs) and torch.equal(yl[:len(ys)], ys)
    x, _ = sets[-1]
    assert len({img.numpy().tobytes() for img in x}) == len(x)   # no image twice


@pytest.mark.parametrize("name", ["shapes", "colors", "shapes-shifted", "shapes-mixed"])
def test_synthetic_test_sets_nest_image_for_image(name):
    task = get_task(name)
    _assert_nested(lambda n: task.load("test", n, 0))
    # another seed is another order, not a shifted copy
    assert not torch.equal(task.load("test", 16, 1)[0], task.load("test", 16, 0)[0])


def test_block_zero_is_the_draw_of_one_block_and_each_block_is_balanced():
    # The first BLOCK images are the single draw sample_scenes(BLOCK) always gave (stored points
    # at n=BLOCK keep their images); every whole block is class-balanced within one image.
    x, y = get_task("shapes").load("test", 2 * S.BLOCK, 0)
    scenes = R.sample_scenes(S.BLOCK, S.stream_rng("shapes", "test", 0), balance="shape")
    assert torch.equal(x[:S.BLOCK], R.render(scenes, "clean"))
    for b in range(2):
        counts = torch.bincount(y[b * S.BLOCK:(b + 1) * S.BLOCK], minlength=len(R.SHAPES))
        assert int(counts.max() - counts.min()) <= 1


def test_folder_sets_nest(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(150):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    task = get_task(f"folder:{tmp_path}", preprocess={"size": 8})
    _assert_nested(lambda n: task.load("test", n, 0), sizes=(16, 64, 300))


def test_torchvision_sets_nest(monkeypatch):
    import torchvision.datasets as tvd

    class Fake:   # a CIFAR10 on disk: 300 distinct images
        classes = [str(i) for i in range(10)]

        def __init__(self, root, download=False, train=False):
            self.images = np.random.default_rng(int(train)).integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, j):
            return Image.fromarray(self.images[j]), j % 10

    monkeypatch.setattr(tvd, "CIFAR10", Fake)
    task = get_task("torchvision:CIFAR10")
    _assert_nested(lambda n: task.load("test", n, 0), sizes=(16, 64, 256))
