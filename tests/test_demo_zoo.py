"""The shipped demo zoo (the app's default) tells the story it is meant to tell.

Cheap checks on small held-out subsets; the README's table (``python -m explorer zoo report``)
gives the full numbers under autoattack-fast on 500 images.
"""
from __future__ import annotations

import pytest
import torch

from explorer.config import AttackSpec, EvalSpec, MergeSpec, parse_eps
from explorer.engine.frontier import Engine
from explorer.zoo import default_manifest_path, load_manifest, load_weights

CLEAN = AttackSpec("none", eps=0.0)


@pytest.fixture(scope="module")
def engine():
    return Engine(default_manifest_path(), device="cpu")


def _acc(engine, names, lambdas, attack, task, n):
    nat = [x for x in names if engine.manifest.get(x).role == "natural"]
    rob = [x for x in names if engine.manifest.get(x).role == "robust"]
    row = engine.point(nat, rob, MergeSpec(lambdas=lambdas), attack, EvalSpec(task, n), use_bank=False)
    return row["clean_acc"], row["robust_acc"]


def test_manifest_roles_and_provenance():
    m = load_manifest()
    assert m.names("base") == ["pretrained"] and m.names("natural") == ["natural"]
    assert set(m.names("robust")) == {"tecoa", "fare", "caw"}
    assert all(m.get(r).provenance["method"] == r for r in ("tecoa", "fare", "caw"))


def test_pretrained_zero_shot_and_natural_gain(engine):
    assert _acc(engine, [], (), CLEAN, "shapes", 200)[0] >= 0.70
    pre_shift = _acc(engine, [], (), CLEAN, "shapes-shifted", 200)[0]
    nat_shift = _acc(engine, ["natural"], (1.0,), CLEAN, "shapes-shifted", 200)[0]
    assert nat_shift >= pre_shift + 0.10


@pytest.mark.parametrize("robust", ["tecoa", "fare", "caw"])
def test_robust_fine_tunes_trade_clean_for_robust(engine, robust):
    task = engine.manifest.defaults["task"]
    pgd = AttackSpec("pgd-5", eps=parse_eps(engine.manifest.defaults["eps"]))
    nat_clean, nat_rob = _acc(engine, ["natural"], (1.0,), pgd, task, 100)
    rob_clean, rob_rob = _acc(engine, [robust], (1.0,), pgd, task, 100)
    assert rob_rob >= nat_rob + 0.2
    assert rob_clean < nat_clean


def test_alpha_endpoints_are_the_shipped_checkpoints(engine):
    ref = engine.reference
    nat = load_weights(engine.manifest.get("natural"), ref)
    rob = load_weights(engine.manifest.get("tecoa"), ref)
    at0 = engine.merged_state_dict(["natural", "tecoa"], MergeSpec.from_alpha(0.0))
    at1 = engine.merged_state_dict(["natural", "tecoa"], MergeSpec.from_alpha(1.0))
    assert all(torch.equal(at0[k], v) for k, v in nat.items())
    assert all(torch.equal(at1[k], v) for k, v in rob.items())


def test_provenance_matches_checkpoint_metadata():
    from safetensors import safe_open

    m = load_manifest()
    for name in m.names("robust"):
        with safe_open(m.get(name).weights, framework="pt") as f:
            meta = f.metadata()
        assert meta["method"] == m.get(name).provenance["method"]
        assert meta["eps_label"] == m.get(name).provenance["eps"]


def test_stability_scores_on_a_batchnorm_model(engine, tmp_path, monkeypatch):
    """The demo tower has BatchNorm: running statistics are merged but never differentiated."""
    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path))
    opts = {"calib_n": 8, "attack_steps": 1, "traj_steps": 1}.items()
    spec = MergeSpec.from_alpha(0.5, method="stability", keep=0.5, options=opts)
    engine.merge(["natural", "tecoa"], spec)
    ctx = engine.context(["natural", "tecoa"], spec)
    assert ctx                                   # scores were computed and are served from cache
    theta = engine.theta.clone()
    engine.merge(["natural", "tecoa"], spec)     # cached: same merge again
    assert torch.equal(theta, engine.theta)
