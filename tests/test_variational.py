"""Invariants of the VTVC-style ``variational`` method (explorer/merging/variational.py) and its
posterior (explorer/calibrate/variational.py)."""
from __future__ import annotations

import pytest
import torch

from explorer.config import MergeSpec
from explorer.merging import MergeInputs, magnitude, merge_coefficients
from explorer.merging import variational as vt
from explorer.merging.sparsify import kept_count

FAST = (("attack_steps", 1), ("calib_n", 8), ("vi_steps", 3))
NAMES = ["natural", "robust"]


def test_gates_map_to_multipliers():
    gate = torch.rand(2, 13, generator=torch.Generator().manual_seed(0))
    mult = vt.block_multipliers(gate, torch.full_like(gate, 2.0), band=0.1)
    on, unsure, off = gate >= 0.6, (gate - 0.5).abs() < 0.1, gate <= 0.4
    assert bool((on | unsure | off).all())
    assert bool((mult[on] == 2.0).all()) and bool((mult[unsure] == 1.0).all())
    assert bool((mult[off] == 0).all())


def test_block_index_modes():
    names = ["visual.conv1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight",
             "visual.transformer.resblocks.0.mlp.c_fc.weight", "visual.transformer.resblocks.1.ln_1.weight"]
    assert vt.block_index(names, "tensor") == [0, 1, 2, 3]
    assert vt.block_index(names, "layer") == [0, 1, 1, 2]


@pytest.fixture(scope="module")
def engine(tiny_zoo):
    from explorer.engine.frontier import Engine
    return Engine(tiny_zoo, device="cpu")


def _coeffs(engine, spec):
    inputs = MergeInputs([engine.vector(n).tau for n in NAMES], engine.layout.segments,
                         list(engine.layout.keys), engine.context(NAMES, spec))
    return merge_coefficients(inputs, spec)


def test_endpoints(engine):
    # Default blend: keep=1, alpha=0/1 -> coefficients (1.0, 0.0)/(0.0, 1.0): the fine-tunes exactly.
    for alpha in (0.0, 1.0):
        spec = MergeSpec.from_alpha(alpha, method="variational", keep=1.0, options=FAST)
        assert _coeffs(engine, spec) == [1.0 - alpha, alpha]
        engine.merge(NAMES, spec)
        assert torch.equal(engine.theta, engine.vector(NAMES[int(alpha)]).ft)
    # endpoint_blend="none": alpha=0 -> robust coefficient exactly 0.0, natural = gated posterior
    # multipliers, constant on each block.
    spec = MergeSpec.from_alpha(0.0, method="variational", keep=1.0, options=FAST + (("endpoint_blend", "none"),))
    c_nat, c_rob = _coeffs(engine, spec)
    post = engine.context(NAMES, spec)["variational_posterior"]
    mult = vt.block_multipliers(post["gate"], post["mu"], 0.1)[0]
    assert c_rob == 0.0
    if isinstance(c_nat, float):  # every block at multiplier exactly 1 collapses to the constant 1.0
        assert c_nat == 1.0 and bool((mult == 1.0).all())
        return
    for b, (a, e) in enumerate(engine.layout.segments):
        assert bool((c_nat[a:e] == mult[b]).all())


def test_cached_reused_and_seeded(engine, monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path))  # no posterior file from another test
    cache = engine.calibration.kind("variational")
    cache.memory.clear()
    before = cache.computed
    spec = MergeSpec.from_alpha(0.5, method="variational", keep=0.5, options=FAST)
    c = _coeffs(engine, spec)
    assert cache.computed == before + 1
    assert all(int((ci != 0).sum()) <= kept_count(engine.layout.numel, 0.5) for ci in c)
    # Other alpha/keep: no recomputation; an empty memory cache reads the file.
    computed = cache.computed
    for alpha, keep in [(0.2, 0.3), (0.9, 1.0)]:
        engine.merge(NAMES, MergeSpec.from_alpha(alpha, method="variational", keep=keep, options=FAST))
    cache.memory.clear()
    first = engine.context(NAMES, spec)["variational_posterior"]
    assert cache.computed == computed
    # Same seed recomputed from scratch -> identical posterior; another seed -> another one.
    key = engine.context(NAMES, spec)["variational_key"]
    cache.memory.clear()
    cache.path(key).unlink()
    again = engine.context(NAMES, spec)["variational_posterior"]
    assert cache.computed == computed + 1
    assert all(torch.equal(first[k], again[k]) for k in ("mu", "sigma", "gate"))
    other = engine.context(NAMES, MergeSpec.from_alpha(0.5, method="variational", seed=1, options=FAST))
    assert not torch.equal(other["variational_posterior"]["mu"], first["mu"])


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_keep_is_magnitudes_mask_under_the_multipliers(engine, scope):
    """keep < 1 keeps each vector's top-keep |tau| coordinates, as every other method does: the
    endpoints are magnitude's merge exactly, and in between only those coordinates move."""
    for alpha in (0.0, 1.0):
        spec = MergeSpec.from_alpha(alpha, method="variational", keep=0.3, scope=scope, options=FAST)
        mag = magnitude.magnitude(MergeInputs([engine.vector(n).tau for n in NAMES], engine.layout.segments,
                                              list(engine.layout.keys)), spec)
        got = _coeffs(engine, spec)
        for g, m in zip(got, mag):
            assert (g == m) if isinstance(m, float) else torch.equal(g, m)
    spec = MergeSpec.from_alpha(0.5, method="variational", keep=0.3, scope=scope, options=FAST)
    for name, c in zip(NAMES, _coeffs(engine, spec)):
        kept = magnitude.trim_mask(engine.vector(name).tau, 0.3, engine.layout.segments, scope)
        assert not bool(((c != 0) & ~kept).any())
