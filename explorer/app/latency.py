"""``python -m explorer bench --interactive``: how long a slider's point waits while the first view's
AutoAttack curve grows in the background.

One run, two services side by side on the same zoo, device and requests, each with a fresh
results store: in the first the background curve *yields* (``Service.anytime_sweep``,
``yielding=True``: an interactive request gets the engine at the attack's next step), in the
second it *holds* the engine for its whole chunk (``Service.background_yields = False``, how the
app worked before). In each, once the background AutoAttack curve has begun, ``requests`` points
are asked for ``gap_s`` seconds apart, as a person moving a slider: the refined tier a slider's
release computes after its quick preview (the manifest's attack, n and eps, e.g. pgd-10 on 256
images; task arithmetic at alphas no background point uses, so none is served from the store);
each one's latency is measured from the call to its row. A third, quiet service computes the same
points with no background work: their bare compute time.

Printed: each request's latency in both modes, their medians, the median bare compute, the
median wait (latency - compute) in both modes, and, last, ``holding/yielding wait ratio``.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from explorer.config import MergeSpec, SweepSpec

from .service import Service

# Alphas of the preview requests: between the background curve's 0, 0.25, ..., 1.
REQUEST_ALPHAS = (0.1, 0.35, 0.6, 0.85, 0.2, 0.45, 0.7, 0.95)


def _curve(svc: Service, reported: str, points: int) -> SweepSpec:
    d = svc.defaults
    return SweepSpec(manifest=svc.manifest_path, base=svc.default_base, natural=(svc.zoo.names("natural")[0],),
                     robust=(svc.zoo.names("robust")[0],), alphas=tuple(i / (points - 1) for i in range(points)),
                     attack=d.attack_spec(reported), eval=d.eval_spec())


def _point(svc: Service, alpha: float) -> tuple[float, dict[str, Any]]:
    d = svc.defaults
    t0 = time.perf_counter()
    row = svc.point(svc.default_base, [svc.zoo.names("natural")[0]], [svc.zoo.names("robust")[0]],
                    MergeSpec(method="task_arithmetic", lambdas=(1 - alpha, alpha)), d.attack_spec(), d.eval_spec())
    return time.perf_counter() - t0, row


def run_latency_bench(manifest: str | None = None, device: str | None = "cpu", *, requests: int = 4,
                      gap_s: float = 5.0, reported: str = "autoattack-fast", points: int = 5) -> dict[str, Any]:
    """Measure (module docstring). Returns ``{"yielding": [s...], "holding": [s...], "bare": [s...],
    "preview": the requested points' attack label, "background": label, "n": n}``; latencies in
    seconds, one per request.

    Raises:
        ValueError: ``requests`` outside [1, 8] or ``gap_s`` < 0.
    """
    if not 1 <= requests <= len(REQUEST_ALPHAS):
        raise ValueError(f"--requests must lie in [1, {len(REQUEST_ALPHAS)}], got {requests}")
    if not gap_s >= 0:
        raise ValueError(f"the gap between requests must be >= 0 s, got {gap_s}")
    alphas = REQUEST_ALPHAS[:requests]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="explorer-latency-") as tmp:
        for mode in ("yielding", "holding"):
            svc = Service(manifest, device, str(Path(tmp) / f"{mode}.sqlite"))
            svc.background_yields = mode == "yielding"
            job = svc.background_sweep(_curve(svc, reported, points))
            while not job.snapshot().rows and not job.snapshot().done:   # the AutoAttack curve has begun
                time.sleep(0.1)
            lat = []
            for a in alphas:
                time.sleep(gap_s)
                lat.append(_point(svc, a)[0])
            job.stop()
            job.wait(600)
            out[mode] = lat
        quiet = Service(manifest, device, "none")
        _point(quiet, 0.5)   # the engine built and warm, as in the services above
        out["bare"] = [_point(quiet, a)[0] for a in alphas]
        d = quiet.defaults
        out.update(preview=d.attack_spec().label, background=d.attack_spec(reported).label, n=d.eval_spec().n)
    return out


def report_lines(r: dict[str, Any]) -> list[str]:
    med = {k: statistics.median(r[k]) for k in ("yielding", "holding", "bare")}
    wait = {k: max(med[k] - med["bare"], 0.0) for k in ("yielding", "holding")}
    lines = [f"interactive latency: a refined {r['preview']} point (n={r['n']}) asked for while the first view's "
             f"{r['background']} curve grows in the background"]
    for k in ("yielding", "holding", "bare"):
        what = {"yielding": "background yields", "holding": "background holds its chunk",
                "bare": "no background (compute)"}[k]
        lines.append(f"  {what:<28} " + " ".join(f"{s:6.2f}" for s in r[k]) + f"   median {med[k]:.2f} s")
    lines.append(f"median wait beyond compute: yielding {wait['yielding']:.2f} s, holding {wait['holding']:.2f} s")
    lines.append(f"holding/yielding latency ratio: {med['holding'] / max(med['yielding'], 1e-9):.2f}")
    return lines
