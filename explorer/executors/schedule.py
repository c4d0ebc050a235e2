"""Which job a free worker takes next: stay on the kind it holds resident, else balance load.

Pure bookkeeping (no Ray), so the policy is tested on its own. A worker keeps taking jobs of
the group (``affinity``) it last worked on; when that group is empty it takes the
largest group no other worker holds, and only then joins the largest group still open. A job
handed back (its worker died) goes to the front of its group.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

from explorer.config import PointSpec


def affinity(point: PointSpec) -> Hashable:
    """What a worker keeps resident between points of this kind: vectors, eval set, and
    the method's prepared context (e.g. stability scores, cached per method + options)."""
    return (point.names, point.eval.task, point.eval.split, point.spec.method, point.spec.options)


class AffinityQueue:
    """Jobs (by index) grouped by affinity, handed out to workers (by any hashable id).

    Args:
        jobs: ``(index, affinity)`` pairs in the order they should run within a group.
    """

    def __init__(self, jobs: Iterable[tuple[int, Hashable]]) -> None:
        self._groups: dict[Hashable, deque[int]] = {}
        self._group_of: dict[int, Hashable] = {}
        for index, group in jobs:
            self._groups.setdefault(group, deque()).append(index)
            self._group_of[index] = group
        self._holder: dict[Hashable, Hashable] = {}    # worker -> group it holds resident

    def __len__(self) -> int:
        return sum(len(q) for q in self._groups.values())

    def next_for(self, worker: Hashable) -> int | None:
        """The next job index for ``worker`` (None when nothing is left)."""
        group = self._holder.get(worker)
        if group is None or not self._groups.get(group):
            group = self._pick_group(worker)
            if group is None:
                return None
            self._holder[worker] = group
        return self._groups[group].popleft()

    def _pick_group(self, worker: Hashable) -> Hashable | None:
        open_groups = [g for g, q in self._groups.items() if q]
        if not open_groups:
            return None
        held = {g for w, g in self._holder.items() if w != worker}
        free = [g for g in open_groups if g not in held]
        return max(free or open_groups, key=lambda g: len(self._groups[g]))

    def give_back(self, index: int) -> None:
        """Put a job whose worker died back at the front of its group."""
        self._groups[self._group_of[index]].appendleft(index)

    def forget(self, worker: Hashable) -> None:
        """Drop a dead worker's hold on its group."""
        self._holder.pop(worker, None)
