"""The anytime side of ``sweep``: flags, the JSON-lines stream, stop rules, Ctrl-C.

``--stream`` writes one JSON line per update on stdout::

    {"alpha": 0.5, "method": "task_arithmetic", "keep": 1.0, "n_done": 48, "n": 256, "final": false,
     "clean": 0.875, "robust": 0.4375, "clean_ci": [0.75, 0.94], "robust_ci": [0.31, 0.58],
     "seconds": 61.2, "attack": "autoattack-fast Linf eps=4/255", "eps": 0.0157, "key": "..."}

``seconds`` counts from the start of the sweep; the same point comes again as it grows, with the
same ``key`` (replace by key). A failed point's line has ``failed: true`` and its ``error``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from explorer.config import PointSpec
from explorer.engine.anytime import FIRST_CHUNK, StopRule
from explorer.executors import run_anytime

from .common import write_points

if TYPE_CHECKING:
    from explorer.app.service import Service


def add_anytime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stream", action="store_true",
                   help="anytime sweep: one JSON line per point update on stdout (n_done, n, final, clean, "
                        "robust, their 95%% intervals, seconds since start)")
    p.add_argument("--until-ci", type=float, default=None, metavar="W",
                   help="anytime: stop refining a point once both 95%% half-widths are <= W, in (0, 0.5]")
    p.add_argument("--budget-s", type=float, default=None, metavar="S",
                   help="anytime: stop the sweep after S seconds (every finished image is kept)")
    p.add_argument("--first", type=int, default=FIRST_CHUNK, metavar="K",
                   help=f"anytime: images per point in the first round (default {FIRST_CHUNK}; then doubling)")


def check_anytime_flags(args: argparse.Namespace) -> StopRule:
    """The stop rule and ``--first``, checked before anything loads (one line each when out of range;
    ``--first`` also when the sweep is not anytime, so a bad value is never silently ignored).

    Raises:
        ValueError: ``--until-ci`` outside (0, 0.5], ``--budget-s`` <= 0, or ``--first`` < 1.
    """
    rule = StopRule(until_ci=args.until_ci, budget_s=args.budget_s)
    if args.first < 1:
        raise ValueError(f"--first must be >= 1 image, got {args.first}")
    return rule


def wants_anytime(args: argparse.Namespace, tier: str) -> bool:
    """Anytime under a reported-tier attack (AutoAttack, APGD) or when a flag asks for it."""
    return tier == "reported" or args.stream or args.until_ci is not None or args.budget_s is not None


def stream_line(row: dict[str, Any]) -> str:
    """The JSON line of one update (module docstring)."""
    out = {k: row.get(k) for k in ("alpha", "method", "keep", "n_done", "n", "final")}
    out.update(clean=row.get("clean_acc"), robust=row.get("robust_acc"), clean_ci=row.get("clean_ci"),
               robust_ci=row.get("robust_ci"), seconds=row.get("elapsed"), attack=row.get("attack"),
               eps=row.get("eps"), key=row.get("key"))
    if row.get("failed"):
        out.update(failed=True, error=row.get("error"))
    return json.dumps(out)


def run_anytime_sweep(service: Service, base: str, jobs: Sequence[PointSpec], args: argparse.Namespace) -> int:
    """Grow the jobs' points coarse first; print / stream them; write the latest rows to ``--out``.

    Raises:
        ValueError: a stop rule out of range, ``--first`` < 1, or a run that ended before any
            point had an image (one line, exit 2).
        KeyboardInterrupt: Ctrl-C, after the points so far are printed and written.
    """
    rule = check_anytime_flags(args)
    latest: dict[int, dict[str, Any]] = {}
    try:
        for i, row in run_anytime(service.executor(base), jobs, rule=rule, first=args.first):
            latest[i] = row
            if args.stream:
                print(stream_line(row), flush=True)
    except KeyboardInterrupt:
        _write(latest, args)
        done = sum(bool(r.get("final")) for r in latest.values())
        kept = ("not stored (--no-store)" if args.no_store
                else "every finished image is in the store; the same command resumes from them")
        raise KeyboardInterrupt(f"after {done} of {len(jobs)} points complete, {len(latest)} begun ({kept})") from None
    finally:
        service.close()
    if not latest:
        raise ValueError(f"the sweep ended before any point had an image (--budget-s {args.budget_s:g}): "
                         "give it more seconds" if args.budget_s else "the sweep has no points")
    return _write(latest, args)


def _write(latest: dict[int, dict[str, Any]], args: argparse.Namespace) -> int:
    rows = [latest[i] for i in sorted(latest)]
    if args.stream:   # stdout is the stream: the human lines go to stderr
        stdout, sys.stdout = sys.stdout, sys.stderr
        try:
            return write_points(rows, args.out)
        finally:
            sys.stdout = stdout
    return write_points(rows, args.out)
