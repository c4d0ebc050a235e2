"""The Ray executor: points on Ray actors, one per GPU (or per N CPU threads), store on the driver.

Ray (https://docs.ray.io) does the distribution; we only decide which actor takes which point.
Each actor (``PointWorker``) holds a resident engine for the manifest; jobs are handed out one
at a time per actor by an ``AffinityQueue`` (an actor keeps its resident vectors and method
context), results stream back as they finish and the driver alone writes the SQLite store.
A point already in the store is served from it and never sent out.

Faults: an actor that dies mid-point has its point sent to another actor (a fresh one
replaces it); Ray itself never re-runs a task, so a point is stored once. The cancel token
(``explorer.core.cancel``) is polled every 0.2 s; when it is set, each running point gets a stop signal (the attack ends
within a batch) and actors that do not answer within ``stop_grace_s`` are killed.
"""
from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from explorer.config import PointSpec
from explorer.core.cancel import current_token
from explorer.store import Store
from explorer.zoo import Manifest, ModelEntry, load_manifest

from .base import ExecutorError
from .ray_connect import connect, import_ray
from .schedule import AffinityQueue, affinity

log = logging.getLogger(__name__)


def _guarded(method: Callable) -> Callable:
    """Run ``method`` under the executor's lock (actor bookkeeping is shared between runs)."""
    @functools.wraps(method)
    def wrapper(self: "RayExecutor", *args: Any, **kwargs: Any) -> Any:
        with self._guard:
            return method(self, *args, **kwargs)
    return wrapper


MAX_ATTEMPTS = 3       # a point whose actor died this many times fails the run


class RayExecutor:
    """Points on Ray actors; the driver (this object) alone reads and writes the store.

    Args:
        manifest: a ``Manifest`` or its path (default: the demo zoo); every node needs its
            checkpoints at the same paths.
        base: manifest name of the pretrained model (default: the manifest's).
        store: the store the driver serves from and writes to (None: nothing persisted). It is
            an attribute: swap it between runs if needed.
        address: a Ray cluster (``host:port`` of ``ray start --head``, ``auto`` or
            ``ray://host:port``); None starts a local Ray on this machine.
        workers: number of actors (default: one per GPU, else one per ``threads`` CPUs).
        threads: CPU threads per actor (``num_cpus``; ``torch.set_num_threads`` in the actor).
        device: ``"cpu"`` forces CPU actors; otherwise a GPU per actor where the cluster has GPUs.
        batch_size, fast_attack: passed to each actor's engine.
        stop_grace_s: how long a stopped point may take to end before its actor is killed.

    Raises:
        ExecutorError: ray is not installed, the address is unreachable, or actors cannot start.
    """

    name = "ray"

    def __init__(self, manifest: Manifest | str | None = None, *, base: str | None = None,
                 store: Store | None = None, address: str | None = None, workers: int | None = None,
                 threads: int = 1, device: str | None = None, batch_size: int | None = None,
                 fast_attack: bool = True, stop_grace_s: float = 5.0) -> None:
        if workers is not None and workers < 1:
            raise ExecutorError(f"--workers must be >= 1, got {workers}")
        self.ray = import_ray()
        self._owns_ray = connect(self.ray, address, workers, threads)
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        self.base = base
        self.store = store
        self.threads = max(1, int(threads))
        gpus = 0 if device == "cpu" else int(self.ray.cluster_resources().get("GPU", 0))
        if device is not None and device.startswith("cuda") and not gpus:
            raise ExecutorError(f"--device {device}, but the Ray cluster has no GPU "
                                f"(resources: {self.ray.cluster_resources()})")
        self.device = "cuda" if gpus else "cpu"
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.workers = workers or (gpus if gpus else max(1, cpus // self.threads))
        self._engine_kwargs = {"batch_size": batch_size, "fast_attack": fast_attack}
        self._actor_cls = None
        self._actors: list[Any] = []                       # live actors, warm or still starting
        self._warming: dict[Any, Any] = {}                 # ready() ref -> actor still building its engine
        self._start_error = ""
        self._guard = threading.RLock()                    # runs of several app sessions share the actors
        self._tickets = itertools.count()
        self.in_flight: dict[int, tuple[int, Any]] = {}   # ticket -> (job index, actor), in send order
        self.sent = 0                                      # points sent to actors (store hits are not)
        self.retried = 0                                   # points re-sent after their actor died
        self.replaced = 0                                  # actors started to replace dead ones
        self._replaced_since_result = 0
        self.stop_grace_s = stop_grace_s

    # ------------------------------------------------------------------ actors
    def _spawn(self) -> None:
        if self._actor_cls is None:
            from .ray_worker import remote_worker
            gpu = self.device == "cuda"
            self._actor_cls = remote_worker(num_cpus=0 if gpu else self.threads, num_gpus=1 if gpu else 0)
        actor = self._actor_cls.remote(self.manifest, self.base, self.device, self.threads, **self._engine_kwargs)
        self._actors.append(actor)
        self._warming[actor.ready.remote()] = actor

    @_guarded
    def _top_up(self) -> None:
        """Start actors until there are ``workers`` (a replacement counts against a cap)."""
        while len(self._actors) < self.workers:
            if self._replaced_since_result >= MAX_ATTEMPTS * self.workers:
                raise ExecutorError(f"Ray actors keep dying ({self._replaced_since_result} replaced without "
                                    f"a point finishing); last error: {self._start_error or 'killed'}")
            if self.sent:
                self.replaced += 1
                self._replaced_since_result += 1
            self._spawn()

    @_guarded
    def _warmed(self, refs: Sequence[Any]) -> None:
        """Note actors whose engine is built; drop those that failed to start."""
        for ref in refs:
            actor = self._warming.pop(ref, None)
            if actor is None:                      # another run noted it first
                continue
            try:
                self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:
                self._start_error = _last_line(exc)
                log.warning("a Ray actor failed to start: %s", self._start_error)
                self._drop(actor)
        if not self._actors:
            raise ExecutorError(f"no Ray actor could start: {self._start_error}")

    def start(self, timeout_s: float = 300.0) -> list[dict[str, Any]]:
        """Start all actors and wait until their engines are built; returns where each runs."""
        self._top_up()
        done, _ = self.ray.wait(list(self._warming), num_returns=len(self._warming), timeout=timeout_s)
        if len(done) < len(self._warming):
            raise ExecutorError(f"{self.workers} Ray actors did not start within {timeout_s:.0f} s "
                                f"(cluster resources: {self.ray.cluster_resources()})")
        self._warmed(done)
        if self._start_error:
            raise ExecutorError(f"a Ray actor failed to start: {self._start_error}")
        return self.ray.get([a.ready.remote() for a in self._actors])

    @_guarded
    def _drop(self, actor: Any, queue: AffinityQueue | None = None, kill: bool = False) -> None:
        if actor in self._actors:
            self._actors.remove(actor)
        for ref in [r for r, a in self._warming.items() if a == actor]:
            del self._warming[ref]
        if queue is not None:
            queue.forget(actor)
        if kill:
            self.ray.kill(actor, no_restart=True)

    # ------------------------------------------------------------------ runs
    def _keys(self, jobs: Sequence[PointSpec], use_bank: bool) -> list[str]:
        """Store keys of ``jobs`` (computed by the first actor to be ready: it has the digests)."""
        self._top_up()
        while not [a for a in self._actors if a not in self._warming.values()]:
            done, _ = self.ray.wait(list(self._warming), num_returns=1)
            self._warmed(done)
        warm = [a for a in self._actors if a not in self._warming.values()]
        return self.ray.get(warm[0].keys.remote(list(jobs), use_bank, self._entries(jobs)))

    def _entries(self, jobs: Sequence[PointSpec]) -> list[ModelEntry]:
        """The driver's manifest entries of the jobs' models (actors learn ones added since)."""
        return [self.manifest.get(n) for n in sorted({n for j in jobs for n in j.names})]

    def run(self, jobs: Sequence[PointSpec], *, use_bank: bool = False,
            progress: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(index, row)`` as points finish; known points first, from the store."""
        first: dict[str, int] = {}
        twins: dict[int, list[int]] = {}        # the same merge twice (after canonicalising): run once
        for i, key in enumerate(self._keys(jobs, use_bank)):
            if key in first:
                twins.setdefault(first[key], []).append(i)
            else:
                first[key] = i
        todo: list[int] = []
        for key, i in first.items():
            row = self.store.get(key) if self.store is not None else None
            if row is None:
                todo.append(i)
                continue
            yield from ((j, {**row, "cached": True}) for j in [i, *twins.get(i, [])])
        queue = AffinityQueue((i, affinity(jobs[i])) for i in todo)
        bar = tqdm(total=len(todo), desc="sweep (ray)", disable=not progress, delay=1.0)
        pending: dict[Any, tuple[int, int, Any]] = {}    # ref -> (ticket, job index, actor)
        attempts: dict[int, int] = {}
        try:
            while pending or len(queue):
                self._dispatch(jobs, queue, pending, use_bank)
                if (token := current_token()) is not None and token.cancelled:
                    log.info("stopped by the caller; %d running points cancelled", len(pending))
                    return
                with self._guard:
                    waiting = [*pending, *self._warming]
                ready, _ = self.ray.wait(waiting, num_returns=1, timeout=0.2)
                if ready and ready[0] not in pending:
                    self._warmed(ready)
                    continue
                for ref in ready:
                    ticket, i, actor = pending.pop(ref)
                    self.in_flight.pop(ticket, None)
                    out = self._collect(ref, actor, i, queue, attempts)
                    self._dispatch(jobs, queue, pending, use_bank)     # refill before the caller sees it
                    if out is None:
                        continue
                    key, row, clean, robust = out
                    self._replaced_since_result = 0
                    if self.store is not None and not row.get("failed"):   # failure rows are never stored
                        self.store.put(key, row, clean, robust, sweep=jobs[i].sweep)
                    bar.update(1)
                    yield i, row
                    yield from ((j, {**row, "cached": True}) for j in twins.get(i, []))
        finally:
            bar.close()
            if pending:
                self._cancel(pending, jobs)

    @_guarded
    def _dispatch(self, jobs: Sequence[PointSpec], queue: AffinityQueue, pending: dict, use_bank: bool) -> None:
        """Give every idle warm actor its next job (one point in flight per actor: best balance);
        an actor still starting gets none, so no point waits behind a cold start."""
        if len(queue):
            self._top_up()
        busy = {a for _, _, a in pending.values()} | set(self._warming.values())
        for actor in [a for a in self._actors if a not in busy]:
            i = queue.next_for(actor)
            if i is None:
                return
            ticket = next(self._tickets)
            pending[actor.run.remote(ticket, jobs[i], use_bank, self._entries([jobs[i]]))] = (ticket, i, actor)
            self.in_flight[ticket] = (i, actor)
            self.sent += 1

    def _collect(self, ref: Any, actor: Any, i: int, queue: AffinityQueue,
                 attempts: dict[int, int]) -> tuple | None:
        """The result of one finished call; a dead actor's job goes back on the queue."""
        exc_mod = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exc_mod.RayActorError as exc:
            attempts[i] = attempts.get(i, 0) + 1
            self._drop(actor, queue)
            if attempts[i] >= MAX_ATTEMPTS:
                raise ExecutorError(f"point {i} lost its Ray actor {attempts[i]} times: {_last_line(exc)}") from exc
            log.warning("a Ray actor died during point %d; sending it to another actor", i)
            queue.give_back(i)
            self.retried += 1
            return None
        except exc_mod.RayTaskError as exc:
            # An error of the point itself (bad spec, non-finite weights): the local message.
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else ExecutorError(_last_line(exc))) from None

    def _cancel(self, pending: dict, jobs: Sequence[PointSpec]) -> None:
        """Stop every running point; keep what finished anyway; kill actors that do not answer."""
        for ticket, _, actor in pending.values():
            actor.stop.remote(ticket)
        t0 = time.perf_counter()
        done, late = self.ray.wait(list(pending), num_returns=len(pending), timeout=self.stop_grace_s)
        for ref in done:
            ticket, i, _ = pending[ref]
            try:
                out = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                out = None
            if out is not None and self.store is not None:   # finished before the signal: keep it
                self.store.put(out[0], out[1], out[2], out[3], sweep=jobs[i].sweep)
        for ref in late:
            self._drop(pending[ref][2], kill=True)
        for ticket, _, _ in pending.values():
            self.in_flight.pop(ticket, None)
        pending.clear()
        log.info("cancelled in %.2f s (%d actors killed)", time.perf_counter() - t0, len(late))

    def close(self) -> None:
        """Kill the actors; shut Ray down if this executor started it."""
        for actor in list(self._actors):
            self._drop(actor, kill=True)
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
