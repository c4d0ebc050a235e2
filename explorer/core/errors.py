"""An exception's message as written for a user: one function, used by the CLI and the UI.

``str(KeyError("unknown task 'x'; valid: ..."))`` is the message in quotes (``KeyError.__str__`` is
the repr of its argument); the project's KeyErrors carry user-facing messages (unknown names
listing the valid ones), so every place that shows one takes the argument itself.
"""
from __future__ import annotations

__all__ = ["message_of"]


def message_of(exc: BaseException) -> str:
    """``exc``'s message: a KeyError's first argument as it is, any other exception's ``str``."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)
