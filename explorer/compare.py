"""``python -m explorer compare``: every merge method on one setting, frontiers and hypervolume.

One natural and one robust vector, one alpha grid, one keep (task arithmetic ignores keep and is
run at keep=1), one attack, on the held-out split (``test``; the calibration of ``stability`` and
``variational`` reads only ``train``). Points go through ``Engine.point`` (store-backed, so a
rerun is served from the store), each attacked afresh unless ``--reuse``. Outputs: a figure
(PNG with matplotlib when installed, else Plotly HTML), a CSV and a markdown table, and one
printed row per method: name first, its hypervolume (``explorer.hypervolume``: area dominated in
the clean x robust unit square, reference (0, 0)) last.
"""
from __future__ import annotations

import csv
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import AttackSpec, EvalSpec, MergeSpec, resolve_defaults
from .hypervolume import hypervolume, pareto_front
from .merging import METHODS

log = logging.getLogger(__name__)

ALL_METHODS = tuple(METHODS)  # registry order
COLUMNS = ("method", "keep", "points", "clean_at_0", "robust_at_1", "best_clean", "best_robust",
           "front_size", "hypervolume")


def calibration_options(manifest_defaults: dict, attack: AttackSpec, ev: EvalSpec) -> tuple:
    """Options that point the calibration at the evaluated task and radius (only where they differ
    from the manifest defaults the preparers fall back to, so store keys match plain sweeps)."""
    opts, d = [], resolve_defaults(manifest_defaults)
    if ev.task != d.task:
        opts.append(("calib_task", ev.task))
    if attack.eps != d.eps_value:
        opts.append(("calib_eps", attack.eps))
    return tuple(opts)


def compare_methods(engine: Any, natural: str, robust: str, methods: Sequence[str], alphas: Sequence[float],
                    keep: float, attack: AttackSpec, ev: EvalSpec, *, seed: int = 0,
                    reuse: bool = False) -> dict[str, list[dict]]:
    """The frontier (one row per alpha, ``Engine.point`` rows) of each method.

    ``reuse=False`` (default) attacks every point afresh, so no method's numbers depend on the
    adversarial examples found for the methods that ran before it.
    """
    if ev.split == "train":
        raise ValueError("compare evaluates on held-out data; the train split is the calibration set")
    opts = calibration_options(engine.manifest.defaults, attack, ev)
    out: dict[str, list[dict]] = {}
    for method in methods:
        rows = []
        for alpha in alphas:
            # The engine drops what a method ignores (task arithmetic's keep) from the point.
            spec = MergeSpec.from_alpha(alpha, method=method, keep=keep, seed=seed,
                                        options=[(k, v) for k, v in opts if k in METHODS[method].options])
            rows.append(engine.point([natural], [robust], spec, attack, ev, sweep=f"compare-{method}",
                                     use_bank=reuse))
            log.info("%s alpha=%.2f clean=%.3f robust=%.3f", method, alpha, rows[-1]["clean_acc"],
                     rows[-1]["robust_acc"])
        out[method] = rows
    return out


def summarize(results: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """One summary row per method (``COLUMNS``), hypervolume of its points last."""
    table = []
    for method, rows in results.items():
        pts = [(r["clean_acc"], r["robust_acc"]) for r in rows]
        by_alpha = {r["alpha"]: r for r in rows}
        table.append({
            "method": method, "keep": rows[0]["keep"] if rows else None, "points": len(rows),
            "clean_at_0": by_alpha[0.0]["clean_acc"] if 0.0 in by_alpha else None,
            "robust_at_1": by_alpha[1.0]["robust_acc"] if 1.0 in by_alpha else None,
            "best_clean": max(p[0] for p in pts), "best_robust": max(p[1] for p in pts),
            "front_size": len(pareto_front(pts)), "hypervolume": hypervolume(pts)})
    return table


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(table: list[dict[str, Any]], caption: str = "") -> str:
    lines = ([caption, ""] if caption else []) + ["| " + " | ".join(COLUMNS) + " |",
                                                  "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in COLUMNS) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write_table(table: list[dict[str, Any]], stem: Path, caption: str = "") -> tuple[Path, Path]:
    """``stem.csv`` and ``stem.md``."""
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(table)
    md_path.write_text(markdown_table(table, caption))
    return csv_path, md_path


def write_figure(results: dict[str, list[dict]], table: list[dict], path: Path, title: str) -> Path:
    """Frontiers on the clean x robust plane: PNG via matplotlib if installed, else Plotly HTML."""
    hv = {row["method"]: row["hypervolume"] for row in table}
    if path.suffix.lower() == ".png" and importlib.util.find_spec("matplotlib") is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.5, 5))
        for method, rows in results.items():
            ax.plot([r["clean_acc"] for r in rows], [r["robust_acc"] for r in rows], "o-", ms=3,
                    label=f"{method} (HV {hv[method]:.3f})")
        ax.set(xlabel="clean accuracy", ylabel="robust accuracy", title=title)
        ax.legend(fontsize=8)
        fig.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(fig)
        return path
    import plotly.graph_objects as go
    fig = go.Figure([go.Scatter(x=[r["clean_acc"] for r in rows], y=[r["robust_acc"] for r in rows],
                                mode="lines+markers", name=f"{m} (HV {hv[m]:.3f})",
                                text=[f"alpha={r['alpha']:.2f}" for r in rows]) for m, rows in results.items()])
    fig.update_layout(title=title, xaxis_title="clean accuracy", yaxis_title="robust accuracy")
    html = path if path.suffix.lower() == ".html" else path.with_suffix(".html")
    if html != path:
        log.warning("matplotlib is not installed: writing %s instead of %s", html, path)
    fig.write_html(str(html), include_plotlyjs="cdn")
    return html


def pick_model(manifest: Any, name: str | None, role: str) -> str:
    """``name``, else the manifest's default for ``role``, else its first model of that role.

    Raises:
        ValueError: the manifest has no model of that role.
    """
    name = name or manifest.defaults.get(role)
    if not name:
        names = manifest.names(role)
        if not names:
            raise ValueError(f"the manifest has no {role} model to compare")
        name = names[0]
    return name
