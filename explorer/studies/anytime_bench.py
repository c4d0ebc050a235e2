"""``python -m explorer bench --attack autoattack-fast``: how soon an AutoAttack frontier exists.

One run, the same points (the manifest's first natural -> first robust vector, ``--points``
alphas), measured side by side:

- (a) seconds until every point has >= ``first`` images (the anytime sweep's first round,
  ``explorer.engine.anytime``: coarse first);
- (b) seconds until every point has all n images (the same sweep, run to its end);
- (c) the forward+backward floor of that work: the gradient-enabled forward rows the sweep's
  attack model actually ran (counted by a hook) x the measured seconds of one image's
  forward+backward at the attack's batch (``bench.step_seconds``); what (b) would cost with no
  overhead at all (clean passes, proof checks, merges and gradient-free queries are not in it);
- (d) the same points one by one, the old way: the plain path (``bench.plain_point``: state dicts
  merged, a fresh model, the attack's torchattacks stages on every image) at n = ``first``.

Ratios: (d)/(a) (how much sooner the coarse frontier exists; the issue's target >= 8) and
(b)/(c) (overhead over the fwd+bwd floor; target <= 1.5). The engine runs with no store (a private
in-memory image store), so nothing is served from earlier runs.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from explorer.attacks import find_attack
from explorer.config import AttackSpec, EvalSpec, MergeSpec, resolve_defaults
from explorer.engine.anytime import FIRST_CHUNK, anytime_sweep
from explorer.engine.frontier import Engine
from explorer.engine.runner import PointSpec
from explorer.zoo import Manifest

from .bench import plain_point, step_seconds, torchattacks_attack

log = logging.getLogger(__name__)


def run_anytime_bench(manifest: Manifest, natural: str, robust: str, attack: AttackSpec, ev: EvalSpec,
                      alphas: Sequence[float], device: str | None = None, first: int = FIRST_CHUNK,
                      plain: bool = True) -> dict[str, Any]:
    """Measure (a)-(d) of the module docstring; returns the figures and the anytime rows.

    Raises:
        ValueError: the attack has no plain path (``autoattack``) while ``plain`` is True.
    """
    if plain and find_attack(attack.name).plain is None:   # refused before any work (autoattack)
        torchattacks_attack(None, attack, 0)   # raises the one-line ValueError naming what bench supports
    engine = Engine(manifest, device=device, store=None)
    points = [PointSpec((natural,), (robust,), MergeSpec.from_alpha(a), attack, ev) for a in alphas]
    net = engine.attack_model(ev.task) or engine.classifier(ev.task)
    rows_fb, calls = [0], [0]

    def count(_module, args, _out) -> None:
        if torch.is_grad_enabled():
            rows_fb[0] += args[0].shape[0]
            calls[0] += 1

    hook = net.register_forward_hook(count)
    done: dict[int, int] = {}
    coarse_s, t0, rows = None, time.perf_counter(), []
    try:
        for i, row in anytime_sweep(engine.runner, points, first=first):
            rows.append(row)
            done[i] = row["n_done"]
            if coarse_s is None and len(done) == len(points) and min(done.values()) >= min(first, ev.n):
                coarse_s = time.perf_counter() - t0
    finally:
        hook.remove()
    full_s = time.perf_counter() - t0
    batch = engine.batch_plan(ev, attacked=True).batch
    step_s = step_seconds(net, *engine.eval_data(ev), batch)
    plain_s = None
    if plain:
        t1 = time.perf_counter()
        for p in points:
            plain_point(manifest, resolve_defaults(manifest.defaults, manifest.names("base")).base, [natural],
                        [robust], p.spec, attack, EvalSpec(ev.task, n=min(first, ev.n), seed=ev.seed, split=ev.split),
                        str(engine.device))
        plain_s = time.perf_counter() - t1
    return {"device": str(engine.device), "points": len(points), "attack": attack.label, "n": ev.n, "first": first,
            "natural": natural, "robust": robust, "coarse_seconds": coarse_s, "full_seconds": full_s,
            "fwd_bwd_rows": rows_fb[0], "step_seconds": step_s, "step_batch": batch,
            "floor_seconds": rows_fb[0] * step_s, "plain_seconds": plain_s,
            "final": [r for r in rows if r["final"]], "load": os.getloadavg()}


def report_lines(r: dict[str, Any]) -> list[str]:
    """The bench's printout: setting, (a)-(d), then the two ratios (last line)."""
    k = min(r["first"], r["n"])
    out = [f"anytime bench: device {r['device']}, {r['natural']} -> {r['robust']}, {r['points']} points, "
           f"{r['attack']}, n={r['n']}, first round {k} images per point",
           f"(a) every point has >= {k} images:  {r['coarse_seconds']:.1f} s",
           f"(b) the full n={r['n']} frontier:        {r['full_seconds']:.1f} s",
           f"(c) fwd+bwd floor of (b)'s work:      {r['fwd_bwd_rows']} fwd+bwd rows x "
           f"{r['step_seconds'] * 1e3:.3f} ms (batch {r['step_batch']}) = {r['floor_seconds']:.1f} s"]
    for row in sorted(r["final"], key=lambda x: x["alpha"]):
        out.append(f"    alpha={row['alpha']:.2f} clean={row['clean_acc']:.3f} robust={row['robust_acc']:.3f} "
                   f"[{row['robust_ci'][0]:.3f}, {row['robust_ci'][1]:.3f}] n={row['n']}")
    ratios = [f"(b)/(c) = {r['full_seconds'] / max(r['floor_seconds'], 1e-9):.2f} (target <= 1.5)"]
    if r["plain_seconds"] is not None:
        out.append(f"(d) the same {r['points']} points one by one, the old way (plain torchattacks path, "
                   f"n={k}): {r['plain_seconds']:.1f} s")
        ratios.insert(0, f"(d)/(a) = {r['plain_seconds'] / r['coarse_seconds']:.2f} (target >= 8)")
    load = ", ".join(f"{v:.1f}" for v in r["load"])
    out.append(f"load average at the end: {load} (a shared CPU: every figure is wall-clock under that load)")
    out.append("; ".join(ratios))
    return out
