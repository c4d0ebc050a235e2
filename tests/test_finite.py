"""No accuracy from invalid numbers (issue 11, item 1): engine, CLI, app and public ``evaluate``.

The inputs are built here: the demo zoo's robust ``tecoa`` with its BatchNorm ``running_var``
buffers x 0.3 (as if fine-tuned in train mode), and a copy with one huge (finite) weight, which
overflows to inf when extrapolated and makes the logits non-finite even at lambda 1. (A checkpoint
holding NaN itself is refused when it is loaded.)
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from explorer.app.service import Service
from explorer.attacks import check_gradients
from explorer.cli import main
from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec
from explorer.core.finite import (
    InvalidMergeError,
    NonFiniteLogitsError,
    check_merged,
    merge_problems,
)
from explorer.engine.frontier import Engine
from explorer.evaluation.evaluate import Images, evaluate
from explorer.store import Store
from explorer.zoo import default_manifest_path, load_manifest

PGD = AttackSpec("pgd-2", eps=4 / 255, seed=0)
EV = EvalSpec("shapes", n=32, seed=0)
BIG_KEY = "layer1.0.conv1.weight"


@pytest.fixture(scope="module")
def bad_zoo(tmp_path_factory) -> Path:
    """The demo manifest plus ``tecoa_bn`` (running_var x 0.3) and ``tecoa_big`` (one weight 3e38)."""
    root = tmp_path_factory.mktemp("bad_zoo")
    manifest = load_manifest(default_manifest_path())
    tecoa = manifest.get("tecoa")
    sd = load_file(tecoa.weights)
    bn = {k: v * 0.3 if k.endswith("running_var") else v for k, v in sd.items()}
    big = dict(sd)
    big[BIG_KEY] = sd[BIG_KEY].clone()
    big[BIG_KEY].view(-1)[3] = 3e38
    for name, weights in (("tecoa_bn", bn), ("tecoa_big", big)):
        save_file(weights, str(root / f"{name}.safetensors"))
        manifest.add(replace(tecoa, name=name, weights=str(root / f"{name}.safetensors"),
                             arch_config=str(Path(tecoa.arch_config).resolve())))
    return manifest.save(root / "manifest.toml")


@pytest.fixture(scope="module")
def engine(bad_zoo, tmp_path_factory) -> Engine:
    return Engine(bad_zoo, device="cpu", store=Store(tmp_path_factory.mktemp("st") / "r.sqlite"))


def test_negative_running_var_fails_the_point_naming_the_buffers_and_stores_nothing(engine):
    spec = MergeSpec(lambdas=(0.0, 1.5))
    with pytest.raises(InvalidMergeError, match="BatchNorm variance below zero") as err:
        engine.point(["natural"], ["tecoa_bn"], spec, PGD, EV)
    msg = str(err.value)
    assert "visual.bn1.running_var (min -" in msg and "BatchNorm variance below zero" in msg
    assert "lambdas (0, 1.5)" in msg and "outside [0, 1]" in msg
    assert len(engine.store) == 0
    assert engine.store.get(engine.point_key(["natural", "tecoa_bn"], spec, PGD, EV)) is None


def test_batchnorm_rule_convex_merges_are_valid_and_valid_extrapolations_are_kept(engine):
    # alpha in [0, 1]: a convex combination of positive variances.
    for alpha in (0.0, 0.3, 1.0):
        engine.merge(["natural", "tecoa_bn"], MergeSpec.from_alpha(alpha))
        assert not merge_problems(engine.theta, engine.layout.keys, engine.layout.segments)
    # The unmodified tecoa extrapolated to 1.5 keeps positive variances: evaluated, not refused.
    row = engine.point(["natural"], ["tecoa"], MergeSpec(lambdas=(0.0, 1.5)), PGD, EV, use_store=False)
    assert 0 <= row["robust_acc"] <= row["clean_acc"] <= 1
    var = engine.merged_state_dict(["tecoa"], MergeSpec(lambdas=(1.5,)))["visual.bn1.running_var"]
    assert float(var.min()) > 0


def test_merge_problems_names_nan_and_negative_variance():
    keys = ["a.weight", "bn.running_var", "bn.running_mean"]
    segs = [(0, 3), (3, 5), (5, 7)]
    theta = torch.tensor([1.0, float("nan"), 2.0, 0.5, -0.25, -3.0, 1.0])
    problems = merge_problems(theta, keys, segs)
    assert problems == ["non-finite values (NaN/inf) in a.weight",
                        "BatchNorm variance below zero in bn.running_var (min -0.25)"]
    check_merged(torch.tensor([1.0, 2.0, 3.0, 0.5, 0.0, -3.0, 1.0]), keys, segs, (1.0,))  # mean may be < 0


def test_overflowing_merge_and_nonfinite_logits_fail_the_point(engine):
    stored = len(engine.store)
    with pytest.raises(InvalidMergeError, match=rf"non-finite values \(NaN/inf\) in visual\.{BIG_KEY}"):
        engine.point(["natural"], ["tecoa_big"], MergeSpec(lambdas=(0.0, 1.5)), PGD, EV)
    # Finite weights, overflowing activations: caught by the twin's probe when the twin is built
    # now, else by the clean pass.
    with pytest.raises(NonFiniteLogitsError, match=r"NaN/inf logits (on random probe images|for 32 image)"):
        engine.model_point("tecoa_big", PGD, EV)
    with pytest.raises(NonFiniteLogitsError, match=r"NaN/inf logits for 32 image\(s\) of 32"):
        engine.model_point("tecoa_big", AttackSpec("none", eps=0.0), EV)   # no twin: the clean pass
    assert len(engine.store) == stored


def test_sweep_goes_on_past_a_failed_point(engine):
    spec = SweepSpec(manifest=str(engine.manifest.path), base=engine.base, natural=("natural",),
                     robust=("tecoa_bn",), alphas=(0.0, 0.5, 1.0), scale=1.5, attack=PGD, eval=EV)
    rows = list(engine.sweep(spec, progress=False))
    assert [r["lambdas"] for r in rows] == [[1.5, 0.0], [0.75, 0.75], [0.0, 1.5]]
    bad = rows[-1]
    assert bad["failed"] and bad["clean_acc"] is None and bad["robust_acc"] is None
    assert "running_var" in bad["error"]
    good = [r for r in rows if not r.get("failed")]
    assert good and all(0 <= r["robust_acc"] <= r["clean_acc"] <= 1 for r in good)
    assert len(engine.store.rows(sweep=spec.digest()[:16])) == len(good)


def test_cli_sweep_reports_the_failure_and_evaluate_is_one_error_line(bad_zoo, tmp_path, capsys):
    out = tmp_path / "p.json"
    argv = ["sweep", "--manifest", str(bad_zoo), "--natural", "natural", "--robust", "tecoa_bn",
            "--alphas", "0,1", "--scale", "1.5", "--attack", "pgd-2", "--n", "32", "--no-store", "--out", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "alpha=1.00 keep=1 lambdas=(0, 1.5): FAILED, no accuracy:" in captured.out
    assert "1 of 2 points failed" in captured.err
    rows = json.loads(out.read_text())
    assert rows[1]["failed"] and rows[1]["clean_acc"] is None and rows[0]["clean_acc"] > 0
    assert main(["evaluate", "--manifest", str(bad_zoo), "--model", "tecoa_big", "--attack", "pgd-2",
                 "--n", "32", "--no-store"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "NaN/inf logits" in err and "\n" not in err


def test_app_sweep_names_failed_points_and_plots_only_numbers(bad_zoo):
    from explorer.ui.frontier_handlers import FrontierHandlers
    service = Service(str(bad_zoo), device="cpu", store_path="none")
    h = FrontierHandlers(service)
    values = dict(base="pretrained", natural=["natural"], robust=["tecoa_big"], method="task_arithmetic",
                  alpha=0.5, keep=1.0, scope="global", advanced=False, attack="pgd-2", eps="4/255",
                  norm="Linf", task="shapes", n=16, rows=[], methods=["task_arithmetic"], alphas="0,1",
                  **{f"lambda_{i}": 0.0 for i in range(6)})
    outs = list(h.sweep(values))
    status = outs[-1][3]
    assert status.startswith("Sweep 3/3") and "1 point(s) failed (no accuracy)" in status
    assert "NaN/inf logits" in status
    rows = [o[2] for o in outs if isinstance(o[2], list)][-1]
    assert len(rows) == 2 and all(r["clean_acc"] is not None for r in rows)


class _NaNFor(nn.Module):
    """A classifier whose logits are NaN for images whose mean pixel exceeds a threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        logits = self.lin(x.mean((2, 3)))
        bad = (x.mean((1, 2, 3)) > 0.6)[:, None]
        return torch.where(bad, torch.full_like(logits, float("nan")), logits)


def test_public_evaluate_never_counts_nan_logits():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 4, 4) * 0.5
    x[5] = 0.9
    with pytest.raises(NonFiniteLogitsError, match=r"1 image\(s\) of 8 \(first: image 5\)"):
        evaluate(_NaNFor(), Images(x, torch.zeros(8, dtype=torch.long)), AttackSpec("none", eps=0.0))


def test_0_255_inputs_name_the_pixel_range_not_gradient_masking():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    x = torch.rand(6, 3, 4, 4) * 255
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[0, 1\].*divide by 255") as err:
        evaluate(model, Images(x, y), PGD)
    assert "masking" not in str(err.value)
    saturated = nn.Sequential(nn.Flatten(), nn.Linear(48, 4), nn.Hardtanh())  # flat beyond |z| > 1
    with torch.no_grad():
        saturated[1].weight.fill_(1.0)
    with pytest.raises(ValueError, match=r"images must be float in \[0, 1\]") as err:
        check_gradients(saturated, x, y)
    assert "masking" not in str(err.value)


def test_negative_lambdas_leave_the_untouched_text_tower_bit_for_bit(engine):
    """Issue 11, item 6, on the demo zoo: its vectors are visual-only, so the text tower is theta_pre."""
    pre = engine.merged_state_dict([], MergeSpec(lambdas=()))
    text = [k for k in pre if not k.startswith("visual.") and pre[k].is_floating_point()]
    for lambdas in [(-0.3, 1.0), (-1.0, 0.5), (0.0, -0.7)]:   # each moved them by 2.4e-7 before
        merged = engine.merged_state_dict(["natural", "tecoa"], MergeSpec(lambdas=lambdas))
        assert text and all(torch.equal(merged[k], pre[k]) for k in text)
        assert any(not torch.equal(merged[k], pre[k]) for k in pre if k.startswith("visual."))
