"""The point runner: one point grown image by image over the per-image store.

A point (vectors, merge, attack, eval set) at n is the aggregate of images 0..n-1 of its split's
fixed seeded order (``explorer.data`` nested sets). The runner looks up which of them the store
already holds for the point's image key (``Store.images``: weights or merge, task/split/seed,
attack, code version; not n), computes only the missing ones, chunk after chunk, and commits each
chunk before it starts the next (``Store.put_images``): growing n from 64 to 256 attacks only the
192 new images, a killed process loses at most the chunk in flight, and a second process asking
for the same point reads what the first computed.

Each chunk is evaluated with the images' ids as their sample ids, so an attack whose random draws
derive from (seed, image id) gives every image the same flags whatever chunk it ran in
(``explorer.attacks``). Rows (``points.image_row``) carry ``n`` (the target), ``n_done`` and
``final`` (True only when n_done == n); their accuracies and Wilson intervals are over the n_done
images. A final row is also written to the point table under the point's key, as ``Engine.point``
always did.

Cancellation: ``check_cancelled`` before each chunk, and the attack polls the same token; a
cancelled chunk is not stored (the chunks before it are).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from explorer.config import CODE_VERSION, PointSpec
from explorer.core.cancel import check_cancelled
from explorer.core.heap import release_freed_heap
from explorer.evaluation.evaluate import EvalOptions, Images, evaluate
from explorer.merging import canonical_spec
from explorer.store import Store

from . import points


class PointRunner:
    """Grows points of one engine over a per-image store.

    Args:
        engine: the resident ``frontier.Engine`` (its merge, keys, classifiers, eval data and batch
            plans are used; typed ``Any``: the engine owns a runner, so naming it here would be a cycle).
        store: where per-image rows go; default the engine's store, or a private in-memory store
            when the engine has none (``--no-store``: nothing outlives the process).
    """

    def __init__(self, engine: Any, store: Store | None = None) -> None:
        self.engine = engine
        self._scratch: Store | None = None
        self._store = store

    @property
    def store(self) -> Store:
        if self._store is not None:
            return self._store
        if isinstance(self.engine.store, Store):   # a Ray worker's Outbox keeps rows, not images
            return self.engine.store
        if self._scratch is None:
            self._scratch = Store(":memory:")
        return self._scratch

    def image_key(self, p: PointSpec) -> str:
        return self.engine.image_key(p.names, canonical_spec(p.spec), p.attack, p.eval)

    def row(self, p: PointSpec, *, seconds: float = 0.0, merge_seconds: float = 0.0,
            attack_seconds: float = 0.0) -> dict[str, Any] | None:
        """The point as the store holds it now (None when no image of it is done)."""
        spec = canonical_spec(p.spec)
        rows = self.store.images(self.image_key(p), p.eval.n, CODE_VERSION)
        if not len(rows):
            return None
        key = self.engine.point_key(p.names, spec, p.attack, p.eval, False)
        return points.image_row(rows, spec, p.attack, p.eval, p.natural, p.robust, self.engine.base, key,
                                seconds=seconds, merge_seconds=merge_seconds, attack_seconds=attack_seconds,
                                device=str(self.engine.device),
                                normalize=self.engine.normalization(p.names))

    def missing(self, p: PointSpec, upto: int) -> list[int]:
        """Image ids in [0, upto) that the store does not hold for ``p`` (ascending)."""
        have = set(self.store.images(self.image_key(p), upto, CODE_VERSION).ids.tolist())
        return [i for i in range(min(upto, p.eval.n)) if i not in have]

    def grow(self, p: PointSpec, upto: int, chunk: int, *, sweep: str | None = None) -> Iterator[dict[str, Any]]:
        """Compute images ``[0, upto)`` of ``p`` that are missing, ``chunk`` at a time; yield the
        point's row after each committed chunk (once, from the store, when nothing is missing).

        Raises:
            InvalidPointError: the merge or the logits are invalid (nothing stored).
            Cancelled: the enclosing scope's token was set (the chunks before it are stored).
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        todo = self.missing(p, upto)
        if not todo:
            row = self.row(p)
            if row is not None:
                yield self._finish(p, {**row, "cached": True}, sweep)
            return
        eng, spec, t0 = self.engine, canonical_spec(p.spec), time.perf_counter()
        # Merged only when the model holds another merge (a round-robin sweep comes back to a point).
        prep_cost = eng.ensure_merged(p.names, spec).prep_cost
        merge_seconds = time.perf_counter() - t0
        normalize = eng.normalization(p.names)
        clf = eng.classifier(p.eval.task, normalize)
        x, y = eng.eval_data(p.eval)
        attacked = p.attack.name != "none" and p.attack.eps > 0
        batch = eng.batch_plan(p.eval, normalize, attacked).batch
        twin = eng.attack_model(p.eval.task, normalize) if attacked else None
        ikey, attack_s = self.image_key(p), 0.0
        for start in range(0, len(todo), chunk):
            check_cancelled()
            ids = torch.tensor(todo[start:start + chunk], dtype=torch.long)
            dev_ids = ids.to(x.device)
            res = evaluate(clf, Images(x[dev_ids], y[dev_ids], ids), p.attack, EvalOptions(batch_size=batch),
                           attack_model=twin)
            self.store.put_images(ikey, ids.numpy(), res.clean_correct.numpy(), res.robust.numpy(), CODE_VERSION,
                                  stage=getattr(res, "stages", None), cost=getattr(res, "costs", None))
            attack_s += res.seconds.get("attack", 0.0)
            row = self.row(p, seconds=time.perf_counter() - t0, merge_seconds=merge_seconds, attack_seconds=attack_s)
            if prep_cost is not None:
                row["prep_cost"] = prep_cost
            yield self._finish(p, row, sweep)
        release_freed_heap()   # the attack's activations: resident memory back to the floor

    def _finish(self, p: PointSpec, row: dict[str, Any], sweep: str | None) -> dict[str, Any]:
        """A final row is also the point table's row (``Store.get`` serves it as before)."""
        store = self.engine.store
        if row["final"] and store is not None and (not row["cached"] or store.get(row["key"]) is None):
            store.put(row["key"], row, np.array(row["clean_flags"], dtype=np.bool_),
                                  np.array(row["robust_flags"], dtype=np.bool_), sweep=sweep)
        return row

