"""Every named protocol, setting by setting, against its reference (issue 11.5).

The references, read from their code:
- standard AutoAttack: fra31/auto-attack ``autoattack/autoattack.py``, the constructor
  (APGD ``n_restarts=5, n_iter=100, eot_iter=1, rho=.75``; FAB ``n_iter=100``; Square
  ``p_init=.8, n_queries=5000, n_restarts=1, resc_schedule=False``; APGD-T ``n_restarts=1,
  n_iter=100``) then ``set_version('standard')`` for Linf/L2 (``apgd.n_restarts = 1``,
  ``apgd_targeted.n_target_classes = 9``, ``fab.n_restarts = 1``, ``fab.n_target_classes = 9``,
  ``square.n_queries = 5000``); FAB's ``alpha_max=0.1, eta=1.05, beta=0.9`` and Square's
  ``loss='margin'`` are the reference classes' defaults.
- RobustVLM (FARE): chs20/RobustVLM ``CLIP_eval/clip_robustbench.py`` builds
  ``AutoAttack(version='custom', attacks_to_run=['apgd-ce', 'apgd-t'], alpha=2)``: no
  ``set_version``, so APGD-CE keeps the constructor's 5 restarts; APGD-T as in the standard.
These tests read the attributes of the torchattacks objects our protocols actually build.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchattacks
from torch import nn

from explorer.attacks import ATTACKS, stages
from explorer.attacks.stages import build_stage, settings_table, stage_settings
from explorer.config import AttackSpec

APGD_CE = dict(loss="ce", iterations=100, restarts=1, eot_iter=1, rho=0.75)
APGD_T = dict(loss="dlr-targeted", iterations=100, restarts=1, targets=9, eot_iter=1, rho=0.75)
FAB_T = dict(iterations=100, restarts=1, targets=9, multi_targeted=True, alpha_max=0.1, eta=1.05, beta=0.9)
SQUARE = dict(loss="margin", queries=5000, restarts=1, p_init=0.8, resc_schedule=False)
REFERENCE = {
    "apgd-ce": [(torchattacks.APGD, APGD_CE)],
    "apgd-t": [(torchattacks.APGDT, APGD_T)],
    "autoattack-fast": [(torchattacks.APGD, {**APGD_CE, "restarts": 5}), (torchattacks.APGDT, APGD_T)],
    "autoattack": [(torchattacks.APGD, APGD_CE), (torchattacks.APGDT, APGD_T), (torchattacks.FAB, FAB_T),
                   (torchattacks.Square, SQUARE)],
}


@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.5)])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_protocol_settings_match_the_reference(name, norm, eps):
    net = nn.Linear(1, 1000)
    built = [build_stage(s, net, eps, norm, 3, 1000) for s in ATTACKS[name].stages]
    assert [(type(a), stage_settings(a)) for a in built] == REFERENCE[name]
    assert all(a.norm == norm and a.eps == eps and a.seed == 3 for a in built)


def test_targets_are_nine_or_every_other_class():
    net = nn.Linear(1, 5)
    assert stage_settings(build_stage("apgd-t", net, 4 / 255, "Linf", 0, 5))["targets"] == 4
    assert stage_settings(build_stage("fab-t", net, 4 / 255, "Linf", 0, 10))["targets"] == 9


def test_square_uses_the_reference_p_schedule():
    """The reference halves p at queries 10, 50, 200, 500, ... (not squeezed into n_queries):
    after 300 queries p = p_init / 8. torchattacks' default ``resc_schedule=True`` gives / 16."""
    sq = build_stage("square", nn.Linear(1, 10), 4 / 255, "Linf", 0, 10)
    assert sq.p_selection(300) == pytest.approx(0.8 / 8)
    assert sq.p_selection(4500) == pytest.approx(0.8 / 128)
    trap = torchattacks.Square(nn.Linear(1, 10), n_queries=5000, p_init=0.8)
    assert trap.p_selection(300) == pytest.approx(0.8 / 16)


def test_robustvlm_apgd_ce_runs_five_restarts(monkeypatch):
    """Behaviour, not only the attribute: on points nothing can fool, autoattack-fast runs
    APGD-CE 5 times and APGD-T once per target (9), each 1 + steps passes per image."""
    from explorer.attacks import attack_outcome

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 12))
    x = torch.rand(5, 3, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    monkeypatch.setattr(stages, "STEPS", 2)
    out = attack_outcome(model, x, y, AttackSpec("autoattack-fast", eps=1e-7))
    assert out.robust.all() and out.fwd_bwd.tolist() == [5 * 3 + 9 * 3] * 5
    out = attack_outcome(model, x, y, AttackSpec("apgd-ce", eps=1e-7))
    assert out.fwd_bwd.tolist() == [3] * 5          # the standard AutoAttack's first stage alone


def test_readme_lists_every_setting_of_every_stage():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert settings_table() in readme
    for name, record in ATTACKS.items():
        if record.stages:
            assert f"| `{name}` | " + ", ".join(f"`{s}`" for s in record.stages) + " |" in readme
