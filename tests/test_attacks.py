"""Invariants of the attack registry on tiny real models (an MLP and a tiny open_clip ViT)."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torchattacks
from torch import nn

import explorer.attacks
from explorer.attacks import (
    ATTACK_NAMES,
    ATTACKS,
    attack_cost,
    attack_help,
    check_gradients,
    check_logits,
    find_attack,
    parse_attack,
    records,
    reference_autoattack,
    run_attack,
    stages,
    validate_attack,
)
from explorer.attacks.safety import AttackModel, attack_context
from explorer.attacks.stages import build_stage
from explorer.config import AttackSpec
from explorer.core.cancel import Cancelled, CancelToken, cancel_scope
from explorer.evaluation.zeroshot import ZeroShotClassifier

# Every attack of the registry (one instance per pattern) but the ones with Square's 5000 queries:
# a new record is covered by the ball / accuracy / eps=0 invariants below without editing a list.
FAST = [r.example or r.name for r in ATTACKS.values() if r.run is not None and "square" not in r.stages]


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models run on one thread


@pytest.fixture
def fast_stages(monkeypatch):
    """10 steps per APGD/FAB stage: the invariants below do not depend on the step count."""
    monkeypatch.setattr(stages, "STEPS", 10)


def make_mlp(n_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, n_classes))


def make_data(model: nn.Module, n: int, n_classes: int, seed: int = 0):
    """Labels = the model's own predictions with 10% flipped (so some points start wrong)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    flip = torch.rand(n, generator=g) < 0.1
    y[flip] = (y[flip] + 1) % n_classes
    return x, y


@pytest.fixture(scope="module")
def mlp_setup():
    model = make_mlp()
    x, y = make_data(model, 48, 10)
    return model, x, y


def acc(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def dist(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)


def assert_valid(x_adv, x, eps, norm):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (dist(x_adv, x, norm) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


# --- registry -------------------------------------------------------------------------

def test_validate_attack_names_and_errors():
    for name in ATTACK_NAMES + ["pgd-1", "pgd-250"]:
        validate_attack(AttackSpec(name=name))
    with pytest.raises(ValueError, match="valid names: none, fgsm, pgd-K"):
        validate_attack(AttackSpec(name="cw"))
    for bad in ("pgd-0", "pgd-x", "pgd", "pgd-10000000"):
        with pytest.raises(ValueError, match="pgd-K"):
            validate_attack(AttackSpec(name=bad))
    with pytest.raises(ValueError, match="eps"):
        AttackSpec(name="fgsm", eps=2.0)


def test_parse_attack_is_the_validation():
    spec = parse_attack(" pgd-7 ", "4/255", "L2", 3)
    assert spec == AttackSpec("pgd-7", eps=4 / 255, norm="L2", seed=3)
    for name, eps, match in (("cw", "4/255", "valid names"), ("pgd-0", "4/255", "pgd-K"),
                             ("fgsm", "4/0", "eps"), ("fgsm", "2", "eps")):
        with pytest.raises(ValueError, match=match):
            parse_attack(name, eps)
    assert parse_attack("fgsm", "2", "L2").eps == 2.0          # L2 radii may exceed 1


def test_records_are_the_one_list():
    # Names and choices derive from the records; the UI offers exactly these.
    assert list(ATTACKS) == ["none", "fgsm", "pgd-K", "apgd-ce", "apgd-t", "autoattack-fast", "autoattack"]
    assert ATTACK_NAMES == ["none", "fgsm", "pgd-2", "pgd-5", "pgd-10", "pgd-20", "apgd-ce", "apgd-t",
                            "autoattack-fast", "autoattack"]
    assert all(find_attack(n) is ATTACKS["pgd-K"] for n in ("pgd-1", "pgd-20", "pgd-10000"))
    assert {r.tier for r in ATTACKS.values()} == {"clean", "preview", "reported"}
    assert all(r.name in attack_help() and r.help for r in ATTACKS.values())
    # The protocols, stage for stage (the reference runs the same standard list).
    assert {n: r.stages for n, r in ATTACKS.items() if r.stages} == {
        "apgd-ce": ("apgd-ce",), "apgd-t": ("apgd-t",), "autoattack-fast": ("apgd-ce-x5", "apgd-t"),
        "autoattack": ("apgd-ce", "apgd-t", "fab-t", "square")}
    assert stages.STANDARD == ATTACKS["autoattack"].stages
    # The bench has a plain twin for every attack but the clean one and the full AutoAttack.
    assert [n for n, r in ATTACKS.items() if r.plain is None] == ["none", "autoattack"]
    assert validate_attack(AttackSpec("apgd-t")) is ATTACKS["apgd-t"]


def test_public_names_are_verbs_and_records():
    assert sorted(explorer.attacks.__all__) == sorted([
        "ATTACKS", "ATTACK_NAMES", "AttackOutcome", "AttackRecord", "Cancelled", "attack_cost",
        "attack_help", "attack_outcome", "attack_table", "check_gradients", "check_logits", "find_attack", "parse_attack",
        "reference_autoattack", "run_attack", "validate_attack"])


def test_attack_cost_ordering():
    costs = [attack_cost(AttackSpec(name=n)) for n in
             ["none", "fgsm", "pgd-10", "apgd-ce", "apgd-t", "autoattack-fast", "autoattack"]]
    assert costs[0] == 0 and costs == sorted(costs)
    assert attack_cost(AttackSpec(name="pgd-7")) == 7
    assert attack_cost(AttackSpec(name="autoattack", eps=0)) == 0
    # The published budgets: APGD-CE 100, APGD-T 9 x 100, FAB-T 9 x 100 x 4/3, Square 5000 / 3.
    # autoattack-fast (RobustVLM): APGD-CE with 5 restarts, then APGD-T.
    assert costs[3:] == [100, 900, 500 + 900, 100 + 900 + 1200 + 1666]


def fab_as_apgd_t(monkeypatch):
    """Make ``apgd-t`` run the FAB-T stage instead (to exercise FAB through run_attack)."""
    monkeypatch.setitem(ATTACKS, "apgd-t", records._protocol("apgd-t", ("fab-t",), "FAB-T in its place"))


# --- invariants -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["none"] + FAST)
def test_eps_zero_returns_x(mlp_setup, name):
    model, x, y = mlp_setup
    assert torch.equal(run_attack(model, x, y, AttackSpec(name=name, eps=0)), x)
    if name == "none":
        assert torch.equal(run_attack(model, x, y, AttackSpec(name=name, eps=8 / 255)), x)


@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.25)])
@pytest.mark.parametrize("name", FAST)
def test_ball_range_and_accuracy(mlp_setup, fast_stages, name, norm, eps):
    model, x, y = mlp_setup
    x_adv = run_attack(model, x, y, AttackSpec(name=name, eps=eps, norm=norm), batch_size=20)
    assert_valid(x_adv, x, eps, norm)
    assert acc(model, x_adv, y) <= acc(model, x, y)
    wrong = model(x).argmax(1) != y
    assert torch.equal(x_adv[wrong], x[wrong])  # only still-robust points are attacked
    assert acc(model, x_adv, y) < acc(model, x, y)  # the attacks do something here


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_and_square_stay_in_ball(mlp_setup, fast_stages, norm):
    model, x, y = mlp_setup
    eps = 4 / 255 if norm == "Linf" else 0.25
    net = AttackModel(model)
    with attack_context(net):
        alive = net(x).argmax(1) == y
        x_adv = stages.run_stages(net, x, y, alive, ("fab-t", "square"), eps, norm, 0, 10,
                                  square_queries=100)
    assert_valid(x_adv, x, eps, norm)


@pytest.mark.parametrize("name", ["pgd-5", "apgd-ce"])
def test_robust_accuracy_non_increasing_in_eps(mlp_setup, name):
    model, x, y = mlp_setup
    accs = [acc(model, run_attack(model, x, y, AttackSpec(name=name, eps=e / 255)), y)
            for e in (0, 1, 2, 4, 8)]
    assert accs == sorted(accs, reverse=True), accs
    assert accs[0] == acc(model, x, y)


@pytest.mark.parametrize("name", ["pgd-5", "apgd-t", "autoattack-fast"])
def test_same_seed_same_result_and_global_rng_untouched(mlp_setup, fast_stages, name):
    model, x, y = mlp_setup
    spec = AttackSpec(name=name, eps=4 / 255, seed=3)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = run_attack(model, x, y, spec)
    assert torch.equal(torch.random.get_rng_state(), state)  # torchattacks reseeds globally
    assert torch.equal(a, run_attack(model, x, y, spec))


def test_seeds_are_explicit_not_clock_based():
    model = AttackModel(make_mlp())
    # The trap: torchattacks.AutoAttack(seed=None) seeds its stages from time.time().
    ref = torchattacks.AutoAttack(model, seed=None)
    assert all(isinstance(a.seed, float) for a in ref._autoattack.attacks)
    ours = [build_stage(s, model, 4 / 255, "Linf", 7, 10) for s in stages.STAGES]
    assert [a.seed for a in ours] == [7] * len(stages.STAGES)


def test_pgd_subset_invariance(mlp_setup):
    model, x, y = mlp_setup
    spec = AttackSpec(name="pgd-5", eps=4 / 255, seed=1)
    full = run_attack(model, x, y, spec)
    sub = torch.tensor([30, 2, 17, 5, 44, 11])  # permuted, different batch composition
    part = run_attack(model, x[sub], y[sub], spec, sample_ids=sub, batch_size=4)
    assert torch.equal(part, full[sub])
    other = run_attack(model, x, y, AttackSpec(name="pgd-5", eps=4 / 255, seed=2))
    assert not torch.equal(other, full)


def test_early_exit_pgd_not_weaker_than_torchattacks(mlp_setup):
    model, x, y = mlp_setup
    for eps in (1 / 255, 2 / 255, 4 / 255):
        ours = run_attack(model, x, y, AttackSpec(name="pgd-10", eps=eps), rand_init=False)
        ref = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=False)
        assert acc(model, ours, y) <= acc(model, ref(x, y), y)


# --- torchattacks traps -------------------------------------------------------------------

def test_stages_use_published_steps_not_torchattacks_defaults():
    model = AttackModel(make_mlp())
    ref = torchattacks.AutoAttack(model, seed=0)
    assert [a.steps for a in ref._autoattack.attacks[:3]] == [10, 10, 10]  # the trap
    ours = [build_stage(s, model, 4 / 255, "Linf", 0, 10) for s in ("apgd-ce", "apgd-t", "fab-t")]
    assert [a.steps for a in ours] == [100, 100, 100]
    assert build_stage("square", model, 4 / 255, "Linf", 0, 10).n_queries == 5000


def test_targets_capped_at_nine(monkeypatch):
    model = make_mlp(n_classes=20)
    x, y = make_data(model, 6, 20)
    net = AttackModel(model)
    assert build_stage("apgd-t", net, 1e-4, "Linf", 0, 20).n_target_classes == 9
    assert build_stage("fab-t", net, 1e-4, "Linf", 0, 20).n_target_classes == 9
    # Behaviour, not just the attribute: on points nothing can fool, APGD-T (ours) spends 9
    # targets x (1 + steps) passes per image, and torchattacks' FAB runs 9 targeted runs.
    monkeypatch.setattr(stages, "STEPS", 3)
    out = explorer.attacks.attack_outcome(model, x, y, AttackSpec(name="apgd-t", eps=1e-6))
    assert out.fwd_bwd[out.broken == -1].unique().tolist() == [9 * 4]
    calls = []
    orig = torchattacks.FAB.attack_single_run_targeted
    monkeypatch.setattr(torchattacks.FAB, "attack_single_run_targeted",
                        lambda self, *a, **k: calls.append(self.target_class) or orig(self, *a, **k))
    fab_as_apgd_t(monkeypatch)
    run_attack(model, x, y, AttackSpec(name="apgd-t", eps=1e-6))
    assert calls == list(range(2, 11))


TINY_VIT = {"embed_dim": 16,
            "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny-vit-attacks.json"
    path.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-vit-attacks", pretrained=None)
    tok = open_clip.get_tokenizer("tiny-vit-attacks")
    return ZeroShotClassifier(model, tok, ["cat", "dog", "car", "tree"]).eval()


def test_fab_runs_on_vit_with_non_contiguous_input(tiny_vit, monkeypatch):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16).to(memory_format=torch.channels_last)  # e.g. HWC images permuted
    with torch.no_grad():
        y = tiny_vit(x).argmax(1)
    monkeypatch.setattr(stages, "STEPS", 3)
    raw = torchattacks.FAB(tiny_vit, eps=8 / 255, steps=3, multi_targeted=True, n_classes=4, seed=0)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        raw(x, y)  # the trap
    fab_as_apgd_t(monkeypatch)
    x_adv = run_attack(tiny_vit, x, y, AttackSpec(name="apgd-t", eps=8 / 255))
    assert_valid(x_adv, x, 8 / 255, "Linf")


def test_model_state_restored_and_no_param_grads():
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.Dropout(0.5), nn.Linear(16, 5))
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    model.train()
    model[3].weight.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    run_attack(model, x, y, AttackSpec(name="pgd-3", eps=8 / 255))
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


def test_plain_callable_is_wrapped_and_junk_rejected():
    model = make_mlp()
    x, y = make_data(model, 8, 10)
    x_adv = run_attack(lambda t: model(t), x, y, AttackSpec(name="pgd-3", eps=4 / 255))
    assert_valid(x_adv, x, 4 / 255, "Linf")
    with pytest.raises(TypeError, match="nn.Module or a callable"):
        run_attack(42, x, y, AttackSpec(name="pgd-3"))


# --- sanity checks --------------------------------------------------------------------

def test_check_logits_detects_probabilities():
    logits = torch.randn(4, 10) * 3
    check_logits(logits)
    with pytest.raises(ValueError, match="probabilities"):
        check_logits(logits.softmax(1))
    softmax_model = nn.Sequential(make_mlp(), nn.Softmax(dim=1))
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match="probabilities"):
        run_attack(softmax_model, x, torch.zeros(4, dtype=torch.long), AttackSpec(name="fgsm"))


def test_check_gradients_detects_zero_gradients():
    model = make_mlp()
    x, y = make_data(model, 8, 10)
    assert (check_gradients(model, x, y) > 0).all()
    # Gradient masking: a rounding front end has zero gradient almost everywhere.
    masked = nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    with pytest.raises(ValueError, match="zero input gradient"):
        check_gradients(lambda t: masked(torch.round(t * 255) / 255), x, y)


# --- reference equivalence ------------------------------------------------------------

def test_autoattack_matches_torchattacks_reference(monkeypatch):
    """Our stage-by-stage AutoAttack vs torchattacks' MultiAttack with the same stages.

    Full protocol (100 steps) except Square at 1000 queries instead of 5000 (both sides), and
    4 classes (3 targets) to fit the test budget on a shared 2-core CPU. The 10-class,
    5000-query run gives identical counts too (142/200 both), ~35 s per side here.
    """
    monkeypatch.setattr(stages, "SQUARE_QUERIES", 1000)
    model = make_mlp(n_classes=4, seed=0)
    x, y = make_data(model, 200, 4, seed=0)
    eps = 4 / 255  # APGD-CE and APGD-T both fool points here (185 -> 141 -> 122)
    ours = run_attack(model, x, y, AttackSpec(name="autoattack", eps=eps, seed=0), batch_size=256)
    ref = reference_autoattack(model, x, y, eps, "Linf", seed=0)
    assert_valid(ours, x, eps, "Linf")
    n_ours = round(acc(model, ours, y) * 200)
    n_ref = round(acc(model, ref, y) * 200)
    assert abs(n_ours - n_ref) <= 2  # within one point of accuracy on 200 points
    assert n_ours < round(acc(model, x, y) * 200) - 40


def test_apgd_t_with_too_few_classes_is_an_error_not_a_silent_skip():
    """A number labelled autoattack-fast must not come from a run where APGD-T was skipped."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    x, y = torch.rand(6, 3, 4, 4), torch.zeros(6, dtype=torch.long)
    y = net(x).argmax(1)                      # all clean-correct, so the stages must run
    with pytest.raises(ValueError, match="apgd-t needs >= 4 classes"):
        run_attack(net, x, y, AttackSpec("autoattack-fast", eps=8 / 255))



@pytest.mark.parametrize("name", ["pgd-5", "autoattack-fast"])
def test_a_set_cancel_token_cancels_an_attack(mlp_setup, name):
    model, x, y = mlp_setup
    polls = []
    with cancel_scope(CancelToken(also=lambda: polls.append(1) or True, reason="stop pressed")), \
            pytest.raises(Cancelled, match="stop pressed"):
        run_attack(model, x, y, AttackSpec(name, eps=8 / 255))
    assert len(polls) == 1      # checked before the first forward, step or stage; then nothing ran
    # A token never set, and no scope at all: the same attack runs to the end, the same result.
    with cancel_scope(CancelToken()):
        adv = run_attack(model, x, y, AttackSpec("pgd-5", eps=8 / 255))
    assert torch.equal(adv, run_attack(model, x, y, AttackSpec("pgd-5", eps=8 / 255)))
    assert not torch.equal(adv, x)


def test_stop_acts_inside_an_autoattack_stage(mlp_setup):
    """torchattacks runs a stage's 100 steps in its own loop; the model wrapper checks the token
    before every forward, so a Stop pressed mid-stage ends it within a step (not after the stage
    or batch)."""
    model, x, y = mlp_setup
    calls = []

    def stop_after_five():
        calls.append(1)
        return len(calls) > 5

    with cancel_scope(CancelToken(also=stop_after_five)), pytest.raises(Cancelled, match="cancelled by the caller"):
        run_attack(model, x, y, AttackSpec("apgd-ce", eps=8 / 255))
    assert len(calls) == 6
    # The cancelled attack still restored the model's mode and parameter flags.
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_padded_batches_change_no_row(mlp_setup, monkeypatch):
    from explorer.attacks import gradient

    model, x, y = mlp_setup
    spec = AttackSpec("pgd-5", eps=8 / 255)
    monkeypatch.setattr(gradient, "BUCKET", 1)
    plain = run_attack(model, x[:37], y[:37], spec)
    monkeypatch.setattr(gradient, "BUCKET", 16)        # 37 rows -> batches padded to 48, 32, ...
    padded = run_attack(model, x[:37], y[:37], spec)
    assert torch.allclose(plain, padded, atol=1e-6)
    assert gradient.bucketed(torch.arange(37)).tolist() == list(range(37)) + [0] * 11
    # predict pads its batches the same way and returns one label per real row.
    from explorer.evaluation.evaluate import predict

    with torch.no_grad():
        assert torch.equal(predict(model, x[:37], batch_size=20), model(x[:37]).argmax(1))


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_cached_random_starts_equal_fresh_draws(norm):
    """Starts kept between calls are the per-sample draws themselves, scaled to each eps."""
    from explorer.attacks import gradient

    ids = torch.tensor([3, 11, 5])
    gradient._STARTS.clear()
    fresh = gradient.random_start(torch.Size([3, 3, 4, 4]), 0.5, norm, 7, ids)
    assert len(gradient._STARTS) == 3
    again = gradient.random_start(torch.Size([3, 3, 4, 4]), 0.25, norm, 7, ids)
    assert torch.allclose(again, fresh / 2)
    dist = fresh.flatten(1).abs().amax(1) if norm == "Linf" else fresh.flatten(1).norm(dim=1)
    assert (dist <= 0.5 + 1e-6).all() and (dist > 0).all()
    # A sample's start depends on (seed, id) only, not on which rows it is drawn with.
    assert torch.equal(gradient.random_start(torch.Size([1, 3, 4, 4]), 0.5, norm, 7, ids[1:2])[0], fresh[1])
    other_seed = gradient.random_start(torch.Size([1, 3, 4, 4]), 0.5, norm, 8, ids[1:2])[0]
    assert not torch.equal(other_seed, fresh[1])


def test_a_stop_check_leaves_batchnorm_in_eval_mode(fast_stages):
    """The attack wrapper (``AttackModel``, which also checks the cancel token) must report eval
    mode: torchattacks calls ``model.train()`` afterwards on a
    model that said it was training, which put every BatchNorm in training mode mid-attack (one
    image: "Expected more than 1 value per channel when training"; more: batch statistics in the
    predictions and running statistics overwritten). With or without the check, the same
    adversarial batch and untouched BatchNorm buffers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[2].running_mean.uniform_(-0.1, 0.1)
    x, y = make_data(model, 8, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = AttackSpec("autoattack-fast", eps=8 / 255)
    plain = run_attack(model, x, y, spec)
    with cancel_scope(CancelToken()):
        checked = run_attack(model, x, y, spec)
        one = run_attack(model, x[:1], y[:1], spec)   # raised before the fix
    assert torch.equal(plain, checked) and torch.equal(one, plain[:1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())


def test_nothing_clean_correct_returns_the_images_unchanged():
    """Tied logits (two class names the tokenizer reads alike) left no row to attack, and PGD's
    random start stacked an empty list (a RuntimeError in the Inspect tab); now x comes back."""
    from explorer.attacks import run_attack

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    x = torch.rand(2, 3, 4, 4)
    with torch.no_grad():
        wrong = (net(x).argmax(1) + 1) % 3
    for name in ("pgd-3", "fgsm", "apgd-ce"):
        x_adv = run_attack(net, x, wrong, AttackSpec(name, eps="4/255"))
        assert torch.equal(x_adv, x)
