"""``python -m explorer zoo measure``: does a zoo tell the trade-off story? (issue 23's criteria)

Measured on the manifest's default task (held-out test images) under one attack (the reported
tier: ``autoattack-fast`` at the manifest's eps), each accuracy with its 95% Wilson interval:

1. base zero-shot clean >= 0.45;
2. natural clean >= base clean + 0.15;
3. natural clean >= 0.85;
4. natural clean >= every robust fine-tune's clean + 0.05;
5. every robust fine-tune's robust >= natural's robust + 0.30;
6. the task-arithmetic curve natural -> first robust (the first view, ``alpha`` 0 -> 1): clean
   falls and robust rises overall (end minus start), with the steps against the trend counted;
   interior points that dominate an endpoint (no worse on both axes, better on one) are listed
   as findings, not failures. The curve's endpoints are the natural and robust models' own points
   (alpha = 0 / 1 reproduce their weights exactly, a tested invariant), so only the interior
   alphas are attacked again.

A criterion holds on the point estimates; the table prints the intervals so a reader sees how
close each call is. ``n`` below 1,000 is allowed (the criteria ask for >= 1,000) but the table
says so.
"""
from __future__ import annotations

from collections.abc import Iterator

from explorer.config import AttackSpec, EvalSpec, SweepSpec, parse_alphas
from explorer.engine.frontier import Engine
from explorer.stats.intervals import fmt_ci, with_intervals

MIN_N = 1000


def _acc(p: dict, key: str) -> str:
    p = with_intervals(p)
    return f"{p[f'{key}_acc']:.3f} {fmt_ci(p[f'{key}_ci'])}"


def model_table(engine: Engine, attack: AttackSpec, ev: EvalSpec) -> tuple[dict[str, dict], str]:
    """Every manifest model's point, and their markdown table (clean, robust with intervals)."""
    pts = {name: engine.model_point(name, attack, ev) for name in engine.manifest.models}
    lines = [f"Models on `{ev.task}` (held-out test images, n={ev.n}), robust = {attack.label}:", "",
             "| model | role | clean [95% CI] | robust [95% CI] |", "|---|---|---|---|"]
    for name, p in pts.items():
        lines.append(f"| {name} | {engine.manifest.get(name).role} | {_acc(p, 'clean')} | {_acc(p, 'robust')} |")
    return pts, "\n".join(lines)


def criteria_rows(pts: dict[str, dict], roles: dict[str, str]) -> list[tuple[str, str, bool]]:
    """(criterion, measured, holds) for criteria 1-5 from the model points (``clean_acc``, ``robust_acc``)."""
    base = next(n for n, r in roles.items() if r == "base")
    nat = next(n for n, r in roles.items() if r == "natural")
    robust = [n for n, r in roles.items() if r == "robust"]
    c = {n: p["clean_acc"] for n, p in pts.items()}
    r = {n: p["robust_acc"] for n, p in pts.items()}
    rows = [(f"{base} clean >= 0.45", f"{c[base]:.3f}", c[base] >= 0.45),
            (f"{nat} clean >= {base} clean + 0.15", f"{c[nat]:.3f} vs {c[base] + 0.15:.3f}", c[nat] >= c[base] + 0.15),
            (f"{nat} clean >= 0.85", f"{c[nat]:.3f}", c[nat] >= 0.85)]
    for m in robust:
        rows.append((f"{nat} clean >= {m} clean + 0.05", f"{c[nat]:.3f} vs {c[m] + 0.05:.3f}",
                     c[nat] >= c[m] + 0.05))
    for m in robust:
        rows.append((f"{m} robust >= {nat} robust + 0.30", f"{r[m]:.3f} vs {r[nat] + 0.30:.3f}",
                     r[m] >= r[nat] + 0.30))
    return rows


def curve_findings(curve: list[dict]) -> tuple[list[tuple[str, str, bool]], list[str]]:
    """Criterion 6 on a curve of points ordered by alpha: (rows, findings about dominating points)."""
    a, b = curve[0], curve[-1]
    clean = [p["clean_acc"] for p in curve]
    robust = [p["robust_acc"] for p in curve]
    up = sum(y > x for x, y in zip(clean, clean[1:]))
    down = sum(y < x for x, y in zip(robust, robust[1:]))
    rows = [("curve: clean falls overall (alpha 0 -> 1)",
             f"{clean[0]:.3f} -> {clean[-1]:.3f} ({up} of {len(clean) - 1} steps rise)", clean[-1] < clean[0]),
            ("curve: robust rises overall (alpha 0 -> 1)",
             f"{robust[0]:.3f} -> {robust[-1]:.3f} ({down} of {len(robust) - 1} steps fall)", robust[-1] > robust[0])]
    findings = []
    for p in curve[1:-1]:
        for end, name in ((a, "alpha 0"), (b, "alpha 1")):
            ge = p["clean_acc"] >= end["clean_acc"] and p["robust_acc"] >= end["robust_acc"]
            gt = p["clean_acc"] > end["clean_acc"] or p["robust_acc"] > end["robust_acc"]
            if ge and gt:
                findings.append(f"alpha {p['alpha']:.2f} ({p['clean_acc']:.3f} / {p['robust_acc']:.3f}) dominates "
                                f"{name} ({end['clean_acc']:.3f} / {end['robust_acc']:.3f})")
    return rows, findings


def table(rows: list[tuple[str, str, bool]], caption: str) -> str:
    lines = [caption, "", "| criterion | measured | holds |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in rows]
    return "\n".join(lines)


def measure(engine: Engine, attack: AttackSpec, ev: EvalSpec, alphas: str = "0:1:5") -> Iterator[str]:
    """The markdown blocks of ``zoo measure``: models, the curve, then the criteria table.

    Args:
        engine: the zoo's engine (its manifest has one base, >= 1 natural, >= 1 robust).
        attack: the reported attack (``autoattack-fast`` at the default eps for the criteria).
        ev: held-out task and ``n`` (criteria ask for n >= 1,000).
        alphas: the curve's alpha grid (``parse_alphas`` syntax; 0 and 1 included).
    """
    m = engine.manifest
    roles = {n: e.role for n, e in m.models.items()}
    pts, block = model_table(engine, attack, ev)
    yield block
    natural, robust = m.names("natural")[0], m.names("robust")[0]
    interior = tuple(a for a in parse_alphas(alphas) if 0.0 < a < 1.0)
    curve = [{**pts[natural], "alpha": 0.0}]
    if interior:
        spec = SweepSpec(manifest=str(m.path), base=engine.base, natural=(natural,), robust=(robust,),
                         alphas=interior, attack=attack, eval=ev)
        curve += sorted(engine.sweep(spec, progress=False), key=lambda p: p["alpha"])
    curve.append({**pts[robust], "alpha": 1.0})
    lines = [f"Task arithmetic {natural} -> {robust} ({attack.label}, n={ev.n}):", "",
             "| alpha | clean [95% CI] | robust [95% CI] |", "|---|---|---|"]
    lines += [f"| {p['alpha']:.2f} | {_acc(p, 'clean')} | {_acc(p, 'robust')} |" for p in curve]
    yield "\n".join(lines)
    rows = criteria_rows(pts, roles)
    curve_rows, findings = curve_findings(curve)
    note = "" if ev.n >= MIN_N else f" (n={ev.n} is below the criteria's {MIN_N})"
    block = table(rows + curve_rows, f"Criteria (issue 23), {attack.label}, n={ev.n}{note}: "
                  f"{sum(ok for *_, ok in rows + curve_rows)} of {len(rows) + len(curve_rows)} hold")
    if findings:
        block += "\n\nInterior points dominating an endpoint: " + "; ".join(findings) + "."
    else:
        block += "\n\nNo interior point dominates an endpoint."
    yield block
