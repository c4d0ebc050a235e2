"""The attack twin is the same function as its classifier and can never invent a proof."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from explorer.config import AttackSpec, EvalSpec, MergeSpec, parse_eps
from explorer.core.finite import NonFiniteLogitsError
from explorer.data import get_task
from explorer.engine import attack_twin
from explorer.engine.attack_twin import TOLERANCE, make_twin, max_disagreement
from explorer.engine.frontier import Engine
from explorer.evaluation.evaluate import EvalOptions, Images, evaluate, predict
from explorer.zoo import default_manifest_path


@pytest.fixture(scope="module")
def engine():
    """The demo zoo: its vision tower is a ResNet with BatchNorm to fold."""
    return Engine(default_manifest_path(), device="cpu")


@pytest.fixture(scope="module")
def images():
    x, y = get_task("shapes").load("test", 48, 3)
    return x, y


def test_twin_matches_its_classifier_across_merges(engine, images):
    x, _ = images
    twin = engine.attack_model("shapes")
    assert twin is not None and len(twin._pairs) > 0
    clf = engine.classifier("shapes")
    for alpha in (0.0, 0.35, 1.0):
        engine.merge(["natural", "tecoa"], MergeSpec.from_alpha(alpha))
        assert max_disagreement(twin, clf, x) <= TOLERANCE
        assert torch.equal(predict(twin, x), predict(clf, x))


def test_twin_shares_unfolded_weights_and_needs_refresh_for_folded(engine, images):
    x, _ = images
    twin = engine.attack_model("shapes")
    clf = engine.classifier("shapes")
    # Parameters the fold left alone are the engine's own storage, not copies.
    shared = engine.model.visual.attnpool.q_proj.weight
    assert twin.visual.attnpool.pool.q_proj.weight.data_ptr() == shared.data_ptr()
    # Folded convolutions follow a merge only through refresh(): without it they are stale.
    engine.merge(["natural", "tecoa"], MergeSpec.from_alpha(0.0))
    fused = twin.visual.layer1[0].conv1.weight.clone()
    engine.merge(["natural", "tecoa"], MergeSpec.from_alpha(1.0))
    assert not torch.equal(fused, twin.visual.layer1[0].conv1.weight)
    twin.visual.layer1[0].conv1.weight.data.copy_(fused)       # simulate a missed refresh
    assert max_disagreement(twin, clf, x) > TOLERANCE
    twin.refresh()
    assert max_disagreement(twin, clf, x) <= TOLERANCE


def test_pooled_query_equals_the_attention_pool_on_several_grids():
    """The pooled-query rewrite is the same function as open_clip's pool for any HW (1x1 on
    the demo tower; larger grids on real ResNet CLIPs), values and input gradients."""
    from open_clip.modified_resnet import AttentionPool2d

    from explorer.engine.attack_twin import PooledQuery

    torch.manual_seed(0)
    for side in (1, 2, 7):
        pool = AttentionPool2d(side, 64, 4, 32).eval()
        fast = PooledQuery(pool)
        x = torch.randn(5, 64, side, side, requires_grad=True)
        a, b = pool(x), fast(x)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        (ga,) = torch.autograd.grad(a.square().sum(), x)
        (gb,) = torch.autograd.grad(b.square().sum(), x)
        assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-4)


def test_no_twin_for_a_tower_without_batchnorm(tiny_zoo):
    eng = Engine(tiny_zoo, device="cpu")
    task = eng.manifest.defaults.get("task", "shapes")
    assert make_twin(eng.classifier(task)) is None


def test_a_wrong_fold_is_refused(engine, monkeypatch):
    clf = engine.classifier("shapes")
    bn = engine.model.visual.bn1
    saved = bn.running_var.clone()
    try:
        # A non-finite statistic makes the model itself invalid: named as such, not as a bad fold.
        bn.running_var[0] = float("nan")
        with pytest.raises(NonFiniteLogitsError, match="NaN/inf logits on random probe images"):
            make_twin(clf)
    finally:
        bn.running_var.copy_(saved)
    monkeypatch.setattr(attack_twin, "TOLERANCE", -1.0)     # any gap is now too large
    with pytest.raises(ValueError, match="disagrees"):
        make_twin(clf)


class _Liar(nn.Module):
    """A 'twin' that always predicts the class after the model's: trusted, it would prove
    every clean-correct sample non-robust at the attack's first iterate. Its gradients are
    the model's (the engine checks the attacked function's gradients are not zero)."""

    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def forward(self, x):
        logits = self.clf(x)
        wrong = (logits.argmax(1) + 1) % logits.shape[1]
        return logits + 1e4 * torch.nn.functional.one_hot(wrong, logits.shape[1]).float()


def test_proofs_are_decided_on_the_model_not_the_twin(engine, images):
    x, y = images
    clf = engine.classifier("shapes")
    engine.merge(["natural", "tecoa"], MergeSpec.from_alpha(1.0))
    attack = AttackSpec("pgd-3", eps=parse_eps("1/255"))
    res = evaluate(clf, Images(x, y), attack, EvalOptions(return_adv=True), attack_model=_Liar(clf))
    # The liar stops the attack at its random start; only real mistakes of clf count.
    truth = predict(clf, res.x_adv) == y
    assert torch.equal(res.robust, (res.clean_correct & truth).cpu())
    assert res.robust.sum() > 0


def test_a_twin_without_gradients_is_refused(engine, images):
    """The zero-gradient check runs on the function the attack differentiates."""
    x, y = images
    clf = engine.classifier("shapes")

    class Flat(nn.Module):
        def forward(self, z):
            return clf(z).detach() + 0 * z.sum()

    with pytest.raises(ValueError, match="zero input gradient"):
        evaluate(clf, Images(x, y), AttackSpec("pgd-3", eps=parse_eps("1/255")), attack_model=Flat())


def test_engine_numbers_with_and_without_the_twin(engine):
    ev = EvalSpec("shapes", 128)
    attack = AttackSpec("pgd-10", eps=parse_eps("4/255"))
    slow = Engine(default_manifest_path(), device="cpu", fast_attack=False)
    spec = MergeSpec.from_alpha(0.6)
    a = engine.point(["natural"], ["tecoa"], spec, attack, ev, use_bank=False)
    b = slow.point(["natural"], ["tecoa"], spec, attack, ev, use_bank=False)
    assert a["clean_acc"] == b["clean_acc"]
    # Same function, same seeded starts: gradient signs agree up to float rounding.
    assert abs(a["robust_acc"] - b["robust_acc"]) <= 2 / 128


def test_the_fold_check_measures_the_fold_not_the_callers_precision(engine):
    """On an H200 the check refused every twin under TF32 (1e-4) and bf16 autocast (3.5e-3): it
    now runs in full fp32 whatever the caller set, and restores the caller's settings after."""
    clf = engine.classifier("shapes")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            low = clf(torch.rand(4, 3, *clf.image_size))
        twin = make_twin(clf)
        assert twin is not None and torch.is_autocast_enabled('cpu')
    assert low.dtype == torch.bfloat16       # the caller's autocast was really on
