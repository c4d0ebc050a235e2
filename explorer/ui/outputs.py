"""An event's outputs, named once: the wiring and the handler's return both come from one list.

Gradio matches a handler's returned tuple to its event's outputs by position, so a handler
that returns 3 values for 4 outputs (on a rarely taken path: a cancelled attack) fails only
in the page. ``Outputs("plot", "summary")`` holds the names in order; the wiring takes
``outputs.components(by_name)`` and the handler returns ``outputs(plot=fig, summary=text)``
(a name left out is ``gr.skip()``: that output keeps its value), so the count cannot differ.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr


class Outputs:
    """The ordered output names of one event (``Outputs("plot", "table", "status")``)."""

    def __init__(self, *names: str) -> None:
        if len(set(names)) != len(names):
            raise ValueError(f"an output named twice in {names}")
        self.names: tuple[str, ...] = names

    def __len__(self) -> int:
        return len(self.names)

    def components(self, by_name: Mapping[str, Any]) -> list[Any]:
        """The event's ``outputs=``: the components of ``by_name`` in this order.

        Raises:
            KeyError: a name with no component in ``by_name``.
        """
        missing = [n for n in self.names if n not in by_name]
        if missing:
            raise KeyError(f"no component for the output(s) {missing}")
        return [by_name[n] for n in self.names]

    def __call__(self, **values: Any) -> tuple:
        """The handler's return: one value per output, in order; the names left out skipped.
        With one output, the value itself (Gradio's convention for a single output).

        Raises:
            TypeError: a name that is not one of this event's outputs.
        """
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            raise TypeError(f"{unknown} not among the outputs {self.names}")
        out = tuple(values[n] if n in values else gr.skip() for n in self.names)
        return out[0] if len(out) == 1 else out

    def skip(self) -> tuple:
        """Every output left as it is (a cancelled or superseded event)."""
        return self()
