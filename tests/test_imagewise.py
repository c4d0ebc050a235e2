"""The trade-off image by image (tiny zoo, CPU): the filmstrip along alpha and the transfer matrix
agree with each other and with the threat model; the background sweep behind the first view."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from explorer.app.service import Service
from explorer.config import AttackSpec, MergeSpec

CLASSES = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def service(tiny_zoo: Path) -> Service:
    return Service(str(tiny_zoo), "cpu", "none")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from explorer.data import get_task
    x, _ = get_task("shapes").load("test", 1, 5)
    return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def models() -> dict:
    vec = ["natural", "robust"]
    return {"current": (vec, MergeSpec.from_alpha(0.5)), "natural": (vec, MergeSpec.from_alpha(0.0)),
            "robust": (vec, MergeSpec.from_alpha(1.0))}


def test_filmstrip_and_transfer_agree_and_stay_in_the_eps_ball(service, image) -> None:
    attack = AttackSpec("pgd-5", eps="16/255")
    frames = service.filmstrip("base", ["natural"], ["robust"], MergeSpec.from_alpha(0.5), [0, 0.5, 1],
                               image, CLASSES, attack)
    res = service.transfer("base", models(), image, CLASSES, attack)
    assert [f["alpha"] for f in frames] == [0.0, 0.5, 1.0]
    for f in [*frames, *({"adv": a} for a in res["adv"].values())]:
        assert f["adv"].dtype == np.uint8 and f["adv"].shape == image.shape
        assert np.abs(f["adv"].astype(int) - image.astype(int)).max() <= 16 + 1   # eps, uint8 rounding
    # The same merge attacked the same way (seeded start): the filmstrip's alpha 0 / 0.5 / 1 frames
    # are the transfer matrix's natural / current / robust rows, image and verdict.
    for f, label in zip(frames, ["natural", "current", "robust"]):
        assert np.array_equal(f["adv"], res["adv"][label])
        assert f["adv_pred"] == res["pred"][label][label] and f["fooled"] == res["fooled"][label][label]
        assert f["clean_pred"] == res["clean"][label]
    for src in res["models"]:
        for dst in res["models"]:
            assert res["fooled"][src][dst] == (res["pred"][src][dst] != res["clean"][dst])


def test_no_perturbation_fools_nothing(service, image) -> None:
    res = service.transfer("base", models(), image, CLASSES, AttackSpec("pgd-3", eps=0.0))
    assert all(np.array_equal(a, image) for a in res["adv"].values())
    assert not any(f for row in res["fooled"].values() for f in row.values())
    with pytest.raises(ValueError, match="1 to 11 alphas"):
        service.filmstrip("base", ["natural"], ["robust"], MergeSpec.from_alpha(0.5), [i / 11 for i in range(12)],
                          image, CLASSES, AttackSpec("pgd-3", eps="4/255"))


def test_background_sweep_runs_once_and_matches_the_sweep(service) -> None:
    from explorer.ui.common import default_curve

    spec = default_curve(service)
    job = service.background_sweep(spec)
    assert service.background_sweep(spec) is job          # started once, shared
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.done and snap.error is None and len(snap.rows) == snap.total == 6   # pretrained + 5 alphas
    direct = list(service.sweep(spec))
    assert [r["key"] for r in snap.rows] == [r["key"] for r in direct]
    assert [r["robust_acc"] for r in snap.rows] == [r["robust_acc"] for r in direct]


def test_first_view_streams_with_a_progress_line(tiny_zoo) -> None:
    """While the default curve is computed the page shows a progress line; at the end, the curve."""
    from explorer.app.background import BackgroundSweep
    from explorer.ui import build_demo
    from explorer.ui.common import default_curve
    from explorer.ui.frontier_handlers import FrontierHandlers

    demo = build_demo(str(tiny_zoo), device="cpu", store_path="none")
    svc, form = demo.explorer_service, demo.explorer_form
    spec = default_curve(svc)
    gate = threading.Event()

    def gated():
        gate.wait(60)
        yield from svc.sweep(spec)

    svc._background[spec.digest()] = BackgroundSweep(gated, 6, label=spec.attack.label)   # the job the page finds
    values = {form[k]: c.value for k, c in ((k, form[k]) for k in form.api_order(form.inputs("merge", "theme")))}
    values[form["rows"]] = []
    gen = FrontierHandlers(svc, form).first_view(values)
    fig, _, status, _, _ = next(gen)
    assert status.startswith("Computing the default curve under pgd-3 Linf eps=4/255 in the background: 0/6 points")
    assert "Then the same curve under autoattack-fast Linf eps=4/255, coarse first." in status
    gate.set()
    *_, (fig, table, status, summary, current) = list(gen)
    # The end: the AutoAttack curve leads (ui/tiers.py), the pgd-3 one faded behind it; the table lists both.
    assert status.startswith("6 points plotted (pretrained 1, task_arithmetic 5) — autoattack-fast") and len(table) == 12
    assert current["alpha"] == 0.5 and "On the curve" in summary
    assert sum(len(t.x) for t in fig.data if t.name == "task_arithmetic · autoattack-fast") == 5
    assert sum(len(t.x) for t in fig.data if t.name == "task_arithmetic · pgd-3 (faded)") == 5
