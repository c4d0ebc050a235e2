"""The first view's AutoAttack curve and the Sweep's stop rules, driven through the handlers (tiny zoo).

After the default preview curve (pgd-3 on the tiny zoo) the background job grows the same curve
under autoattack-fast coarse first: partial rows (hollow, ``n_done/n``) before final ones, never
labelled final early; the AutoAttack curve leads once its first round is in, the preview curve
faded behind it; the next visitor and a restarted app get what is stored and resume from there.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import gradio as gr
import pytest

from explorer.ui import build_demo, tiers
from explorer.ui.frontier_handlers import FrontierHandlers

pytestmark = pytest.mark.usefixtures("one_thread")
AA = "autoattack-fast Linf eps=4/255"


def controls(**changes) -> dict:
    """The page's opening values on the tiny zoo (its defaults: pgd-3, eps 4/255, n 32, task shapes)."""
    v = dict(base="base", natural=["natural"], robust=["robust"], method="task_arithmetic", alpha=0.5, keep=1.0,
             scope="global", advanced=False, options="", attack="pgd-3", eps="4/255", norm="Linf", task="shapes",
             n=32, rows=[], theme="light", methods=["task_arithmetic"], alphas="0,1", until_ci="", budget_s="")
    return {**v, **{f"lambda_{i}": 0.0 for i in range(6)}, **changes}


def slowed(service, records: list, pause: float = 0.15) -> None:
    """Record every row the anytime sweeps yield, with a pause after each (the tiny zoo's chunks take
    milliseconds: the pause lets the page's polling see every stage)."""
    grow = service.anytime_sweep

    def recorded(*args, **kwargs):
        for row in grow(*args, **kwargs):
            records.append(row)
            yield row
            time.sleep(pause)
    service.anytime_sweep = recorded


def traces(fig) -> dict[str, object]:
    return {t.name: t for t in fig.data}


def test_first_view_switches_to_the_coarse_first_curve(tiny_zoo: Path, tmp_path: Path) -> None:
    demo = build_demo(str(tiny_zoo), device="cpu", store_path=str(tmp_path / "r.sqlite"))
    service, records = demo.explorer_service, []
    slowed(service, records)
    outs = list(FrontierHandlers(service).first_view(controls()))
    plots_, tables, statuses = [o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs]
    # What is computing is said: the preview curve first, then the AutoAttack one, coarse first.
    assert any("Computing the default curve under pgd-3 Linf eps=4/255 in the background" in s
               and "Then the same curve under autoattack-fast" in s for s in statuses)
    growing = [s for s in statuses if f"Computing the same curve under {AA} (the reported tier)" in s]
    assert growing and "16 images per point a round" in growing[0]
    # The background rows: the whole curve on 16 images first, then each point final at 32.
    aa = [r for r in records if r["attack"] == AA]
    assert [(r["n_done"], r["final"]) for r in aa] == [(16, False)] * 6 + [(32, True)] * 6
    assert all(r["final"] == (r["n_done"] == r["n"]) for r in records)   # never labelled final early
    # On the page: hollow AutoAttack points with intervals while partial, leading once round 1 is in.
    partial = [(f, t, s) for f, t, s in zip(plots_, tables, statuses)
               if "task_arithmetic · autoattack-fast" in traces(f) and "16/32" in set(t["n"])]
    assert partial, statuses
    fig, table, status = partial[-1]
    main = traces(fig)["task_arithmetic · autoattack-fast"]
    assert "circle-open" in list(main.marker.symbol) and len(main.error_y.array) == len(main.x)
    assert "Partial (hollow): task_arithmetic: autoattack-fast on " in status
    assert re.search(r"Hypervolume \d\.\d{3} \(partial: [1-6] of 6 points not complete\)", status), status
    assert "task_arithmetic · pgd-3 (faded)" in traces(fig)
    title = " ".join(re.sub(r"<[^>]+>", " ", fig.layout.title.text).split())
    assert re.search(f"{AA}, n=32, task shapes, [1-6] of 6 points partial", title), title
    # The end: every AutoAttack point filled, its caption names attack, eps and n; the table lists both tiers.
    fig, table, status = plots_[-1], tables[-1], statuses[-1]
    main = traces(fig)["task_arithmetic · autoattack-fast"]
    assert main.marker.symbol == "circle" and "Pareto front (partial)" not in traces(fig)
    assert re.search(r"Hypervolume \d\.\d{3}\. Also plotted", status), status
    assert status.startswith(f"6 points plotted (pretrained 1, task_arithmetic 5) — {AA}, n = 32, task shapes.")
    assert "Also plotted (faded): the same curve under pgd-3 Linf eps=4/255, 6 points, n = 32." in status
    assert "Partial" not in status and "in the background" not in status
    assert sorted(set(table["attack"])) == [AA, "pgd-3 Linf eps=4/255"] and set(table["n"]) == {"32"}
    assert "On the curve" in outs[-1][3] and outs[-1][4]["attack"] == AA and outs[-1][4]["alpha"] == 0.5

    # The next visitor gets the finished curves at once, nothing computed again.
    before = len(records)
    again = list(FrontierHandlers(service).first_view(controls()))
    assert len(again) == 1 and again[0][2] == status and len(records) == before


def test_a_restart_resumes_the_autoattack_curve_from_the_store(tiny_zoo: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "r.sqlite")
    first = build_demo(str(tiny_zoo), device="cpu", store_path=store).explorer_service
    done: list[dict] = []
    slowed(first, done, pause=0.3)
    jobs = tiers.first_view_jobs(first)
    while len(jobs[1].snapshot().rows) < 3:
        assert not jobs[1].snapshot().done
        time.sleep(0.05)
    jobs[1].stop()     # the app goes away in the middle of the first round
    assert jobs[1].wait(30)
    kept = {r["key"]: r for r in done}
    assert 3 <= len(kept) < 6 and all(r["n_done"] == 16 and not r["final"] for r in kept.values())

    again = build_demo(str(tiny_zoo), device="cpu", store_path=store).explorer_service
    resumed: list[dict] = []
    slowed(again, resumed, pause=0)
    later = tiers.first_view_jobs(again)
    assert later[1].wait(60) and later[1].snapshot().error is None
    head = resumed[:len(kept)]   # what the store held comes first, as it was, without computing
    assert {r["key"] for r in head} == set(kept) and all(r["cached"] and r["n_done"] == 16 for r in head)
    assert [r["robust_flags"] for r in head] == [kept[r["key"]]["robust_flags"] for r in head]
    fresh = [r for r in resumed[len(kept):] if r["n_done"] == 16]
    assert len(fresh) == 6 - len(kept) and not any(r["cached"] for r in fresh)
    assert sum(r["final"] for r in resumed) == 6


def test_sweep_stop_rules_in_the_app(tiny_zoo: Path, tmp_path: Path) -> None:
    service = build_demo(str(tiny_zoo), device="cpu", store_path=str(tmp_path / "r.sqlite")).explorer_service
    h = FrontierHandlers(service)
    outs = list(h.sweep(controls(attack="autoattack-fast", until_ci="0.2", alphas="0,1")))
    # Every point has a 95% half-width under 0.2 after its first 16 images: none is refined further.
    ns = [set(o[1]["n"]) for o in outs[:-1]]
    assert all(n <= {"16/32"} for n in ns) and outs[-2][1]["n"].tolist() == ["16/32"] * 3
    assert outs[-1][3] == ("Every point reached the interval target (95% half-width ≤ 0.2): 0/3 points "
                           "complete, 3 begun (16/32 images each).")
    assert "Sweep, coarse first: 0/3 points complete" in outs[0][3]
    # A spent budget: the points so far are kept (here from the store) and the line says why it ended.
    end = list(h.sweep(controls(attack="autoattack-fast", budget_s="1e-9", alphas="0,1")))[-1][3]
    assert end.startswith("The time budget (1e-09 s) is spent: 0/3 points complete, 3 begun (16/32 images each)")
    assert "every finished image is stored; a re-run resumes from there." in end
    # No rule: refined to n, every point final.
    last = list(h.sweep(controls(attack="autoattack-fast", alphas="0,1")))[-1][3]
    assert last == "Sweep complete: 3/3 points complete."


def test_sweep_stop_keeps_every_finished_image(tiny_zoo: Path, tmp_path: Path) -> None:
    service = build_demo(str(tiny_zoo), device="cpu", store_path=str(tmp_path / "r.sqlite")).explorer_service
    h = FrontierHandlers(service)
    gen = h.sweep(controls(attack="autoattack-fast", alphas="0,0.5,1"))
    first = next(gen)
    assert "Sweep, coarse first: 0/4 points complete" in first[3]
    assert "Stopping" in h.stop()
    rest = list(gen)
    assert rest[-1][3].startswith("Stopped: 0/4 points complete, 1 begun (16/32 images each); every finished "
                                  "image is stored")
    again = next(h.sweep(controls(attack="autoattack-fast", alphas="0,0.5,1")))   # resumes from the store
    kept = again[2][-1]
    assert (kept["n_done"], kept["final"], kept["cached"]) == (16, False, True)
    assert kept["key"] == first[2][-1]["key"] and kept["robust_flags"] == first[2][-1]["robust_flags"]


@pytest.mark.parametrize("until_ci, budget_s, message", [
    ("0.7", "", r"the interval target is a 95% half-width in \(0, 0.5\], e.g. 0.05; got 0.7"),
    ("0", "", r"the interval target is a 95% half-width in \(0, 0.5\]"),
    ("wide", "", r"the interval target \(95% half-width\) must be a number, got 'wide'"),
    ("", "-5", r"the time budget must be a positive number of seconds, got -5"),
    ("", "nan", r"the time budget must be a positive number of seconds, got nan"),
])
def test_bad_stop_rules_are_one_line(tiny_zoo: Path, tmp_path: Path, until_ci: str, budget_s: str,
                                     message: str) -> None:
    h = FrontierHandlers(build_demo(str(tiny_zoo), device="cpu", store_path=str(tmp_path / "r.sqlite")).explorer_service)
    with pytest.raises(gr.Error, match=message) as err:
        list(h.sweep(controls(attack="autoattack-fast", until_ci=until_ci, budget_s=budget_s)))
    assert "\n" not in err.value.message


def test_the_companion_curve_is_drawn_faded_and_named_by_its_attack() -> None:
    """The figure of both tiers: the AutoAttack curve with its (partial) Pareto front and
    intervals; the preview curve behind it thin and grey, without intervals; each legend entry
    names its attack."""
    from explorer.viz import plots

    def row(alpha: float, clean: float, robust: float, attack: str, done: int) -> dict:
        return dict(method="task_arithmetic", alpha=alpha, lambdas=[1 - alpha, alpha], keep=1.0, clean_acc=clean,
                    robust_acc=robust, attack=attack, n=64, n_done=done, final=done == 64, task="shapes", key=attack + str(alpha))
    aa = [row(a, 0.9 - 0.3 * a, 0.1 + 0.3 * a, AA, 16) for a in (0.25, 0.5, 0.75)]
    pgd = [row(a, 0.9 - 0.3 * a, 0.3 + 0.3 * a, "pgd-3 Linf eps=4/255", 64) for a in (0.25, 0.5, 0.75)]
    fig = plots.frontier_figure(aa, other=pgd, other_faded=True)
    t = traces(fig)
    assert list(t) == ["task_arithmetic · pgd-3 (faded)", "task_arithmetic · autoattack-fast", "Pareto front (partial)"]
    faded, main = t["task_arithmetic · pgd-3 (faded)"], t["task_arithmetic · autoattack-fast"]
    assert faded.opacity == 0.55 and faded.line.dash == "dash" and not faded.error_y.array
    assert list(main.marker.symbol) == ["circle-open"] * 3 and len(main.error_y.array) == 3
    assert "on 16/64 images (partial)" in main.text[0] and "n = 64" in faded.text[0]
    assert list(fig.layout.yaxis.range)[1] > max(r["robust_acc"] for r in pgd)   # the axes hold both curves
    drawn = plots.frontier_figure(aa, other=pgd, other_faded=False)
    assert "task_arithmetic · pgd-3" in traces(drawn) and len(traces(drawn)["task_arithmetic · pgd-3"].error_y.array) == 3


def test_a_chunk_cap_bounds_what_one_lock_holds(tiny_zoo: Path) -> None:
    """``chunk`` splits a round into chunks of at most that many images (each one row, each one
    hold of the engine lock in ``Service.anytime_sweep``); the rounds stay coarse first."""
    from explorer.config import AttackSpec, EvalSpec, MergeSpec, PointSpec
    from explorer.engine.anytime import anytime_sweep
    from explorer.engine.frontier import Engine

    points = [PointSpec(("natural",), ("robust",), MergeSpec.from_alpha(a), AttackSpec("pgd-2", eps=4 / 255),
                        EvalSpec("shapes", n=32)) for a in (0.0, 1.0)]
    rows = list(anytime_sweep(Engine(tiny_zoo, device="cpu").runner, points, first=16, chunk=8))
    assert [(i, r["n_done"]) for i, r in rows] == [(0, 8), (0, 16), (1, 8), (1, 16),
                                                  (0, 24), (0, 32), (1, 24), (1, 32)]


def test_the_engine_lock_is_handed_over_first_come_first_served() -> None:
    """A thread that releases the lock and asks again at once (a background sweep, chunk after
    chunk) goes behind a thread already waiting (a slider move), which gets it next: it waits one
    chunk, not many (``threading.RLock`` lets the releasing thread barge back in)."""
    import threading

    from explorer.core.fairlock import FairRLock

    lock, got = FairRLock(), []
    assert lock.acquire() and lock.acquire(blocking=False)   # re-entrant for its owner
    lock.release()
    waiter = threading.Thread(target=lambda: (lock.acquire(), got.append("slider"), time.sleep(0.2), lock.release()))
    waiter.start()
    deadline = time.monotonic() + 10
    while not lock._queue and time.monotonic() < deadline:   # the slider move is waiting
        time.sleep(0.01)
    lock.release()                                 # the chunk ends ...
    assert lock.acquire(blocking=False) is False   # ... and the next chunk may not barge in
    assert lock.acquire(timeout=10) and got == ["slider"]   # it gets the lock after the waiter
    lock.release()
    waiter.join(5)
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()
    assert FairRLock().acquire(timeout=0)   # a free lock is taken even with timeout 0


def test_the_first_view_stops_following_after_its_time_but_the_curve_goes_on(tiny_zoo: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """A page streams the background sweeps for ``FIRST_VIEW_STREAM_S`` at most (one server thread
    each): then one line says the curve keeps growing, and the sweep finishes regardless."""
    from explorer.ui import frontier_handlers

    demo = build_demo(str(tiny_zoo), device="cpu", store_path=str(tmp_path / "r.sqlite"))
    service, records = demo.explorer_service, []
    slowed(service, records, pause=0.5)
    monkeypatch.setattr(frontier_handlers, "FIRST_VIEW_STREAM_S", 1.0)
    outs = list(FrontierHandlers(service).first_view(controls()))
    assert outs[-1][2].endswith("This page stopped following it; the curve keeps growing in the background "
                                "(reload the page, or change a setting and back, to see its latest points).")
    jobs = tiers.first_view_jobs(service)
    assert jobs[1].wait(60) and sum(r["final"] for r in jobs[1].snapshot().rows) == 6


def test_the_stream_writes_only_while_the_page_shows_its_setting(tiny_zoo: Path, tmp_path: Path) -> None:
    """A setting change (eps, task, n, vectors ...) shows that setting; the first view's stream then
    wrote the default curve and its caption over it for 15 minutes (plot at 8/255 while the eps box
    said 4/255). Now it writes nothing until the page is back on its setting."""
    def page(store: str):
        service = build_demo(str(tiny_zoo), device="cpu", store_path=str(tmp_path / store)).explorer_service
        slowed(service, [], pause=0.1)
        h = FrontierHandlers(service)
        gen = h.first_view(controls())
        assert next(gen)[0] is not None
        return service, h, gen

    service, h, gen = page("a.sqlite")
    fig, table, status = h.show_stored(controls(eps="2/255"))   # another setting: the page's own
    assert "eps=2/255" in fig.layout.title.text and "eps=4/255" not in status
    away = list(gen)   # the background finishes while the page shows eps 2/255: nothing written
    assert away == [] and all(j.snapshot().done for j in tiers.first_view_jobs(service))

    service, h, gen = page("b.sqlite")   # away and back while it computes: the stream draws again
    h.show_stored(controls(eps="2/255"))
    h.show_stored(controls())
    back = list(gen)
    assert back and "task_arithmetic · autoattack-fast" in traces(back[-1][0])
    assert back[-1][2].startswith("6 points plotted")


def test_a_bad_setting_is_one_line_and_keeps_what_is_plotted(tiny_zoo: Path, tmp_path: Path) -> None:
    """A bad eps, n or task emptied the plot and the table (the header kept the old point)."""
    service = build_demo(str(tiny_zoo), device="cpu", store_path=str(tmp_path / "r.sqlite")).explorer_service
    h = FrontierHandlers(service)
    for bad, line in ((dict(eps="four"), "eps"), (dict(n=0), "sample count n must be a whole number >= 1"),
                      (dict(task="fashion", n=2500), "task 'fashion' has 2000 images; n=2500 is larger")):
        with pytest.raises(gr.Error, match=line):
            h.show_stored(controls(**bad))
    assert h._shown == {}   # nothing recorded: the stream still draws the page's setting
