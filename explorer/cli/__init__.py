"""Command line: ``python -m explorer serve | sweep | evaluate | zoo | convert | bench | compare``.

The flags and the JSON written by ``sweep``/``evaluate`` are a stable contract: every point has
at least ``method, alpha, keep, scope, lambdas, clean_acc, robust_acc, attack, eps, n, seed,
seconds, cached``. Accuracies are fractions in [0, 1]; ``--eps`` takes ``4/255`` or a float.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..config import AttackSpec, EvalSpec, SweepSpec, parse_alphas, parse_eps

log = logging.getLogger("explorer")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", default=None, help="TOML manifest (default: the demo zoo)")
    p.add_argument("--task", default=None, help="evaluation task (default: the manifest's)")
    p.add_argument("--attack", default=None, help="none | fgsm | pgd-K | apgd-ce | apgd-t | "
                   "autoattack-fast | autoattack (default: the manifest's)")
    p.add_argument("--eps", default=None, help="radius, e.g. 4/255 or 0.0157 (default: the manifest's)")
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--n", type=int, default=None, help="number of held-out images")
    p.add_argument("--seed", type=int, default=0, help="eval subset and attack seed")
    p.add_argument("--split", default="test")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--store", default=None, help="SQLite results store (default: ~/.cache/...)")
    p.add_argument("--no-store", action="store_true", help="compute everything afresh, store nothing")
    p.add_argument("--out", default=None, help="write the points as JSON here")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m explorer", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the web app")
    from ..serve_args import add_serve_args
    add_serve_args(s)

    s = sub.add_parser("sweep", help="clean vs robust frontier of merged models")
    _common(s)
    s.add_argument("--base", default=None)
    s.add_argument("--natural", action="append", required=True, help="natural vector (repeatable)")
    s.add_argument("--robust", action="append", required=True, help="robust vector (repeatable)")
    s.add_argument("--method", action="append", default=None, help="merge method (repeatable)")
    s.add_argument("--alphas", default="0:1:11", help="start:stop:count (inclusive) or a comma list")
    s.add_argument("--keep", action="append", type=float, default=None, help="fraction kept (repeatable)")
    s.add_argument("--scope", default="global", choices=["global", "per_tensor"])
    s.add_argument("--scale", type=float, default=1.0, help="s in lambda_nat=s(1-alpha), lambda_rob=s*alpha")
    s.add_argument("--no-reuse", action="store_true",
                   help="attack every point afresh (no adversarial examples carried between points)")

    s = sub.add_parser("evaluate", help="clean and robust accuracy of one model")
    _common(s)
    s.add_argument("--model", required=True, help="manifest name")

    s = sub.add_parser("zoo", help="build, list or measure the demo zoo")
    s.add_argument("action", choices=["build", "list", "report"])
    s.add_argument("--preset", default="demo", choices=["demo", "micro"])
    s.add_argument("--into", default=None, help="build: output folder (default: assets/zoo)")
    s.add_argument("--also", action="append", default=None, help="report: clean accuracy on this task too")
    s.add_argument("--sweep", action="append", default=None, help="report: robust vector(s) to sweep to")
    s.add_argument("--alphas", default="0:1:11", help="report: alphas of the sweep")
    _common(s)

    s = sub.add_parser("convert", help="re-save a .pt/.bin checkpoint as .safetensors (safe loading)")
    s.add_argument("src")
    s.add_argument("dst")

    s = sub.add_parser("bench", help="engine vs plain per-model path on the same sweep")
    _common(s)
    s.add_argument("--points", type=int, default=11)

    s = sub.add_parser("compare", help="all merge methods on one setting: frontiers + hypervolume")
    _common(s)
    s.add_argument("--methods", default=None, help="comma list (default: all)")
    s.add_argument("--alphas", default="0:1:11")
    s.add_argument("--keep", type=float, default=0.2)
    s.add_argument("--natural", default=None, help="natural vector (default: the manifest's first)")
    s.add_argument("--robust", default=None, help="robust vector (default: the manifest's first)")
    s.add_argument("--figure", default="compare.png", help=".png (matplotlib) or .html (Plotly)")
    s.add_argument("--reuse", action="store_true",
                   help="try adversarial examples found at earlier points (faster; numbers then depend "
                        "on the order methods ran in). Default: every point attacked afresh")
    return ap


def resolve_specs(args: argparse.Namespace, manifest) -> tuple[AttackSpec, EvalSpec]:
    """Attack and eval specs from the flags, falling back to the manifest's defaults."""
    d = manifest.defaults
    attack = AttackSpec(name=args.attack or d.get("attack", "pgd-10"),
                        eps=parse_eps(args.eps if args.eps is not None else d.get("eps", "4/255"),
                                      1.0 if args.norm == "Linf" else 64.0),
                        norm=args.norm, seed=args.seed)
    from ..attacks import validate_attack
    validate_attack(attack)
    ev = EvalSpec(task=args.task or d.get("task", "shapes"), n=args.n or int(d.get("n", 256)),
                  seed=args.seed, split=args.split)
    return attack, ev


def _store(args):
    from ..store import Store
    return None if args.no_store else Store(args.store)


def _write(points: list[dict], out: str | None) -> None:
    text = json.dumps(points, indent=1)
    if out:
        Path(out).write_text(text)
        log.info("wrote %d points to %s", len(points), out)
    for p in points:
        alpha = "" if p.get("alpha") is None else f" alpha={p['alpha']:.2f}"
        print(f"{p['method']}{alpha} keep={p['keep']:g}: clean={p['clean_acc']:.3f} "
              f"robust={p['robust_acc']:.3f} [{p['attack']}, n={p['n']}]{' (cached)' if p['cached'] else ''}")


def cmd_sweep(args) -> int:
    from ..engine import Engine
    from ..zoo import load_manifest
    manifest = load_manifest(args.manifest)
    attack, ev = resolve_specs(args, manifest)
    engine = Engine(manifest, base=args.base, device=args.device, store=_store(args))
    spec = SweepSpec(manifest=str(manifest.path), base=engine.base, natural=tuple(args.natural),
                     robust=tuple(args.robust), methods=tuple(args.method or ["task_arithmetic"]),
                     alphas=parse_alphas(args.alphas), keeps=tuple(args.keep or [1.0]),
                     scope=args.scope, scale=args.scale, attack=attack, eval=ev)
    _write(list(engine.sweep(spec, use_bank=not args.no_reuse)), args.out)
    return 0


def cmd_evaluate(args) -> int:
    from ..engine import Engine
    from ..zoo import load_manifest
    manifest = load_manifest(args.manifest)
    attack, ev = resolve_specs(args, manifest)
    engine = Engine(manifest, device=args.device, store=_store(args))
    row = engine.model_point(args.model, attack, ev)
    row.pop("alpha", None)
    row["model"] = args.model
    _write([row], args.out)
    return 0


def cmd_zoo(args) -> int:
    from ..zoo import default_manifest_path, load_manifest
    if args.action == "build":
        import torch

        from ..finetune.recipe import build_zoo
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        out = Path(args.into) if args.into else default_manifest_path().parent
        print(build_zoo(out, preset=args.preset, seed=args.seed, device=args.device or "cpu"))
        return 0
    m = load_manifest(args.manifest)
    if args.action == "list":
        for name, e in m.models.items():
            print(f"{name:16s} {e.role:8s} {e.arch:14s} {e.weights}  {e.provenance}")
        return 0
    from ..engine import Engine
    from ..report import cmd_report
    attack, ev = resolve_specs(args, m)
    return cmd_report(args, Engine(m, device=args.device, store=_store(args)), attack, ev)


def cmd_convert(args) -> int:
    from ..zoo import convert
    print(convert(args.src, args.dst))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "serve":
        from ..serve_args import serve
        return serve(args)
    if args.cmd == "bench":
        from ..bench import cmd_bench
        return cmd_bench(args)
    if args.cmd == "compare":
        from ..compare import cmd_compare
        return cmd_compare(args)
    cmd = {"sweep": cmd_sweep, "evaluate": cmd_evaluate, "zoo": cmd_zoo, "convert": cmd_convert}[args.cmd]
    try:
        return cmd(args)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
