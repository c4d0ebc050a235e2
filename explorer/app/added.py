"""Checkpoints added at run time by page users: bounded, scoped to a session, evicted LRU.

Each added checkpoint costs two flat float32 copies of the model on the engine's device (its
weights and its task vector), so a served app bounds them: at most ``max_count`` at once and
``max_bytes`` of resident vectors, over all sessions; adding one past a cap evicts the least
recently used first (``AddedCheckpoints.admit`` returns the names to drop, and the caller drops
them from the engine). A checkpoint is visible to the session that added it only, unless the
operator shares added checkpoints (``shared=True``).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Added:
    name: str            # the engine's (unique) name
    owner: str           # the session that added it
    nbytes: int          # resident bytes of its vectors
    used: float = field(default_factory=time.monotonic)


class AddedCheckpoints:
    """The LRU book of added checkpoints (names only: the engine holds the tensors)."""

    def __init__(self, max_count: int, max_bytes: int, shared: bool = False) -> None:
        self.max_count, self.max_bytes, self.shared = int(max_count), int(max_bytes), shared
        self._items: dict[str, Added] = {}
        self._guard = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._items.values())

    def visible(self, owner: str) -> list[str]:
        """Names ``owner`` may use, oldest first."""
        return [a.name for a in self._items.values() if self.shared or a.owner == owner]

    def can_use(self, owner: str, name: str) -> bool:
        """False for another session's checkpoint (names of the manifest are not this book's)."""
        a = self._items.get(name)
        return a is None or self.shared or a.owner == owner

    def touch(self, names: Iterable[str]) -> None:
        """Mark ``names`` as just used (least recently used goes first)."""
        now = time.monotonic()
        for n in names:
            if n in self._items:
                self._items[n].used = now

    def admit(self, name: str, owner: str, nbytes: int) -> list[str]:
        """The names to evict (LRU first) so that one more of ``nbytes`` fits both caps.

        Raises:
            ValueError: one checkpoint alone is over the byte cap, or adding is disabled.
        """
        if self.max_count < 1 or nbytes > self.max_bytes:
            raise ValueError("this server does not accept added checkpoints of this size "
                             f"(at most {self.max_bytes / 2**20:.0f} MB of resident vectors)")
        with self._guard:
            out: list[str] = []
            order = sorted(self._items.values(), key=lambda a: a.used)
            count, total = len(self._items), self.nbytes
            while order and (count + 1 > self.max_count or total + nbytes > self.max_bytes):
                victim = order.pop(0)
                out.append(victim.name)
                count, total = count - 1, total - victim.nbytes
            return out

    def add(self, name: str, owner: str, nbytes: int) -> None:
        with self._guard:
            self._items[name] = Added(name, owner, nbytes)

    def remove(self, name: str) -> None:
        with self._guard:
            self._items.pop(name, None)
