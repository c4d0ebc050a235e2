"""The first view's background AutoAttack curve gives the engine to interactive requests at once.

A slider's preview, Inspect or a page user's sweep that asks for the engine while the background
curve is inside an AutoAttack chunk gets it at the attack's next step, not at the end of the chunk;
the background then resumes from the store and its numbers are those of an uninterrupted run.
Background requests never make each other give way.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import explorer.engine.runner as runner_mod
from explorer.app.service import Service
from explorer.config import MergeSpec
from explorer.core.cancel import Cancelled, check_cancelled
from explorer.core.fairlock import FairRLock, mark_background_thread
from explorer.ui import tiers
from explorer.ui.common import default_curve

pytestmark = pytest.mark.usefixtures("one_thread")


def _queued(lock: FairRLock, background: bool) -> threading.Thread:
    """A thread that waits for ``lock`` (held by the caller), as a background thread or not."""
    def wait() -> None:
        if background:
            mark_background_thread()
        with lock:
            pass
    t = threading.Thread(target=wait, daemon=True)
    t.start()
    return t


def _until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_foreground_waiting_counts_only_requests_from_threads_not_marked_background() -> None:
    lock = FairRLock()
    with lock:
        assert not lock.foreground_waiting()
        bg = _queued(lock, background=True)
        _until(lambda: len(lock._queue) == 1)
        assert not lock.foreground_waiting()          # a background waiter never makes others yield
        fg = _queued(lock, background=False)
        _until(lambda: len(lock._queue) == 2)
        assert lock.foreground_waiting()
    bg.join(5), fg.join(5)
    assert not bg.is_alive() and not fg.is_alive() and not lock.foreground_waiting()


def _final_flags(rows: list[dict]) -> dict[str, tuple]:
    return {r["key"]: (r["n_done"], tuple(r["clean_flags"]), tuple(r["robust_flags"])) for r in rows if r["final"]}


def test_a_preview_gets_the_engine_inside_a_background_autoattack_chunk(tiny_zoo: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    service = Service(str(tiny_zoo), device="cpu", store_path=str(tmp_path / "r.sqlite"))
    real, inside, abandoned, stall_s = runner_mod.evaluate, threading.Event(), [], 60.0

    def long_first_chunk(*args, **kwargs):
        """The background's first AutoAttack chunk polls the cancel token for up to a minute, as a
        long attack does at every step; then (or on a retry) the real evaluation."""
        if threading.current_thread().name == "explorer-background-sweep" and not inside.is_set() \
                and "autoattack" in args[2].name:
            inside.set()
            end = time.monotonic() + stall_s
            try:
                while time.monotonic() < end:
                    check_cancelled()
                    time.sleep(0.01)
            except Cancelled:
                abandoned.append(time.monotonic())
                raise
        return real(*args, **kwargs)
    monkeypatch.setattr(runner_mod, "evaluate", long_first_chunk)

    jobs = tiers.first_view_jobs(service)
    assert len(jobs) == 2
    assert inside.wait(120), "the background AutoAttack curve never started"
    d = service.defaults
    t0 = time.monotonic()
    row = service.point("base", ["natural"], ["robust"], MergeSpec(method="task_arithmetic", lambdas=(0.3, 0.7)),
                        d.attack_spec(), d.eval_spec())
    waited = time.monotonic() - t0
    # The preview got the engine because the chunk gave it up, well before the chunk's minute.
    assert abandoned and abandoned[0] - t0 < stall_s / 2 and waited < stall_s / 2
    assert row["final"] and row["attack"].startswith(d.attack)
    assert jobs[1].wait(120) and jobs[1].snapshot().error is None
    resumed = jobs[1].snapshot().rows
    assert len(resumed) == 6 and all(r["final"] and r["n_done"] == r["n"] for r in resumed)

    # The same curve computed without any interruption, in a fresh store: the same flags, point by point.
    monkeypatch.setattr(runner_mod, "evaluate", real)
    clean = Service(str(tiny_zoo), device="cpu", store_path=str(tmp_path / "fresh.sqlite"))
    twin = tiers.reported_twin(default_curve(clean))
    straight = list(clean.anytime_sweep(twin))
    assert _final_flags(resumed) == _final_flags(straight) and len(_final_flags(straight)) == 6


def test_a_sweep_that_is_not_yielding_keeps_the_engine_for_its_chunk(tiny_zoo: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's and a page user's own sweeps do not yield: a waiting request leaves them alone."""
    service = Service(str(tiny_zoo), device="cpu", store_path="none")
    twin = tiers.reported_twin(default_curve(service))
    lock = service.lock(twin.base)
    waiter: list[threading.Thread] = []
    real = runner_mod.evaluate

    def with_a_waiter(*args, **kwargs):
        if not waiter:   # a foreground request queues while the first chunk runs
            waiter.append(_queued(lock, background=False))
            _until(lock.foreground_waiting)
        return real(*args, **kwargs)
    monkeypatch.setattr(runner_mod, "evaluate", with_a_waiter)
    rows = list(service.anytime_sweep(twin))
    assert sum(r["final"] for r in rows) == 6
    waiter[0].join(10)
    assert not waiter[0].is_alive()


def test_the_latency_bench_measures_both_modes_on_the_same_requests(tiny_zoo: Path) -> None:
    from explorer.app.latency import report_lines, run_latency_bench
    r = run_latency_bench(str(tiny_zoo), "cpu", requests=2, gap_s=0.0)
    assert [len(r[k]) for k in ("yielding", "holding", "bare")] == [2, 2, 2]
    assert all(s > 0 for k in ("yielding", "holding", "bare") for s in r[k])
    assert r["preview"] == "pgd-3 Linf eps=4/255" and r["background"] == "autoattack-fast Linf eps=4/255" and r["n"] == 32
    lines = report_lines(r)
    assert lines[-1].startswith("holding/yielding latency ratio: ") and "median wait beyond compute" in lines[-2]
