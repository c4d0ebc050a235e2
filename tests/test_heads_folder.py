"""Zero-shot heads cached on disk, ImageNet/CLIP package data, ``folder:`` tasks through the model's
own open_clip preprocessing, and the ``zoo synth`` / ``bench --scale`` commands on a tiny ViT."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import TINY_ARCH
from PIL import Image

from explorer.data import get_task
from explorer.data.templates import clip_templates, imagenet_classnames
from explorer.engine.frontier import Engine
from explorer.evaluation import zeroshot
from explorer.evaluation.zeroshot import (
    ZeroShotClassifier,
    cached_text_head,
    head_cache_key,
    heads_dir,
)


def test_imagenet_names_and_the_80_templates_match_open_clip():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    assert imagenet_classnames() == tuple(IMAGENET_CLASSNAMES) and len(imagenet_classnames()) == 1000
    assert clip_templates() == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES) and len(clip_templates()) == 80


@pytest.fixture
def engine(tiny_zoo) -> Engine:
    return Engine(tiny_zoo, device="cpu", store=None)


def test_head_is_computed_once_then_served_from_disk(engine, monkeypatch):
    names, templates = imagenet_classnames()[:40], clip_templates()[:30]     # 1200 prompts: auto mode on
    clf = ZeroShotClassifier(engine.model, engine.tokenizer, names, templates)
    assert clf.disk_cache
    path = heads_dir() / f"{head_cache_key(engine.model, engine.tokenizer, names, templates)[:40]}.safetensors"
    assert path.exists()
    monkeypatch.setattr(zeroshot, "build_text_head", lambda *a, **k: pytest.fail("head recomputed"))
    again = ZeroShotClassifier(engine.model, engine.tokenizer, names, templates)
    assert torch.equal(again.text_head, clf.text_head)
    monkeypatch.undo()
    fresh = zeroshot.build_text_head(engine.model, engine.tokenizer, names, templates)
    assert torch.equal(fresh, clf.text_head)                 # the cached head is the computed one


def test_head_key_follows_text_tower_classes_and_templates(engine):
    key = head_cache_key(engine.model, engine.tokenizer, ("a", "b"), ("{}.",))
    assert key != head_cache_key(engine.model, engine.tokenizer, ("a", "c"), ("{}.",))
    assert key != head_cache_key(engine.model, engine.tokenizer, ("a", "b"), ("a {}.",))
    engine.merge(["robust"], __import__("explorer").MergeSpec(lambdas=(1.0,)))   # visual only
    assert key == head_cache_key(engine.model, engine.tokenizer, ("a", "b"), ("{}.",))
    engine.merge(["natural"], __import__("explorer").MergeSpec(lambdas=(1.0,)))  # moves the text tower
    assert key != head_cache_key(engine.model, engine.tokenizer, ("a", "b"), ("{}.",))
    head = cached_text_head(engine.model, engine.tokenizer, ("a", "b"), ("{}.",), progress=False)
    assert head.shape == (2, TINY_ARCH["embed_dim"]) and torch.allclose(head.norm(dim=1), torch.ones(2))


def _folder(root, sizes=((40, 64), (64, 48))):
    rng = np.random.default_rng(0)
    for c in ("cat_a", "dog_b"):
        (root / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_folder_task_uses_the_models_open_clip_preprocessing(engine, tmp_path):
    import open_clip

    root = _folder(tmp_path / "imgs")
    (root / "classnames.txt").write_text("tabby cat\ngolden dog\n")
    ev = __import__("explorer").EvalSpec(task=f"folder:{root}", n=4, seed=0)
    x, y = engine.eval_data(ev)
    assert x.shape == (4, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    task = get_task(ev.task, preprocess=engine.preprocess_cfg())
    assert task.classnames == ("tabby cat", "golden dog")
    # open_clip's own eval transform (resize shortest side, centre crop, normalise), un-normalised
    ref_tf = open_clip.image_transform(32, is_train=False)
    files = sorted(root.glob("*/*.png"))
    order = np.random.default_rng(0).permutation(len(files))[:4]
    mean, std = torch.tensor(zeroshot.CLIP_MEAN).view(3, 1, 1), torch.tensor(zeroshot.CLIP_STD).view(3, 1, 1)
    ref = torch.stack([ref_tf(Image.open(files[j]).convert("RGB")) * std + mean for j in order])
    assert torch.allclose(x, ref.clamp(0, 1), atol=1e-6)
    assert y.tolist() == [int(files[j].parent.name == "dog_b") for j in order]


def test_folder_classname_file_of_the_wrong_length_is_refused(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "classnames.txt").write_text("only one\n")
    with pytest.raises(ValueError, match="lists 1 class names for 2 class folders"):
        get_task(f"folder:{root}", preprocess={"size": (32, 32)})


def test_zoo_synth_and_bench_scale_commands(tmp_path, capsys):
    from explorer.cli import main

    cfg = tmp_path / "tiny-clip.json"
    cfg.write_text(json.dumps(TINY_ARCH))
    assert main(["zoo", "synth", "--arch", "tiny-clip", "--arch-config", str(cfg), "--into", str(tmp_path / "z")]) == 0
    assert main(["bench", "--scale", "tiny-clip", "--fixture", str(tmp_path / "z"), "--device", "cpu",
                 "--no-plain", "--n", "4", "--attack", "pgd-1"]) == 0
    out = capsys.readouterr().out
    ratio = float(out.split("memory / floor: ")[1].split()[0])
    # The bound itself is measured by test_scale in a fresh window; inside a long pytest process
    # the absolute peak is the suite's, so here the ratio must be what the memory line says:
    # (peak - before) / floor, within the line's rounding (2 decimals of GiB), and loading costs.
    m = re.search(r"peak resident ([\d.]+) GiB, ([\d.]+) GiB before loading.*?floor \(2 \+ 2\) x ([\d.]+) = "
                  r"[\d.]+ GiB; bound 1.25 x floor \+ 1 GiB = ([\d.]+) GiB", out)
    peak, before, size, bound = map(float, m.groups())
    floor = 4 * 1.6e6 * 4 / 2**30   # base + merged + 2 vectors of tiny-clip's 1.6M float32 params
    assert abs(size - floor / 4) < 0.0005 and abs(bound - (1.25 * floor + 1)) < 0.005
    assert ratio > 0 and abs(ratio * floor - (peak - before)) <= 0.01 + 0.005 * ratio
    assert float(out.split("merge / bandwidth floor: ")[1].split()[0]) > 0
    assert "bound 1.25 x floor + 1 GiB" in out
    assert "text tower = base rounded to fp16" in out and "load robust_fp16" in out
    assert main(["zoo", "synth", "--arch", "no-such-arch", "--into", str(tmp_path / "y")]) == 2


def test_a_bomb_or_broken_image_in_a_folder_task_is_one_line_naming_it(tmp_path):
    """A PNG whose header claims 100000x100000 pixels raised PIL's DecompressionBombError (not an
    OSError) out of ``evaluate --task folder:...`` as a traceback, exit 1."""
    import struct
    import zlib

    from explorer.data.folder import eval_transform, load_preprocessed

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"^bomb\.png is not a readable image: Image size \(10000000000 pixels\)"):
        load_preprocessed(bomb, eval_transform(8))
    with pytest.raises(ValueError, match=r"^text\.png is not a readable image: cannot identify image file"):
        load_preprocessed(text, eval_transform(8))


def test_n_above_a_folder_or_shipped_split_is_one_line_before_any_image_loads(tmp_path, tiny_zoo, capsys):
    """``evaluate --task folder:DIR --n 10`` on a folder of 4 images was an IndexError traceback out
    of the runner; every task of fixed size now refuses n above it in one line (``Task.check_n``)."""
    from explorer.cli import main

    root = _folder(tmp_path / "imgs")
    task = get_task(f"folder:{root}", preprocess={"size": (32, 32)})
    assert task.sizes == {"test": 4, "train": 4}
    with pytest.raises(ValueError, match=rf"^task 'folder:{root}' has 4 images; n=5 is larger$"):
        task.load("test", 5, 0)
    assert task.load("test", 4, 0)[0].shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^task 'fashion' has 512 images in its train split; n=513 is larger$"):
        get_task("fashion").check_n("train", 513)
    get_task("shapes").check_n("test", 10**6)   # procedural: no fixed size, nothing refused here
    assert main(["evaluate", "--manifest", str(tiny_zoo), "--model", "natural", "--attack", "pgd-2", "--no-store",
                 "--task", f"folder:{root}", "--n", "10"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: task 'folder:{root}' has 4 images; n=10 is larger\n"


def test_a_loader_that_returns_fewer_images_than_asked_is_refused():
    from explorer.data.task import Task

    short = Task("short", ("a", "b"), ("{}",), lambda split, n, seed: (torch.zeros(3, 3, 4, 4), torch.zeros(3)))
    with pytest.raises(ValueError, match=r"^task 'short' has 3 images; n=5 is larger$"):
        short.load("test", 5, 0)
