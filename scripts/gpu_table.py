#!/usr/bin/env python
"""The README's GPU table: ViT-B/32 (the synthetic fixture), 256 images, on one CUDA device.

Rows: slider -> refined pgd-10 point (target <= 0.5 s) and an 11-point autoattack-fast frontier
(target <= 2 min), each measured on the fixture and, because random weights classify ~1/16 of
the images correctly (only those are attacked), also as the worst case from the measured
forward+backward time: every image attacked for the attack's full cost (``attack_cost``).

Usage: python scripts/gpu_table.py --fixture DIR [--device cuda]  (DIR from ``zoo synth``)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from explorer.attacks import attack_cost  # noqa: E402
from explorer.bench import step_seconds  # noqa: E402
from explorer.config import AttackSpec, EvalSpec, MergeSpec, SweepSpec, parse_alphas  # noqa: E402
from explorer.engine import Engine  # noqa: E402

N = 256
EPS = 4 / 255


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", required=True, help="folder written by `python -m explorer zoo synth`")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    manifest = Path(args.fixture) / "manifest.toml"
    eng = Engine(manifest, device=args.device, store=None)
    nat, rob = ["natural"], ["robust"]
    ev = EvalSpec("shapes", n=N)
    pgd = AttackSpec("pgd-10", EPS)
    eng.point(nat, rob, MergeSpec.from_alpha(0.5), pgd, ev, use_store=False)        # warm: data, head
    slider = []
    for a in (0.3, 0.4, 0.6, 0.7, 0.8):
        t = time.perf_counter()
        row = eng.point(nat, rob, MergeSpec.from_alpha(a), pgd, ev, use_store=False)
        slider.append(time.perf_counter() - t)
    aa = AttackSpec("autoattack-fast", EPS)
    spec = SweepSpec(manifest=str(manifest), base=eng.base, natural=tuple(nat), robust=tuple(rob),
                     alphas=parse_alphas("0:1:11"), attack=aa, eval=ev)
    t = time.perf_counter()
    rows = list(eng.sweep(spec, progress=False))
    frontier = time.perf_counter() - t
    net = eng.attack_model(ev.task) or eng.classifier(ev.task)
    step = step_seconds(net, *eng.eval_data(ev), batch=N, reps=3)
    worst_pgd = N * (attack_cost(pgd) + 1) * step
    worst_aa = 11 * N * (attack_cost(aa) + 1) * step
    attacked = statistics.mean(r["clean_acc"] for r in rows) * N
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\nGPU table: ViT-B/32 (synthetic fixture, {eng.layout.numel / 1e6:.1f}M params), {N} images, "
          f"{name}, torch {torch.__version__}, TF32 on")
    print(f"forward+backward: {step * 1e3:.3f} ms per image at batch {N}; images clean-correct (attacked) "
          f"per point on the fixture: {attacked:.0f} of {N}; last slider row clean={row['clean_acc']:.3f}")
    print("| measure | target | fixture (median / total) | worst case: every image attacked in full |")
    print("|---|---|---|---|")
    print(f"| slider -> refined pgd-10 point | <= 0.5 s | {statistics.median(slider):.3f} s | {worst_pgd:.2f} s |")
    print(f"| 11-point autoattack-fast frontier | <= 2 min | {frontier:.1f} s | {worst_aa / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
