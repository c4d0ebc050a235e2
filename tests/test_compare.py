"""Hypervolume on hand-computed fronts and the ``compare`` command's output contract."""
from __future__ import annotations

import argparse

import pytest

from explorer.stats.hypervolume import hypervolume, pareto_front
from explorer.studies import compare


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
    rows = [ln.split() for ln in lines if ln and not ln.startswith(("#", "stability - "))][1:]
    assert [r[0] for r in rows] == list(compare.ALL_METHODS)
    import csv
    with (tmp_path / "cmp.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == list(compare.ALL_METHODS)
    for r in table:   # each hypervolume inside its paired-bootstrap interval
        assert 0.0 <= float(r["hv_lo"]) <= float(r["hypervolume"]) <= float(r["hv_hi"]) <= 1.0
    diffs = [ln for ln in lines if ln.startswith("stability - ")]
    assert [d.split(":")[0] for d in diffs] == ["stability - task_arithmetic", "stability - magnitude"]
    assert all("95% paired bootstrap" in d and ("resolved" in d) for d in diffs)
    md = (tmp_path / "cmp.md").read_text()
    assert md.count("\n| ") == len(compare.ALL_METHODS) + 1 and md.count("\n- stability - ") == 2
    assert fig.exists() or fig.with_suffix(".html").exists()
    with pytest.raises(ValueError, match="calibration"):
        compare.compare_methods(None, "natural", "robust", ["task_arithmetic"], [0.0], 1.0,
                                None, argparse.Namespace(split="train"))


def test_bootstrap_stats_and_difference_lines():
    import numpy as np
    rng = np.random.default_rng(0)
    base = [(rng.random(200) < 0.9, rng.random(200) < 0.4) for _ in range(3)]
    better = [(c, r | (rng.random(200) < 0.3)) for c, r in base]
    flags = {"task_arithmetic": base, "magnitude": [(c.copy(), r.copy()) for c, r in base], "stability": better}
    stats, diffs = compare.bootstrap_stats(flags, n_boot=400, seed=0)
    assert set(stats) == set(flags) and all(s["hv_lo"] <= s["hv"] <= s["hv_hi"] for s in stats.values())
    assert [(d["method"], d["against"]) for d in diffs] == list(compare.DIFFERENCES)
    assert all(d["resolved"] and d["lo"] > 0 for d in diffs)
    assert "resolved, stability is above task_arithmetic" in compare.difference_line(diffs[0], 200)
    tie = {"method": "stability", "against": "magnitude", "diff": 0.001, "lo": -0.01, "hi": 0.012,
           "resolved": False}
    assert compare.difference_line(tie, 256).endswith("NOT resolved at n=256 (the interval contains 0)")
    only = compare.bootstrap_stats({"task_arithmetic": base}, n_boot=100)[1]
    assert only == []


def test_write_table_keeps_a_dot_in_the_stem(tmp_path):
    row = {c: 0 for c in compare.COLUMNS}
    csv_path, md_path = compare.write_table([row], tmp_path / "compare-keep0.05", caption="keep=0.05")
    assert (csv_path.name, md_path.name) == ("compare-keep0.05.csv", "compare-keep0.05.md")
    assert md_path.read_text().startswith("keep=0.05") and csv_path.read_text().splitlines()[0].split(",") == list(compare.COLUMNS)
