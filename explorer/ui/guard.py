"""The page's side of serving safely: whose job this is, when it was queued, whether its client is
still there, and an image input that decodes nothing itself.

``start_job`` prices a job with the service's serving policy (``explorer.app.policy``); the job
is a cancel token (its work runs in ``cancel_scope(job)``) that is set when the session pressed Stop after the job was queued, when the
job runs past its time cap, or when Gradio's queue has marked the job dead (its client went
away: the queue calls ``clean_events`` on a dropped connection, which sets ``alive = False``).
Gradio has no public call for "is my client still connected" inside a handler: the queue's event
list is read through ``gradio_adapter`` (the one module using Gradio's private behaviour).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from explorer.app.jobs import Job
from explorer.app.service import Service
from explorer.config import AttackSpec

from .common import user_error
from .gradio_adapter import queue_events, replace_preprocess

log = logging.getLogger(__name__)
IMAGE_REFUSED = "Could not read the image: upload a PNG, JPEG, WebP, GIF, BMP or TIFF file."


def session_of(request: gr.Request | None) -> str:
    """The session hash of the caller (``"default"`` outside a served page: direct calls)."""
    return getattr(request, "session_hash", None) or "default"


def _queue_events(request: gr.Request | None) -> list[Any]:
    """Gradio's running events of the caller's session (empty when not served)."""
    return queue_events(request, session_of(request))


def client_alive(request: gr.Request | None) -> Callable[[], bool] | None:
    """A check that the caller's client still waits for its job (None when not served)."""
    if not _queue_events(request):
        return None

    def alive() -> bool:
        return all(e.alive for e in _queue_events(request))
    return alive


def start_job(service: Service, request: gr.Request | None, what: str, points: int, images: int,
              attack: AttackSpec) -> Job:
    """Price the job against the caps (``JobRefused``, one line) and start it for the session."""
    events = [e for e in _queue_events(request) if e.concurrency_id == "engine"] or _queue_events(request)
    submitted = max((e.enqueue_time for e in events), default=None)
    return service.serving.job(session_of(request), what, points, images, attack, submitted,
                               client_alive(request))


def stop(service: Service, request: gr.Request | None) -> str:
    """Stop the caller's running and queued jobs (computed points are kept)."""
    service.serving.jobs.stop(session_of(request))
    return "Stopping…"


def quiet_input_checks(demo: gr.Blocks) -> None:
    """Gradio's own checks of an input (a number typed outside its slider's range, a value not
    among a dropdown's choices) raise ``gr.Error`` with a traceback in the server log and a
    message naming no control ("Value 5 is greater than maximum value 1."). Each input's
    ``preprocess`` is wrapped so the page gets one line naming the control and the log one
    INFO line (``user_error``); errors already quiet (the image check) pass as they are."""
    for block in demo.blocks.values():
        pre = getattr(block, "preprocess", None)
        if pre is not None and not getattr(pre, "quiet", False):
            replace_preprocess(block, _named_checks(block, pre))


def _named_checks(block: Any, pre: Callable[[Any], Any]) -> Callable[[Any], Any]:
    label = getattr(block, "label", None) or getattr(block, "elem_id", None) or type(block).__name__

    def preprocess(payload: Any) -> Any:
        try:
            return pre(payload)
        except gr.Error as exc:
            if not exc.print_exception:
                raise
            raise user_error(f"{label}: {exc.message}", "input check") from None
    preprocess.quiet = True
    return preprocess


def _path_only(payload: Any) -> str | None:
    if payload is None:
        return None
    path = getattr(payload, "path", None)
    if not path:   # base64 data URLs and remote URLs are not accepted as uploads
        raise user_error(IMAGE_REFUSED, "image upload")
    return str(path)


def uploaded_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose input is the uploaded file's path, undecoded.

    Gradio's own preprocessing opens (and for some modes converts, i.e. decodes) the file
    before the handler runs: a decompression bomb would be decoded there, and a non-image
    would fail with Gradio's multi-line message naming every input and a temp path. Here the
    handler gets the path and ``Service.decode_image`` checks the size before decoding.
    (An instance attribute, not a subclass: Gradio writes a ``.pyi`` beside any module that
    defines a component class.)
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    replace_preprocess(image, _path_only)   # its refusals are user_error already (quiet_input_checks skips it)
    _path_only.quiet = True
    return image
