"""A point's number depends only on its spec (issue 11, item 4), on the demo zoo.

The issue's input: a default sweep natural -> tecoa (pgd-10, n=128, seed 0) reported robust
0.7344 at alpha = 1 while ``evaluate --model tecoa`` reported 0.7422, because adversarial examples
found at earlier points were carried over. Now both orders give identical numbers, and carrying
examples over is a labelled variant with its own store key.
"""
from __future__ import annotations

import json

import pytest

from explorer.app.service import Service
from explorer.cli import main
from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec
from explorer.engine.frontier import REUSE_TAG, Engine
from explorer.store import Store
from explorer.zoo import default_manifest_path

ATTACK = AttackSpec("pgd-10", eps=4 / 255, seed=0)
EV = EvalSpec("shapes", n=128, seed=0)


def _sweep(engine: Engine, **kw) -> list[dict]:
    spec = SweepSpec(manifest=str(default_manifest_path()), base=engine.base, natural=("natural",),
                     robust=("tecoa",), alphas=(0.0, 0.5, 1.0), attack=ATTACK, eval=EV)
    return list(engine.sweep(spec, progress=False, **kw))


def _acc(row: dict) -> tuple[float, float]:
    return row["clean_acc"], row["robust_acc"]


@pytest.fixture(scope="module")
def sweep_first() -> tuple[list[dict], dict, dict]:
    engine = Engine(default_manifest_path(), device="cpu")
    rows = _sweep(engine)
    return rows, engine.model_point("natural", ATTACK, EV), engine.model_point("tecoa", ATTACK, EV)


def test_sweep_endpoints_equal_the_models_evaluated_alone_in_either_order(sweep_first):
    rows, nat_after, rob_after = sweep_first
    engine = Engine(default_manifest_path(), device="cpu")
    rob_before, nat_before = engine.model_point("tecoa", ATTACK, EV), engine.model_point("natural", ATTACK, EV)
    rows_after = _sweep(engine)
    assert _acc(rows[-1]) == _acc(rob_after) == _acc(rob_before) == _acc(rows_after[-1])
    assert _acc(rows[0]) == _acc(nat_after) == _acc(nat_before) == _acc(rows_after[0])
    assert [_acc(r) for r in rows] == [_acc(r) for r in rows_after]
    assert all(r["n_reused"] == 0 and not r["reuse"] and not r["attack"].endswith(REUSE_TAG) for r in rows)
    assert rob_after["robust_acc"] > 0.5      # the attack has something to prove on tecoa


def test_reuse_is_an_explicit_labelled_variant_stored_apart(sweep_first, tmp_path):
    rows, _, _ = sweep_first
    engine = Engine(default_manifest_path(), device="cpu", store=Store(tmp_path / "s.sqlite"))
    reused = _sweep(engine, use_bank=True)
    assert all(r["reuse"] and r["attack"] == ATTACK.label + REUSE_TAG for r in reused)
    assert all(f["robust_acc"] >= r["robust_acc"] for f, r in zip(rows, reused))   # reuse only tightens
    fresh = _sweep(engine)                                       # not served the reuse rows
    assert not any(r["cached"] for r in fresh)
    assert [_acc(r) for r in fresh] == [_acc(r) for r in rows]
    assert {r["key"] for r in fresh}.isdisjoint({r["key"] for r in reused})


def test_service_points_are_history_free_and_the_preview_variant_is_labelled(sweep_first):
    rows, _, rob = sweep_first
    service = Service(None, device="cpu", store_path="none")
    spec = SweepSpec(manifest=service.manifest_path, base="pretrained", natural=("natural",), robust=("tecoa",),
                     alphas=(0.0, 1.0), attack=ATTACK, eval=EV)
    streamed = list(service.sweep(spec))
    assert _acc(streamed[-1]) == _acc(rob) and _acc(streamed[1]) == _acc(rows[0])
    quick = service.point("pretrained", ["natural"], ["tecoa"], MergeSpec.from_alpha(1.0), ATTACK, EV, reuse=True)
    assert quick["attack"] == ATTACK.label + REUSE_TAG and quick["robust_acc"] <= rob["robust_acc"]


def test_cli_sweep_at_alpha_one_equals_cli_evaluate_of_the_robust_model(tmp_path):
    flags = ["--attack", "pgd-3", "--n", "64", "--seed", "0", "--no-store"]
    assert main(["sweep", "--natural", "natural", "--robust", "tecoa", "--alphas", "0,0.5,1", *flags,
                 "--out", str(tmp_path / "s.json")]) == 0
    assert main(["evaluate", "--model", "tecoa", *flags, "--out", str(tmp_path / "e.json")]) == 0
    assert main(["evaluate", "--model", "natural", *flags, "--out", str(tmp_path / "n.json")]) == 0
    sweep = json.loads((tmp_path / "s.json").read_text())
    rob, nat = (json.loads((tmp_path / f).read_text())[0] for f in ("e.json", "n.json"))
    assert _acc(sweep[-1]) == _acc(rob) and _acc(sweep[0]) == _acc(nat)
    assert sweep[-1]["robust_ci"] == rob["robust_ci"]
