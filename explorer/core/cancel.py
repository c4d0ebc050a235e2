"""One cancel token for long work: set by whoever may stop it, checked inside the loops.

A job (a page user's sweep, a CLI sweep under Ctrl-C, a Ray task) runs inside
``with cancel_scope(token):``; every long loop (attack steps, restarts, targets, calibration
batches, points of a sweep) calls :func:`check_cancelled`, which raises :class:`Cancelled` once
the token is set. Nothing threads a callback through the call chain: the scope is a context
variable, so it follows the code that runs in this thread (a thread started inside the scope
does not inherit it: it opens its own scope with the same token).
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Cancelled(RuntimeError):
    """Raised inside long work when its cancel token is set; nothing partial is returned."""


class CancelToken:
    """A flag one side sets and the work checks. ``also`` adds a condition of the caller's
    (e.g. a time cap, or a Gradio client that went away), polled at every check."""

    def __init__(self, also: Callable[[], bool] | None = None, reason: str = "cancelled by the caller") -> None:
        self._event = threading.Event()
        self._also = also
        self.reason = reason

    def cancel(self, reason: str | None = None) -> None:
        if reason:
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or (self._also is not None and bool(self._also()))


_current: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("explorer_cancel", default=None)


@contextlib.contextmanager
def cancel_scope(token: CancelToken | None) -> Iterator[CancelToken | None]:
    """Run the body under ``token`` (``None``: not cancellable, the enclosing scope's token is
    hidden). Scopes nest; the innermost one is checked."""
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


def current_token() -> CancelToken | None:
    """The token of the innermost enclosing scope, or ``None``."""
    return _current.get()


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the enclosing scope's token is set (cheap: one context-variable
    read and one flag test; call it once per attack step)."""
    token = _current.get()
    if token is not None and token.cancelled:
        raise Cancelled(token.reason)


def scoped(token: CancelToken | None, items: Iterable[T]) -> Iterator[T]:
    """Iterate ``items`` with every step (each ``next``) inside ``cancel_scope(token)``.

    For generators consumed step by step from different threads (a Gradio generator handler
    resumes in a worker thread per step, each with its own context): the scope is entered and
    left within each step, in the thread that runs it, so it never leaks into another context.
    """
    it = iter(items)
    while True:
        with cancel_scope(token):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item
