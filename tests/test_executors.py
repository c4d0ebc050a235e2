"""Executors: Ray actors give the local engine's points exactly, the driver alone writes the store,
and faults (a killed actor, a stop, an interrupted driver, a bad address) lose nothing.

One local Ray (two single-threaded CPU actors) and one ``RayExecutor`` serve the whole module.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from explorer.config import AttackSpec, EvalSpec, SweepSpec
from explorer.core.cancel import CancelToken, cancel_scope
from explorer.engine.frontier import Engine
from explorer.executors import ExecutorError, LocalExecutor, make_executor, run_in_order, run_sweep, sweep_jobs
from explorer.executors.ray_connect import import_ray, split_address
from explorer.executors.schedule import AffinityQueue
from explorer.store import Store

EV = EvalSpec(task="shapes", n=96, seed=0)
PGD = AttackSpec("pgd-100", eps=4 / 255, seed=0)   # ~0.4 s a point: a kill lands while it runs
TIMINGS = ("seconds", "merge_seconds", "attack_seconds")


def sweep_spec(zoo, attack: AttackSpec = PGD, ev: EvalSpec = EV) -> SweepSpec:
    return SweepSpec(manifest=str(zoo), base="base", natural=("natural",), robust=("robust",),
                     alphas=(0.0, 0.5, 1.0), attack=attack, eval=ev)


def numbers(row: dict) -> dict:
    """Everything a row says except how long it took."""
    return {k: v for k, v in row.items() if k not in TIMINGS}


# ----------------------------------------------------------------------------- no Ray needed

def test_affinity_queue_keeps_groups_resident_and_balances():
    q = AffinityQueue([(0, "a"), (1, "a"), (2, "a"), (3, "b"), (4, "b")])
    assert [q.next_for("w1"), q.next_for("w2")] == [0, 3]        # each worker takes its own group
    assert [q.next_for("w1"), q.next_for("w2")] == [1, 4]
    assert q.next_for("w2") == 2                                 # b is empty: w2 helps with a
    q.give_back(2)                                               # w2 died: 2 goes back in front
    q.forget("w2")
    assert q.next_for("w1") == 2 and q.next_for("w1") is None and len(q) == 0


def test_local_executor_equals_engine_sweep(tiny_zoo):
    spec = sweep_spec(tiny_zoo, AttackSpec("pgd-3", eps=4 / 255, seed=0), EvalSpec(task="shapes", n=48))
    want = list(Engine(tiny_zoo, device="cpu").sweep(spec, progress=False, use_bank=False))
    got = run_in_order(LocalExecutor(Engine(tiny_zoo, device="cpu")), sweep_jobs(spec))
    assert [numbers(r) for r in got] == [numbers(r) for r in want]
    assert all(r["reuse"] is False for r in got)                 # history-free by default


def test_missing_ray_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ExecutorError, match="pip install") as err:
        import_ray()
    assert "\n" not in str(err.value)


def test_bad_options_are_one_line(tiny_zoo):
    with pytest.raises(ExecutorError, match="unknown executor 'dask'"):
        make_executor("dask", manifest=tiny_zoo)
    with pytest.raises(ExecutorError, match="needs the Ray executor"):
        make_executor("local", manifest=tiny_zoo, address="10.0.0.1:6379")
    with pytest.raises(ExecutorError, match="not host:port"):
        split_address("nohost")


# ----------------------------------------------------------------------------- on Ray

@pytest.fixture(scope="module")
def ray_mod():
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install -r requirements.txt)")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(ray_mod, tiny_zoo):
    from explorer.executors.ray_executor import RayExecutor

    ex = RayExecutor(tiny_zoo, workers=2, threads=1, device="cpu")
    where = ex.start()
    assert [w["threads"] for w in where] == [1, 1] and {w["device"] for w in where} == {"cpu"}
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def local_store(tiny_zoo, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("local") / "r.sqlite")
    list(Engine(tiny_zoo, device="cpu", store=store).sweep(sweep_spec(tiny_zoo), progress=False, use_bank=False))
    return store


@pytest.fixture(scope="module")
def local_rows(local_store):
    return local_store.rows()


def test_ray_points_equal_local_points_and_only_the_driver_writes(executor, ray_mod, local_rows, local_store,
                                                                   tiny_zoo, tmp_path):
    executor.store = store = Store(tmp_path / "r.sqlite")
    committed = []
    rows = list(run_sweep(executor, sweep_spec(tiny_zoo),
                          on_point=lambda r: committed.append(store.get(r["key"]) is not None)))
    by_key = {r["key"]: r for r in rows}
    assert [numbers(by_key[r["key"]]) for r in local_rows] == [numbers(r) for r in local_rows]
    assert committed == [True] * 3                      # each row is in the store when it arrives
    assert len(store) == 3 and sorted(r["key"] for r in store.rows()) == sorted(by_key)
    for key in by_key:                                  # the same images fooled, image for image
        assert all((a == b).all() for a, b in zip(store.flags(key), local_store.flags(key)))
    stores = ray_mod.get([a.__ray_call__.remote(lambda w: type(w.engine.store).__name__)
                          for a in executor._actors])
    assert stores == ["Outbox", "Outbox"]               # the actors hold no store of their own
    sent = executor.sent
    again = run_in_order(executor, sweep_jobs(sweep_spec(tiny_zoo)))
    assert executor.sent == sent and all(r["cached"] for r in again)    # known points not sent out
    assert [numbers({**r, "cached": False}) for r in again] == [numbers(r) for r in local_rows]


def test_killed_actor_point_is_retried_elsewhere(executor, ray_mod, local_rows, tiny_zoo, tmp_path):
    executor.store = store = Store(tmp_path / "r.sqlite")
    retried, killed = executor.retried, []

    def kill_newest(_row: dict) -> None:
        if not killed and executor.in_flight:
            ticket = max(executor.in_flight)           # just sent: surely still running
            killed.append(executor.in_flight[ticket][0])
            ray_mod.kill(executor.in_flight[ticket][1], no_restart=True)

    rows = list(run_sweep(executor, sweep_spec(tiny_zoo), on_point=kill_newest))
    assert killed and executor.retried == retried + 1
    assert sorted(numbers(r)["key"] for r in rows) == sorted(r["key"] for r in local_rows)
    assert {r["key"]: numbers(r) for r in rows} == {r["key"]: numbers(r) for r in local_rows}
    assert len(store) == 3                              # nothing lost, no duplicate row
    assert len(executor._actors) == 2                   # a fresh actor replaced the dead one


def test_stop_cancels_running_points_within_seconds(executor, tiny_zoo, tmp_path):
    executor.store = store = Store(tmp_path / "r.sqlite")
    executor.start()                                    # both actors warm (a replacement may be starting)
    slow = sweep_spec(tiny_zoo, AttackSpec("pgd-400", eps=4 / 255, seed=0), EvalSpec(task="shapes", n=128))
    fired: list[float] = []

    def should_stop() -> bool:
        if not fired and len(executor.in_flight) == 2:
            time.sleep(0.3)                             # both actors inside their attacks
            fired.append(time.perf_counter())
        return bool(fired)

    with cancel_scope(CancelToken(also=should_stop)):
        rows = list(run_sweep(executor, slow))
    latency = time.perf_counter() - fired[0]
    assert rows == [] and len(store) == 0               # nothing finished, nothing half-stored
    assert latency < 3.0, latency
    assert not executor.in_flight and len(executor._actors) == 2   # actors answered: none killed


def test_interrupted_driver_resumes_from_the_store(executor, local_rows, tiny_zoo, tmp_path):
    path = tmp_path / "r.sqlite"
    executor.store = Store(path)

    def interrupt(_row: dict) -> None:
        raise KeyboardInterrupt("the test's Ctrl-C")

    with pytest.raises(KeyboardInterrupt, match="the test's Ctrl-C"):
        list(run_sweep(executor, sweep_spec(tiny_zoo), on_point=interrupt))
    done = len(Store(path))
    assert 1 <= done < 3 and not executor.in_flight
    executor.store = Store(path)                        # the re-run driver opens the same file
    sent = executor.sent
    rows = run_in_order(executor, sweep_jobs(sweep_spec(tiny_zoo)))
    assert executor.sent - sent == 3 - done and sum(r["cached"] for r in rows) == done
    assert [numbers({**r, "cached": False}) for r in rows] == [numbers(r) for r in local_rows]
    assert len(executor.store) == 3


def test_unreachable_address_is_one_line_fast(ray_mod, tiny_zoo):
    from explorer.executors.ray_executor import RayExecutor

    t0 = time.perf_counter()
    with pytest.raises(ExecutorError, match="^cannot reach a Ray cluster at 127.0.0.1:1") as err:
        RayExecutor(tiny_zoo, address="127.0.0.1:1")
    assert time.perf_counter() - t0 < 5
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- CLI, service, app

SWEEP_FLAGS = ["--natural", "natural", "--robust", "robust", "--alphas", "0,0.5,1", "--attack", "pgd-100",
               "--eps", "4/255", "--n", "96"]


def test_cli_sweep_on_ray_prints_the_local_points(executor, local_rows, tiny_zoo, tmp_path, monkeypatch):
    """``sweep --executor ray`` goes through the service's executor pool to a Ray executor (the
    module's actors, handed out instead of new ones) and writes what the local sweep computed, in grid order."""
    import explorer.executors.pool as pool_mod
    from explorer.cli import main

    asked: dict = {}

    def module_executor(kind: str, **kwargs):
        asked.update(kwargs, kind=kind)
        executor.store = kwargs["store"]
        return executor

    monkeypatch.setattr(pool_mod, "make_executor", module_executor)
    monkeypatch.setattr(executor, "close", lambda: None)
    out = tmp_path / "ray.json"
    assert main(["sweep", "--manifest", str(tiny_zoo), *SWEEP_FLAGS, "--store", str(tmp_path / "r.sqlite"),
                 "--out", str(out), "--executor", "ray", "--ray-address", "auto", "--workers", "2"]) == 0
    assert (asked["kind"], asked["address"], asked["workers"]) == ("ray", "auto", 2)
    assert [numbers(r) for r in json.loads(out.read_text())] == [numbers(r) for r in local_rows]
    assert len(Store(tmp_path / "r.sqlite")) == 3


def test_service_sweep_on_ray_streams_the_pretrained_point_and_the_sweep(executor, local_rows, tiny_zoo,
                                                                         tmp_path, monkeypatch):
    from explorer.app.service import Service
    from explorer.config import MergeSpec

    svc = Service(str(tiny_zoo), "cpu", str(tmp_path / "r.sqlite"), executor="ray", workers=2)
    monkeypatch.setattr(svc, "executor", lambda base=None: executor)
    executor.store = svc.store
    rows = list(svc.sweep(sweep_spec(tiny_zoo)))
    pre = [r for r in rows if r["lambdas"] == [0.0, 0.0]]
    want_pre = Engine(tiny_zoo, device="cpu").point(["natural"], ["robust"], MergeSpec(lambdas=(0.0, 0.0)),
                                                    PGD, EV, use_bank=False)
    assert len(rows) == 4 and [numbers(r) for r in pre] == [numbers(want_pre)]
    assert {r["key"]: numbers(r) for r in rows if r not in pre} == {r["key"]: numbers(r) for r in local_rows}
    assert len(svc.store) == 4


def test_cli_and_app_bad_ray_options_are_one_line(tiny_zoo, tmp_path, capsys):
    pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements.txt)")
    from explorer.cli import main

    base = ["sweep", "--manifest", str(tiny_zoo), *SWEEP_FLAGS, "--no-store"]
    t0 = time.perf_counter()
    assert main([*base, "--executor", "ray", "--ray-address", "127.0.0.1:1"]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach a Ray cluster at 127.0.0.1:1") and "\n" not in err
    assert main([*base, "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: a Ray address or --workers needs the Ray executor") and "\n" not in err
    spec = importlib.util.spec_from_file_location("app", Path(__file__).resolve().parents[1] / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert app.main(["--manifest", str(tiny_zoo), "--store", "none", "--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot reach a Ray cluster at 127.0.0.1:1")
    assert not any("Traceback" in line for line in err)


def test_bench_reports_equal_rows_and_the_measured_ratio(executor, tiny_zoo):
    from explorer.executors.speedup import report_lines, run_ray_bench
    from explorer.zoo import load_manifest

    executor.store = None
    r = run_ray_bench(load_manifest(tiny_zoo), "natural", "robust", PGD, EV, [0.0, 0.5, 1.0], executor=executor,
                      repeat=2)
    lines = report_lines(r)
    assert r["same"] and lines[-2] == "same numbers: yes, every point"
    assert len(r["local_runs"]) == len(r["ray_runs"]) == 2
    assert r["local_seconds"] == sum(r["local_runs"]) / 2 and r["ray_seconds"] == sum(r["ray_runs"]) / 2
    assert lines[-1] == f"ray speedup: {r['local_seconds'] / r['ray_seconds']:.2f}"
    assert all(not row["cached"] for row in r["ray_rows"]) and r["workers"] == 2
