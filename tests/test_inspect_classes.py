"""Inspect's class lists fit every attack it offers (issue 11, item 8), on the tiny zoo."""
from __future__ import annotations

import time

import numpy as np
import pytest

from explorer.app.service import Service
from explorer.attacks import parse_attack
from explorer.config import MergeSpec
from explorer.ui.inspect_tab import FALLBACK_CLASSES


@pytest.fixture(scope="module")
def service(tiny_zoo) -> Service:
    return Service(str(tiny_zoo), device="cpu", store_path="none")


def _image() -> np.ndarray:
    return (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)


def test_targeted_attacks_with_too_few_classes_are_refused_before_any_work(service):
    models = {"m": (["natural", "robust"], MergeSpec.from_alpha(0.5))}
    for name in ("apgd-t", "autoattack-fast", "autoattack"):
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=rf"^{name} needs at least 4 class names .* got 2: add class names"):
            service.inspect("base", models, _image(), ["cat", "dog"], parse_attack(name, "4/255"))
        assert time.perf_counter() - t0 < 1.0


def test_the_fallback_class_list_runs_targeted_apgd(service):
    assert len(FALLBACK_CLASSES) == len(set(FALLBACK_CLASSES)) >= 10
    models = {"m": (["natural", "robust"], MergeSpec.from_alpha(0.5))}
    out = service.inspect("base", models, _image(), list(FALLBACK_CLASSES), parse_attack("apgd-t", "4/255"))
    clean, adv = out["probs"]["m"]
    assert set(clean) == set(FALLBACK_CLASSES) and abs(sum(adv.values()) - 1) < 1e-4
    assert out["linf"] <= 4 / 255 + 1e-6
