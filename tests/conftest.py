"""Shared fixtures: a tiny zoo of real open_clip models built in about a second.

The models are random-init (not trained) but real open_clip architectures with real checkpoint
files in every format the loader supports, so the invariants can be checked quickly. Trained
behaviour is tested on the shipped demo zoo (``test_demo_zoo.py``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite's default manifest is the small shapes ResNet zoo (assets/zoo: fast, and the golden numbers
# are pinned on it); the app's default, the Fashion-MNIST ViT zoo, is tested by name in
# test_fashion_zoo.py and test_default_zoo.py. Set in the environment so CLI subprocesses see it too.
SHAPES_MANIFEST = Path(__file__).resolve().parents[1] / "assets" / "zoo" / "manifest.toml"
os.environ["EXPLORER_MANIFEST"] = str(SHAPES_MANIFEST)
torch.set_num_threads(1)  # tiny models: threads cost more than they give

TINY_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_zoo(root: Path, seed: int = 0) -> Path:
    """Write a manifest with a base, a natural (full) and two robust (visual-only) checkpoints."""
    import open_clip

    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "tiny-clip.json"
    cfg.write_text(json.dumps(TINY_ARCH))
    open_clip.add_model_config(cfg)
    torch.manual_seed(seed)
    base = open_clip.create_model("tiny-clip", pretrained=None).state_dict()
    g = torch.Generator().manual_seed(seed + 1)

    def shifted(sd, scale, visual_only=False):
        out = {}
        for k, v in sd.items():
            if visual_only and not k.startswith("visual."):
                continue
            noise = torch.randn(v.shape, generator=g) * scale * (v.std() if v.numel() > 1 else 1.0)
            out[k[len("visual."):] if visual_only else k] = v + noise
        return out

    save_file(base, str(root / "base.safetensors"))
    save_file(shifted(base, 0.05), str(root / "natural.safetensors"))
    save_file(shifted(base, 0.08, visual_only=True), str(root / "robust.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in shifted(base, 0.08, True).items()}},
               root / "robust2.pt")
    entries = [("base", "base", "base.safetensors", '["visual", "text"]'),
               ("natural", "natural", "natural.safetensors", '["visual", "text"]'),
               ("robust", "robust", "robust.safetensors", '["visual"]'),
               ("robust2", "robust", "robust2.pt", '["visual"]')]
    lines = ['[defaults]', 'base = "base"', 'task = "shapes"', 'eps = "4/255"', 'attack = "pgd-3"', "n = 32"]
    for name, role, weights, towers in entries:
        lines += ["", f"[models.{name}]", f'role = "{role}"', 'arch = "tiny-clip"',
                  'arch_config = "tiny-clip.json"', f'weights = "{weights}"', f"towers = {towers}",
                  'normalize = "clip"', f"[models.{name}.provenance]", f'method = "test-{role}"']
    manifest = root / "manifest.toml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for the module: tiny models run faster so, and are robust to a shared,
    oversubscribed CPU (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """Path of the tiny zoo's manifest (session-wide, read-only by convention)."""
    return make_tiny_zoo(tmp_path_factory.mktemp("tiny_zoo"))


@pytest.fixture(scope="session")
def example_png(tmp_path_factory) -> str:
    """Path of a PNG of the shapes task's first test image (what a page user uploads)."""
    import numpy as np
    from PIL import Image

    from explorer.data import get_task
    x, _ = get_task("shapes").load("test", 1, 0)
    path = tmp_path_factory.mktemp("img") / "example.png"
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def explorer_home(tmp_path_factory) -> Path:
    """Score caches and stores of the tests live in a temporary EXPLORER_HOME, not ~/.cache."""
    home = tmp_path_factory.mktemp("explorer_home")
    old = os.environ.get("EXPLORER_HOME")
    os.environ["EXPLORER_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("EXPLORER_HOME", None)
    else:
        os.environ["EXPLORER_HOME"] = old


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one; scripts/gpu-check runs them)")


def pytest_collection_modifyitems(config, items) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
