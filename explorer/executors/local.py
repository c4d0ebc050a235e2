"""The local executor: today's in-process engine, one point after another (the default)."""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from tqdm.auto import tqdm

from explorer.config import PointSpec
from explorer.core.cancel import Cancelled, CancelToken, cancel_scope, check_cancelled, current_token
from explorer.engine.anytime import FIRST_CHUNK, NO_RULE, StopRule, anytime_sweep
from explorer.engine.frontier import Engine
from explorer.zoo import Manifest

log = logging.getLogger(__name__)


class LocalExecutor:
    """Runs every job on one resident ``Engine`` in this process, in job order.

    The engine's own store (if any) serves known points and records new ones, exactly as
    ``Engine.sweep`` does; a point whose merge or logits are invalid comes back as a failure row
    (``points.failed_row``, nothing stored) and the jobs after it still run.

    Args:
        engine: the resident engine (its manifest, base, device and store are used as they are).
        lock: held while each point (each chunk, ``anytime``) is computed and released before it is
            yielded, so other users of the engine interleave (default: a lock of this executor's own).
    """

    name = "local"

    def __init__(self, engine: Engine, lock: AbstractContextManager | None = None) -> None:
        self.engine = engine
        self.lock = lock if lock is not None else threading.RLock()

    @property
    def manifest(self) -> Manifest:
        return self.engine.manifest

    def run(self, jobs: Sequence[PointSpec], *, use_bank: bool = False,
            progress: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(index, row)`` per job in order; return early on a set cancel token (the point in
        flight abandoned, nothing stored for it)."""
        for i, job in enumerate(tqdm(jobs, desc="sweep", disable=not progress, delay=1.0)):
            try:
                check_cancelled()
                with self.lock:
                    check_cancelled()   # superseded while it waited for the lock
                    row = self.engine.point_or_failure(job, use_bank=use_bank)
            except Cancelled:
                log.info("stopped by the caller; the points before this one are in the store")
                return
            yield i, row

    def anytime(self, jobs: Sequence[PointSpec], *, rule: StopRule = NO_RULE, first: int = FIRST_CHUNK,
                chunk: int | None = None, yielding: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """Round-robin growth of the jobs' points (``engine.anytime.anytime_sweep``): ``(index, row)``
        after every chunk, partial rows ``final=False``; runs under the caller's cancel scope.

        ``yielding=True`` (a background sweep; the lock must be a ``FairRLock``): whenever a request
        from a thread not marked background waits for the lock, the chunk in flight is abandoned at
        the attack's next step, the lock goes to that request, and the growth resumes from the store
        where it was (the abandoned images are computed again, with the same results: they are
        batch-free and seeded by id). ``rule.budget_s`` then counts from each resumption.
        """
        waiting = getattr(self.lock, "foreground_waiting", None) if yielding else None
        outer = current_token()
        while True:
            gave_way: list[bool] = []

            def stop_or_give_way(gave_way: list[bool] = gave_way) -> bool:
                if outer is not None and outer.cancelled:
                    return True
                if waiting is not None and waiting():
                    gave_way.append(True)
                    return True
                return False
            gen = anytime_sweep(self.engine.runner, jobs, rule=rule, first=first,
                                sweep=jobs[0].sweep if jobs else None, chunk=chunk)
            token = CancelToken(also=stop_or_give_way, reason=outer.reason if outer is not None else "cancelled")
            try:
                while True:
                    with self.lock, cancel_scope(token):
                        item = next(gen, None)
                    if item is None:
                        return
                    yield item
            except Cancelled:
                if not gave_way or (outer is not None and outer.cancelled):
                    raise
                log.info("anytime sweep: the engine goes to an interactive request; resuming after it")
            finally:
                gen.close()

    def close(self) -> None:
        """Nothing to release: the engine belongs to the caller."""
