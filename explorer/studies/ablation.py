"""PISTOLE's ablation on our harness, and the seeds' methods next to ours, with hypervolume intervals.

``python -m explorer ablation`` runs, on one natural + one robust vector and one alpha grid:

1. the paper's ablation rows, all as the ``pistole`` method with parts switched off:
   plain weighted addition (``kappa = 0``: vision-tower task arithmetic), + stability masks
   (single-point gradients, no PCI), + masks and PCI, + masks and trajectory, full PISTOLE;
2. the methods panel: every registered method (``explorer.merging.METHODS``, task arithmetic first,
   which with equal lambdas *is* the mean of the vectors up to the scale): the baselines, ours
   (``stability``, ``variational``) and the seeds' (``pistole``, ``iso_c``, ``tsv_m``).

Each frontier's hypervolume carries a 95% paired-bootstrap interval over the evaluated images
(:mod:`explorer.stats.bootstrap`), and so does its difference to the first row of its panel (plain
weighted addition; task arithmetic). Every point goes through ``Engine.point`` (store-backed,
attacked afresh unless ``reuse``); the calibration reads the ``train`` split only.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from explorer.config import AttackSpec, EvalSpec, MergeSpec
from explorer.merging import METHODS as REGISTRY
from explorer.merging import get_method
from explorer.stats.bootstrap import hypervolume_intervals

from .compare import calibration_options, point_flags

log = logging.getLogger(__name__)

ABLATION_ROWS: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
    ("plain weighted addition", (("kappa", 0.0),)),
    ("+ stability masks", (("pci_samples", 0), ("traj_steps", 0))),
    ("+ masks and PCI", (("traj_steps", 0),)),
    ("+ masks and trajectory", (("pci_samples", 0),)),
    ("full PISTOLE", ()),
)
METHODS = tuple(REGISTRY)   # the methods panel: every registered method, in the registry's order


def frontier(engine: Any, natural: str, robust: str, method: str, alphas: Sequence[float],
             attack: AttackSpec, ev: EvalSpec, *, keep: float = 1.0, options: tuple = (),
             seed: int = 0, reuse: bool = False, sweep: str = "ablation") -> list[dict]:
    """One ``Engine.point`` row per alpha for ``method`` with those of ``options`` it declares
    (the engine drops the spec fields it does not read, e.g. task arithmetic's keep)."""
    rows = []
    options = tuple((k, v) for k, v in options if k in get_method(method).options)
    for alpha in alphas:
        spec = MergeSpec.from_alpha(alpha, method=method, keep=keep, seed=seed, options=options)
        rows.append(engine.point([natural], [robust], spec, attack, ev, sweep=sweep, use_bank=reuse))
        log.info("%s %s alpha=%.2f clean=%.3f robust=%.3f", method, dict(options), alpha,
                 rows[-1]["clean_acc"], rows[-1]["robust_acc"])
    return rows


def run_ablation(engine: Any, natural: str, robust: str, alphas: Sequence[float], attack: AttackSpec,
                 ev: EvalSpec, *, keep: float = 0.2, methods: Sequence[str] = METHODS,
                 pistole_options: tuple = (), seed: int = 0, reuse: bool = False,
                 n_boot: int = 1000) -> dict[str, dict[str, Any]]:
    """Both panels: ``{"ablation": {...}, "methods": {...}}``, each ``{"rows": {label: rows},
    "stats": {label: hypervolume_intervals row}}`` (differences against the panel's first label)."""
    if ev.split == "train":
        raise ValueError("the ablation evaluates on held-out data; the train split is the calibration set")
    calib = calibration_options(engine.manifest.defaults, attack, ev)
    unknown = sorted(k for k, _ in pistole_options if k not in get_method("pistole").options)
    if unknown:
        raise ValueError(f"pistole has no option {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(get_method('pistole').options))}")
    popts = dict(calib) | dict(pistole_options)
    ablation = {label: frontier(engine, natural, robust, "pistole", alphas, attack, ev,
                                options=tuple(sorted((popts | dict(opts)).items())), seed=seed,
                                reuse=reuse, sweep="ablation-pistole")
                for label, opts in ABLATION_ROWS}
    panel = {}
    for m in methods:
        opts = tuple(sorted(popts.items())) if m == "pistole" else calib
        panel[m] = frontier(engine, natural, robust, m, alphas, attack, ev, keep=keep, options=opts,
                            seed=seed, reuse=reuse, sweep=f"ablation-{m}")
    out = {}
    for name, rows in (("ablation", ablation), ("methods", panel)):
        flags = {label: point_flags(engine, r) for label, r in rows.items()}
        stats = hypervolume_intervals(flags, reference=next(iter(rows)), n_boot=n_boot, seed=seed)
        out[name] = {"rows": rows, "stats": stats}
    return out


def _at(rows: Sequence[dict], alpha: float) -> str:
    r = next((r for r in rows if r["alpha"] is not None and abs(r["alpha"] - alpha) < 1e-9), None)
    return "-" if r is None else f"{r['clean_acc']:.3f} / {r['robust_acc']:.3f}"


def _cost(rows: Sequence[dict]) -> str:
    costs = [r.get("prep_cost") for r in rows if r.get("prep_cost")]
    if not costs:
        return "-"
    c = max(costs, key=lambda c: c["seconds"])
    return f"{c['forward']} fwd + {c['backward']} bwd, {c['seconds']:.1f} s"


def markdown_panel(panel: dict[str, Any], first: str, at_alpha: float = 0.8) -> str:
    """A markdown table: hypervolume [95% CI], difference to the first row [95% CI], the point at
    ``at_alpha`` (0.8 = the paper's lambda 0.2), the best robust accuracy, the mask-building cost."""
    ref = next(iter(panel["rows"]))
    head = (f"| {first} | hypervolume [95% CI] | vs {ref} [95% CI] | clean / robust at alpha "
            f"{at_alpha:g} | best robust | score cost |")
    lines = [head, "|---|---|---|---|---|---|"]
    for label, rows in panel["rows"].items():
        s = panel["stats"][label]
        lines.append(f"| {label} | {s['hv']:.4f} [{s['hv_lo']:.4f}, {s['hv_hi']:.4f}] | "
                     f"{s['diff']:+.4f} [{s['diff_lo']:+.4f}, {s['diff_hi']:+.4f}] | {_at(rows, at_alpha)} | "
                     f"{max(r['robust_acc'] for r in rows):.3f} | {_cost(rows)} |")
    return "\n".join(lines) + "\n"


def write_figure(result: dict[str, dict[str, Any]], path: Any, title: str) -> Any:
    """Two panels (ablation rows; methods) on the clean x robust plane, legend with HV [CI].

    PNG via matplotlib (required here: the README embeds the figure).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharex=True, sharey=True)
    for ax, (name, sub) in zip(axes, (("PISTOLE ablation", result["ablation"]),
                                      ("methods", result["methods"]))):
        for label, rows in sub["rows"].items():
            s = sub["stats"][label]
            ax.plot([r["clean_acc"] for r in rows], [r["robust_acc"] for r in rows], "o-", ms=3,
                    label=f"{label}  HV {s['hv']:.3f} [{s['hv_lo']:.3f}, {s['hv_hi']:.3f}]")
        ax.set(xlabel="clean accuracy", title=name)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("robust accuracy")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path
