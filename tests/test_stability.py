"""Invariants of the PISTOLE-style ``stability`` method (explorer/merging/stability.py) and its
scores (explorer/calibrate/stability.py)."""
from __future__ import annotations

import pytest
import torch

from explorer.calibrate import batch as calib_batch
from explorer.calibrate import stability as scores
from explorer.config import MergeSpec
from explorer.merging import MergeInputs, apply_coefficients, merge_coefficients
from explorer.merging import stability as st
from explorer.merging.sparsify import kept_count

SEGMENTS = [(0, 7), (7, 107), (107, 110), (110, 400), (400, 1000)]
FAST = (("attack_steps", 1), ("calib_n", 8), ("traj_steps", 1))


def _scores(seed=0, n=1000, V=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for _ in range(V)]


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.5, 0.51, 0.8, 0.97])
@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_masks_keep_exact_count_and_minimal_overlap(keep, scope):
    s = _scores()
    masks = st.stability_masks(s, keep, SEGMENTS, scope)
    parts = [(0, 1000)] if scope == "global" else SEGMENTS
    for a, b in parts:
        n, k = b - a, kept_count(b - a, keep)
        for m in masks:
            assert int(m[a:b].sum()) == k
        overlap = int((masks[0][a:b] & masks[1][a:b]).sum())
        assert overlap == max(0, 2 * k - n)          # disjoint below 1/2, covering above
        if 2 * k >= n:
            assert bool((masks[0][a:b] | masks[1][a:b]).all())


def test_uncontested_masks_are_plain_topk_and_contests_go_to_larger_score():
    s0 = torch.tensor([5., 4., 0., 0., 0., 0.])
    s1 = torch.tensor([0., 0., 0., 0., 3., 2.])
    m0, m1 = st.complementary_masks([s0, s1], keep=2 / 6)
    assert m0.tolist() == [True, True, False, False, False, False]
    assert m1.tolist() == [False, False, False, False, True, True]
    # Both want coordinate 0; vector 1 wants it relatively more, vector 0 takes its next best.
    s0, s1 = torch.tensor([2., 1., 0.5, 0.]), torch.tensor([9., 0., 0., 1.])
    m0, m1 = st.complementary_masks([s0, s1], keep=0.5)
    assert m1.tolist() == [True, False, False, True] and m0.tolist() == [False, True, True, False]


def test_contest_scores_decide_contested_coordinates_only():
    s0, s1 = torch.tensor([2., 1., 0.5, 0.]), torch.tensor([9., 0., 0., 1.])
    # By the scores vector 1 takes coordinate 0; by these contest values vector 0 does.
    c0, c1 = torch.tensor([5., 1., 1., 1.]), torch.tensor([1., 1., 1., 1.])
    m0, m1 = st.complementary_masks([s0, s1], keep=0.5, contest_scores=[c0, c1])
    assert m0.tolist() == [True, True, False, False] and m1.tolist() == [False, False, True, True]


def test_coefficients_are_lambda_times_mask_and_endpoints_exact():
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(1000, generator=g)
    fts = [3 * torch.randn(1000, generator=g) for _ in range(2)]
    inputs = MergeInputs([ft - pre for ft in fts], SEGMENTS, context={"stability_scores": _scores()})
    spec = MergeSpec.from_alpha(0.3, method="stability", keep=0.2)
    c = merge_coefficients(inputs, spec)
    # Defaults: claims by |tau| ("magnitude"), contests by |lambda| * |S| ("lambda", "impact").
    masks = st.stability_masks([t.abs() for t in inputs.taus], 0.2, SEGMENTS, "global", weights=spec.lambdas,
                               contest_scores=[s.abs() for s in _scores()])
    for ci, lam, m in zip(c, spec.lambdas, masks):
        assert ci.dtype == torch.float32 and torch.equal(ci, m.float() * lam)
    for alpha in (0.0, 1.0):  # keep=1: c = (1.0, 0.0) / (0.0, 1.0), the fine-tuned weights bit for bit
        spec = MergeSpec.from_alpha(alpha, method="stability", keep=1.0)
        theta = apply_coefficients(pre, fts, merge_coefficients(inputs, spec))
        assert torch.equal(theta, fts[int(alpha)])


@pytest.mark.parametrize("keep", [0.2, 0.8])
def test_lambda_contest_gives_the_weighted_vector_its_own_topk(keep):
    s = [x.abs() for x in _scores(3)]
    k = kept_count(1000, keep)
    for lams, winner in (((1.0, 0.0), 0), ((0.0, 1.0), 1)):
        masks = st.complementary_masks(s, keep, weights=lams)
        own = torch.zeros(1000, dtype=torch.bool).index_fill_(0, torch.topk(s[winner], k).indices, True)
        assert torch.equal(masks[winner], own)
        assert int(masks[1 - winner].sum()) == k
        assert int((masks[0] & masks[1]).sum()) == max(0, 2 * k - 1000)
    # Equal weights are the unweighted contest.
    eq = st.complementary_masks(s, keep, weights=(0.5, 0.5))
    assert all(torch.equal(a, b) for a, b in zip(eq, st.complementary_masks(s, keep)))


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("weights", [None, (0.3, 0.7), (1.0, 0.0)])
def test_cached_orders_give_the_same_masks(keep, weights):
    s = [x.abs() for x in _scores(5)]
    orders = [st.descending_order(x) for x in s]
    fast = st.complementary_masks(s, keep, weights, orders)
    assert all(torch.equal(a, b) for a, b in zip(fast, st.complementary_masks(s, keep, weights)))


def test_unknown_rank_or_contest_is_a_clear_error():
    inputs = MergeInputs([torch.ones(10)] * 2, [(0, 10)], context={"stability_scores": _scores(n=10)})
    for opt in (("rank", "bogus"), ("contest", "bogus"), ("contest_by", "bogus")):
        with pytest.raises(ValueError, match=opt[0]):
            merge_coefficients(inputs, MergeSpec.from_alpha(0.5, method="stability", keep=0.3, options=(opt,)))


def test_missing_scores_is_a_clear_error():
    inputs = MergeInputs([torch.zeros(10)] * 2, [(0, 10)])
    with pytest.raises(ValueError, match="stability_scores"):
        merge_coefficients(inputs, MergeSpec.from_alpha(0.5, method="stability", keep=0.5))


@pytest.fixture(scope="module")
def engine(tiny_zoo):
    from explorer.engine.frontier import Engine
    return Engine(tiny_zoo, device="cpu")


def test_scores_cached_reused_deterministic_and_train_split_only(engine, monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path))  # no score file from another test
    splits = []
    real = calib_batch.get_task
    cache = engine.calibration.kind("stability")
    cache.memory.clear()

    def spy(name, preprocess=None):
        task = real(name, preprocess=preprocess)
        return type("T", (), {"load": lambda self, split, n, seed: (splits.append(split), task.load(split, n, seed))[1]})()
    monkeypatch.setattr(calib_batch, "get_task", spy)
    names = ["natural", "robust"]
    before = cache.computed
    spec = MergeSpec.from_alpha(0.5, method="stability", keep=0.2, options=FAST)
    engine.merge(names, spec)
    assert cache.computed == before + 1 and splits == ["train"]
    key = engine.context(names, spec)["stability_key"]
    path = cache.path(key)
    assert path.exists()
    first = [s.clone() for s in engine.context(names, spec)["stability_scores"]]
    # Other alphas and keeps: same scores, no recomputation.
    for alpha, keep in [(0.2, 0.2), (0.8, 0.5), (1.0, 1.0)]:
        engine.merge(names, MergeSpec.from_alpha(alpha, method="stability", keep=keep, options=FAST))
    assert cache.computed == before + 1
    # A fresh process (empty memory) reads the file: still no recomputation.
    cache.memory.clear()
    mtime = path.stat().st_mtime_ns
    engine.merge(names, spec)
    assert cache.computed == before + 1 and path.stat().st_mtime_ns == mtime
    # Recomputed from scratch (file gone): identical scores.
    cache.memory.clear()
    path.unlink()
    again = engine.context(names, spec)["stability_scores"]
    assert cache.computed == before + 2
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # A calibration setting is part of the key.
    other = MergeSpec.from_alpha(0.5, method="stability", options=FAST + (("beta", 2.0),))
    assert scores.score_settings(engine, other) != scores.score_settings(engine, spec)


def test_engine_endpoints_exact_and_masks_on_real_model(engine):
    names = ["natural", "robust"]
    for alpha in (0.0, 1.0):
        engine.merge(names, MergeSpec.from_alpha(alpha, method="stability", keep=1.0, options=FAST))
        assert torch.equal(engine.theta, engine.vector(names[int(alpha)]).ft)
    spec = MergeSpec.from_alpha(0.5, method="stability", keep=0.1, scope="per_tensor", options=FAST)
    ctx = engine.context(names, spec)
    inputs = MergeInputs([engine.vector(n).tau for n in names], engine.layout.segments,
                         list(engine.layout.keys), ctx)
    c = merge_coefficients(inputs, spec)
    for a, b in engine.layout.segments:
        k = kept_count(b - a, 0.1)
        assert [int((ci[a:b] != 0).sum()) for ci in c] == [k, k]
        if 2 * k <= b - a:
            assert not bool(((c[0][a:b] != 0) & (c[1][a:b] != 0)).any())


def test_the_engine_is_a_calibration_host(engine):
    """calibrate/ is typed against CalibrationHost; the Engine must offer every member of it."""
    from explorer.calibrate.host import CalibrationHost
    from explorer.data import get_task

    assert set(CalibrationHost.__annotations__) == {"device", "base_digest", "pre", "layout", "model", "tokenizer",
                                                    "manifest"}   # each checked below, by value
    assert engine.device == torch.device("cpu") and len(engine.base_digest) >= 16
    assert engine.pre.dtype == torch.float32 and engine.pre.numel() == engine.layout.numel
    assert engine.pre.device == engine.device
    params = dict(engine.model.named_parameters())
    assert all(tuple(params[k].shape) == tuple(s) for k, s in zip(engine.layout.keys, engine.layout.shapes))
    tokens = engine.tokenizer(["a photo of a circle"])
    assert tokens.dtype == torch.long and tokens.shape == (1, engine.model.context_length)
    assert engine.manifest.defaults["task"] == "shapes"
    clf = engine.classifier("shapes")
    assert list(clf.classnames) == list(get_task("shapes").classnames) and len(clf.templates) >= 1
    assert clf.preprocess(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert engine.normalization(["natural", "robust"]) == "clip" and engine.preprocess_cfg()["size"] in (32, (32, 32))
    nat, rob = engine.vectors(["natural", "robust"])
    assert (nat.role, rob.role) == ("natural", "robust") and nat.digest != rob.digest
    assert engine.vector("natural") is nat and nat.tau.shape == engine.pre.shape
    assert torch.equal(nat.tau, nat.ft - engine.pre)
