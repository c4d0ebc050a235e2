"""Named input components: a control is declared once, by name, and handlers read it by name.

Events pass their inputs as a *set* of components, so Gradio calls the handler with one dict
``{component: value}`` (Gradio's documented dict-inputs form); ``Form.read`` turns that into
``{name: value}``. Handlers called directly (tests, scripts) may pass ``{name: value}`` as is.
Adding a control is then: create the component under a new name, and read ``values[name]``
where it is used; no positional list to keep in step.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradio.components import Component


class Form:
    """Name-unique input components (``gr.State`` included), optionally in named groups."""

    def __init__(self) -> None:
        self._by_name: dict[str, Component] = {}
        self._names: dict[int, str] = {}
        self._groups: dict[str, list[str]] = {}

    def add(self, group: str | None = None, **components: Component) -> None:
        """Register components under their keyword names (and in ``group``, when given).

        Raises:
            ValueError: a name already taken, or a name equal to a group's.
        """
        for name, comp in components.items():
            if name in self._by_name or name in self._groups or name == group:
                raise ValueError(f"the form already has a control or group named {name!r}")
            self._by_name[name] = comp
            self._names[id(comp)] = name
            if group is not None:
                self._groups.setdefault(group, []).append(name)

    def __getitem__(self, name: str) -> Component:
        return self._by_name[name]

    def __getattr__(self, name: str) -> Component:
        try:
            return self.__dict__["_by_name"][name]
        except KeyError:
            raise AttributeError(name) from None

    def by_name(self) -> dict[str, Component]:
        """Every control by name (a copy): what ``Outputs.components`` looks names up in."""
        return dict(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def group(self, group: str) -> list[str]:
        """The names in ``group``, in the order they were added."""
        return list(self._groups.get(group, []))

    def inputs(self, *keys: str) -> set[Component]:
        """The components of the given control names and groups, as a set: the event then hands
        its function one ``{component: value}`` dict.

        Raises:
            KeyError: a key that is neither a control nor a group.
        """
        names: list[str] = []
        for key in keys:
            if key in self._groups:
                names += self._groups[key]
            elif key in self._by_name:
                names.append(key)
            else:
                raise KeyError(f"the form has no control or group named {key!r}")
        return {self._by_name[n] for n in names}

    def read(self, values: Mapping[Any, Any]) -> dict[str, Any]:
        """``{component or name: value}`` -> ``{name: value}``."""
        return {k if isinstance(k, str) else self._names[id(k)]: v for k, v in values.items()}

    def api_order(self, inputs: set[Component]) -> list[str]:
        """The names of ``inputs`` in the order Gradio's API takes them (component creation order)."""
        return [self._names[id(c)] for c in sorted(inputs, key=lambda c: c._id)]
