"""``python -m explorer zoo build | list | report | measure | synth``: build the demo zoo, list or measure a
manifest, or write a synthetic scale fixture (random-init checkpoints of a real architecture);
``measure`` prints the demo zoo's criteria table (autoattack-fast at n=1000 by default)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_eval_flags, open_service, resolve_specs

HELP = "build, list, report or measure (criteria) the demo zoo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["build", "list", "report", "measure", "synth"])
    p.add_argument("--arch", default="ViT-B-32", help="synth: open_clip architecture (default ViT-B-32)")
    p.add_argument("--arch-config", default=None, help="synth: a custom open_clip JSON model config")
    p.add_argument("--preset", default="fashion", choices=["shapes", "fashion", "micro"],
                   help="build: fashion (default: the Fashion-MNIST ViT zoo the app opens on, assets/zoo-fashion; "
                   "needs dataset-fashion-mnist), shapes (the tests' ResNet zoo, assets/zoo) or micro (seconds)")
    p.add_argument("--into", default=None, help="build: output folder (default: the preset's folder in assets/)")
    p.add_argument("--also", action="append", default=None, help="report: clean accuracy on this task too")
    p.add_argument("--sweep", action="append", default=None, help="report: robust vector(s) to sweep to")
    p.add_argument("--alphas", default=None, help="report / measure: alphas of the sweep (default 0:1:11 / 0:1:5)")
    add_eval_flags(p)


def run(args: argparse.Namespace) -> int:
    from explorer.zoo import load_manifest

    if args.action == "build":
        import torch

        from explorer.finetune.recipe import build_zoo, default_folder
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        out = Path(args.into) if args.into else default_folder(args.preset)
        print(build_zoo(out, preset=args.preset, seed=args.seed, device=args.device or "cpu"))
        return 0
    if args.action == "synth":
        from explorer.zoo.synth import synth_zoo
        if not args.into:
            raise ValueError("zoo synth needs --into DIR")
        print(synth_zoo(args.arch, args.into, seed=args.seed, arch_config=args.arch_config))
        return 0
    m = load_manifest(args.manifest)
    if args.action == "list":
        for name, e in m.models.items():
            print(f"{name:16s} {e.role:8s} {e.arch:14s} {e.weights}  {e.provenance}")
        return 0
    from explorer.studies.criteria import measure
    from explorer.studies.report import zoo_report

    service = open_service(args)
    if args.action == "measure":   # the reported tier and the criteria's n unless told otherwise
        args.attack = args.attack or "autoattack-fast"
        args.n = args.n or 1000
    attack, ev = resolve_specs(args, service.manifest)
    engine = service.engine()
    if args.action == "measure":
        blocks = measure(engine, attack, ev, alphas=args.alphas or "0:1:5")
    else:
        blocks = zoo_report(engine, attack, ev, also=args.also or (), sweeps=args.sweep or (),
                            alphas=args.alphas or "0:1:11")
    for i, block in enumerate(blocks):    # printed as each is measured
        print(f"\n{block}" if i else block)
    return 0
