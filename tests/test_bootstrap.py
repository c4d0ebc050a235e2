"""The paired bootstrap of hypervolumes (explorer/bootstrap.py)."""
from __future__ import annotations

import numpy as np
import pytest

from explorer.stats.bootstrap import hypervolume_intervals
from explorer.stats.hypervolume import hypervolume


def _flags(seed, n=200, points=4):
    rng = np.random.default_rng(seed)
    out = []
    for p in range(points):
        clean = rng.random(n) < 0.9 - 0.1 * p
        robust = clean & (rng.random(n) < 0.3 + 0.15 * p)   # robust-correct implies clean-correct
        out.append((clean, robust))
    return out


def test_point_estimate_is_the_hypervolume_and_interval_contains_it():
    flags = {"a": _flags(0), "b": _flags(1)}
    res = hypervolume_intervals(flags, reference="a", n_boot=300, seed=0)
    for m, pts in flags.items():
        hv = hypervolume((c.mean(), r.mean()) for c, r in pts)
        assert res[m]["hv"] == pytest.approx(hv)
        assert res[m]["hv_lo"] <= hv <= res[m]["hv_hi"]
        assert 0.0 <= res[m]["hv_lo"] < res[m]["hv_hi"] <= 1.0
    assert res["a"]["diff"] == 0.0 and res["a"]["diff_lo"] == res["a"]["diff_hi"] == 0.0
    assert res["b"]["diff"] == pytest.approx(res["b"]["hv"] - res["a"]["hv"])


def test_paired_difference_of_identical_frontiers_is_exactly_zero_and_seeded():
    pts = _flags(2)
    res = hypervolume_intervals({"x": pts, "y": [(c.copy(), r.copy()) for c, r in pts]}, reference="x",
                                n_boot=200, seed=3)
    assert res["y"]["diff_lo"] == res["y"]["diff_hi"] == 0.0   # paired: same resamples for both
    again = hypervolume_intervals({"x": pts, "y": pts}, reference="x", n_boot=200, seed=3)
    assert again["x"] == res["x"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="same images"):
        hypervolume_intervals({"a": _flags(0, n=10), "b": _flags(0, n=11)})
    with pytest.raises(ValueError, match="reference"):
        hypervolume_intervals({"a": _flags(0)}, reference="z")


def test_ablation_command_on_the_tiny_zoo(tiny_zoo, tmp_path, monkeypatch, capsys):
    """Both panels print with intervals; the plain row's difference to itself is exactly 0."""
    from explorer.cli import main
    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path / "home"))
    fig = tmp_path / "abl.png"
    argv = ["ablation", "--manifest", str(tiny_zoo), "--alphas", "0,1", "--n", "8", "--attack", "fgsm",
            "--no-store", "--figure", str(fig), "--methods", "task_arithmetic,iso_c,tsv_m,pistole",
            "--bootstrap", "50"]
    for kv in ("calib_n=8", "attack_steps=1", "traj_steps=1", "pci_samples=2"):
        argv += ["--pistole", kv]
    assert main(argv) == 0
    out = capsys.readouterr().out
    md = fig.with_suffix(".md").read_text()
    assert fig.exists() and md.strip() in out
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln]
    labels = [r.split("|")[1].strip() for r in rows]
    assert labels == ["PISTOLE ablation", "plain weighted addition", "+ stability masks", "+ masks and PCI",
                      "+ masks and trajectory", "full PISTOLE", "method", "task_arithmetic", "iso_c",
                      "tsv_m", "pistole"]
    assert "+0.0000 [+0.0000, +0.0000]" in rows[1] and " fwd + " in rows[5]
    assert main(argv[:-8] + ["--pistole", "nope=1"]) == 2
    assert "pistole has no option nope" in capsys.readouterr().err
