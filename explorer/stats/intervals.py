"""95% intervals for accuracies: Wilson's score interval for one accuracy.

An accuracy k/n measured on n held-out images estimates the accuracy on the distribution those
images come from; the Wilson score interval (Wilson 1927, JASA 22:209; recommended over the
normal approximation by Brown, Cai & DasGupta 2001, Stat. Sci. 16:101) covers it with about 95%
probability, stays inside [0, 1] and is not degenerate at 0/n or n/n. Differences between
points or methods evaluated on the same images are *paired*: ``explorer.stats.bootstrap`` resamples
images for those.

Every point row carries ``clean_ci`` and ``robust_ci`` as ``[lo, hi]``; rows stored before
intervals existed get them from ``n`` and the accuracies on read (``with_intervals``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

Z95 = 1.959963984540054   # the 97.5% quantile of the standard normal


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``.

    Returns:
        ``(lo, hi)`` with ``0 <= lo <= k/n <= hi <= 1``; exactly 0 at ``k = 0`` and 1 at ``k = n``.

    Raises:
        ValueError: ``n < 1`` or ``k`` outside [0, n].
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, min(p, centre - half))
    hi = 1.0 if k == n else min(1.0, max(p, centre + half))
    return lo, hi


def acc_interval(acc: float, n: int) -> list[float]:
    """``[lo, hi]`` of an accuracy ``acc`` measured on ``n`` images, widened outward to 4
    decimals (so the rounded interval still contains the exact one)."""
    lo, hi = wilson(round(float(acc) * int(n)), int(n))
    return [math.floor(lo * 1e4) / 1e4, math.ceil(hi * 1e4) / 1e4]


def with_intervals(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with ``clean_ci`` and ``robust_ci`` (computed from ``n_done``, else ``n``, and the
    accuracies when absent; rows without an ``n`` are returned as they are)."""
    out = dict(row)
    n = out.get("n_done") or out.get("n")
    if not n:
        return out
    for key in ("clean", "robust"):
        if out.get(f"{key}_ci") is None and out.get(f"{key}_acc") is not None:
            out[f"{key}_ci"] = acc_interval(out[f"{key}_acc"], n)
    return out


def fmt_ci(ci: Any) -> str:
    """``[0.712, 0.801]`` from a ``[lo, hi]`` pair (``-`` when missing)."""
    return "-" if not ci else f"[{float(ci[0]):.3f}, {float(ci[1]):.3f}]"
