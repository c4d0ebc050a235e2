"""The embedded default is the Fashion-MNIST ViT zoo: what a fresh `python app.py` or a command
without --manifest opens on; $EXPLORER_MANIFEST (the suite sets it to the shapes zoo) overrides it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.zoo import default_manifest_path, load_manifest

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_manifest_is_the_fashion_vit_zoo(monkeypatch):
    monkeypatch.delenv("EXPLORER_MANIFEST")
    assert default_manifest_path() == ROOT / "assets" / "zoo-fashion" / "manifest.toml"
    m = load_manifest()
    assert m.defaults["task"] == "fashion" and m.defaults["eps"] == "8/255"
    assert sorted(m.names("robust")) == ["caw", "fare", "tecoa"] and m.get("natural").arch == "fashion-vit"


def test_the_environment_names_another_default(monkeypatch, tmp_path):
    assert load_manifest().defaults["task"] == "shapes"   # the suite's fixture zoo (conftest)
    monkeypatch.setenv("EXPLORER_MANIFEST", str(tmp_path / "none.toml"))
    with pytest.raises(FileNotFoundError, match=r"none\.toml does not exist"):
        load_manifest()


def test_the_cli_lists_the_fashion_zoo_without_manifest():
    env = {k: v for k, v in os.environ.items() if k != "EXPLORER_MANIFEST"}
    out = subprocess.run([sys.executable, "-m", "explorer", "zoo", "list"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fashion-vit" in out.stdout and "tecoa" in out.stdout
