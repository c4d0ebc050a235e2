"""The attack batch from an activation budget (explorer.evaluation.activation) on a tiny real ViT: the
measured bytes, the batch within the budget, no forward beyond it, and numbers that do not
depend on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.attacks.gradient import BUCKET, bucketed
from explorer.attacks.safety import AttackModel, attack_context
from explorer.config import AttackSpec, EvalSpec, MergeSpec
from explorer.engine.frontier import Engine
from explorer.evaluation.activation import (
    BUDGETS,
    MiB,
    batch_for,
    budget_for,
    bytes_per_image,
    saved_bytes,
)
from explorer.evaluation.zeroshot import TEXT_UNITS, build_text_head, prompt_bytes
from explorer.store import Store

EV = EvalSpec("shapes", n=40, seed=3)
PGD = AttackSpec("pgd-3", 16 / 255, seed=1)   # here: 4 of 40 clean-correct, 1 survives


@pytest.fixture(scope="module")
def engine(tiny_zoo) -> Engine:
    return Engine(tiny_zoo, device="cpu", store=None)


def test_per_image_bytes_are_the_growth_of_what_autograd_saves(engine):
    clf = engine.classifier("shapes")
    x = engine.eval_data(EV)[0]
    per = bytes_per_image(clf, x)
    # At least the input the first layer saves (3 x 32 x 32 float32 after resizing).
    assert per >= 3 * 32 * 32 * 4
    net = AttackModel(clf)
    with attack_context(net):       # frozen parameters, as in an attack
        one, three = saved_bytes(net, x[:1]), saved_bytes(net, x[:3])
    assert three - one == 2 * per   # linear in the batch: what grows is per image
    assert engine.batch_plan(EV).per_image == per


def test_batch_for_respects_budget_cap_and_buckets():
    assert batch_for(10, 35, 256) == 3
    assert batch_for(10, 5, 256) == 1                  # one image even over budget
    assert batch_for(1, 10 ** 9, 256) == 256           # the configured batch caps it
    assert batch_for(10, 10 * (2 * BUCKET + 5), 256) == 2 * BUCKET   # a multiple of BUCKET
    assert batch_for(10, 10 * 20, 20) == 20            # ... unless the cap is smaller
    assert budget_for("cpu") == BUDGETS["cpu"] == 128 * MiB and budget_for("cuda:1") == BUDGETS["cuda"]


def test_every_budget_keeps_a_step_within_the_memory_bounds_slack():
    """The bound is 1.25 x the resident floor + 1 GiB; its slack is at least 1 GiB for any model.
    A step's transient is ~1.4 x its saved bytes + 40 MiB (measured, activation.py), so every
    device's budget must keep that under 1 GiB (a 1 GiB CUDA budget did not: ~1.44 GiB)."""
    for device, budget in BUDGETS.items():
        assert 1.4 * budget + 40 * MiB <= 1024 * MiB, device


def test_bucket_padding_never_exceeds_the_batch():
    assert len(bucketed(torch.arange(5))) == BUCKET
    assert len(bucketed(torch.arange(5), limit=7)) == 7
    assert len(bucketed(torch.arange(BUCKET + 1), limit=BUCKET + 3)) == BUCKET + 3
    assert len(bucketed(torch.arange(9), limit=9)) == 9


def test_engine_batch_fits_the_budget_and_no_forward_exceeds_it(tiny_zoo):
    per = Engine(tiny_zoo, device="cpu").batch_plan(EV).per_image
    eng = Engine(tiny_zoo, device="cpu", activation_budget=3 * per + per // 2)
    plan = eng.batch_plan(EV)
    assert plan.batch == 3 and plan.batch * plan.per_image <= plan.budget < 4 * plan.per_image
    rows: list[int] = []
    hook = eng.model.visual.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    try:
        eng.point(["natural"], ["robust"], MergeSpec.from_alpha(0.5), PGD, EV)
    finally:
        hook.remove()
    assert rows and max(rows) <= 3


def test_a_point_is_the_same_at_any_batch(tiny_zoo, tmp_path):
    """Per-sample seeded attacks: budgeted batches give the numbers of one whole batch, bit for bit."""
    flags = []
    for budget, cap, batch in ((None, None, 256), (1, None, 1), (None, 7, 7)):
        store = Store(tmp_path / f"{batch}.db")
        eng = Engine(tiny_zoo, device="cpu", store=store, activation_budget=budget, batch_size=cap)
        row = eng.point(["natural"], ["robust"], MergeSpec.from_alpha(0.5), PGD, EV)
        assert eng.batch_plan(EV).batch == batch
        flags.append((row["clean_acc"], row["robust_acc"], *store.flags(row["key"])))
    clean, robust = flags[0][2], flags[0][3]
    assert clean.sum() > robust.sum() > 0    # the attack fooled some points, not all
    for other in flags[1:]:
        assert other[:2] == flags[0][:2]
        assert np.array_equal(other[2], clean) and np.array_equal(other[3], robust)


def test_text_head_batches_by_budget_and_equals_one_batch(engine, monkeypatch):
    model, tok = engine.model, engine.tokenizer
    names, templates = [f"class {i}" for i in range(10)], ("a photo of a {}.", "a {}.", "art of a {}.")
    assert prompt_bytes(model) == TEXT_UNITS * 12 * 32 * 4     # tiny tower: context 12, width 32
    calls: list[int] = []
    real = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda t: calls.append(len(t)) or real(t))
    whole = build_text_head(model, tok, names, templates, budget=10 ** 12)
    assert calls == [30]
    calls.clear()
    parts = build_text_head(model, tok, names, templates, budget=7 * prompt_bytes(model))
    assert calls == [6] * 5                                  # 7 prompts fit: 2 whole classes
    calls.clear()
    build_text_head(model, tok, names, templates, budget=1)  # over budget: still one class
    assert calls == [3] * 10
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    assert torch.equal(parts.argmax(1), whole.argmax(1))
