"""Helpers shared by the CLI commands: the evaluation flags, specs from flags, the store, output.

The JSON written by ``sweep``/``evaluate`` is a stable contract: every point has at least
``method, alpha, keep, scope, lambdas, clean_acc, robust_acc, clean_ci, robust_ci, attack, eps, n,
seed, seconds, cached``. Accuracies are fractions in [0, 1], each with its Wilson 95% interval
``[lo, hi]``; ``--eps`` takes ``4/255`` or a float. A point that failed (invalid merged weights or
logits) has ``failed: true``, its ``error`` and null accuracies and intervals.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from explorer.app.flags import positive_int
from explorer.attacks import attack_help, attack_table, parse_attack
from explorer.config import AttackSpec, EvalSpec, resolve_defaults
from explorer.stats.intervals import fmt_ci, with_intervals

if TYPE_CHECKING:
    from explorer.app.service import Service
    from explorer.zoo import Manifest

log = logging.getLogger("explorer.cli")


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    """The flags every evaluating command shares: manifest, task, attack, eps, n, store, output.

    The epilog of ``--help`` lists every attack record (name, tier, help line).
    """
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = attack_table()
    p.add_argument("--manifest", default=None, help="TOML manifest (default: $EXPLORER_MANIFEST, else the demo zoo, assets/zoo-fashion)")
    p.add_argument("--task", default=None, help="evaluation task (default: the manifest's)")
    p.add_argument("--attack", default=None, help=f"{attack_help()} (default: the manifest's; "
                   "each is described below)")
    p.add_argument("--eps", default=None, help="radius, e.g. 4/255 or 0.0157 (default: the manifest's)")
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--n", type=int, default=None, help="number of held-out images")
    p.add_argument("--seed", type=int, default=0, help="eval subset and attack seed")
    p.add_argument("--split", default="test")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--store", default=None, help="SQLite results store (default: ~/.cache/...)")
    p.add_argument("--no-store", action="store_true", help="compute everything afresh, store nothing")
    p.add_argument("--out", default=None, help="write the points as JSON here")


def add_executor_flags(p: argparse.ArgumentParser) -> None:
    """Where the points run: ``--executor local|ray [--ray-address ADDR] [--workers N]``."""
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: the engine in this process (default); ray: Ray actors, one per GPU "
                        "or per CPU, history-free points, the store written here only")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (host:port printed by `ray start --head`, or auto); "
                        "default: start Ray on this machine")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="Ray actors (default: one per GPU, else one per CPU)")


def resolve_specs(args: argparse.Namespace, manifest: Manifest) -> tuple[AttackSpec, EvalSpec]:
    """Attack and eval specs from the flags, falling back to the manifest's defaults.

    Raises:
        ValueError: an unknown attack, a bad radius or sample count.
    """
    d = resolve_defaults(manifest.defaults, manifest.names("base"))
    attack = parse_attack(args.attack or d.attack, d.eps if args.eps is None else args.eps,
                          norm=args.norm, seed=args.seed)
    ev = d.eval_spec(args.task, args.n, args.seed, args.split)    # --n 0 is an error, not the default
    return attack, ev


def open_service(args: argparse.Namespace) -> Service:
    """The application service of the flags: ``--manifest``, ``--device``, ``--store``/``--no-store``
    and, where the command has them, the executor flags (engines are built on first use)."""
    from explorer.app.service import Service
    return Service(args.manifest, args.device, "none" if args.no_store else args.store,
                   executor=getattr(args, "executor", "local"), ray_address=getattr(args, "ray_address", None),
                   workers=getattr(args, "workers", None))


def point_line(p: dict) -> str:
    """One human line per point: method, alpha, keep, accuracies with their 95% intervals, attack
    label, n, cache state, and the cost of the method's calibration scores when it has them."""
    p = with_intervals(p)
    alpha = "" if p.get("alpha") is None else f" alpha={p['alpha']:.2f}"
    if p.get("failed"):
        lam = ", ".join(f"{v:g}" for v in p["lambdas"])
        return f"{p['method']}{alpha} keep={p['keep']:g} lambdas=({lam}): FAILED, no accuracy: {p['error']}"
    return (f"{p['method']}{alpha} keep={p['keep']:g}: clean={p['clean_acc']:.3f} {fmt_ci(p.get('clean_ci'))} "
            f"robust={p['robust_acc']:.3f} {fmt_ci(p.get('robust_ci'))} [{p['attack']}, n={_n(p)}]"
            f"{' (cached)' if p['cached'] else ''}{_scores_cost(p.get('prep_cost'))}")


def _n(p: dict) -> str:
    """``256``, or ``48/256 partial`` for a point cut short (its numbers are over 48 images)."""
    done = p.get("n_done", p["n"])
    return str(p["n"]) if done == p["n"] else f"{done}/{p['n']} partial"


def _scores_cost(cost: dict | None) -> str:
    """What the method's calibration scores cost to build (pistole's ``prep_cost``), or nothing."""
    if not cost:
        return ""
    return f" scores: {cost['forward']} fwd + {cost['backward']} bwd passes, {cost['seconds']:.1f} s"


def write_points(points: list[dict], out: str | None) -> int:
    """Write the points as JSON to ``out`` (when given) and print one line per point.

    Returns the exit status: 0, or 1 when some point failed (its line says why).
    """
    for p in points:   # printed first: a failing write still shows every point
        print(point_line(p))
    if out:
        write_json(points, out)
        log.info("wrote %d points to %s", len(points), out)
    failed = sum(bool(p.get("failed")) for p in points)
    if failed:
        print(f"warning: {failed} of {len(points)} points failed (no accuracy; see their lines)",
              file=sys.stderr)
    return 1 if failed else 0


def check_out(out: str | None, flag: str = "--out") -> None:
    """Refuse an ``--out`` (or another output ``flag``) that cannot be written, before any work.

    Raises:
        ValueError: ``out`` is a folder, or its folder does not exist or is not writable.
    """
    if not out:
        return
    path = Path(out)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{flag} {out}: is a folder; name a file, e.g. {path / 'points.json'}")
    if not folder.is_dir():
        raise ValueError(f"{flag} {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {out}: folder {folder} is not writable")


def write_json(obj: object, out: str | Path) -> None:
    """``obj`` as indented JSON at ``out``."""
    Path(out).write_text(json.dumps(obj, indent=1))
