"""A re-entrant lock that hands itself over in arrival order (first come, first served).

``threading.RLock`` is not fair: a thread that releases it and asks again at once (a background
sweep taking the engine lock chunk after chunk) usually gets it back before a thread that was
already waiting is scheduled, so a slider move can wait for many chunks, not one. ``FairRLock``
queues the waiters: on release the longest-waiting thread gets the lock, and a thread that asks
again joins the back of the queue. Re-entrant like ``RLock`` (the owner may acquire it again).

Background work (a thread marked by ``mark_background_thread``: the app's first-view sweeps) can
also *yield*: ``foreground_waiting()`` says whether any other request is queued, so the work in
progress can give the lock up at once instead of at the end of its chunk (``Service.anytime_sweep``,
``yielding=True``). Background requests never count as foreground, so two background jobs never
make each other yield.
"""
from __future__ import annotations

import threading
from collections import deque

_thread = threading.local()


def mark_background_thread() -> None:
    """From now on, this thread's requests for any ``FairRLock`` are background ones:
    ``foreground_waiting`` does not count them. For threads that only do deferrable work."""
    _thread.background = True


def is_background_thread() -> bool:
    return bool(getattr(_thread, "background", False))


class _Ticket:
    __slots__ = ("background",)

    def __init__(self, background: bool) -> None:
        self.background = background


class FairRLock:
    """A FIFO, re-entrant lock; ``with lock:`` or ``acquire``/``release`` as ``threading.RLock``.

    Raises:
        RuntimeError: ``release`` by a thread that does not hold it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: deque[_Ticket] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (waiting behind every earlier waiter); False when not taken in ``timeout``."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._queue:
                self._owner, self._depth = me, 1
                return True
            if not blocking:
                return False
            ticket = _Ticket(is_background_thread())
            self._queue.append(ticket)
            ok = self._cond.wait_for(lambda: self._owner is None and self._queue[0] is ticket,
                                     None if timeout < 0 else timeout)
            if not ok:   # timed out: leave the queue, let the next one in line check again
                self._queue.remove(ticket)
                self._cond.notify_all()
                return False
            self._queue.popleft()
            self._owner, self._depth = me, 1
            return True

    def foreground_waiting(self) -> bool:
        """True while a request from a thread not marked background waits for the lock (cheap: one
        short critical section; polled by a background chunk at every attack step)."""
        with self._cond:
            return any(not t.background for t in self._queue)

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a FairRLock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
