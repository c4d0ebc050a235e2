"""Intervals on every number (issue 11.7): Wilson for one accuracy on every point (JSON, CSV,
store, table, plot, hover), a paired bootstrap over images for differences."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from explorer.config import AttackSpec, EvalSpec, MergeSpec
from explorer.engine.frontier import Engine
from explorer.stats.bootstrap import paired_difference, resolved
from explorer.stats.intervals import acc_interval, wilson, with_intervals
from explorer.store import Store
from explorer.viz import plots


def test_wilson_known_values_and_bounds():
    # Brown, Cai & DasGupta (2001) / any table: 5/10 -> (0.2366, 0.7634), 81/100 -> (0.7222, 0.8749)
    assert wilson(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    assert wilson(81, 100) == pytest.approx((0.722212, 0.874852), abs=1e-6)
    assert wilson(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-6))
    assert wilson(10, 10) == (pytest.approx(0.722467, abs=1e-6), 1.0)
    for n in (1, 7, 48, 256):
        widths = []
        for k in range(n + 1):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            widths.append(hi - lo)
        assert max(widths) == pytest.approx(widths[n // 2])       # widest at one half
    assert wilson(128, 256)[1] - wilson(128, 256)[0] < wilson(32, 64)[1] - wilson(32, 64)[0]
    for bad in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError, match="proportion"):
            wilson(*bad)


def test_acc_interval_is_widened_outward_and_rows_get_theirs():
    lo, hi = wilson(94, 128)
    got = acc_interval(94 / 128, 128)
    assert got[0] <= lo and got[1] >= hi and got[1] - got[0] < hi - lo + 2e-4
    row = with_intervals({"clean_acc": 0.75, "robust_acc": 0.5, "n": 8})
    assert row["clean_ci"] == acc_interval(0.75, 8) and row["robust_ci"] == acc_interval(0.5, 8)
    kept = with_intervals({"clean_acc": 0.75, "robust_acc": 0.5, "n": 8, "clean_ci": [0.1, 0.9]})
    assert kept["clean_ci"] == [0.1, 0.9]
    assert "clean_ci" not in with_intervals({"clean_acc": 0.7})


@pytest.fixture(scope="module")
def engine(tiny_zoo, tmp_path_factory):
    return Engine(tiny_zoo, device="cpu", store=Store(tmp_path_factory.mktemp("ci") / "r.sqlite"))


def test_every_point_carries_its_wilson_intervals_through_the_store(engine):
    ev, attack = EvalSpec(task="shapes", n=40, seed=0), AttackSpec("pgd-3", eps=8 / 255)
    row = engine.point(["natural"], ["robust"], MergeSpec.from_alpha(0.5), attack, ev)
    k_clean, k_rob = round(row["clean_acc"] * 40), round(row["robust_acc"] * 40)
    assert row["clean_ci"] == acc_interval(k_clean / 40, 40) and row["robust_ci"] == acc_interval(k_rob / 40, 40)
    assert row["clean_ci"][0] <= row["clean_acc"] <= row["clean_ci"][1]
    assert row["robust_ci"][0] <= row["robust_acc"] <= row["robust_ci"][1]
    json.loads(json.dumps(row))                                     # plain JSON
    again = engine.point(["natural"], ["robust"], MergeSpec.from_alpha(0.5), attack, ev)
    assert again["cached"] and again["clean_ci"] == row["clean_ci"] and again["robust_ci"] == row["robust_ci"]
    stored = [r for r in engine.store.rows() if r["key"] == row["key"]]
    assert stored and stored[0]["robust_ci"] == row["robust_ci"]


def test_old_rows_without_intervals_get_them_on_read(tmp_path):
    path = tmp_path / "old.sqlite"
    Store(path).close()
    old = {"method": "ties", "clean_acc": 0.75, "robust_acc": 0.25, "n": 64, "key": "k"}
    with sqlite3.connect(path) as db:       # a row written before intervals existed
        db.execute("INSERT INTO points (key, created, sweep, row) VALUES (?, ?, ?, ?)",
                   ("k", 1.0, "s", json.dumps(old)))
    store = Store(path)
    for got in (store.get("k"), store.rows()[0], store.rows("s")[0]):
        assert got["clean_ci"] == acc_interval(0.75, 64) and got["robust_ci"] == acc_interval(0.25, 64)


def rows_of(n: int = 64) -> list[dict]:
    return [{"method": "ties", "alpha": a, "keep": 1.0, "scope": "global", "lambdas": [1 - a, a],
             "clean_acc": c, "robust_acc": r, "attack": "pgd-10 Linf eps=4/255", "eps": 4 / 255, "n": n,
             "task": "shapes", "cached": False, "seconds": 0.1}
            for a, c, r in ((0.0, 0.9375, 0.125), (0.5, 0.8125, 0.4375), (1.0, 0.75, 0.5))]


def test_plot_error_bars_and_hover_show_the_intervals():
    rows = rows_of()
    fig = plots.frontier_figure(rows)
    curve = next(t for t in fig.data if t.name == "ties")
    for i, r in enumerate(rows):
        (clo, chi), (rlo, rhi) = acc_interval(r["clean_acc"], 64), acc_interval(r["robust_acc"], 64)
        assert curve.error_x.array[i] == pytest.approx(chi - r["clean_acc"])
        assert curve.error_x.arrayminus[i] == pytest.approx(r["clean_acc"] - clo)
        assert curve.error_y.array[i] == pytest.approx(rhi - r["robust_acc"])
        assert curve.error_y.arrayminus[i] == pytest.approx(r["robust_acc"] - rlo)
        assert f"[{rlo:.3f}, {rhi:.3f}]" in curve.text[i] and f"[{clo:.3f}, {chi:.3f}]" in curve.text[i]
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert front.error_y.array is None


def test_ui_table_and_csv_carry_the_intervals(tmp_path):
    pytest.importorskip("gradio")
    from explorer.ui import common
    lo, hi = acc_interval(0.4375, 64)
    shown = common.rows_table(rows_of())            # the page: accuracy and interval in one cell
    assert shown[common.ROBUST_COL][1] == f"0.438 [{lo:.3f},\u00a0{hi:.3f}]"
    table = common.export_table(rows_of())          # the CSV: numbers, intervals beside them
    assert list(table.columns[5:9]) == ["clean_acc", "clean_ci", "robust_acc", "robust_ci"]
    assert table["robust_ci"][1] == f"[{lo:.3f}, {hi:.3f}]"
    table.to_csv(tmp_path / "t.csv", index=False)
    assert f"[{lo:.3f}, {hi:.3f}]" in (tmp_path / "t.csv").read_text()


def test_paired_difference_of_points_on_the_same_images():
    rng = np.random.default_rng(0)
    c = rng.random(300) < 0.8
    r = c & (rng.random(300) < 0.5)
    same = paired_difference((c, r), (c.copy(), r.copy()), n_boot=300)
    assert same == {"clean": (0.0, 0.0, 0.0), "robust": (0.0, 0.0, 0.0)}
    r2 = r.copy()
    r2[np.flatnonzero(c & ~r)[:30]] = True                # 30 more images robust at the second point
    d, lo, hi = paired_difference((c, r2), (c, r), n_boot=2000, seed=1)["robust"]
    assert d == pytest.approx(30 / 300) and lo <= d <= hi and resolved(lo, hi) and lo > 0
    # Paired: the difference is far tighter than the two Wilson intervals suggest.
    assert hi - lo < (wilson(int(r2.sum()), 300)[1] - wilson(int(r2.sum()), 300)[0])
    assert paired_difference((c, r2), (c, r), n_boot=2000, seed=1) == paired_difference((c, r2), (c, r),
                                                                                         n_boot=2000, seed=1)
    with pytest.raises(ValueError, match="same images"):
        paired_difference((c, r), (c[:10], r[:10]))
    assert not resolved(-0.01, 0.02) and resolved(-0.03, -0.01)


def test_readme_says_what_an_interval_means():
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "What an interval means" in readme and "Wilson" in readme and "paired bootstrap" in readme
