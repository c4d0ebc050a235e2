"""The Ray actor: one resident ``Engine`` per GPU (or per N CPU threads), computing points.

The actor never opens the SQLite store: its engine writes into an ``Outbox`` and each call
returns (key, row, clean flags, robust flags) to the driver. ``stop`` runs in its own
concurrency group, so it reaches a point that is being computed: the point runs under a cancel
token that sees the ticket, and the attack ends within a step (``Cancelled``; nothing returned).
Imported only when the Ray executor is used (it needs the ``ray`` package).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import ray
import torch

from explorer.config import PointSpec
from explorer.core.cancel import Cancelled, CancelToken, cancel_scope
from explorer.engine.frontier import Engine
from explorer.merging import canonical_spec
from explorer.zoo import Manifest, ModelEntry

from .base import Outbox

log = logging.getLogger(__name__)


class PointWorker:
    """A resident engine for one manifest and base, fed one point at a time by the driver.

    Args:
        manifest: the manifest (its checkpoint paths must exist on the worker's node).
        base: manifest name of the pretrained model.
        device: ``"cuda"`` (Ray pins one GPU to the actor) or ``"cpu"``.
        threads: torch threads of this actor (Ray's ``num_cpus`` for it).
        batch_size: evaluation/attack batch size (default: the engine's).
        fast_attack: the engine's attack twin switch.
    """

    def __init__(self, manifest: Manifest, base: str | None, device: str, threads: int = 1,
                 batch_size: int | None = None, fast_attack: bool = True) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.outbox = Outbox()
        self.engine = Engine(manifest, base=base, device=device, store=self.outbox,  # type: ignore[arg-type]
                             batch_size=batch_size, fast_attack=fast_attack)
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def ready(self) -> dict[str, Any]:
        """Where this actor runs (answers once the engine is built)."""
        return {"device": str(self.engine.device), "threads": torch.get_num_threads(),
                "node": ray.get_runtime_context().get_node_id()}

    def learn(self, entries: Sequence[ModelEntry]) -> None:
        """Register manifest entries the driver added after this actor started (app uploads)."""
        for entry in entries:
            if self.engine.manifest.models.get(entry.name) != entry:
                self.engine.add_entry(entry)

    def keys(self, jobs: Sequence[PointSpec], use_bank: bool, entries: Sequence[ModelEntry] = ()) -> list[str]:
        """The store key of every job (loads the vectors, which the points need anyway)."""
        self.learn(entries)
        return [self.engine.point_key(list(j.names), canonical_spec(j.spec), j.attack, j.eval, use_bank)
                for j in jobs]

    def run(self, ticket: int, job: PointSpec, use_bank: bool,
            entries: Sequence[ModelEntry] = ()) -> tuple[str, dict, Any, Any] | None:
        """Compute one point; None when ``stop(ticket)`` cancelled it (nothing kept)."""
        self.learn(entries)
        def cancelled() -> bool:
            with self._lock:
                return ticket in self._cancelled

        try:
            with cancel_scope(CancelToken(also=cancelled, reason="stopped by the driver")):
                row = self.engine.point_or_failure(job, use_bank=use_bank)
        except Cancelled:
            self.outbox.take()
            return None
        finally:
            with self._lock:
                self._cancelled.discard(ticket)
        stored = self.outbox.take()   # nothing for a failure row: no accuracy, nothing to store
        return stored if stored is not None else ("", row, None, None)

    @ray.method(concurrency_group="control")
    def stop(self, ticket: int) -> None:
        """Cancel the point with this ticket (running now or about to run)."""
        with self._lock:
            self._cancelled.add(ticket)


def remote_worker(num_cpus: float, num_gpus: float) -> Any:
    """The Ray actor class of ``PointWorker`` with its resources (no restarts: the driver
    re-sends a dead actor's point elsewhere, so Ray must not run it a second time)."""
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, max_task_retries=0,
                      concurrency_groups={"control": 1})(PointWorker)
