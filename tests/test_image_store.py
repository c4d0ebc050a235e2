"""The per-image store and the point runner: a point at n is the aggregate of its first n images;
growing n computes only the new ones; a kill loses at most the chunk in flight; a second user gets
what the first computed; rows of another code version are never served; partial is never final."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import explorer.engine.runner as runner_mod
from explorer.config import CODE_VERSION, AttackSpec, EvalSpec, MergeSpec
from explorer.engine.frontier import Engine
from explorer.engine.runner import PointSpec
from explorer.store import Store

ATTACK = AttackSpec("pgd-3", eps=4 / 255)


def _point(n: int, alpha: float = 0.5, attack: AttackSpec = ATTACK) -> PointSpec:
    return PointSpec(("natural",), ("robust",), MergeSpec.from_alpha(alpha), attack, EvalSpec("shapes", n=n))


@pytest.fixture()
def counted(monkeypatch):
    """Images handed to ``evaluate`` by the runner (each call's count)."""
    calls: list[int] = []
    real = runner_mod.evaluate

    def spy(model, x, *a, **k):
        calls.append(len(x))
        return real(model, x, *a, **k)
    monkeypatch.setattr(runner_mod, "evaluate", spy)
    return calls


def test_store_images_round_trip_and_code_version(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.put_images("k", np.array([2, 0, 1]), np.array([1, 1, 0]), np.array([0, 1, 0]), "v1",
                 stage=["apgd-ce", None, None], cost=np.array([7, 100, -1]))
    got = Store(tmp_path / "r.sqlite").images("k", 3, "v1")   # committed: another connection sees it
    assert got.ids.tolist() == [0, 1, 2] and got.clean.tolist() == [True, False, True]
    assert got.robust.tolist() == [True, False, False] and got.stage == [None, None, "apgd-ce"]
    assert got.cost.tolist() == [100, -1, 7]
    assert len(s.images("k", 2, "v1")) == 2            # images 0..n-1 only
    assert len(s.images("k", 3, "v0")) == 0            # another code version is never served


def test_growing_n_computes_only_the_new_images(tiny_zoo, tmp_path, counted):
    eng = Engine(tiny_zoo, device="cpu", store=Store(tmp_path / "r.sqlite"))
    small = eng.point(["natural"], ["robust"], MergeSpec.from_alpha(0.5), ATTACK, EvalSpec("shapes", n=16))
    assert counted == [16] and small["final"] and small["n_done"] == small["n"] == 16
    big = eng.point(["natural"], ["robust"], MergeSpec.from_alpha(0.5), ATTACK, EvalSpec("shapes", n=64))
    assert sum(counted[1:]) == 48                       # the 48 new images, not 64
    assert big["image_ids"] == list(range(64)) and big["key"] != small["key"]
    assert big["clean_flags"][:16] == small["clean_flags"] and big["robust_flags"][:16] == small["robust_flags"]
    assert big["clean_acc"] == sum(big["clean_flags"]) / 64 and big["robust_acc"] == sum(big["robust_flags"]) / 64
    # the same point from scratch, in one go, has the same flags (nested sets, per-image seeds)
    fresh = Engine(tiny_zoo, device="cpu").point(["natural"], ["robust"], MergeSpec.from_alpha(0.5), ATTACK,
                                                 EvalSpec("shapes", n=64))
    assert fresh["robust_flags"] == big["robust_flags"] and fresh["clean_flags"] == big["clean_flags"]


def test_partial_rows_are_never_final_and_chunks_do_not_change_flags(tiny_zoo, counted):
    eng = Engine(tiny_zoo, device="cpu")
    rows = list(eng.runner.grow(_point(40), upto=24, chunk=7))
    assert [r["n_done"] for r in rows] == [7, 14, 21, 24] and counted == [7, 7, 7, 3]
    assert not any(r["final"] for r in rows) and all(r["n"] == 40 for r in rows)
    last = rows[-1]
    k = last["n_done"]
    assert last["clean_ci"][0] <= last["clean_acc"] <= last["clean_ci"][1]
    assert last["robust_acc"] == sum(last["robust_flags"]) / k and len(last["robust_flags"]) == k
    assert len({r["key"] for r in rows}) == 1           # one point, the same key as it grows
    done = list(eng.runner.grow(_point(40), upto=40, chunk=100))
    assert [r["final"] for r in done] == [True] and done[0]["n_done"] == 40 and counted[-1] == 16
    whole = list(Engine(tiny_zoo, device="cpu").runner.grow(_point(40), upto=40, chunk=40))[-1]
    assert whole["robust_flags"] == done[0]["robust_flags"]   # batch-free: 7+7+7+3+16 == 40 at once


def test_a_second_user_gets_what_the_first_computed(tiny_zoo, tmp_path, counted):
    path = tmp_path / "shared.sqlite"
    first = list(Engine(tiny_zoo, device="cpu", store=Store(path)).runner.grow(_point(32), upto=32, chunk=16))
    counted.clear()
    second = Engine(tiny_zoo, device="cpu", store=Store(path))
    again = list(second.runner.grow(_point(32), upto=32, chunk=16))
    assert counted == [] and again[-1]["cached"] and again[-1]["robust_flags"] == first[-1]["robust_flags"]


def test_rows_of_another_code_version_are_recomputed(tiny_zoo, tmp_path, counted):
    store = Store(tmp_path / "r.sqlite")
    eng = Engine(tiny_zoo, device="cpu", store=store)
    p = _point(16)
    ikey = eng.runner.image_key(p)
    store.put_images(ikey, np.arange(16), np.ones(16), np.ones(16), "0.0.1-old")   # all robust, old code
    assert eng.runner.missing(p, 16) == list(range(16))
    row = list(eng.runner.grow(p, upto=16, chunk=16))[-1]
    assert counted == [16] and row["code_version"] == CODE_VERSION and not row["cached"]


SCRIPT = textwrap.dedent("""
    import sys
    from explorer.config import AttackSpec, EvalSpec, MergeSpec
    from explorer.engine.frontier import Engine
    from explorer.engine.runner import PointSpec
    from explorer.store import Store
    eng = Engine(sys.argv[1], device="cpu", store=Store(sys.argv[2]))
    p = PointSpec(("natural",), ("robust",), MergeSpec.from_alpha(0.5), AttackSpec("pgd-400", eps=1e-4),
                  EvalSpec("shapes", n=64))
    for row in eng.runner.grow(p, upto=64, chunk=8):
        print(row["n_done"], flush=True)
""")


def test_kill_9_mid_point_loses_at_most_the_chunk_in_flight(tiny_zoo, tmp_path):
    path = tmp_path / "r.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tiny_zoo), str(path)], stdout=subprocess.PIPE,
                            text=True, env=env)
    seen = [int(proc.stdout.readline()) for _ in range(2)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen == [8, 16]
    eng = Engine(tiny_zoo, device="cpu", store=Store(path))
    p = PointSpec(("natural",), ("robust",), MergeSpec.from_alpha(0.5), AttackSpec("pgd-400", eps=1e-4),
                  EvalSpec("shapes", n=64))
    missing = eng.runner.missing(p, 64)
    kept = 64 - len(missing)
    assert 16 <= kept < 64 and kept % 8 == 0 and missing == list(range(kept, 64))   # whole chunks only
