"""Anytime sweeps: the whole frontier coarse first, then every point refined image by image.

A sweep of m points hands out images round-robin: round 1 gives every point its first
``first`` images (16 by default), each later round doubles what a point has (32, 64, ... up to its
n), so after round 1 the whole frontier exists with wide intervals, and every round halves the
interval widths' squares. Each point grows over the per-image store (``runner.PointRunner``):
images already computed (by this or an earlier run, any process) are not computed again, and
every finished chunk is committed, so Stop / Ctrl-C / a budget keeps every finished image.

Stop rules (``StopRule``): ``until_ci`` W stops refining a point once both of its 95% interval
half-widths are <= W; ``budget_s`` S ends the sweep S seconds after it started (the chunk in
flight is abandoned). A point that is not complete stays ``final=False``: its accuracies and
intervals are over its ``n_done`` images, never labelled as n.

Rows are yielded as ``(point index, row)`` after every chunk, the same point again as it grows,
with the same ``key``; each row carries ``elapsed`` (seconds since the sweep started).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from explorer.core.cancel import Cancelled, CancelToken, check_cancelled, current_token, scoped
from explorer.core.finite import InvalidPointError
from explorer.merging import canonical_spec

from .points import failed_row
from .runner import PointRunner, PointSpec

log = logging.getLogger(__name__)

FIRST_CHUNK = 16   # images per point in the first round


@dataclass(frozen=True)
class StopRule:
    """When an anytime sweep stops refining.

    Attributes:
        until_ci: a point stops once both 95% half-widths (clean, robust) are <= this, in (0, 0.5].
        budget_s: the sweep stops this many seconds after it started (> 0).

    Raises:
        ValueError: a value outside its range (one readable line).
    """

    until_ci: float | None = None
    budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.until_ci is not None and not (math.isfinite(self.until_ci) and 0 < self.until_ci <= 0.5):
            raise ValueError(f"--until-ci must lie in (0, 0.5] (a 95% half-width), got {self.until_ci:g}")
        if self.budget_s is not None and not (math.isfinite(self.budget_s) and self.budget_s > 0):
            raise ValueError(f"--budget-s must be a positive number of seconds, got {self.budget_s:g}")

    def satisfied(self, row: dict[str, Any]) -> bool:
        """True when ``row`` needs no more images (complete, or both half-widths <= until_ci)."""
        if row.get("final"):
            return True
        if self.until_ci is None:
            return False
        return max(half_width(row["clean_ci"]), half_width(row["robust_ci"])) <= self.until_ci


NO_RULE = StopRule()   # refine every point to its n; no budget


def half_width(ci: Sequence[float]) -> float:
    return (float(ci[1]) - float(ci[0])) / 2


def rounds(n: int, first: int = FIRST_CHUNK) -> list[int]:
    """How many images a point has after each round: ``first``, then doubling, capped at ``n``."""
    if first < 1:
        raise ValueError(f"the first chunk must be >= 1 image, got {first}")
    out, k = [], min(first, n)
    while True:
        out.append(k)
        if k >= n:
            return out
        k = min(2 * k, n)


def anytime_sweep(runner: PointRunner, points: Sequence[PointSpec], *, rule: StopRule = NO_RULE,
                  first: int = FIRST_CHUNK, sweep: str | None = None, chunk: int | None = None,
                  clock: Callable[[], float] = time.perf_counter) -> Iterator[tuple[int, dict[str, Any]]]:
    """Round-robin growth of ``points`` (module docstring); yields ``(index, row)`` per chunk.

    ``chunk`` caps the images of one chunk (default: a round's growth in one chunk, the best batch);
    a caller that holds a shared lock per chunk (the app's background curve) caps it so that
    interactive work waits for at most ``chunk`` images.

    Runs under the enclosing cancel scope (Stop ends it; finished chunks are stored). A point
    whose merge or logits are invalid is yielded once as a failure row and left out after.
    """
    t0, outer = clock(), current_token()
    over = (lambda: clock() - t0 > rule.budget_s) if rule.budget_s is not None else (lambda: False)
    token = CancelToken(also=lambda: over() or (outer is not None and outer.cancelled),
                        reason="the sweep's budget is spent" if rule.budget_s else "cancelled by the caller")
    active = list(range(len(points)))
    for i, p in enumerate(points):   # what the store already holds comes first
        row = runner.row(p)
        if row is not None:
            yield i, {**row, "cached": True, "elapsed": round(clock() - t0, 3)}
            if rule.satisfied(row):
                active.remove(i)
    for upto in rounds(max((p.eval.n for p in points), default=0), first):
        for i in list(active):
            if over():
                log.info("anytime sweep: budget of %.1f s spent", rule.budget_s)
                return
            check_cancelled()
            p = points[i]
            target = min(upto, p.eval.n)
            if not runner.missing(p, target):   # this round's images are in the store already (yielded)
                continue
            try:   # the scope is entered per step, never held across a yield (cancel.scoped)
                for row in scoped(token, runner.grow(p, target, chunk=min(max(first, target), chunk or target), sweep=sweep)):
                    yield i, {**row, "elapsed": round(clock() - t0, 3)}
            except InvalidPointError as exc:   # this point has no accuracy; the others go on
                log.warning("point %s lambdas=%s failed: %s", p.spec.method, p.spec.lambdas, exc)
                active.remove(i)
                yield i, {**failed_row(exc, canonical_spec(p.spec), p.attack, p.eval, p.natural, p.robust,
                                       runner.engine.base), "elapsed": round(clock() - t0, 3)}
                continue
            except Cancelled:
                if over():
                    log.info("anytime sweep: budget of %.1f s spent inside a chunk (abandoned)", rule.budget_s)
                    return
                raise
            last = runner.row(p)
            if last is not None and rule.satisfied(last):
                active.remove(i)
        if not active:
            return

