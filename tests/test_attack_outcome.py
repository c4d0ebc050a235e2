"""Per-image, batch-free attacks (issue 22 items 1, 2, 6): our APGD / APGD-T / Square against
torchattacks step for step, batch independence on a demo-zoo model, outcome codes and cost."""
from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from explorer.attacks import apgd, attack_outcome, run_attack, square, stages
from explorer.attacks.run import CLEAN, ROBUST
from explorer.attacks.safety import AttackModel, attack_context
from explorer.config import AttackSpec, EvalSpec, MergeSpec
from explorer.evaluation.evaluate import Images, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run on one thread


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 10          # five points start misclassified
    return model, x, y


@pytest.mark.parametrize("norm,eps", [("Linf", 3 / 255), ("L2", 0.15)])
@pytest.mark.parametrize("targeted", [False, True])
def test_apgd_follows_torchattacks_step_for_step(mlp, norm, eps, targeted):
    """From the same start, our APGD (100 steps, the reference's checkpoints and momentum)
    breaks exactly the points torchattacks' APGD / APGD-T ``attack_single_run`` breaks."""
    model, x, y = mlp
    net = AttackModel(model)
    with attack_context(net):
        keep = net(x).argmax(1) == y
        x, y = x[keep], y[keep]
        cls = torchattacks.APGDT if targeted else torchattacks.APGD
        kw = dict(n_classes=10) if targeted else dict(loss="ce")
        atk = cls(net, norm=norm, eps=eps, steps=100, n_restarts=1, rho=0.75, **kw)
        atk.target_class = 2
        torch.manual_seed(5)
        t = 2 * torch.rand(x.shape) - 1 if norm == "Linf" else torch.randn(x.shape)
        scale = t.flatten(1).abs().amax(1) if norm == "Linf" else t.flatten(1).norm(dim=1)
        start = (x + eps * t / scale.view(-1, 1, 1, 1)).clamp(0, 1)
        torch.manual_seed(5)
        ref = atk.attack_single_run(x, y)
        ref_broken = ~ref[1].bool()
        target = net(x).argsort(1)[:, -2] if targeted else None
        w = apgd.Wave(torch.arange(len(x)), torch.zeros(len(x), dtype=torch.long), start, target)
        fb = torch.zeros(len(x), dtype=torch.long)
        ours, x_adv = apgd.run_wave(net, x, y, w, eps, norm, 100, 0.75, fb)
    assert 0 < int(ours.sum()) < len(x)          # a mix: the comparison means something
    assert torch.equal(ours, ref_broken)
    assert (net(x_adv[ours]).argmax(1) != y[ours]).all()
    # Broken points left at their first misclassified iterate; the others ran 1 + 100 passes.
    assert (fb[~ours] == 101).all() and (fb[ours] < 101).all()


def test_schedule_is_the_references():
    # n_iter_2 = 22, size_decr 3, n_iter_min 6 at 100 steps: checkpoints at 21, 40, 56, 69, ...
    c = apgd.checkpoints(100)
    assert list(c.items())[:5] == [(21, 22), (40, 19), (56, 16), (69, 13), (79, 10)]
    assert set(list(c.values())[6:]) == {6}
    sq = torchattacks.Square(nn.Linear(1, 10), n_queries=5000, p_init=0.8, resc_schedule=False)
    assert all(square.p_selection(0.8, i) == sq.p_selection(i) for i in range(0, 9000, 7))


def test_outcome_codes_and_cost(mlp, monkeypatch):
    """Clean-misclassified points are never attacked; an unbreakable point costs exactly the
    protocol's passes (5 restarts x (1 + steps), then 9 targets x (1 + steps)); a broken one
    leaves as soon as it is broken."""
    model, x, y = mlp
    monkeypatch.setattr(stages, "STEPS", 4)
    tiny = attack_outcome(model, x, y, AttackSpec("autoattack-fast", eps=1e-7))
    assert tiny.stages == ("apgd-ce-x5", "apgd-t")
    assert tiny.stage_labels()[:5] == ["clean"] * 5 and (tiny.broken[:5] == CLEAN).all()
    assert (tiny.fwd_bwd[:5] == 0).all() and (tiny.fwd[:5] == 1).all()
    assert (tiny.broken[5:] == ROBUST).all()
    assert (tiny.fwd_bwd[5:] == 5 * 5 + 9 * 5).all()
    big = attack_outcome(model, x, y, AttackSpec("autoattack-fast", eps=16 / 255))
    hit = big.broken >= 0
    assert int(hit.sum()) > 20 and (big.fwd_bwd[hit] < 5 * 5 + 9 * 5).all()
    assert torch.equal(big.robust, ~hit & (big.broken != CLEAN))
    assert torch.equal(run_attack(model, x, y, AttackSpec("autoattack-fast", eps=16 / 255)), big.x_adv)


@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.3)])
def test_square_is_per_image(mlp, norm, eps):
    model, x, y = mlp
    net = AttackModel(model)
    m = 30 if norm == "Linf" else 12          # L2 runs torchattacks image by image: slower
    ids = torch.arange(10, 10 + m)
    with attack_context(net):
        xs, ys = x[10:10 + m], y[10:10 + m]
        run = square.square_linf if norm == "Linf" else square.square_l2
        kw = dict(batch_rows=256) if norm == "Linf" else {}
        whole = run(net, xs, ys, ids, eps=eps, seed=3, queries=60, **kw)
        parts = [run(net, xs[i:i + 7], ys[i:i + 7], ids[i:i + 7], eps=eps, seed=3, queries=60, **kw)
                 for i in range(0, m, 7)]
        assert torch.equal(torch.cat([p.fooled for p in parts]), whole.fooled)
        assert torch.equal(torch.cat([p.x_adv for p in parts]), whole.x_adv)
        assert 0 < int(whole.fooled.sum()) < m
        assert (net(whole.x_adv[whole.fooled]).argmax(1) != ys[whole.fooled]).all()
        d = (whole.x_adv - xs).flatten(1)
        assert ((d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)) <= eps + 1e-5).all()


@pytest.fixture(scope="module")
def demo():
    from explorer.engine.frontier import Engine
    from explorer.zoo import default_manifest_path

    engine = Engine(default_manifest_path(), device="cpu")
    engine.merge(["tecoa"], MergeSpec(lambdas=(1.0,)))
    x, y = engine.eval_data(EvalSpec("shapes", 32))
    return engine.classifier("shapes"), x, y


@pytest.mark.parametrize("name", ["autoattack-fast", "autoattack"])
def test_batch_free_on_the_demo_zoo(demo, monkeypatch, name):
    """The same 32 images attacked as one batch, as 4 chunks of 8 and one at a time: identical
    flags, breaking stages and adversarial images (3 steps, 3 targets and 30 Square queries to
    fit the suite: the invariant holds for any count, each copy being seeded on its own)."""
    clf, x, y = demo
    monkeypatch.setattr(stages, "STEPS", 3)
    monkeypatch.setattr(stages, "MAX_TARGETS", 3)
    monkeypatch.setattr(stages, "SQUARE_QUERIES", 30)
    spec = AttackSpec(name, eps=4 / 255, seed=1)
    whole = attack_outcome(clf, x, y, spec, sample_ids=torch.arange(32))
    for size in (8, 1):
        parts = [attack_outcome(clf, x[i:i + size], y[i:i + size], spec, sample_ids=torch.arange(i, i + size))
                 for i in range(0, 32, size)]
        assert torch.equal(torch.cat([p.broken for p in parts]), whole.broken), size
        assert torch.allclose(torch.cat([p.x_adv for p in parts]), whole.x_adv, atol=1e-6)
    labels = whole.stage_labels()
    assert "clean" in labels and None in labels and whole.stages[0] in labels


def test_evaluate_reports_stage_and_cost_per_image(mlp, monkeypatch):
    model, x, y = mlp
    monkeypatch.setattr(stages, "STEPS", 4)
    res = evaluate(model, Images(x, y), AttackSpec("autoattack-fast", eps=16 / 255))
    assert len(res.broken_stage) == res.n == 40
    assert res.broken_stage[:5] == ["clean"] * 5
    assert [s is None for s in res.broken_stage] == res.robust.tolist()
    assert all(s in ("clean", None, "apgd-ce-x5", "apgd-t") for s in res.broken_stage)
    assert (res.fwd_bwd[:5] == 0).all() and (res.fwd_bwd[5:] > 0).all()
    assert res.stages == res.broken_stage and res.costs.tolist() == res.fwd_bwd.tolist()   # the store's columns
    clean = evaluate(model, Images(x, y), AttackSpec("none", eps=0))
    assert clean.broken_stage == ["clean"] * 5 + [None] * 35 and int(clean.fwd_bwd.sum()) == 0


@pytest.mark.parametrize("name", ["autoattack-fast", "autoattack"])
def test_agrees_with_the_torchattacks_reference_on_the_demo_zoo(demo, monkeypatch, name):
    """Per-image draws change which random starts are tried, not what the protocol is: on the
    same 32 demo-zoo images, robust accuracy within 0.01 of torchattacks' MultiAttack over the
    same stages and settings, and never higher by more than 0.005 (10 steps, 3 targets, 30 Square
    queries on both sides, to fit the suite; at the published 100 steps on 128 ``tecoa`` images
    both protocols gave 86 robust on both sides, seeds 0 and 1)."""
    from explorer.attacks import ATTACKS

    assert stages.PROTOCOLS[name] == ATTACKS[name].stages
    clf, x, y = demo
    monkeypatch.setattr(stages, "STEPS", 10)
    monkeypatch.setattr(stages, "MAX_TARGETS", 3)
    monkeypatch.setattr(stages, "SQUARE_QUERIES", 30)
    spec = AttackSpec(name, eps=4 / 255, seed=0)
    ours = attack_outcome(clf, x, y, spec)
    ref = stages.reference_autoattack(clf, x, y, spec.eps, seed=0, protocol=stages.PROTOCOLS[name])
    with torch.no_grad():
        ref_acc = float((clf(ref).argmax(1) == y).float().mean())
        ours_acc = float((clf(ours.x_adv).argmax(1) == y).float().mean())
    assert ours_acc == float(ours.robust.float().mean())
    assert abs(ours_acc - ref_acc) <= 0.01 and ours_acc <= ref_acc + 0.005, (ours_acc, ref_acc)
    assert ours_acc < float((clf(x).argmax(1) == y).float().mean())   # the attack broke something
