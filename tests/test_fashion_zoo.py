"""The Fashion-MNIST ViT zoo (``assets/zoo-fashion``): a ViT tower, a usable but improvable base,
the trade-off, and uploads brought to its input form. Small held-out subsets; the README's table
(``python -m explorer zoo measure``) gives the numbers at n=1000."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.app.service import Service
from explorer.config import AttackSpec, EvalSpec, MergeSpec, parse_eps
from explorer.engine.frontier import Engine

MANIFEST = Path(__file__).resolve().parents[1] / "assets" / "zoo-fashion" / "manifest.toml"
CLEAN = AttackSpec("none", eps=0.0)


@pytest.fixture(scope="module")
def engine():
    return Engine(MANIFEST, device="cpu", store=None)


def _point(engine, name, attack, n):
    return engine.model_point(name, attack, EvalSpec("fashion", n))


def test_vit_tower_and_manifest_defaults(engine):
    from open_clip.transformer import VisionTransformer
    assert isinstance(engine.model.visual, VisionTransformer)
    d = engine.manifest.defaults
    assert (d["task"], d["eps"], d["input"]) == ("fashion", "8/255", "fashion-mnist")
    assert engine.manifest.get("natural").towers == ("visual", "text")


def test_base_is_usable_and_the_fine_tune_clearly_better(engine):
    base = _point(engine, "pretrained", CLEAN, 300)["clean_acc"]
    nat = _point(engine, "natural", CLEAN, 300)["clean_acc"]
    assert base >= 0.45 and nat >= base + 0.15 and nat >= 0.80


def test_tecoa_trades_clean_for_robust(engine):
    attack = AttackSpec("pgd-10", eps=parse_eps("8/255"))
    nat, rob = _point(engine, "natural", attack, 64), _point(engine, "tecoa", attack, 64)
    assert nat["clean_acc"] > rob["clean_acc"] and rob["robust_acc"] >= nat["robust_acc"] + 0.2
    half = engine.point(["natural"], ["tecoa"], MergeSpec.from_alpha(0.5, 1, 1), attack, EvalSpec("fashion", 64))
    assert nat["robust_acc"] < half["robust_acc"]


def test_uploads_are_brought_to_the_zoo_input_form():
    photo = np.full((90, 60, 3), 250, np.uint8)
    photo[10:80, 20:40] = (20, 40, 160)
    fashion, shapes = Service(str(MANIFEST), device="cpu", store_path="none"), Service(device="cpu", store_path="none")
    seen = fashion.decode_image(photo)
    assert seen.shape == (28, 28, 3) and seen[0, 0, 0] == 0 and seen[14, 14, 0] > 200
    assert shapes.input_form == "as-is" and shapes.decode_image(photo).shape == (90, 60, 3)


def test_inspect_offers_the_zoo_own_examples(monkeypatch):
    from explorer.ui.inspect_tab import EXAMPLES_DIR, example_images, examples_dir
    shapes = EXAMPLES_DIR.parent / "zoo" / "manifest.toml"
    # The Fashion zoo has no examples/ of its own: assets/examples holds its 12 held-out photographs.
    fashion = example_images(MANIFEST)
    assert [Path(p).name for p in fashion][:3] == ["ankle-boot-1522.png", "bag-2324.png", "coat-9062.png"]
    assert len(fashion) == 12 and all(Path(p).parent == EXAMPLES_DIR for p in fashion)
    assert examples_dir(shapes) == shapes.parent / "examples"
    assert sorted(p.name for p in examples_dir(shapes).glob("*.png"))[0] == "circle_green.png"
    # No manifest named: the default manifest's (the suite's is the shapes zoo; the app's the Fashion zoo).
    assert examples_dir(None) == shapes.parent / "examples"
    monkeypatch.delenv("EXPLORER_MANIFEST")
    assert examples_dir(None) == EXAMPLES_DIR


def test_calibration_split_is_shipped_from_the_fine_tunes_half_never_test():
    from explorer.data import get_task
    from explorer.data.fashion import CALIB_FILE, EVAL_FILE, corpus_indices, read_eval_subset
    _, labels, ids = read_eval_subset(CALIB_FILE)
    assert len(ids) == 512 and len(np.unique(ids)) == 512 and set(np.bincount(labels, minlength=10) > 20) == {True}
    assert not set(ids.tolist()) & set(corpus_indices().tolist())   # not the pretraining corpus either
    x, y = get_task("fashion").load("train", 64, 0)
    assert x.shape == (64, 3, 28, 28) and y.dtype == torch.int64 and 0 <= float(x.min()) <= float(x.max()) <= 1
    test_x, _ = get_task("fashion").load("test", 2000, 0)
    assert read_eval_subset(EVAL_FILE)[2].max() < 10000   # test ids; calibration rows are other images
    assert not any(torch.equal(x[i], test_x[j]) for i in range(8) for j in range(2000))
    with pytest.raises(ValueError, match=r"^task .fashion. has 512 images in its train split; n=600 is larger$"):
        get_task("fashion").load("train", 600, 0)
