"""What a person types, read into values: radii (``parse_eps``, ``eps_label`` back), alpha grids
(``parse_alphas``) and method options (``parse_options``). Each mistake is one readable line.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any


def parse_eps(value: str | float | int, limit: float = 1.0) -> float:
    """``"4/255"`` or ``"0.0157"`` or a number -> float in [0, limit]; anything else is an error.

    ``limit`` is 1 for Linf radii (pixel units); L2 radii may exceed 1.
    """
    if isinstance(value, (int, float)):
        eps = float(value)
    else:
        text = str(value).strip()
        try:
            eps = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"eps {value!r} is not a number or a fraction like 4/255") from exc
    if not 0.0 <= eps <= limit or eps != eps:
        raise ValueError(f"eps must lie in [0, {limit:g}] (pixel units), got {value!r}")
    return eps


def eps_label(eps: float, norm: str = "Linf") -> str:
    """Human label of a radius: for Linf, ``4/255`` when eps is a multiple of 1/255, else the
    float; L2 radii always as plain floats (``8``, ``0.5``: an L2 radius is not counted in
    grey levels, so 8 is not ``2040/255``)."""
    if norm != "Linf":
        return f"{eps:g}"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


MAX_ALPHAS = 100_000   # alpha values one text may expand to
ALPHA_FORMS = "use start:stop:count, both ends included (e.g. 0:1:11), or a comma list of numbers in [0, 1] (e.g. 0,0.5,1)"


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


def _alpha(part: str, what: str) -> float:
    """One number of an alphas text, in [0, 1] once rounded to 10 decimals; ``what`` names it in the error."""
    try:
        value = float(part)
    except ValueError:
        raise ValueError(f"{what}{_short(part.strip())!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}{part.strip()!r} is not a finite number")
    if not 0.0 <= round(value, 10) <= 1.0:
        raise ValueError(f"{what}{value:g} is outside [0, 1]")
    return value


def _alpha_range(parts: list[str]) -> list[float]:
    if len(parts) != 3:
        raise ValueError(f"a range has 3 parts start:stop:count, got {len(parts)}")
    start, stop = _alpha(parts[0], "start "), _alpha(parts[1], "stop ")
    try:
        count = int(parts[2])
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_ALPHAS:   # bounded before a list is built (a served app's input)
        raise ValueError(f"count must be a whole number from 1 to {MAX_ALPHAS}, got {_short(parts[2].strip())!r}")
    if count == 1:
        return [round(start, 10)]
    return [round(start + (stop - start) * i / (count - 1), 10) for i in range(count)]


def parse_alphas(text: str) -> tuple[float, ...]:
    """``"0:1:11"`` (start:stop:count, both ends included) or ``"0,0.5,1"`` -> tuple of floats in [0, 1].

    A range may run downwards (``"1:0:5"`` is 1, 0.75, ..., 0); a count of 1 gives ``(start,)``;
    empty items of a comma list are skipped (``"0,1,"``). Values are rounded to 10 decimals.

    Raises:
        ValueError: one line ``alphas '<text>': <what is wrong>; <the accepted forms>`` for an empty
            text, a range without exactly 3 parts, a count that is not a whole number in
            [1, ``MAX_ALPHAS``], an item that is not a finite number, or a value outside [0, 1].
    """
    text = text.strip()
    try:
        if ":" in text:
            vals = _alpha_range(text.split(":"))
        else:
            items = [v for v in text.split(",") if v.strip()]
            if not items:
                raise ValueError("no values")
            if len(items) > MAX_ALPHAS:
                raise ValueError(f"more than {MAX_ALPHAS} values")
            vals = [round(_alpha(v, ""), 10) for v in items]
    except ValueError as exc:
        raise ValueError(f"alphas {_short(text)!r}: {exc}; {ALPHA_FORMS}") from None
    return tuple(vals)


def parse_options(text: str) -> tuple[tuple[str, Any], ...]:
    """``"kappa=2, q=0.05, q_scope=global"`` -> ``(("kappa", 2), ("q", 0.05), ("q_scope", "global"))``.

    Values become an int, else a float, else the stripped text. Empty text -> ``()``. Which keys a
    method accepts is checked against its record (``explorer.merging.validate_spec``).

    Raises:
        ValueError: an item without ``=`` or with an empty key, a key given twice, or a
            non-finite number (``nan``, ``inf``).
    """
    out: dict[str, Any] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or not key:
            raise ValueError(f"method options are key=value pairs separated by commas; got {item!r}")
        if key in out:
            raise ValueError(f"method option {key!r} given twice")
        for cast in (int, float):
            try:
                out[key] = cast(raw)
                break
            except ValueError:
                continue
        else:
            out[key] = raw
        if isinstance(out[key], float) and not math.isfinite(out[key]):
            raise ValueError(f"method option {key} must be a finite number, got {raw!r}")
    return tuple(out.items())
