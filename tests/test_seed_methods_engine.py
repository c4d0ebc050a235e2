"""pistole, iso_c and tsv_m through the engine on the tiny open_clip zoo (real models, real preparer)."""
from __future__ import annotations

import pytest
import torch

from explorer.calibrate import pistole_prep
from explorer.config import AttackSpec, EvalSpec, MergeSpec
from explorer.merging.spectral import matrix_shape

FAST = (("attack_steps", 1), ("calib_n", 8), ("pci_samples", 2), ("traj_steps", 1))
NAMES = ["natural", "robust"]


@pytest.fixture(scope="module")
def engine(tiny_zoo):
    from explorer.engine.frontier import Engine
    from explorer.store import Store
    return Engine(tiny_zoo, device="cpu", store=Store(":memory:"))


def test_pistole_scores_cached_deterministic_and_cost_stored_with_the_point(engine, monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path))
    cache = engine.calibration.kind("pistole")
    cache.memory.clear()
    before = cache.computed
    spec = MergeSpec.from_alpha(0.8, method="pistole", options=FAST)
    ctx = engine.context(NAMES, spec)
    assert cache.computed == before + 1 and ctx["pistole_robust"] == [False, True]
    cost = ctx["prep_cost"]
    # natural: (K+1) x (2 x PCI draws (antithetic) + 1 + gradient); robust adds PGD-1 per trajectory point
    assert cost["forward"] == 2 * (2 * 2 + 1 + 1) + 2 * (2 * 2 + 1 + 1 + 1) and cost["backward"] == 2 * 1 + 2 * 2
    first = [g.clone() for g in ctx["pistole_grads"]]
    text = [not k.startswith("visual.") for k in engine.layout.keys]
    for g in first:
        assert float(g.min()) >= 0.0 and float(g.max()) > 0.0
        assert all(float(g[a:b].abs().max()) == 0.0 for (a, b), t in zip(engine.layout.segments, text) if t)
    # merge-time options and alpha reuse the scores; a score option is part of the key
    for alpha, kappa in [(0.2, 1.0), (0.5, 3.0)]:
        engine.merge(NAMES, MergeSpec.from_alpha(alpha, method="pistole", options=FAST + (("kappa", kappa),)))
    assert cache.computed == before + 1
    other = MergeSpec.from_alpha(0.8, method="pistole", options=FAST[:-1] + (("traj_steps", 0),))
    assert pistole_prep.score_settings(engine, other) != pistole_prep.score_settings(engine, spec)
    # recomputed from scratch with the same seed: identical scores; the point row carries the cost
    cache.memory.clear()
    cache.path(ctx["pistole_key"]).unlink()
    again = engine.context(NAMES, spec)["pistole_grads"]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    row = engine.point(["natural"], ["robust"], spec, AttackSpec(name="none", eps=0.0),
                       EvalSpec(task="shapes", n=8, seed=0, split="test"))
    assert row["prep_cost"]["forward"] == cost["forward"] and row["prep_cost"]["seconds"] >= 0.0


def test_pistole_masks_the_vision_tower_weights_the_rest_and_kappa_0_is_no_preparation(engine):
    taus = [engine.vector(n).tau for n in NAMES]
    pre = engine.pre
    text = [(a, b) for k, (a, b) in zip(engine.layout.keys, engine.layout.segments) if not k.startswith("visual.")]
    vis = [(a, b) for k, (a, b) in zip(engine.layout.keys, engine.layout.segments) if k.startswith("visual.")]
    spec = MergeSpec.from_alpha(0.3, method="pistole", options=FAST + (("kappa", 2.0), ("outside", "base")))
    engine.merge(NAMES, spec)
    assert all(torch.equal(engine.theta[a:b], pre[a:b]) for a, b in text)   # base: natural's text tower not merged
    engine.merge(NAMES, MergeSpec.from_alpha(0.3, method="pistole", options=FAST + (("kappa", 2.0),)))
    for a, b in text:   # weighted (default): the natural text tower at its plain coefficient 0.7
        assert torch.allclose(engine.theta[a:b], pre[a:b] + 0.7 * taus[0][a:b], atol=1e-6)
    assert any(not torch.allclose(engine.theta[a:b], pre[a:b] + 0.7 * taus[0][a:b] + 0.3 * taus[1][a:b])
               for a, b in vis)   # the masks act on the vision tower
    plain = MergeSpec.from_alpha(0.3, method="pistole", options=(("kappa", 0.0),))
    assert engine.context(NAMES, plain)["pistole_grads"] is None
    engine.merge(NAMES, plain)
    for a, b in vis + text:   # kappa = 0: plain weighted addition everywhere
        expect = pre[a:b] + 0.7 * taus[0][a:b] + 0.3 * taus[1][a:b]
        assert torch.allclose(engine.theta[a:b], expect, atol=1e-6)


@pytest.mark.parametrize("method", ["iso_c", "tsv_m"])
def test_spectral_methods_on_the_real_layout(engine, method):
    engine.merge(NAMES, MergeSpec(method=method, lambdas=(0.0, 0.0)))
    assert torch.equal(engine.theta, engine.pre)      # scale 0: theta_0 exactly
    engine.merge(NAMES, MergeSpec.from_alpha(0.5, method=method))
    delta = engine.theta - engine.pre
    assert bool(torch.isfinite(delta).all())
    checked = 0
    for key, (a, b), shape in zip(engine.layout.keys, engine.layout.segments, engine.layout.shapes):
        mn = matrix_shape(key, shape)
        if mn is None or min(mn) < 2:
            continue
        s = torch.linalg.svdvals(delta[a:b].view(mn).double())
        if method == "iso_c":
            assert float(s.max() - s.min()) <= 1e-4 * float(s.max()) + 1e-12
        else:
            assert int((s > 1e-6 * s.max()).sum()) <= 2 * (min(mn) // 2)
        checked += 1
    assert checked > 0


def test_sweep_options_reach_the_methods_that_declare_them():
    from explorer.config import SweepSpec, parse_options
    from explorer.engine.points import sweep_grid
    parsed = parse_options("kappa=2, q=0.05, q_scope=global,")
    assert parsed == (("kappa", 2), ("q", 0.05), ("q_scope", "global"))
    assert parse_options("") == ()
    for bad in ("kappa", "=2"):
        with pytest.raises(ValueError, match=f"^method options are key=value pairs separated by commas; got '{bad}'$"):
            parse_options(bad)
    with pytest.raises(ValueError, match="^method option 'q' given twice$"):
        parse_options("q=1, q=2")
    spec = SweepSpec(manifest="m", base="b", natural=("n",), robust=("r",), alphas=(0.5,),
                     methods=("task_arithmetic", "pistole", "iso_c"),
                     options=(("kappa", 2), ("conv", "average")))
    grid = {m.method: dict(m.options) for m in sweep_grid(spec)}
    assert grid == {"task_arithmetic": {}, "pistole": {"kappa": 2}, "iso_c": {"conv": "average"}}
    assert SweepSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="has option nope"):
        sweep_grid(SweepSpec(manifest="m", base="b", natural=("n",), robust=("r",), options=(("nope", 1),)))


def test_ui_method_options_text_becomes_the_spec_options():
    from explorer.ui import common
    spec = common.merge_spec(["natural"], ["robust"], "pistole", 0.8, 1.0, "global", False, [],
                             "kappa=2, q=0.05")
    assert dict(spec.options) == {"kappa": 2, "q": 0.05} and spec.lambdas == pytest.approx((0.2, 0.8))
    assert common.merge_spec(["natural"], ["robust"], "iso_c", 0.5, 1.0, "global", False, []).options == ()
    with pytest.raises(ValueError, match="no option 'kappa'.*conv"):
        common.merge_spec(["natural"], ["robust"], "iso_c", 0.5, 1.0, "global", False, [], "kappa=2")


def test_pistole_masks_are_memoised_per_merge_time_setting(engine):
    spec = MergeSpec.from_alpha(0.3, method="pistole", options=FAST + (("kappa", 2.0),))
    engine.merge(NAMES, spec)
    memo = engine.context(NAMES, spec)["memo"]
    (key,) = memo
    held = memo[key]
    engine.merge(NAMES, MergeSpec.from_alpha(0.7, method="pistole", options=FAST + (("kappa", 2.0),)))
    assert memo[key] is held                       # another alpha: the same masks, not rebuilt
    engine.merge(NAMES, MergeSpec.from_alpha(0.7, method="pistole", options=FAST + (("kappa", 3.0),)))
    assert key not in memo and len(memo) == 1      # another kappa: rebuilt, one setting held


def test_point_line_prints_the_score_cost():
    from explorer.cli.common import point_line
    row = {"method": "pistole", "alpha": 0.8, "keep": 1.0, "clean_acc": 0.5, "robust_acc": 0.25, "n": 8,
           "attack": "fgsm", "cached": False, "prep_cost": {"forward": 75, "backward": 21, "seconds": 3.25}}
    assert point_line(row).endswith("scores: 75 fwd + 21 bwd passes, 3.2 s")
    assert "scores" not in point_line({**row, "prep_cost": None})
