"""The one cancel token (explorer/core/cancel.py): scopes, the check, and generators stepped from
different threads (how Gradio runs a generator handler)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from explorer.core.cancel import Cancelled, CancelToken, cancel_scope, check_cancelled, current_token, scoped


def test_check_raises_only_inside_a_set_scope() -> None:
    check_cancelled()                              # no scope: never raises
    token = CancelToken(reason="stop pressed")
    with cancel_scope(token):
        check_cancelled()                          # not set yet
        token.cancel()
        with pytest.raises(Cancelled, match="^stop pressed$"):
            check_cancelled()
        with cancel_scope(None):                   # an inner non-cancellable scope hides it
            check_cancelled()
        assert current_token() is token
    check_cancelled()                              # left the scope: nothing raised
    assert current_token() is None


def test_a_condition_is_polled_at_every_check() -> None:
    polls: list[int] = []
    token = CancelToken(also=lambda: polls.append(1) or len(polls) >= 3)
    with cancel_scope(token):
        check_cancelled()
        check_cancelled()
        with pytest.raises(Cancelled, match="^cancelled by the caller$"):
            check_cancelled()
    assert len(polls) == 3 and token.cancelled


def test_a_scope_does_not_leak_into_other_threads() -> None:
    token = CancelToken()
    token.cancel()
    seen: list[CancelToken | None] = []
    with cancel_scope(token):
        t = threading.Thread(target=lambda: seen.append(current_token()))
        t.start()
        t.join()
    assert seen == [None]


def test_scoped_steps_a_generator_from_different_threads() -> None:
    """Each step runs in whatever thread calls ``next`` (a fresh context each time, as a thread
    pool gives): the token is seen inside every step and the stream ends once it is set."""
    token = CancelToken()

    def points():
        for i in range(10):
            check_cancelled()                      # the engine's check between points
            yield i, current_token() is token

    it = scoped(token, points())
    got = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(4):
            got.append(pool.submit(next, it).result())
        token.cancel()
        with pytest.raises(Cancelled, match="^cancelled by the caller$"):
            pool.submit(next, it).result()
    assert got == [(0, True), (1, True), (2, True), (3, True)]
    assert current_token() is None                 # nothing left behind in the caller's context
