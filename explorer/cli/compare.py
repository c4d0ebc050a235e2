"""``python -m explorer compare``: every merge method on one setting (``explorer.studies.compare``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from explorer.merging import METHODS

from .common import add_eval_flags, add_executor_flags, open_service, resolve_specs, write_json

HELP = "all merge methods on one setting: frontiers + hypervolume with bootstrap intervals"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_flags(p)
    p.add_argument("--methods", default=None, help=f"comma list of {', '.join(METHODS)} (default: all)")
    p.add_argument("--alphas", default="0:1:11")
    p.add_argument("--keep", type=float, default=0.2)
    p.add_argument("--natural", default=None, help="natural vector (default: the manifest's first)")
    p.add_argument("--robust", default=None, help="robust vector (default: the manifest's first)")
    p.add_argument("--figure", default="compare.png", help=".png (matplotlib) or .html (Plotly)")
    p.add_argument("--reuse", action="store_true",
                   help="try adversarial examples found at earlier points (faster; numbers then depend "
                        "on the order methods ran in). Default: every point attacked afresh")
    p.add_argument("--boot", type=int, default=1000,
                   help="paired bootstrap replicates over images for the hypervolume intervals (>= 100)")
    add_executor_flags(p)


def run(args: argparse.Namespace) -> int:
    """Run the comparison, write figure + tables (+ JSON with ``--out``), print one row per method."""
    from explorer.config import parse_alphas
    from explorer.store import Store
    from explorer.studies import compare
    if args.boot < 100:
        raise ValueError(f"--boot must be >= 100 (bootstrap replicates), got {args.boot}")
    service = open_service(args)
    if service.store is None:   # the intervals read per-image flags: keep them in memory only
        service.store = Store(":memory:")
    manifest = service.manifest
    attack, ev = resolve_specs(args, manifest)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(compare.ALL_METHODS)
    alphas = parse_alphas(args.alphas)
    natural = compare.pick_model(manifest, args.natural, "natural")
    robust = compare.pick_model(manifest, args.robust, "robust")
    executor = service.executor() if args.executor == "ray" else None
    try:
        results = compare.compare_methods(service.engine() if executor is None else None, natural, robust,
                                          methods, alphas, args.keep, attack, ev, seed=args.seed,
                                          reuse=args.reuse, executor=executor)
    finally:
        service.close()
    # The per-image flags are in the service's store, written by this process whatever the executor.
    flags = {m: compare.point_flags(service, rows) for m, rows in results.items()}
    stats, diffs = compare.bootstrap_stats(flags, n_boot=args.boot, seed=args.seed)
    table = compare.summarize(results, stats)
    lines = [compare.difference_line(d, ev.n) for d in diffs]
    title = f"{natural} + {robust}: {attack.label}, {ev.task}/{ev.split} n={ev.n}, keep={args.keep:g}"
    fig = compare.write_figure(results, table, Path(args.figure), title)
    csv_path, md_path = compare.write_table(table, Path(args.figure).with_suffix(""), caption=title,
                                            differences=lines)
    if args.out:
        write_json({"points": results, "summary": table, "differences": diffs}, args.out)
    print(f"# {title}")
    print("# intervals: Wilson 95% for one accuracy; 95% paired bootstrap over images for hypervolumes "
          f"({args.boot} replicates)")
    print("  ".join(compare.COLUMNS))
    for row in table:
        print("  ".join(compare.fmt(row[c]) for c in compare.COLUMNS))
    for line in lines:
        print(line)
    print(f"# figure: {fig}  table: {md_path} {csv_path}")
    return 0
