"""``zoo measure``: the criteria of issue 23 computed from points, and the command end to end."""
from __future__ import annotations

from explorer.cli import main
from explorer.studies.criteria import criteria_rows, curve_findings


def _p(clean, robust, alpha=None):
    return {"clean_acc": clean, "robust_acc": robust, "alpha": alpha, "n": 1000}


def test_criteria_rows_hold_exactly_at_their_thresholds():
    roles = {"pre": "base", "nat": "natural", "r1": "robust", "r2": "robust"}
    pts = {"pre": _p(0.45, 0.0), "nat": _p(0.875, 0.125), "r1": _p(0.825, 0.425), "r2": _p(0.83, 0.42)}
    rows = {name: ok for name, _, ok in criteria_rows(pts, roles)}
    assert rows == {"pre clean >= 0.45": True, "nat clean >= pre clean + 0.15": True,
                    "nat clean >= 0.85": True, "nat clean >= r1 clean + 0.05": True,
                    "nat clean >= r2 clean + 0.05": False, "r1 robust >= nat robust + 0.30": True,
                    "r2 robust >= nat robust + 0.30": False}


def test_curve_trend_and_dominating_interior_points():
    curve = [_p(0.90, 0.10, 0.0), _p(0.91, 0.30, 0.25), _p(0.80, 0.50, 0.5), _p(0.70, 0.60, 1.0)]
    rows, findings = curve_findings(curve)
    assert [ok for *_, ok in rows] == [True, True]
    assert "1 of 3 steps rise" in rows[0][1] and "0 of 3 steps fall" in rows[1][1]
    assert findings == ["alpha 0.25 (0.910 / 0.300) dominates alpha 0 (0.900 / 0.100)"]
    flat = [_p(0.9, 0.1, 0.0), _p(0.9, 0.1, 0.5), _p(0.9, 0.1, 1.0)]
    rows, findings = curve_findings(flat)
    assert [ok for *_, ok in rows] == [False, False] and findings == []   # equal is not dominating


def test_measure_prints_models_curve_and_criteria(tiny_zoo, tmp_path, capsys):
    assert main(["zoo", "measure", "--manifest", str(tiny_zoo), "--attack", "pgd-2", "--n", "16",
                 "--alphas", "0:1:3", "--store", str(tmp_path / "s.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "Models on `shapes` (held-out test images, n=16), robust = pgd-2 Linf eps=4/255" in out
    assert "| 0.50 |" in out and "| 1.00 |" in out
    assert "Criteria (issue 23), pgd-2 Linf eps=4/255, n=16 (n=16 is below the criteria's 1000)" in out
    assert out.count("| base clean >= 0.45 |") == 1 and "robust2 robust >= natural robust + 0.30" in out
