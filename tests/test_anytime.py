"""Anytime sweeps: coarse first (every point has its first images before any is refined), stop
rules, Stop keeps every finished image and a re-run resumes, partial rows are never final, the
CLI stream and its bad input."""
from __future__ import annotations

import json

import pytest

from explorer.cli import main
from explorer.config import AttackSpec, EvalSpec, MergeSpec
from explorer.core.cancel import Cancelled, CancelToken, cancel_scope
from explorer.engine.anytime import StopRule, anytime_sweep, rounds
from explorer.engine.frontier import Engine
from explorer.engine.runner import PointSpec
from explorer.store import Store

ATTACK = AttackSpec("pgd-3", eps=4 / 255)


def _points(n: int = 48, alphas=(0.0, 0.5, 1.0)) -> list[PointSpec]:
    return [PointSpec(("natural",), ("robust",), MergeSpec.from_alpha(a), ATTACK, EvalSpec("shapes", n=n))
            for a in alphas]


def test_rounds_double_from_the_first_chunk():
    assert rounds(256) == [16, 32, 64, 128, 256]
    assert rounds(40, first=16) == [16, 32, 40] and rounds(10) == [10] and rounds(1, first=4) == [1]
    with pytest.raises(ValueError, match="first chunk must be >= 1"):
        rounds(16, first=0)


def test_coarse_first_then_refined_and_final_equals_the_whole_point(tiny_zoo, tmp_path):
    eng = Engine(tiny_zoo, device="cpu", store=Store(tmp_path / "r.sqlite"))
    rows = list(anytime_sweep(eng.runner, _points(), first=16))
    assert [(i, r["n_done"]) for i, r in rows] == [(0, 16), (1, 16), (2, 16), (0, 32), (1, 32), (2, 32),
                                                  (0, 48), (1, 48), (2, 48)]
    assert [r["final"] for _, r in rows] == [False] * 6 + [True] * 3
    assert all(r["elapsed"] >= 0 and len(r["robust_flags"]) == r["n_done"] for _, r in rows)
    for i, p in enumerate(_points()):   # the grown point is the point computed whole (batch-free)
        whole = Engine(tiny_zoo, device="cpu").point(list(p.natural), list(p.robust), p.spec, ATTACK, p.eval)
        last = [r for j, r in rows if j == i][-1]
        assert last["key"] == whole["key"] and last["robust_flags"] == whole["robust_flags"]
        assert last["clean_acc"] == whole["clean_acc"] and last["robust_ci"] == whole["robust_ci"]


def test_until_ci_stops_a_point_once_both_half_widths_are_small(tiny_zoo):
    eng = Engine(tiny_zoo, device="cpu")
    rows = list(anytime_sweep(eng.runner, _points(n=64), rule=StopRule(until_ci=0.5), first=8))
    assert [r["n_done"] for _, r in rows] == [8, 8, 8] and not any(r["final"] for _, r in rows)
    rows = list(anytime_sweep(Engine(tiny_zoo, device="cpu").runner, _points(n=64), rule=StopRule(until_ci=0.12),
                              first=16))
    for i in range(3):
        last = [r for j, r in rows if j == i][-1]
        half = max((last[k][1] - last[k][0]) / 2 for k in ("clean_ci", "robust_ci"))
        assert half <= 0.12 or last["final"]
        earlier = [r for j, r in rows if j == i][:-1]
        assert all(max((r[k][1] - r[k][0]) / 2 for k in ("clean_ci", "robust_ci")) > 0.12 for r in earlier)


def test_budget_and_stop_keep_every_finished_image_and_a_rerun_resumes(tiny_zoo, tmp_path):
    store = Store(tmp_path / "r.sqlite")
    assert list(anytime_sweep(Engine(tiny_zoo, device="cpu", store=store).runner, _points(),
                              rule=StopRule(budget_s=1e-9))) == []       # spent before the first chunk
    token, seen = CancelToken(), []
    with cancel_scope(token), pytest.raises(Cancelled, match="cancelled by the caller"):
        for _, row in anytime_sweep(Engine(tiny_zoo, device="cpu", store=store).runner, _points(), first=16):
            seen.append(row)
            if len(seen) == 2:
                token.cancel()
    assert [r["n_done"] for r in seen] == [16, 16]
    again = list(anytime_sweep(Engine(tiny_zoo, device="cpu", store=store).runner, _points(), first=16))
    assert [(i, r["n_done"], r["cached"]) for i, r in again[:2]] == [(0, 16, True), (1, 16, True)]
    assert again[2][0] == 2 and again[2][1]["n_done"] == 16 and not again[2][1]["cached"]
    assert again[0][1]["robust_flags"] == seen[0]["robust_flags"]


@pytest.mark.parametrize("rule, message", [
    ({"until_ci": 0.0}, "--until-ci must lie in (0, 0.5]"), ({"until_ci": 0.6}, "--until-ci must lie in (0, 0.5]"),
    ({"until_ci": float("nan")}, "--until-ci must lie in (0, 0.5]"),
    ({"budget_s": 0.0}, "--budget-s must be a positive number"), ({"budget_s": -3.0}, "--budget-s must be a positive"),
])
def test_stop_rules_out_of_range_are_one_line(rule, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        StopRule(**rule)


SWEEP = ["sweep", "--natural", "natural", "--robust", "robust", "--alphas", "0,1", "--attack", "pgd-3",
         "--n", "40", "--no-store", "--device", "cpu"]


def test_cli_stream_writes_one_json_line_per_update(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main([*SWEEP, "--manifest", str(tiny_zoo), "--stream", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["alpha"], d["n_done"], d["final"]) for d in lines] == [(0.0, 16, False), (1.0, 16, False),
                                                                      (0.0, 32, False), (1.0, 32, False),
                                                                      (0.0, 40, True), (1.0, 40, True)]
    for d in lines:
        assert {"method", "n", "clean", "robust", "clean_ci", "robust_ci", "seconds", "key"} <= set(d)
        assert d["n"] == 40 and d["clean_ci"][0] <= d["clean"] <= d["clean_ci"][1]
    assert [d["seconds"] for d in lines] == sorted(d["seconds"] for d in lines)
    rows = json.loads(out.read_text())
    assert [len(r["image_ids"]) for r in rows] == [40, 40] and rows[0]["image_ids"] == list(range(40))
    assert rows[1]["robust_acc"] == sum(rows[1]["robust_flags"]) / 40 and set(rows[1]["clean_flags"]) <= {0, 1}


@pytest.mark.parametrize("flags, message", [
    (["--until-ci", "0.7"], "error: --until-ci must lie in (0, 0.5]"),
    (["--budget-s", "0"], "error: --budget-s must be a positive number of seconds, got 0"),
    (["--budget-s", "1e-9"], "error: the sweep ended before any point had an image (--budget-s 1e-09)"),
])
def test_cli_stream_bad_input_is_one_line(tiny_zoo, capsys, flags, message):
    assert main([*SWEEP, "--manifest", str(tiny_zoo), "--stream", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_evaluate_json_carries_per_image_flags(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--manifest", str(tiny_zoo), "--model", "robust", "--attack", "pgd-3", "--n", "24",
                 "--no-store", "--device", "cpu", "--out", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    assert row["image_ids"] == list(range(24)) and row["final"] and row["n_done"] == 24
    assert row["clean_acc"] == sum(row["clean_flags"]) / 24
    assert all(r <= c for r, c in zip(row["robust_flags"], row["clean_flags"]))


def test_service_anytime_sweep_yields_contract_rows_and_frees_the_lock_between_chunks(tiny_zoo, tmp_path):
    import threading

    from explorer.app.service import Service
    from explorer.config import SweepSpec

    service = Service(str(tiny_zoo), "cpu", str(tmp_path / "r.sqlite"))
    spec = SweepSpec(manifest=str(tiny_zoo), base="base", natural=("natural",), robust=("robust",),
                     alphas=(0.0, 1.0), attack=ATTACK, eval=EvalSpec("shapes", n=32))
    rows, free = [], []
    for row in service.anytime_sweep(spec, first=16):
        rows.append(row)
        t = threading.Thread(target=lambda: free.append(service.lock("base").acquire(timeout=5)
                                                        and (service.lock("base").release() or True)))
        t.start()
        t.join()
    assert all(free) and len(free) == len(rows)           # another session gets the engine between chunks
    assert [(r["lambdas"], r["n_done"], r["final"]) for r in rows] == [
        ([0.0, 0.0], 16, False), ([1.0, 0.0], 16, False), ([0.0, 1.0], 16, False),
        ([0.0, 0.0], 32, True), ([1.0, 0.0], 32, True), ([0.0, 1.0], 32, True)]
    keys = {}
    for r in rows:   # one key per point, the same as it grows
        keys.setdefault(tuple(r["lambdas"]), set()).add(r["key"])
    assert all(len(k) == 1 for k in keys.values())
    again = list(service.anytime_sweep(spec))             # all in the store: served, nothing computed
    assert [(r["n_done"], r["cached"]) for r in again] == [(32, True)] * 3
    token = CancelToken()
    token.cancel()
    other = SweepSpec(**{**spec.__dict__, "alphas": (0.5,)})
    stopped = list(service.anytime_sweep(other, token=token))   # Stop before the first chunk: only what
    assert [(r["lambdas"], r["cached"]) for r in stopped] == [([0.0, 0.0], True)]   # the store has (pretrained)


def test_bench_under_a_reported_attack_prints_a_to_d_and_the_ratios_last(tiny_zoo, capsys):
    assert main(["bench", "--manifest", str(tiny_zoo), "--attack", "apgd-ce", "--n", "48", "--points", "2",
                 "--first", "16", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    a = float(next(line for line in lines if line.startswith("(a) every point has >= 16 images")).split()[-2])
    b = float(next(line for line in lines if line.startswith("(b) the full n=48 frontier")).split()[-2])
    c_line = next(line for line in lines if line.startswith("(c) fwd+bwd floor"))
    d = float(next(line for line in lines if line.startswith("(d) the same 2 points")).split()[-2])
    assert 0 < a <= b and d > 0 and int(c_line.split(":")[1].split()[0]) > 0
    assert len([line for line in lines if line.startswith("    alpha=")]) == 2   # both points complete
    da, bc = lines[-1].split("; ")
    assert da.startswith("(d)/(a) = ") and da.endswith("(target >= 8)") and float(da.split()[2]) > 0
    assert bc.startswith("(b)/(c) = ") and float(bc.split()[2]) > 0


@pytest.mark.parametrize("flags, message", [
    (["--until-ci", "nan"], "error: --until-ci must lie in (0, 0.5] (a 95% half-width), got nan"),
    (["--budget-s", "-1"], "error: --budget-s must be a positive number of seconds, got -1"),
    (["--first", "-1"], "error: --first must be >= 1 image, got -1"),
])
def test_stop_rules_and_first_are_refused_before_any_model_loads(tiny_zoo, capsys, monkeypatch, flags, message):
    import explorer.cli.sweep as sweep_cli

    def no_service(_args):
        raise AssertionError("the service was opened before the flags were checked")
    monkeypatch.setattr(sweep_cli, "open_service", no_service)
    # not --stream, pgd-3 (not an anytime sweep): the values are still checked, never silently ignored
    assert main([*SWEEP, "--manifest", str(tiny_zoo), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[-1]] and err[0].startswith(message)
