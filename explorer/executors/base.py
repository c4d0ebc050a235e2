"""What every executor shares: the protocol, the sweep's jobs (``config.PointSpec``, one per point).

An executor decides *where* points run; what a point is (merge, evaluate, store key) stays
the engine's. Every executor runs history-free points by default (``use_bank=False``: no
adversarial examples carried between points), so a point's numbers do not depend on which
worker ran it or what that worker ran before.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from explorer.config import PointSpec, SweepSpec
from explorer.core.cancel import Cancelled, CancelToken, current_token, scoped
from explorer.engine.anytime import FIRST_CHUNK, NO_RULE, StopRule
from explorer.engine.points import sweep_grid
from explorer.zoo import Manifest

log = logging.getLogger(__name__)


class ExecutorError(RuntimeError):
    """An executor cannot start or keep running (missing package, unreachable cluster, ...).

    The message is one readable line, meant to be shown as ``error: <message>``.
    """


def sweep_jobs(spec: SweepSpec) -> list[PointSpec]:
    """The points of a sweep, in the engine's grid order (alpha x keep x method, each once)."""
    sweep_id = spec.digest()[:16]
    return [PointSpec(spec.natural, spec.robust, ms, spec.attack, spec.eval, spec.base, sweep_id)
            for ms in sweep_grid(spec)]


class Executor(Protocol):
    """Where points run. ``run`` yields ``(job index, row)`` as points finish (any order).

    Rows are the engine's (``Engine.point``); a point found in the store comes back with
    ``cached=True`` and is not recomputed. When the enclosing cancel token is set
    (``explorer.core.cancel``), outstanding work is cancelled within seconds and ``run`` returns;
    finished points are already stored.
    """

    name: str
    manifest: Manifest

    def run(self, jobs: Sequence[PointSpec], *, use_bank: bool = False,
            progress: bool = False) -> Iterator[tuple[int, dict[str, Any]]]: ...

    def close(self) -> None: ...


def run_sweep(executor: Executor, spec: SweepSpec, *, use_bank: bool = False,
              on_point: Callable[[dict], None] | None = None,
              progress: bool = False) -> Iterator[dict[str, Any]]:
    """Stream the rows of ``spec`` from ``executor`` as they finish (completion order).

    ``use_bank=False`` (default) attacks every point afresh. ``on_point`` sees each row first.
    """
    for _, row in executor.run(sweep_jobs(spec), use_bank=use_bank, progress=progress):
        if on_point is not None:
            on_point(row)
        yield row


def run_anytime(executor: Executor, jobs: Sequence[PointSpec], *, rule: StopRule = NO_RULE,
                first: int = FIRST_CHUNK, chunk: int | None = None,
                yielding: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, row)`` of the jobs' points as they grow (anytime sweep, coarse first).

    An executor with an ``anytime`` method (the local one) grows every point round-robin, chunk by
    chunk (``explorer.engine.anytime``). Others (Ray) run whole points as they always did: every
    row is final, ``rule.until_ci`` cannot cut a point short, ``rule.budget_s`` and the cancel
    token stop the run between and inside points (the points in flight are abandoned).
    ``chunk`` caps a local chunk's images (``anytime_sweep``) and ``yielding`` lets interactive
    requests for the engine lock interrupt a local chunk (``LocalExecutor.anytime``); whole points
    ignore both (Ray's actors do not hold this process's engine lock).
    """
    anytime = getattr(executor, "anytime", None)
    if anytime is not None:
        yield from anytime(jobs, rule=rule, first=first, chunk=chunk, yielding=yielding)
        return
    t0, outer = time.perf_counter(), current_token()

    def stop() -> bool:
        over = rule.budget_s is not None and time.perf_counter() - t0 > rule.budget_s
        return over or (outer is not None and outer.cancelled)
    try:
        for i, row in scoped(CancelToken(also=stop), executor.run(jobs)):
            yield i, {**row, "elapsed": round(time.perf_counter() - t0, 3)}
    except Cancelled:
        if outer is not None and outer.cancelled:
            raise
        log.info("budget of %.1f s spent; the points in flight are abandoned", rule.budget_s)


def run_in_order(executor: Executor, jobs: Sequence[PointSpec], **kwargs: Any) -> list[dict[str, Any]]:
    """Run ``jobs`` to the end (or the stop) and return their rows in job order.

    A stopped run returns the rows it has, still in job order. ``kwargs`` go to ``run``.
    """
    rows: dict[int, dict[str, Any]] = {}
    for i, row in executor.run(jobs, **kwargs):
        rows[i] = row
    return [rows[i] for i in sorted(rows)]


class Outbox:
    """The store a remote worker's engine writes into: it finds nothing and keeps the last point.

    A worker never opens the SQLite store; it hands ``take()`` (key, row, clean flags, robust
    flags) to the driver, which alone writes the store. Lookups happen on the driver before a
    point is sent out, so ``get`` always misses.
    """

    def __init__(self) -> None:
        self._last: tuple[str, dict[str, Any], Any, Any] | None = None

    def get(self, key: str) -> None:
        return None

    def put(self, key: str, row: dict[str, Any], clean: Any = None, robust: Any = None,
            sweep: str | None = None) -> None:
        self._last = (key, row, clean, robust)

    def take(self) -> tuple[str, dict[str, Any], Any, Any] | None:
        out, self._last = self._last, None
        return out
