"""``python -m explorer ablation``: PISTOLE's ablation rows and the seeds' methods, with HV intervals."""
from __future__ import annotations

import argparse
from pathlib import Path

from explorer.config import parse_options
from explorer.merging import get_method
from explorer.studies.ablation import METHODS as ABLATION_METHODS

from .common import add_eval_flags, resolve_specs, write_json

HELP = "PISTOLE's ablation + pistole/stability/iso_c/tsv_m/baselines: frontiers, hypervolume intervals"


def _option(text: str) -> tuple[str, object]:
    """One ``key=value`` (``parse_options``: an int, a float or text)."""
    try:
        (pair,) = parse_options(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--pistole takes key=value (e.g. kappa=2): {exc}") from None
    return pair


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_flags(p)
    p.add_argument("--methods", default=None,
                   help=f"comma list for the methods panel (default: {','.join(ABLATION_METHODS)})")
    p.add_argument("--alphas", default="0:1:6", help="start:stop:count (inclusive) or a comma list")
    p.add_argument("--keep", type=float, default=0.2, help="keep of the masking baselines and stability")
    p.add_argument("--pistole", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="a pistole option for every row (repeatable), one of: "
                        + ", ".join(get_method("pistole").options))
    p.add_argument("--natural", default=None, help="natural vector (default: the manifest's first)")
    p.add_argument("--robust", default=None, help="robust vector (default: the manifest's first)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates of the HV intervals")
    p.add_argument("--figure", default="ablation.png", help="PNG; the tables go next to it (.md)")
    p.add_argument("--reuse", action="store_true",
                   help="try adversarial examples found at earlier points (numbers then depend on order)")


def run(args: argparse.Namespace) -> int:
    """Run both panels, write the figure and the markdown tables, print the tables."""
    from explorer.app.service import Service
    from explorer.config import parse_alphas
    from explorer.studies import ablation, compare

    # The intervals need every point's per-image flags: --no-store keeps them in memory.
    service = Service(args.manifest, args.device, ":memory:" if args.no_store else args.store)
    manifest = service.manifest
    attack, ev = resolve_specs(args, manifest)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(ablation.METHODS)
    natural = compare.pick_model(manifest, args.natural, "natural")
    robust = compare.pick_model(manifest, args.robust, "robust")
    result = ablation.run_ablation(service.engine(), natural, robust, parse_alphas(args.alphas), attack, ev,
                                   keep=args.keep, methods=methods, pistole_options=tuple(args.pistole),
                                   seed=args.seed, reuse=args.reuse, n_boot=args.bootstrap)
    title = f"{natural} + {robust}: {attack.label}, {ev.task}/{ev.split} n={ev.n}, keep={args.keep:g}"
    fig = ablation.write_figure(result, Path(args.figure), title)
    text = (f"{title}\n\n" + ablation.markdown_panel(result["ablation"], "PISTOLE ablation") + "\n"
            + ablation.markdown_panel(result["methods"], "method"))
    md = Path(args.figure).with_suffix(".md")
    md.write_text(text)
    if args.out:
        write_json({k: v["rows"] for k, v in result.items()}, args.out)
    print(text)
    print(f"# figure: {fig}  tables: {md}")
    return 0
