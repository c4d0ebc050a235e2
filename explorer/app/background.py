"""A sweep computed in a background thread, read while it runs (the app's first view).

The thread pulls rows from a generator (``Service.sweep``, which holds the engine lock per point
only, so interactive work interleaves between points) and keeps them; any number of readers take
snapshots. Nothing here knows about the web page.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from explorer.core.cancel import CancelToken, cancel_scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What a background sweep has produced so far."""

    rows: list[dict]       # in the order computed
    total: int             # points the sweep will produce
    done: bool             # finished, stopped or failed
    error: str | None      # one line when it failed


class BackgroundSweep:
    """Run ``rows()`` once in a daemon thread, under this sweep's cancel token; ``snapshot()``
    at any time.

    Args:
        rows: a function returning the row generator (it is consumed inside ``cancel_scope``,
            so ``stop()`` ends it within the point in flight).
        total: how many rows it will yield (for progress).
        name: the thread's name.
    """

    def __init__(self, rows: Callable[[], Iterator[dict]], total: int,
                 name: str = "explorer-background-sweep") -> None:
        self._rows_fn, self.total, self.name = rows, total, name
        self._rows: list[dict] = []
        self._done = threading.Event()
        self._token = CancelToken(reason="background sweep stopped")
        self._error: str | None = None
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "BackgroundSweep":
        """Start the thread (once; later calls do nothing)."""
        with self._guard:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with cancel_scope(self._token):
                for row in self._rows_fn():
                    with self._guard:
                        self._rows.append(row)
        except Exception as exc:   # reported in the snapshot as one line, logged in full
            log.exception("background sweep failed")
            self._error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            self._done.set()

    def snapshot(self) -> Snapshot:
        with self._guard:
            return Snapshot(list(self._rows), self.total, self._done.is_set(), self._error)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (or ``timeout`` seconds); whether it finished."""
        return self._done.wait(timeout)

    def stop(self) -> None:
        """Ask the sweep to stop (the point in progress is abandoned)."""
        self._token.cancel()
