"""``python -m explorer sweep``: the clean vs robust frontier of merged models, as JSON points.

Under an AutoAttack-tier attack (or with ``--stream``, ``--until-ci``, ``--budget-s``) the sweep is
anytime (``explorer.engine.anytime``): every point gets its first images before any is refined,
each point is printed (``--stream``: one JSON line on stdout) every time it grows, and a point cut
short by a stop rule stays ``final: false``, its numbers over its ``n_done`` images.
"""
from __future__ import annotations

import argparse
import sys

from explorer.attacks import find_attack
from explorer.config import SweepSpec, parse_alphas, parse_options
from explorer.executors import sweep_jobs
from explorer.merging import METHODS
from explorer.zoo import Manifest

from .anytime import add_anytime_flags, check_anytime_flags, run_anytime_sweep, wants_anytime
from .common import add_eval_flags, add_executor_flags, open_service, resolve_specs, write_points

HELP = "clean vs robust frontier of merged models"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_flags(p)
    p.add_argument("--base", default=None)
    p.add_argument("--natural", action="append", default=None,
                   help="natural vector (repeatable; default: the manifest's first natural vector)")
    p.add_argument("--robust", action="append", default=None,
                   help="robust vector (repeatable; default: the manifest's first robust vector)")
    p.add_argument("--method", action="append", default=None, help=f"merge method (repeatable): {' | '.join(METHODS)}")
    p.add_argument("--alphas", default="0:1:11", help="start:stop:count (inclusive) or a comma list")
    p.add_argument("--keep", action="append", type=float, default=None, help="fraction kept (repeatable)")
    p.add_argument("--scope", default="global", choices=["global", "per_tensor"])
    p.add_argument("--scale", type=float, default=1.0, help="s in lambda_nat=s(1-alpha), lambda_rob=s*alpha")
    p.add_argument("--options", default="", help="method options, e.g. 'kappa=2, q=0.05' (each method gets "
                   "those it declares; see python -m explorer ablation --help for pistole's)")
    p.add_argument("--reuse", action="store_true",
                   help="also try adversarial examples found at earlier points (faster; the numbers then "
                        "depend on what ran before: labelled '+reuse' and stored apart; local executor only)")
    add_executor_flags(p)
    add_anytime_flags(p)


def vectors_of(manifest: Manifest, natural: list[str] | None,
               robust: list[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The sweep's natural and robust vectors: as named, else the manifest's first of each role.
    A named vector whose manifest role is another gets a ``note:`` line on stderr (it is used as
    named: a robust fine-tune on the natural side is a legitimate experiment, rarely a wish).

    Raises:
        KeyError: a name the manifest does not hold. ValueError: a role with no vector to default to.
    """
    out = []
    for role, names in (("natural", natural), ("robust", robust)):
        if not names:
            names = manifest.names(role)[:1]
            if not names:
                raise ValueError(f"the manifest {manifest.path} has no {role} vector: name one with --{role}")
        for name in names:
            held = manifest.get(name).role
            if held != role:
                print(f"note: {name} is a {held} model in the manifest; used here as --{role}", file=sys.stderr)
        out.append(tuple(names))
    for name in sorted(set(out[0]) & set(out[1])):
        print(f"note: {name} is on both sides (--natural and --robust): the sweep moves along one vector",
              file=sys.stderr)
    return out[0], out[1]


def run(args: argparse.Namespace) -> int:
    check_anytime_flags(args)   # before any model loads: a bad stop rule is one line at once
    service = open_service(args)
    attack, ev = resolve_specs(args, service.manifest)
    base = service.manifest.get(args.base or service.default_base).name     # KeyError: unknown base
    natural, robust = vectors_of(service.manifest, args.natural, args.robust)
    spec = SweepSpec(manifest=service.manifest_path, base=base, natural=natural,
                     robust=robust, methods=tuple(args.method or ["task_arithmetic"]),
                     alphas=parse_alphas(args.alphas), keeps=tuple(args.keep or [1.0]),
                     scope=args.scope, scale=args.scale, attack=attack, eval=ev,
                     options=parse_options(args.options))
    if args.reuse and args.executor != "local":
        raise ValueError("--reuse needs the local executor: Ray actors run every point history-free")
    jobs, done = sweep_jobs(spec), {}
    if wants_anytime(args, find_attack(attack.name).tier):
        if args.reuse:
            raise ValueError("--reuse does not combine with an anytime sweep (its points are history-free)")
        return run_anytime_sweep(service, base, jobs, args)
    try:
        for i, row in service.executor(base).run(jobs, use_bank=args.reuse, progress=True):
            done[i] = row
    except KeyboardInterrupt:
        # Ctrl-C: print and write the points finished so far, and say where they are kept.
        write_points([done[i] for i in sorted(done)], args.out)
        kept = ("not stored (--no-store)" if args.no_store
                else "in the store; the same command resumes from them")
        raise KeyboardInterrupt(f"after {len(done)} of {len(jobs)} points ({kept})") from None
    finally:
        service.close()
    return write_points([done[i] for i in sorted(done)], args.out)
