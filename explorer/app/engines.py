"""The app's resident engines: one per base, built on first use, each behind its own lock."""
from __future__ import annotations

import threading
from collections.abc import Callable

from explorer.core.fairlock import FairRLock
from explorer.engine.frontier import Engine
from explorer.zoo import ModelEntry


class EngineCache:
    """Resident engines by base name, each with its re-entrant, first-come-first-served lock
    (``FairRLock``); built on first use.

    Args:
        build: base name -> a new engine (called at most once per base, under the cache's lock).
    """

    def __init__(self, build: Callable[[str], Engine]) -> None:
        self._build = build
        self._engines: dict[str, Engine] = {}
        self._locks: dict[str, FairRLock] = {}
        self._guard = threading.Lock()

    def get(self, base: str) -> Engine:
        with self._guard:
            if base not in self._engines:
                self._engines[base] = self._build(base)
                self._locks[base] = FairRLock()   # first come, first served: a background sweep's next chunk waits its turn
            return self._engines[base]

    def lock(self, base: str) -> FairRLock:
        """The lock every engine call of ``base`` holds (the engine is built if needed)."""
        self.get(base)
        return self._locks[base]

    def with_lock(self, base: str) -> tuple[Engine, FairRLock]:
        """The engine of ``base`` and its lock (what a local executor runs on)."""
        return self.get(base), self.lock(base)

    def __contains__(self, base: str) -> bool:
        return base in self._engines

    def added(self) -> dict[str, ModelEntry]:
        """The checkpoints added at run time to any engine built so far (``ResidentModels.added``)."""
        with self._guard:
            return {n: e for eng in self._engines.values() for n, e in eng.models.added.items()}
