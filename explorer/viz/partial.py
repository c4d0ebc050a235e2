"""Partial points (Anytime AutoAttack): a point that is still growing, read off its row.

A point row may carry ``n_done`` (images evaluated so far), ``n`` (the target) and ``final``
(True only when ``n_done == n``); its accuracies and Wilson 95% intervals are over the ``n_done``
images done (DESIGN.md, "Anytime AutoAttack"). The same point arrives again as it grows, with the
same ``key``. Rows without ``final`` (stored before anytime points, preview points) are complete.
A row that says ``final`` with ``n_done < n`` is partial: a point is never labelled final early.

Pure functions, no gradio and no torch: the figure builders (``plots``), the page's table and
captions (``explorer.ui.common``) and the exports read partial points through them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from explorer.stats.hypervolume import hypervolume
from explorer.stats.intervals import with_intervals

Row = Mapping[str, Any]
OPEN = "-open"   # Plotly's suffix of a hollow marker symbol ("circle" -> "circle-open")


def progress(row: Row) -> tuple[int, int, bool]:
    """``(n_done, n, final)`` of a row: images done, target images, whether it is complete.

    Rows without ``final`` count as complete (``n_done = n``); ``final`` holds only when
    ``n_done == n`` as well (``n_done`` is clipped to [0, n]).
    """
    n = int(row.get("n") or 0)
    if "final" not in row and "n_done" not in row:
        return n, n, True
    raw = row.get("n_done")
    done = n if raw is None else max(0, min(n, int(raw)))
    return done, n, bool(row.get("final", done == n)) and done == n


def is_partial(row: Row) -> bool:
    """Whether the point is still growing (fewer images done than its target)."""
    return not progress(row)[2]


def any_partial(rows: Sequence[Row]) -> bool:
    return any(is_partial(r) for r in rows)


def with_progress_intervals(row: Row) -> dict[str, Any]:
    """The row with ``clean_ci``/``robust_ci``: its own, or Wilson's over the ``n_done`` images
    done (``with_intervals`` would take the target ``n``: too narrow for a partial point)."""
    done, n, final = progress(row)
    if final or done < 1:
        return with_intervals(row)
    return {**with_intervals({**row, "n": done}), "n": n}


def images_text(row: Row) -> str:
    """``48/256 images (partial)`` for a growing point, ``256 images`` for a complete one."""
    done, n, final = progress(row)
    return f"{n} images" if final else f"{done}/{n} images (partial)"


def attack_on_images(row: Row) -> str:
    """The hover's setting line: ``autoattack-fast Linf eps=4/255 on 48/256 images (partial)``."""
    return f"{row.get('attack', '?')} on {images_text(row)}"


def n_cell(row: Row) -> str:
    """The points table's ``n``: ``48/256`` while partial, ``256`` once complete."""
    done, n, final = progress(row)
    return str(n) if final else f"{done}/{n}"


def symbol(base: str, row: Row) -> str:
    """``base`` for a complete point, its hollow form (``circle-open``) for a partial one."""
    return base + OPEN if is_partial(row) else base


def symbols(base: str, rows: Sequence[Row]) -> str | list[str]:
    """One symbol for the trace when every point is complete, else one per point."""
    per = [symbol(base, r) for r in rows]
    return per if any(s != base for s in per) else base


def _attack_name(row: Row) -> str:
    return str(row.get("attack", "?")).split(" ")[0]


def curve_progress(curves: Mapping[str, Sequence[Row]]) -> str:
    """While any point is partial, per curve how many images its points have:
    ``task_arithmetic: autoattack-fast on 48/256 images`` (a range ``32-48/256`` when they
    differ); ``""`` when every point is complete."""
    parts = []
    for name, rows in curves.items():
        if not any_partial(rows):
            continue
        done = sorted({progress(r)[0] for r in rows})
        span = str(done[0]) if len(done) == 1 else f"{done[0]}-{done[-1]}"
        parts.append(f"{name}: {_attack_name(rows[0])} on {span}/{progress(rows[0])[1]} images")
    return "; ".join(parts)


def front_text(rows: Sequence[Row]) -> str:
    """``hypervolume 0.523`` of the plotted points (area their Pareto front dominates in the unit
    square, ``explorer.stats.hypervolume``), ``(partial: 2 of 6 points on fewer images)`` while
    any point is partial; ``""`` without points."""
    if not rows:
        return ""
    hv = hypervolume((float(r["clean_acc"]), float(r["robust_acc"])) for r in rows)
    k = sum(is_partial(r) for r in rows)
    return f"hypervolume {hv:.3f}" + (f" (partial: {k} of {len(rows)} points not complete)" if k else "")
