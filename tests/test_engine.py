"""The invariants of DESIGN.md on a sweep over tiny real open_clip models."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec
from explorer.core.cancel import CancelToken, cancel_scope
from explorer.engine.frontier import Engine
from explorer.evaluation.evaluate import Images, evaluate
from explorer.store import Store
from explorer.studies.bench import plain_classifier
from explorer.zoo import load_manifest

EV = EvalSpec(task="shapes", n=48, seed=0)
PGD = AttackSpec("pgd-5", eps=4 / 255, seed=0)


@pytest.fixture(scope="module")
def engine(tiny_zoo, tmp_path_factory):
    return Engine(tiny_zoo, device="cpu", store=Store(tmp_path_factory.mktemp("st") / "r.sqlite"))


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare", "magnitude"])
def test_alpha_endpoints_reproduce_the_fine_tunes_exactly(engine, tiny_zoo, method):
    root = tiny_zoo.parent
    nat = load_file(str(root / "natural.safetensors"))
    rob = load_file(str(root / "robust.safetensors"))
    base = load_file(str(root / "base.safetensors"))
    at0 = engine.merged_state_dict(["natural", "robust"], MergeSpec.from_alpha(0.0, method=method))
    assert all(torch.equal(at0[k], nat[k]) for k in nat)
    at1 = engine.merged_state_dict(["natural", "robust"], MergeSpec.from_alpha(1.0, method=method))
    assert all(torch.equal(at1[f"visual.{k}"], v) for k, v in rob.items())
    assert all(torch.equal(at1[k], base[k]) for k in base if not k.startswith("visual."))


def test_eps_zero_gives_clean_and_robust_never_rises_with_eps(engine):
    spec = MergeSpec.from_alpha(0.5)
    rows = [engine.point(["natural"], ["robust"], spec, AttackSpec("pgd-5", eps=e), EV, use_store=False)
            for e in (0.0, 1 / 255, 4 / 255, 16 / 255)]
    assert rows[0]["robust_acc"] == rows[0]["clean_acc"] > 0
    accs = [r["robust_acc"] for r in rows]
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert all(r["robust_acc"] <= r["clean_acc"] for r in rows)
    assert accs[-1] < accs[0]      # the attack does something on this model


def test_same_seed_same_numbers(engine, tiny_zoo):
    spec = MergeSpec.from_alpha(0.3, method="dare", keep=0.5, seed=1)
    a = engine.point(["natural"], ["robust"], spec, PGD, EV, use_store=False, use_bank=False)
    other = Engine(tiny_zoo, device="cpu")
    b = other.point(["natural"], ["robust"], spec, PGD, EV, use_store=False, use_bank=False)
    assert (a["clean_acc"], a["robust_acc"]) == (b["clean_acc"], b["robust_acc"])


def test_fast_path_never_above_plain_path(engine, tiny_zoo):
    """Bank + resident merge vs a fresh model built from the merged state dict, attacked alone."""
    names = ["natural", "robust"]
    manifest = load_manifest(tiny_zoo)
    sweep = SweepSpec(manifest=str(tiny_zoo), base="base", natural=("natural",), robust=("robust",),
                      alphas=(0.0, 0.25, 0.5, 0.75, 1.0), attack=PGD, eval=EV)
    fast = list(engine.sweep(sweep, progress=False))
    for row in fast:
        spec = MergeSpec.from_alpha(row["alpha"])
        clf = plain_classifier(manifest, "base", engine.merged_state_dict(names, spec), EV.task)
        x, y = engine.eval_data(EV)
        plain = evaluate(clf, Images(x, y), PGD)
        assert row["clean_acc"] == plain.clean_acc
        assert row["robust_acc"] <= plain.robust_acc


def test_a_torchattacks_attack_leaves_every_batchnorm_in_eval_mode():
    """The plain path's torchattacks restored the classifier's mode with a recursive .train()
    (a fresh wrapper said "training"): its robust accuracy was then measured with BatchNorm on
    batch statistics, and the running statistics moved (demo zoo, pgd-2, n = 16: plain 0.56 vs
    the engine's 0.75 on the same images)."""
    from explorer.studies.bench import torchattacks_attack
    from explorer.zoo import default_manifest_path, load_weights

    manifest = load_manifest(default_manifest_path())          # a ResNet tower: BatchNorm
    ref = plain_classifier(manifest, "pretrained", {}, EV.task).model.state_dict()
    clf = plain_classifier(manifest, "pretrained", load_weights(manifest.get("tecoa"), ref), EV.task)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.modules())   # the fault needs one
    assert not clf.training
    from explorer.data import get_task
    x, y = get_task(EV.task).load("test", 16, 0)
    with torch.no_grad():
        before = clf(x)
    torchattacks_attack(clf, AttackSpec("pgd-2", eps=4 / 255), len(clf.classnames))(x[:8], y[:8])
    assert not any(m.training for m in clf.modules())
    with torch.no_grad():
        assert torch.equal(clf(x), before)            # running statistics untouched
        assert torch.allclose(clf(x[:3]), before[:3], atol=1e-5)   # each row its own (eval BatchNorm)


def test_store_serves_reruns_and_interrupted_sweep_resumes(tiny_zoo, tmp_path):
    store = Store(tmp_path / "r.sqlite")
    spec = SweepSpec(manifest=str(tiny_zoo), base="base", natural=("natural",), robust=("robust2",),
                     alphas=(0.0, 0.5, 1.0), attack=AttackSpec("pgd-2", eps=4 / 255), eval=EV)
    seen = []
    with cancel_scope(CancelToken(also=lambda: len(seen) >= 2)):
        first = list(Engine(tiny_zoo, store=store).sweep(spec, on_point=seen.append, progress=False))
    assert len(first) == 2 and len(store) == 2          # cut off midway: two points kept
    again = list(Engine(tiny_zoo, store=store).sweep(spec, progress=False))
    assert [r["cached"] for r in again] == [True, True, False]
    assert [r["robust_acc"] for r in again[:2]] == [r["robust_acc"] for r in first]
    for r in again:
        for key in ("method", "alpha", "keep", "scope", "lambdas", "clean_acc", "robust_acc",
                    "attack", "eps", "n", "seed", "seconds", "cached"):
            assert key in r


def test_stop_inside_a_point_abandons_it_and_keeps_the_rest(tiny_zoo, tmp_path):
    store = Store(tmp_path / "r.sqlite")
    spec = SweepSpec(manifest=str(tiny_zoo), base="base", natural=("natural",), robust=("robust2",),
                     alphas=(0.0, 0.5, 1.0), attack=AttackSpec("pgd-50", eps=1e-4), eval=EV)
    seen, polls = [], []

    def stop():   # fires inside the second point's attack, after a few PGD steps
        polls.append(len(seen))
        return polls.count(1) > 3

    with cancel_scope(CancelToken(also=stop)):
        rows = list(Engine(tiny_zoo, store=store).sweep(spec, on_point=seen.append, progress=False))
    assert len(rows) == 1 and len(store) == 1 and polls.count(1) == 4
    again = list(Engine(tiny_zoo, store=store).sweep(spec, progress=False))
    assert [r["cached"] for r in again] == [True, False, False]


def test_bad_lambda_count_and_unknown_method(engine):
    with pytest.raises(ValueError, match="lambdas"):
        engine.merge(["natural", "robust"], MergeSpec(lambdas=(1.0,)))
    with pytest.raises(KeyError, match="task_arithmetic"):
        engine.merge(["natural", "robust"], MergeSpec(method="nope", lambdas=(0.5, 0.5)))


def test_no_vectors_is_the_pretrained_model(engine, tiny_zoo):
    base = load_file(str(tiny_zoo.parent / "base.safetensors"))
    engine.merge(["natural"], MergeSpec(lambdas=(1.0,)))
    sd = engine.merged_state_dict([], MergeSpec(lambdas=()))
    assert all(torch.equal(sd[k], base[k]) for k in base)


def test_a_method_version_keys_its_own_points_only(engine, monkeypatch):
    import dataclasses

    from explorer import merging

    names, attack = ["natural", "robust"], AttackSpec("pgd-2", eps=4 / 255)
    ta = MergeSpec.from_alpha(0.5)
    stab = MergeSpec.from_alpha(0.5, method="stability", keep=0.2)
    before = engine.point_key(names, ta, attack, EV), engine.point_key(names, stab, attack, EV)
    monkeypatch.setitem(merging.METHODS, "stability", dataclasses.replace(merging.METHODS["stability"], version=99))
    after = engine.point_key(names, ta, attack, EV), engine.point_key(names, stab, attack, EV)
    assert after[0] == before[0] and after[1] != before[1]


def test_settings_a_method_ignores_neither_label_nor_duplicate_its_points(tiny_zoo, tmp_path):
    """Task arithmetic at keep 0.2 is the keep-1 model: one point, labelled keep 1, one key."""
    eng = Engine(tiny_zoo, device="cpu", store=Store(tmp_path / "r.sqlite"))
    spec = SweepSpec(manifest=str(tiny_zoo), base="base", natural=("natural",), robust=("robust",),
                     methods=("task_arithmetic", "ties"), alphas=(0.0, 1.0), keeps=(0.2, 0.5),
                     scope="per_tensor", attack=PGD, eval=EV)
    rows = list(eng.sweep(spec, progress=False))
    ta = [r for r in rows if r["method"] == "task_arithmetic"]
    assert [(r["alpha"], r["keep"], r["scope"]) for r in ta] == [(0.0, 1.0, "global"), (1.0, 1.0, "global")]
    assert sorted((r["keep"], r["alpha"]) for r in rows if r["method"] == "ties") == \
        [(0.2, 0.0), (0.2, 1.0), (0.5, 0.0), (0.5, 1.0)]
    assert all(r["scope"] == "per_tensor" for r in rows if r["method"] == "ties")
    # A point asked for with an ignored setting is the stored keep-1 point.
    again = eng.point(["natural"], ["robust"], MergeSpec.from_alpha(1.0, keep=0.3, seed=5), PGD, EV)
    assert again["cached"] and again["key"] == ta[1]["key"]
    # TIES at keep 1 does not trim, so its scope is moot: stored once too.
    dense = [eng.point(["natural"], ["robust"], MergeSpec.from_alpha(0.5, method="ties", scope=s), PGD, EV)
             for s in ("global", "per_tensor")]
    assert dense[1]["cached"] and dense[0]["key"] == dense[1]["key"]
