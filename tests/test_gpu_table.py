"""scripts/gpu_table.py (the README's GPU table) dry-run on a tiny ViT fixture on the CPU: every
measured line names its attack, eps, n and seconds; the frontier stops at its deadline or on
SIGTERM and the summary still prints what was measured. No timing thresholds: only the mechanics."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_ARCH

from explorer.attacks import attack_cost
from explorer.config import AttackSpec

ROOT = Path(__file__).resolve().parents[1]
SECONDS = r"(\d+\.\d+) s"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "scripts" / "gpu_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_table"] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_table = _load_script()


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    from test_scale import _synth
    return _synth(tmp_path_factory.mktemp("gputable"), "tiny-clip", TINY_ARCH).parent


def _run(fixture_dir: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    rc = gpu_table.main(["--fixture", str(fixture_dir), "--device", "cpu", "--n", "8",
                         "--frontier-attack", "pgd-2", *extra], t0=time.monotonic())
    return rc, capsys.readouterr().out.splitlines()


def _seconds(line: str) -> float:
    return float(re.search(SECONDS, line).group(1))


def test_every_measured_line_names_attack_eps_n_and_seconds(fixture_dir, capsys):
    rc, lines = _run(fixture_dir, capsys, "--points", "3")
    assert rc == 0
    slider = [ln for ln in lines if ln.startswith("slider point: ")]
    frontier = [ln for ln in lines if ln.startswith("frontier point ")]
    assert len(slider) == len(gpu_table.SLIDER_ALPHAS) and len(frontier) == 3
    for ln, alpha in zip(slider, gpu_table.SLIDER_ALPHAS):
        assert "pgd-10 Linf eps=4/255 n=8 " in ln and f"alpha={alpha:.2f}" in ln and _seconds(ln) > 0
    for i, (ln, alpha) in enumerate(zip(frontier, (0.0, 0.5, 1.0)), 1):
        assert ln.startswith(f"frontier point {i}/3: pgd-2 Linf eps=4/255 n=8 alpha={alpha:.2f}")
        assert re.search(r"image-steps \d+ \(\d+\.\d+ ms each\);", ln) and _seconds(ln) > 0
    assert any(re.fullmatch(r"finished: 3 of 3 points in \d+\.\d s", ln) for ln in lines)
    assert any(re.fullmatch(r"forward\+backward: \d+\.\d+ ms per image at batch 8", ln) for ln in lines)
    # The summary carries the same measurements: the slider's median of the printed seconds.
    median = statistics.median(_seconds(ln) for ln in slider)
    row = next(ln for ln in lines if ln.startswith("| slider -> refined pgd-10 point | <= 0.5 s |"))
    assert f"median {median:.3f} s over 5" in row
    assert next(ln for ln in lines if ln.startswith("| 3-point pgd-2 frontier")).count("finished: 3 of 3") == 1


def test_worst_case_is_every_image_for_the_full_cost():
    tab = gpu_table.Table(n=256, points=11, slider_attack=AttackSpec("pgd-10", 4 / 255),
                          frontier_attack=AttackSpec("autoattack-fast", 4 / 255), step_s=1e-4)
    assert tab.worst(tab.slider_attack) == pytest.approx(256 * 11 * 1e-4)
    assert attack_cost(tab.frontier_attack) == 1400   # APGD-CE 5 x 100 + APGD-T 9 x 100
    assert tab.worst(tab.frontier_attack, 11) == pytest.approx(11 * 256 * 1401 * 1e-4)
    assert gpu_table.Table(n=8, points=1, slider_attack=tab.slider_attack,
                           frontier_attack=tab.frontier_attack).worst(tab.slider_attack) is None


def test_a_spent_budget_prints_not_finished_and_an_honest_table(fixture_dir, capsys):
    rc, lines = _run(fixture_dir, capsys, "--points", "3", "--seconds", "0")
    assert rc == 1
    assert "slider: stopped at the deadline after 0 of 5 points" in lines
    assert not any(ln.startswith(("slider point: ", "frontier point ")) for ln in lines)
    assert any(re.fullmatch(r"not finished: 0 of 3 points in \d+\.\d s", ln) for ln in lines)
    assert "| slider -> refined pgd-10 point | <= 0.5 s | not measured |" in " ".join(lines)


def test_frontier_cut_after_one_point_projects_from_what_it_measured(fixture_dir, capsys):
    from explorer.engine.frontier import Engine
    eng, ev = gpu_table.setup(fixture_dir, "cpu", 8)
    assert isinstance(eng, Engine)
    tab = gpu_table.Table(n=8, points=3, slider_attack=AttackSpec("pgd-10", 4 / 255),
                          frontier_attack=AttackSpec("pgd-2", 4 / 255))
    gpu_table.run_frontier(eng, ev, tab, lambda: len(tab.frontier_s) >= 1)
    assert len(tab.frontier_s) == 1 and not tab.finished
    status = gpu_table.frontier_status(tab)
    per = tab.frontier_s[0]
    assert status.startswith("not finished: 1 of 3 points in ")
    assert f"({per:.1f} s per point; 3 points projected {per * 3:.0f} s)" in status
    assert "frontier point 1/3: pgd-2 Linf eps=4/255 n=8 alpha=0.00" in capsys.readouterr().out


def test_sigterm_ends_the_run_with_the_summary_of_what_was_measured(fixture_dir, capsys, monkeypatch):
    def killed(*_args, **_kwargs):   # as `timeout` would, while the frontier runs
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)   # the handler raises before this returns

    monkeypatch.setattr(gpu_table, "run_frontier", killed)
    previous = signal.getsignal(signal.SIGTERM)
    rc, lines = _run(fixture_dir, capsys, "--points", "3")
    assert rc == 1 and signal.getsignal(signal.SIGTERM) is previous
    assert any(ln.startswith(f"stopped by signal {int(signal.SIGTERM)} after ") for ln in lines)
    assert sum(ln.startswith("slider point: ") for ln in lines) == 5
    assert "not finished: 0 of 3 points (the frontier did not start)" in lines
    assert any(ln.startswith("| slider -> refined pgd-10 point | <= 0.5 s | median ") for ln in lines)
