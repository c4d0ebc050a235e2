"""Hypervolume on hand-computed fronts and the ``compare`` command's output contract."""
from __future__ import annotations

import argparse

import pytest

from explorer import compare
from explorer.hypervolume import hypervolume, pareto_front


def test_hypervolume_hand_computed():
    assert hypervolume([(0.5, 0.5)]) == 0.25
    assert hypervolume([]) == 0.0
    # staircase: 0.3*0.9 + (0.8-0.3)*0.5 + (1.0-0.8)*0.2, dominated points add nothing
    pts = [(1.0, 0.2), (0.8, 0.5), (0.3, 0.9), (0.2, 0.1), (0.8, 0.4), (0.5, 0.5)]
    assert hypervolume(pts) == pytest.approx(0.27 + 0.25 + 0.04)
    assert pareto_front(pts) == [(0.3, 0.9), (0.8, 0.5), (1.0, 0.2)]
    assert hypervolume([(1.0, 1.0)]) == 1.0
    assert hypervolume([(0.6, 0.6)], ref=(0.5, 0.5)) == pytest.approx(0.01)


def test_compare_prints_one_row_per_method(tiny_zoo, tmp_path, monkeypatch, capsys):
    from explorer.cli import main
    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path / "home"))
    fast = (("attack_steps", 1), ("calib_n", 8), ("traj_steps", 1), ("vi_steps", 2))
    monkeypatch.setattr(compare, "calibration_options", lambda *a: fast)
    fig = tmp_path / "cmp.png"
    assert main(["compare", "--manifest", str(tiny_zoo), "--alphas", "0.5", "--n", "8",
                 "--attack", "fgsm", "--no-store", "--figure", str(fig)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [ln.split() for ln in lines if ln and not ln.startswith("#")][1:]
    assert [r[0] for r in rows] == list(compare.ALL_METHODS)
    for r in rows:
        assert 0.0 <= float(r[-1]) <= 1.0
    assert (tmp_path / "cmp.md").read_text().count("\n| ") == len(compare.ALL_METHODS) + 1
    assert fig.exists() or fig.with_suffix(".html").exists()
    with pytest.raises(ValueError, match="calibration"):
        compare.compare_methods(None, "natural", "robust", ["task_arithmetic"], [0.0], 1.0,
                                None, argparse.Namespace(split="train"))
