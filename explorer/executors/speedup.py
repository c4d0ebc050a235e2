"""``bench --executor ray``: the same history-free sweep on the local engine and on Ray, one run.

The local run is one engine in this process with one torch thread (what one actor gets); the
Ray run uses ``workers`` single-threaded actors (or one GPU each). Both clocks start after
their engines are built (``Engine(...)`` here, every actor's engine there: start-up is
printed apart) and include everything after it: loading the vectors, text heads, eval data,
every point (later runs find those cached, on both sides). The rows must agree exactly; the
speedup is local seconds / Ray seconds.
"""
from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from explorer.config import AttackSpec, EvalSpec, SweepSpec
from explorer.engine.frontier import Engine
from explorer.zoo import Manifest

from .base import run_in_order, sweep_jobs
from .local import LocalExecutor

log = logging.getLogger(__name__)
TIMINGS = ("seconds", "merge_seconds", "attack_seconds", "cached")


def run_ray_bench(manifest: Manifest, natural: str, robust: str, attack: AttackSpec, ev: EvalSpec,
                  alphas: Sequence[float], *, workers: int = 2, address: str | None = None,
                  device: str | None = None, repeat: int = 1, executor: Any = None) -> dict[str, Any]:
    """Time the local executor (one thread) and the Ray executor on the same sweep.

    ``repeat`` > 1 runs the two in turns (local, Ray, local, Ray, ...) on the same engines and
    reports the median of each, so load that comes and goes on a shared machine hits both.
    ``executor``: a running ``RayExecutor`` to use (and leave running; its store must be None);
    default: a new one with ``workers`` single-threaded actors, closed at the end.

    Returns:
        ``local_seconds``, ``ray_seconds`` (medians), ``speedup`` (their ratio), every run's
        times, ``ray_start_seconds``, ``local_start_seconds``, ``same`` (every row of every run
        equal but timings), the first run's rows, and where the actors ran.

    Raises:
        ExecutorError: Ray missing or unreachable.
    """
    from .ray_executor import RayExecutor

    base = manifest.defaults.get("base") or manifest.names("base")[0]
    spec = SweepSpec(manifest=str(manifest.path), base=base, natural=(natural,), robust=(robust,),
                     alphas=tuple(alphas), attack=attack, eval=ev)
    jobs = sweep_jobs(spec)
    t0 = time.perf_counter()
    local = LocalExecutor(Engine(manifest, base=base, device=device, store=None))
    local_start = time.perf_counter() - t0
    owned = executor is None
    t0 = time.perf_counter()
    if owned:
        executor = RayExecutor(manifest, base=base, store=None, address=address, workers=workers, threads=1,
                               device=device)
    runs: dict[str, list] = {"local": [], "ray": []}
    try:
        where = executor.start()
        ray_start = time.perf_counter() - t0
        for _ in range(max(1, repeat)):
            runs["local"].append(_timed(local, jobs, threads=1))
            runs["ray"].append(_timed(executor, jobs))
    finally:
        if owned:
            executor.close()
    first = [_numbers(r) for r in runs["local"][0][1]]
    same = all([_numbers(r) for r in rows] == first for kind in runs for _, rows in runs[kind])
    local_s = statistics.median(t for t, _ in runs["local"])
    ray_s = statistics.median(t for t, _ in runs["ray"])
    return {"points": len(jobs), "attack": attack.label, "n": ev.n, "task": ev.task, "natural": natural,
            "robust": robust, "workers": len(where), "where": where, "repeat": max(1, repeat),
            "local_start_seconds": local_start, "ray_start_seconds": ray_start,
            "local_runs": [t for t, _ in runs["local"]], "ray_runs": [t for t, _ in runs["ray"]],
            "local_seconds": local_s, "ray_seconds": ray_s, "speedup": local_s / ray_s, "same": same,
            "local_rows": runs["local"][0][1], "ray_rows": runs["ray"][0][1]}


def _timed(executor: Any, jobs: Sequence[Any], threads: int | None = None) -> tuple[float, list[dict]]:
    """Seconds and rows of one run of ``jobs`` (with ``threads`` torch threads here, if given)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        rows = run_in_order(executor, jobs)
        return time.perf_counter() - t0, rows
    finally:
        torch.set_num_threads(before)


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in TIMINGS}


def report_lines(r: dict[str, Any]) -> list[str]:
    """The printed report; ``ray speedup: X`` is the last line."""
    devices = sorted({w["device"] for w in r["where"]})
    nodes = len({w["node"] for w in r["where"]})
    runs = (lambda ts: "" if len(ts) < 2 else f", median of {' '.join(f'{t:.2f}' for t in ts)}")  # noqa: E731
    lines = [f"sweep: {r['natural']} -> {r['robust']}, {r['points']} points, {r['attack']}, n={r['n']}, "
             f"task={r['task']}, history-free, {r['repeat']} run(s) each, in turns",
             f"local: 1 engine, 1 thread: {r['local_seconds']:.2f} s{runs(r['local_runs'])} (engine built "
             f"in {r['local_start_seconds']:.2f} s, not counted)",
             f"ray:   {r['workers']} actors on {nodes} node(s), {'/'.join(devices)}, 1 thread each: "
             f"{r['ray_seconds']:.2f} s{runs(r['ray_runs'])} (actors started in {r['ray_start_seconds']:.2f} s, "
             "not counted)"]
    for a, b in zip(r["local_rows"], r["ray_rows"]):
        lines.append(f"  alpha={a['alpha']:.2f}  local clean={a['clean_acc']:.3f} robust={a['robust_acc']:.3f} "
                     f"({a['seconds']:.2f}s) | ray clean={b['clean_acc']:.3f} robust={b['robust_acc']:.3f} "
                     f"({b['seconds']:.2f}s)")
    lines.append(f"same numbers: {'yes, every point' if r['same'] else 'NO: the rows differ'}")
    lines.append(f"ray speedup: {r['speedup']:.2f}")
    return lines
