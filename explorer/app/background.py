"""A sweep computed in a background thread, read while it runs (the app's first view).

The thread pulls rows from a generator (``Service.sweep`` or ``Service.anytime_sweep``, which hold
the engine lock per point or per chunk only, so interactive work interleaves) and keeps the latest
row of each point (an anytime point arrives again as it grows, with the same ``key``); any number
of readers take snapshots. A sweep may wait for another to finish first (``after``): the first
view's AutoAttack curve starts once its preview curve is complete. Nothing here knows about the
web page.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from explorer.core.cancel import CancelToken, cancel_scope
from explorer.core.fairlock import mark_background_thread
from explorer.engine.anytime import FIRST_CHUNK, NO_RULE, StopRule

log = logging.getLogger(__name__)
# The UI reads the anytime sweep's stop rules and first round through the app layer.
__all__ = ["FIRST_CHUNK", "NO_RULE", "BackgroundSweep", "Snapshot", "StopRule"]


@dataclass(frozen=True)
class Snapshot:
    """What a background sweep has produced so far."""

    rows: list[dict]       # the latest row of each point, in the order the points first came
    total: int             # points the sweep will produce
    done: bool             # finished, stopped or failed
    error: str | None      # one line when it failed
    started: bool = True   # False while it waits for the sweep it runs after
    updates: int = 0       # rows received so far (a growing point counts each time)


class BackgroundSweep:
    """Run ``rows()`` once in a daemon thread, under this sweep's cancel token; ``snapshot()``
    at any time.

    Args:
        rows: a function returning the row generator (it is consumed inside ``cancel_scope``,
            so ``stop()`` ends it within the point or chunk in flight).
        total: how many points it will produce (for progress).
        name: the thread's name.
        after: a sweep to wait for before starting (it is started too; stopping this one while
            it waits ends the wait).
        label: what it computes, for status lines (e.g. its attack label).
    """

    def __init__(self, rows: Callable[[], Iterator[dict]], total: int,
                 name: str = "explorer-background-sweep", after: BackgroundSweep | None = None,
                 label: str = "") -> None:
        self._rows_fn, self.total, self.name, self.after, self.label = rows, total, name, after, label
        self._rows: dict[object, dict] = {}   # key (or arrival index) -> latest row
        self._done = threading.Event()
        self._started = threading.Event()
        self._token = CancelToken(reason="background sweep stopped")
        self._error: str | None = None
        self._updates = 0
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundSweep:
        """Start the thread (once; later calls do nothing)."""
        with self._guard:
            if self._thread is None:
                if self.after is not None:
                    self.after.start()
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        mark_background_thread()   # its engine-lock requests never make a yielding sweep give way
        try:
            while self.after is not None and not self.after.wait(0.2):
                if self._token.cancelled:
                    return
            self._started.set()
            with cancel_scope(self._token):
                for row in self._rows_fn():
                    with self._guard:   # a point that grows replaces its earlier row, in place
                        self._rows[row.get("key") or len(self._rows)] = row
                        self._updates += 1
        except Exception as exc:   # reported in the snapshot as one line, logged in full
            log.exception("background sweep failed")
            self._error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            self._done.set()

    def snapshot(self) -> Snapshot:
        with self._guard:
            return Snapshot(list(self._rows.values()), self.total, self._done.is_set(), self._error,
                            self._started.is_set(), self._updates)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (or ``timeout`` seconds); whether it finished."""
        return self._done.wait(timeout)

    def stop(self) -> None:
        """Ask the sweep to stop (the point or chunk in progress is abandoned)."""
        self._token.cancel()
