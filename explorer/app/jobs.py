"""Bounded jobs for a served app: a cost estimate checked before a job starts, a time cap while
it runs, and a Stop that reaches it whether it is running or still waiting in the queue.

The cost of a job is counted in image-passes (one forward+backward of the model on one image):
``points x max(images, MIN_BATCH) x (attack_cost + 1)``, the ``+ 1`` being the clean forward
every point makes (``explorer.attacks.attack_cost`` gives the attack's worst case, a point that
survives every stage). ``MIN_BATCH``: a pass on a handful of images costs about what a batch of
32 does (measured on the demo zoo on 2 CPU threads: 0.85 ms per image in a batch of 128, 36 ms
for one image alone), so Inspect's one image is priced as 32. A job over
``Limits.max_job_cost`` is refused before any work, in one readable line.

A running job is a cancel token (``explorer.core.cancel``): its work runs inside
``cancel_scope(job)`` and the attack checks it before every step. It is set when the owner pressed Stop, when the job ran past ``Limits.max_job_seconds``,
or when ``alive()`` (supplied by the front end: is the client still connected?) says no.
A Stop is remembered with its time, so a job that was *queued* before the Stop (``submitted``
earlier) stops as soon as it starts: a Stop is never lost while the job waits.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from explorer.attacks import attack_cost
from explorer.config import AttackSpec
from explorer.core.cancel import CancelToken

log = logging.getLogger(__name__)
MIN_BATCH = 32   # images a pass is priced at, at least (module docstring)


class JobRefused(ValueError):
    """A job over the cost cap (or otherwise not allowed to start); the message is one line."""


@dataclass(frozen=True)
class Limits:
    """What one served job, and the checkpoints users add, may cost (flags of ``serve``)."""

    max_job_cost: float = 5e5          # image-passes per job (about 7 min of the demo zoo on 2 CPU threads)
    max_job_seconds: float = 120.0     # wall-clock cap of a running job (it stops, computed points kept)
    max_points: int = 201              # points per sweep (methods x alphas + the pretrained one)
    max_added: int = 8                 # checkpoints added by page users, resident at once (all sessions)
    max_added_mb: float = 2048.0       # resident megabytes of those checkpoints' vectors (all sessions)
    max_checkpoint_mb: float = 512.0   # size of one checkpoint file (upload or allowed folder)

    @classmethod
    def for_device(cls, device: str | None, **overrides: float | None) -> Limits:
        """Defaults for ``device`` (a GPU is ~50x faster: generous caps), with explicit overrides."""
        import torch

        gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        base = cls(max_job_cost=1e8, max_job_seconds=1800.0) if gpu else cls()
        kw = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**base.__dict__, **kw})


def job_cost(points: int, images: int, attack: AttackSpec) -> float:
    """Image-passes of a job: ``points x max(images, MIN_BATCH) x (attack_cost + 1)`` (module docstring)."""
    return float(points) * float(max(images, MIN_BATCH)) * float(attack_cost(attack) + 1)


def check_cost(limits: Limits, what: str, points: int, images: int, attack: AttackSpec) -> float:
    """The job's cost; ``JobRefused`` naming what to reduce when it exceeds the cap."""
    if points > limits.max_points:
        raise JobRefused(f"{what}: {points} points is more than this server allows ({limits.max_points}); "
                         "use fewer alpha values or methods")
    cost = job_cost(points, images, attack)
    if cost > limits.max_job_cost:
        raise JobRefused(f"{what}: about {cost:.3g} image-passes ({points} points x {images} images x "
                         f"{attack.label}); this server allows {limits.max_job_cost:.3g} per job. "
                         "Use fewer points, a smaller n or fewer attack steps.")
    return cost


class Job(CancelToken):
    """One running job: the cancel token its work runs under (``with cancel_scope(job)``), set
    once its owner pressed Stop after it was queued, it ran past its time cap, or its client went
    away (``stop_reason`` says which)."""

    def __init__(self, owner: str, submitted: float, deadline: float,
                 alive: Callable[[], bool] | None, board: JobBoard) -> None:
        super().__init__(reason="job stopped")
        self.owner, self.submitted, self.deadline = owner, submitted, deadline
        self.started = time.monotonic()
        self._alive, self._board = alive, board
        self.stop_reason: str | None = None

    @property
    def cancelled(self) -> bool:
        if self.stop_reason is None:
            if super().cancelled:
                self.stop_reason = "stopped"
            elif self._board.stopped_since(self.owner) >= self.submitted:
                self.stop_reason = "stopped"
            elif time.monotonic() > self.deadline:
                self.stop_reason = "time limit"
            elif self._alive is not None and not self._alive():
                self.stop_reason = "client gone"
            if self.stop_reason is not None:
                self.reason = f"job {self.stop_reason}"
        return self.stop_reason is not None


class JobBoard:
    """The stop times of every owner (a session), and the jobs they run."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._stops: dict[str, float] = {}
        self._guard = threading.Lock()

    def start(self, owner: str, submitted: float | None = None,
              alive: Callable[[], bool] | None = None) -> Job:
        """A job of ``owner`` queued at ``submitted`` (monotonic; default now) starts now."""
        now = time.monotonic()
        return Job(owner, now if submitted is None else submitted, now + self.limits.max_job_seconds,
                   alive, self)

    def stop(self, owner: str) -> None:
        """Stop every job of ``owner`` submitted up to now: running ones and queued ones."""
        with self._guard:
            self._stops[owner] = time.monotonic()
            if len(self._stops) > 10_000:   # bounded: drop the oldest stop times
                for k in sorted(self._stops, key=self._stops.get)[:5_000]:
                    self._stops.pop(k, None)
        log.info("stop requested by session %s", owner[:8])

    def stopped_since(self, owner: str) -> float:
        """When ``owner`` last pressed Stop (``-inf`` if never)."""
        return self._stops.get(owner, float("-inf"))
