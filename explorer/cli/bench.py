"""``python -m explorer bench``: the engine against the plain per-point path (``explorer.studies.bench``)."""
from __future__ import annotations

import argparse

from explorer.config import parse_alphas

from .common import add_eval_flags, add_executor_flags, resolve_specs

HELP = "engine vs plain per-model path on the same sweep (AutoAttack: the anytime frontier's timings)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_flags(p)
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--scale", metavar="ARCH", default=None,
                   help="measure load, memory, merge and step costs at real size on a synthetic "
                        "ARCH fixture (e.g. ViT-B-32) instead; see explorer.studies.scale_bench")
    p.add_argument("--fixture", default=None,
                   help="--scale: folder of the fixture (built there if absent; default: a temp folder)")
    p.add_argument("--no-plain", action="store_true", help="--scale: skip the plain path")
    p.add_argument("--first", type=int, default=16, metavar="K",
                   help="reported-tier attacks (autoattack-fast, apgd-*): images per point in the anytime "
                        "sweep's first round, and the n of the one-by-one plain path (d)")
    p.add_argument("--repeat", type=int, default=1,
                   help="with --executor ray: run local and Ray this many times each, in turns (medians)")
    p.add_argument("--interactive", action="store_true",
                   help="measure how long a slider's refined point waits while the first view's AutoAttack curve "
                        "grows in the background, the background yielding vs holding its chunk (explorer.app.latency)")
    p.add_argument("--requests", type=int, default=4, help="--interactive: point requests per mode (1-8)")
    p.add_argument("--gap-s", type=float, default=5.0, help="--interactive: seconds between requests")
    add_executor_flags(p)    # --executor ray: local engine (1 thread) vs Ray actors, `ray speedup: X`


def run(args: argparse.Namespace) -> int:
    """Run both paths on the manifest's first natural -> first robust sweep; the ratio prints last."""
    if args.scale:
        return run_scale(args)
    if args.interactive:
        from explorer.app.latency import report_lines as latency_lines
        from explorer.app.latency import run_latency_bench
        print("\n".join(latency_lines(run_latency_bench(args.manifest, args.device, requests=args.requests,
                                                        gap_s=args.gap_s))))
        return 0
    from explorer.studies.bench import run_bench
    from explorer.zoo import load_manifest

    manifest = load_manifest(args.manifest)
    attack, ev = resolve_specs(args, manifest)
    nat = manifest.names("natural")[0]
    rob = manifest.names("robust")[0]
    alphas = parse_alphas(f"0:1:{args.points}")
    if args.executor != "local" or args.ray_address or args.workers:
        return run_ray(args, manifest, nat, rob, attack, ev, alphas)
    from explorer.attacks import find_attack
    if find_attack(attack.name).tier == "reported":
        from explorer.studies.anytime_bench import report_lines, run_anytime_bench
        if args.first < 1:
            raise ValueError(f"--first must be >= 1 image, got {args.first}")
        r = run_anytime_bench(manifest, nat, rob, attack, ev, alphas, args.device, first=args.first)
        print("\n".join(report_lines(r)))
        return 0
    r = run_bench(manifest, nat, rob, attack, ev, alphas, args.device)
    print(f"device: {r['device']}  model: {r['params'] / 1e6:.2f}M params  sweep: {nat} -> {rob}, "
          f"{r['points']} points, {r['attack']}, n={r['n']}, task={ev.task}")
    for p, e in zip(r["plain_rows"], r["engine_rows"]):
        print(f"  alpha={p['alpha']:.2f}  plain clean={p['clean_acc']:.3f} robust={p['robust_acc']:.3f} "
              f"({p['seconds']:.2f}s) | engine clean={e['clean_acc']:.3f} robust={e['robust_acc']:.3f} "
              f"({e['seconds']:.2f}s)")
    print(f"plain path:  {r['plain_seconds']:.2f} s, mean robust acc {r['plain_robust']:.4f}")
    print(f"engine:      {r['engine_seconds']:.2f} s, mean robust acc {r['engine_robust']:.4f}")
    per_step = r["attack_seconds"] / max(r["image_steps"], 1)
    print(f"engine attack: {r['image_steps']} image-steps (forward+backward rows), {r['attack_seconds']:.2f} s "
          f"with proof checks: ~{per_step * 1e3:.3f} ms per image-step")
    if r["floor_steps"] is not None:
        floor_s = r["floor_steps"] * r["step_seconds"]
        print(f"  of which PGD cannot skip (every step on every image robust at a point): {r['floor_steps']}")
        print(f"  forward+backward alone: {r['step_seconds'] * 1e3:.3f} ms per image (batch {r['step_batch']}, "
              f"measured after the sweep) -> floor {floor_s:.2f} s; plain path / floor = "
              f"{r['plain_seconds'] / floor_s:.2f}x")
    for method, secs in r["spectral_merge_seconds"].items():   # the decomposition cache at work
        if secs:
            later = f"{sum(secs[1:]) / len(secs[1:]):.3f} s" if len(secs) > 1 else "n/a"
            print(f"{method} merge: first point {secs[0]:.3f} s, later points {later} (mean of {len(secs) - 1}; "
                  "decompositions cached per set of vectors)")
    print(f"speedup ratio: {r['speedup']:.2f}")
    return 0


def run_scale(args: argparse.Namespace) -> int:
    """``bench --scale ARCH``: build (or reuse) the fixture, measure, print; ratios last."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from explorer.config import AttackSpec, EvalSpec, parse_eps

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = None if args.fixture else tempfile.TemporaryDirectory(prefix="explorer-scale-")
    root = Path(args.fixture or tmp.name)
    manifest = root / "manifest.toml"
    try:
        if not manifest.exists():   # built in a child process: its memory is not this run's peak
            subprocess.run([sys.executable, "-m", "explorer", "zoo", "synth", "--arch", args.scale,
                            "--into", str(root)], check=True, stdout=subprocess.DEVNULL)
        from explorer.studies.scale_bench import format_report, run_scale_bench
        attack = AttackSpec(args.attack or "pgd-3", parse_eps(args.eps or "4/255"), args.norm, args.seed)
        ev = EvalSpec(task=args.task or "shapes", n=args.n or 16, seed=args.seed, split=args.split)
        device = args.device or ("cuda" if _cuda() else "cpu")
        r = run_scale_bench(manifest, device, attack, ev, plain=not args.no_plain)
        print("\n".join(format_report(r, args.scale)))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def run_ray(args: argparse.Namespace, manifest, nat: str, rob: str, attack, ev, alphas) -> int:
    """``--executor ray``: the same sweep on the local engine (1 thread) and on Ray actors; the
    rows are checked equal and ``ray speedup: X`` prints last (``explorer.executors.speedup``)."""
    from explorer.executors import check_executor_options
    from explorer.executors.speedup import report_lines, run_ray_bench

    check_executor_options(args.executor, args.ray_address, args.workers)
    r = run_ray_bench(manifest, nat, rob, attack, ev, alphas, workers=args.workers or 2,
                      address=args.ray_address, device=args.device, repeat=args.repeat)
    print("\n".join(report_lines(r)))
    return 0
