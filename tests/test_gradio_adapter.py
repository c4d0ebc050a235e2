"""Each private Gradio behaviour ``explorer/ui/gradio_adapter.py`` relies on, pinned on the installed
Gradio; and the launch-time version check."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio.queueing import Event

from explorer.ui import gradio_adapter as ga


def test_the_installed_version_is_checked_and_an_unknown_one_is_one_line() -> None:
    assert ga.check_version() == gr.__version__
    with pytest.raises(SystemExit, match=r"^error: gradio 5\.9\.1 is not one this app was checked against "
                                         r"\(6\.31\.x\): install the version in requirements.txt$"):
        ga.check_version("5.9.1")


def _demo():
    with gr.Blocks() as demo:
        box = gr.Number(1)
        box.change(lambda v: v, box, box, concurrency_id="engine")
    demo.queue()
    return demo, box


def test_the_queue_lists_running_events_and_marks_a_dropped_client_dead() -> None:
    demo, _ = _demo()
    fn = next(iter(demo.fns.values()))
    mine, other = Event("s1", fn, None, None), Event("s2", fn, None, None)
    assert mine.alive is True and isinstance(mine.enqueue_time, float) and mine.concurrency_id == "engine"
    demo._queue.active_jobs = [[mine, other], None]
    request = SimpleNamespace(request=SimpleNamespace(app=SimpleNamespace(get_blocks=lambda: demo)))
    assert ga.queue_events(request, "s1") == [mine] and ga.queue_events(None, "s1") == []
    asyncio.run(demo._queue.clean_events(session_hash="s1"))   # what a dropped connection triggers
    assert mine.alive is False and other.alive is True


def test_the_queue_calls_the_replaced_preprocess() -> None:
    demo, box = _demo()
    ga.replace_preprocess(box, lambda payload: ("seen", payload))
    fn = next(iter(demo.fns.values()))
    out = asyncio.run(demo.preprocess_data(fn, [3], None))
    assert out == [("seen", 3)]
