"""Every use of Gradio's private behaviour, in one module, checked against the versions it was read in.

Gradio 6 has public APIs for the page (Blocks, events, ``gr.Request``, ``gr.Error``, ``gr.skip``)
but none for three things the serving rules need (checked in its docs, 2026-12):

1. *Is my client still connected?* inside a running handler: the queue marks an event dead
   (``Event.alive = False``, set by ``Queue.clean_events`` when its connection drops) on the
   blocks' private ``_queue.active_jobs``; ``queue_events`` reads it.
2. *When was this job queued?* (Stop cancels what was queued before it): ``Event.enqueue_time``
   (``time.monotonic()``), with ``Event.session_hash`` and ``Event.concurrency_id``.
3. *Replace a component's input check*: ``Component.preprocess`` is an instance attribute the
   queue calls on each input's payload; ``replace_preprocess`` sets it (Gradio's own range and
   choice checks named no control, and its image preprocessing decoded before any size check).

``check_version`` runs at launch: a Gradio whose major.minor is not in ``CHECKED`` fails with one
line, since any of the three may change in it. ``tests/test_gradio_adapter.py`` pins each one.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

__all__ = ["CHECKED", "check_version", "queue_events", "replace_preprocess"]

CHECKED = ("6.31",)   # the Gradio major.minor versions this module's private uses were read in


def check_version(version: str | None = None) -> str:
    """Gradio's version when its major.minor is one of ``CHECKED``.

    Raises:
        SystemExit: one line naming the version found and the ones checked.
    """
    version = version or gr.__version__
    if ".".join(version.split(".")[:2]) not in CHECKED:
        raise SystemExit(f"error: gradio {version} is not one this app was checked against ({', '.join(CHECKED)}"
                         ".x): install the version in requirements.txt")
    return version


def queue_events(request: gr.Request | None, session: str) -> list[Any]:
    """The queue's running events of ``session`` (each with ``alive``, ``enqueue_time``,
    ``concurrency_id``); empty when ``request`` did not come through a served queue."""
    try:
        queue = request.request.app.get_blocks()._queue   # the FastAPI app of the join request
        return [e for job in queue.active_jobs if job for e in job if e.session_hash == session]
    except Exception:   # not served through the queue (direct calls, tests of handlers)
        return []


def replace_preprocess(component: Any, preprocess: Callable[[Any], Any]) -> None:
    """Make ``preprocess`` the function the queue calls on ``component``'s input payloads."""
    component.preprocess = preprocess
