"""Paired bootstrap over images for frontier statistics (hypervolume and its differences) and for
the accuracy difference of two points.

Every point of every frontier is evaluated on the same held-out images, so the statistics of
methods are dependent; the right interval resamples *images*, once per replicate, for all
points of all methods together (a paired bootstrap), and recomputes each point's clean and
robust accuracy on the resample. :func:`hypervolume_intervals` gives each method's hypervolume
interval and, against a reference method, the interval of the difference (the quantity that
decides "above" or "below").
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .hypervolume import hypervolume

Flags = tuple[np.ndarray, np.ndarray]   # per image: clean-correct, robust-correct (bool, [n])


def _accuracies(flags: Sequence[Flags], counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clean and robust accuracy of each point under each replicate's image counts.

    Shape: counts ``[B, n]`` (multinomial counts summing to n); returns two ``[B, P]`` arrays.
    """
    clean = np.stack([np.asarray(c, dtype=np.float64) for c, _ in flags])   # [P, n]
    robust = np.stack([np.asarray(r, dtype=np.float64) for _, r in flags])
    n = counts.shape[1]
    return counts @ clean.T / n, counts @ robust.T / n


def hypervolume_intervals(flags: Mapping[str, Sequence[Flags]], *, reference: str | None = None,
                          n_boot: int = 1000, level: float = 0.95, seed: int = 0
                          ) -> dict[str, dict[str, float]]:
    """Per method: hypervolume, its percentile interval and (with ``reference``) the difference's.

    Args:
        flags: method -> one ``(clean_correct, robust_correct)`` pair per frontier point, all on
            the same ``n`` images in the same order.
        reference: method the differences are taken against (``hv - hv_reference``).
        n_boot: bootstrap replicates; ``level``: interval coverage; ``seed``: resampling seed.

    Returns:
        method -> ``{"hv", "hv_lo", "hv_hi"}`` plus ``"diff", "diff_lo", "diff_hi"`` when a
        reference is given. Same inputs and seed, same numbers.

    Raises:
        ValueError: no points, images counts that differ, or an unknown reference.
    """
    sizes = {len(c) for pts in flags.values() for c, r in pts} | {len(r) for pts in flags.values() for c, r in pts}
    if len(sizes) != 1 or not all(flags.values()):
        raise ValueError(f"every point needs per-image flags on the same images; got sizes {sorted(sizes)}")
    if reference is not None and reference not in flags:
        raise ValueError(f"reference method {reference!r} is not among {sorted(flags)}")
    n = sizes.pop()
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    boot: dict[str, np.ndarray] = {}
    point: dict[str, float] = {}
    for method, pts in flags.items():
        c, r = _accuracies(pts, counts)
        boot[method] = np.array([hypervolume(zip(c[b], r[b])) for b in range(n_boot)])
        point[method] = hypervolume((float(np.mean(ci)), float(np.mean(ri))) for ci, ri in pts)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out: dict[str, dict[str, float]] = {}
    for method, hv in boot.items():
        row = {"hv": point[method], "hv_lo": float(np.quantile(hv, lo_q)), "hv_hi": float(np.quantile(hv, hi_q))}
        if reference is not None:
            d = hv - boot[reference]
            row.update(diff=point[method] - point[reference], diff_lo=float(np.quantile(d, lo_q)),
                       diff_hi=float(np.quantile(d, hi_q)))
        out[method] = row
    return out


def paired_difference(a: Flags, b: Flags, *, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Clean and robust accuracy of point ``a`` minus point ``b``, both on the same images, with a
    paired percentile bootstrap interval (images resampled once per replicate for both points).

    Returns:
        ``{"clean": (diff, lo, hi), "robust": (diff, lo, hi)}``; identical points give exactly 0.

    Raises:
        ValueError: flags of different lengths (not the same images).
    """
    sizes = {len(v) for v in (*a, *b)}
    if len(sizes) != 1:
        raise ValueError(f"a paired difference needs both points on the same images; got sizes {sorted(sizes)}")
    n = sizes.pop()
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out = {}
    for i, key in enumerate(("clean", "robust")):
        d = np.asarray(a[i], dtype=np.float64) - np.asarray(b[i], dtype=np.float64)   # per image, in {-1, 0, 1}
        boot = counts @ d / n
        out[key] = (float(d.mean()), float(np.quantile(boot, lo_q)), float(np.quantile(boot, hi_q)))
    return out


def resolved(lo: float, hi: float) -> bool:
    """Whether a difference's interval excludes 0 (its sign is resolved at this n)."""
    return lo > 0 or hi < 0
