"""``core.errors.message_of``: the one place a KeyError's message loses the quotes ``str`` adds."""
from __future__ import annotations

import gradio as gr
import pytest

from explorer.cli import error_line
from explorer.core.errors import message_of
from explorer.data import get_task
from explorer.ui.common import readable_errors


def test_a_key_error_is_its_message_and_others_their_str() -> None:
    with pytest.raises(KeyError, match="unknown task 'no-such-task'") as err:
        get_task("no-such-task")
    msg = message_of(err.value)
    assert msg.startswith("unknown task 'no-such-task'") and not msg.startswith('"')
    assert str(err.value) == repr(msg)                     # what the bare str would have shown
    assert message_of(ValueError("bad n")) == "bad n" and message_of(KeyError()) == ""


def test_cli_and_page_show_the_same_line() -> None:
    exc = KeyError("unknown merge method 'x'; valid: a, b")
    assert error_line(exc) == "error: unknown merge method 'x'; valid: a, b"

    @readable_errors
    def handler():
        raise exc
    with pytest.raises(gr.Error, match="unknown merge method 'x'; valid: a, b") as err:
        handler()
    assert err.value.message == "unknown merge method 'x'; valid: a, b"   # the message, not its repr
