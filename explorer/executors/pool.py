"""The executors of one app: one per base, of one kind, built on first use and closed together.

``Service`` asks ``ExecutorPool.get(base)`` where a base's points run and never branches on the
kind itself: ``local`` is the base's resident engine in this process, behind the lock every
other use of that engine holds; ``ray`` is a set of Ray actors per base (joined on first use),
told the checkpoints added at run time before each use.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from . import check_executor_options, make_executor
from .base import Executor
from .local import LocalExecutor

if TYPE_CHECKING:
    from explorer.engine.frontier import Engine
    from explorer.store import Store
    from explorer.zoo import Manifest


class ExecutorPool:
    """Executors by base (see the module docstring).

    Args:
        kind: ``"local"`` or ``"ray"``.
        local: base -> (its resident engine, the lock its users hold) (``local`` only).
        manifest: the current manifest (the zoo plus added checkpoints), read at each ``get``.
        device, store: as for ``make_executor``; ``store`` is written by this process only.
        address, workers: the Ray cluster and actor count (``ray`` only).

    Raises:
        ExecutorError: an unknown kind, or Ray options with ``kind="local"``.
    """

    def __init__(self, kind: str, local: Callable[[str], tuple[Engine, AbstractContextManager]],
                 manifest: Callable[[], Manifest], *, device: str | None = None, store: Store | None = None,
                 address: str | None = None, workers: int | None = None) -> None:
        check_executor_options(kind, address, workers)
        self.kind, self.address, self.workers = kind, address, workers
        self._local, self._manifest, self._device, self._store = local, manifest, device, store
        self._ray: dict[str, Executor] = {}
        self._guard = threading.Lock()

    def get(self, base: str) -> Executor:
        """Where the points of ``base`` run (``ExecutorError`` when Ray is missing or unreachable)."""
        if self.kind == "local":
            engine, lock = self._local(base)
            return LocalExecutor(engine, lock)
        with self._guard:
            if base not in self._ray:
                self._ray[base] = make_executor("ray", manifest=self._manifest(), base=base, device=self._device,
                                                store=self._store, address=self.address, workers=self.workers)
            ex = self._ray[base]
        ex.manifest = self._manifest()   # the actors learn the entries added since
        return ex

    def close(self) -> None:
        """Release the Ray actors (and Ray, when this pool started it)."""
        with self._guard:
            for ex in self._ray.values():
                ex.close()
            self._ray.clear()
