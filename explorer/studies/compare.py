"""``python -m explorer compare``: every merge method on one setting, frontiers and hypervolume.

One natural and one robust vector, one alpha grid, one keep (task arithmetic ignores keep and is
run at keep=1), one attack, on the held-out split (``test``; the calibration of ``stability`` and
``variational`` reads only ``train``). Points go through ``Engine.point`` (store-backed, so a
rerun is served from the store), each attacked afresh unless ``--reuse``. Outputs: a figure
(PNG with matplotlib when installed, else Plotly HTML), a CSV and a markdown table, and one
printed row per method: name first, its hypervolume (``explorer.stats.hypervolume``: area dominated in
the clean x robust unit square, reference (0, 0)) last, with a 95% paired-bootstrap interval over
the images (``explorer.stats.bootstrap``; every method is evaluated on the same images, so they are
resampled together). Then the paired hypervolume difference of ``stability`` against
``task_arithmetic`` and against ``magnitude``, with its interval and whether its sign is resolved
at this n. Endpoint accuracies carry Wilson 95% intervals.
"""
from __future__ import annotations

import csv
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from explorer.config import AttackSpec, EvalSpec, MergeSpec, PointSpec, resolve_defaults
from explorer.executors import Executor, LocalExecutor, run_in_order
from explorer.merging import METHODS
from explorer.stats.bootstrap import hypervolume_intervals, resolved
from explorer.stats.hypervolume import hypervolume, pareto_front
from explorer.stats.intervals import fmt_ci, with_intervals

log = logging.getLogger(__name__)

ALL_METHODS = tuple(METHODS)  # registry order
COLUMNS = ("method", "keep", "points", "clean_at_0", "clean_at_0_ci", "robust_at_1", "robust_at_1_ci",
           "best_clean", "best_robust", "front_size", "hypervolume", "hv_lo", "hv_hi")
# The paired differences ``compare`` reports: (method, against).
DIFFERENCES = (("stability", "task_arithmetic"), ("stability", "magnitude"))


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
                    keep: float, attack: AttackSpec, ev: EvalSpec, *, seed: int = 0, reuse: bool = False,
                    executor: Executor | None = None) -> dict[str, list[dict]]:
    """The frontier (one row per alpha, ``Engine.point`` rows) of each method.

    ``reuse=False`` (default) attacks every point afresh, so no method's numbers depend on the
    adversarial examples found for the methods that ran before it. ``executor`` (default: the
    local one on ``engine``) says where the points run, e.g. on Ray actors (``reuse`` must then
    be False: actors do not share adversarial examples).
    """
    if ev.split == "train":
        raise ValueError("compare evaluates on held-out data; the train split is the calibration set")
    if executor is not None and executor.name != "local" and reuse:
        raise ValueError(f"--reuse needs the local executor; {executor.name} runs points history-free")
    runner = executor or LocalExecutor(engine)
    manifest = engine.manifest if engine is not None else runner.manifest
    opts = calibration_options(manifest.defaults, attack, ev)
    # The engine drops what a method ignores (task arithmetic's keep) from the point.
    jobs = [PointSpec((natural,), (robust,),
                      MergeSpec.from_alpha(alpha, method=method, keep=keep, seed=seed,
                                           options=[(k, v) for k, v in opts if k in METHODS[method].options]),
                      attack, ev, sweep=f"compare-{method}")
            for method in methods for alpha in alphas]
    rows = run_in_order(runner, jobs, use_bank=reuse)
    out: dict[str, list[dict]] = {m: [] for m in methods}
    for job, row in zip(jobs, rows):
        log.info("%s alpha=%.2f clean=%.3f robust=%.3f", job.spec.method, row["alpha"], row["clean_acc"],
                 row["robust_acc"])
        out[job.spec.method].append(row)
    return out


def point_flags(engine: Any, rows: Sequence[dict]) -> list[tuple[Any, Any]]:
    """The per-image (clean, robust) correctness arrays of each row, from the engine's store.

    Raises:
        ValueError: the engine has no store, or a point's flags are missing.
    """
    if engine.store is None:
        raise ValueError("intervals over images need the per-image flags: run with a store")
    out = []
    for r in rows:
        f = engine.store.flags(r["key"])
        if f is None:
            raise ValueError(f"point {r['key'][:12]} has no per-image flags in the store")
        out.append(f)
    return out


def bootstrap_stats(flags: dict[str, list], *, n_boot: int = 1000, seed: int = 0
                    ) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Hypervolume intervals per method and the ``DIFFERENCES`` present, one paired bootstrap.

    Args:
        flags: method -> per point ``(clean_correct, robust_correct)`` arrays, same images.

    Returns:
        (method -> ``{"hv", "hv_lo", "hv_hi"}``, one dict per difference: ``method, against,
        diff, lo, hi, resolved``). The same seed resamples the same images for every method.
    """
    stats = hypervolume_intervals(flags, n_boot=n_boot, seed=seed)
    diffs = []
    for method, against in DIFFERENCES:
        if method in flags and against in flags:
            d = hypervolume_intervals({method: flags[method], against: flags[against]}, reference=against,
                                      n_boot=n_boot, seed=seed)[method]
            diffs.append({"method": method, "against": against, "diff": d["diff"], "lo": d["diff_lo"],
                          "hi": d["diff_hi"], "resolved": resolved(d["diff_lo"], d["diff_hi"])})
    return stats, diffs


def difference_line(d: dict[str, Any], n: int) -> str:
    """One plain sentence: the paired difference, its interval, and whether it is resolved."""
    head = (f"{d['method']} - {d['against']}: hypervolume {d['diff']:+.4f}, 95% paired bootstrap "
            f"[{d['lo']:+.4f}, {d['hi']:+.4f}] over n={n} images: ")
    if d["resolved"]:
        side = "above" if d["lo"] > 0 else "below"
        return head + f"resolved, {d['method']} is {side} {d['against']}"
    return head + f"NOT resolved at n={n} (the interval contains 0)"


def summarize(results: dict[str, list[dict]], stats: dict[str, dict[str, float]] | None = None
              ) -> list[dict[str, Any]]:
    """One summary row per method (``COLUMNS``), hypervolume of its points last, with its
    bootstrap interval when ``stats`` (``bootstrap_stats``) is given; endpoint accuracies with
    their Wilson intervals."""
    table = []
    for method, rows in results.items():
        rows = [with_intervals(r) for r in rows]
        pts = [(r["clean_acc"], r["robust_acc"]) for r in rows]
        by_alpha = {r["alpha"]: r for r in rows}
        at0, at1 = by_alpha.get(0.0), by_alpha.get(1.0)
        hv = (stats or {}).get(method, {})
        table.append({
            "method": method, "keep": rows[0]["keep"] if rows else None, "points": len(rows),
            "clean_at_0": at0["clean_acc"] if at0 else None,
            "clean_at_0_ci": fmt_ci(at0.get("clean_ci")) if at0 else None,
            "robust_at_1": at1["robust_acc"] if at1 else None,
            "robust_at_1_ci": fmt_ci(at1.get("robust_ci")) if at1 else None,
            "best_clean": max(p[0] for p in pts), "best_robust": max(p[1] for p in pts),
            "front_size": len(pareto_front(pts)), "hypervolume": hypervolume(pts),
            "hv_lo": hv.get("hv_lo"), "hv_hi": hv.get("hv_hi")})
    return table


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


# Markdown columns: each number with its interval in one cell.
MD_COLUMNS = ("method", "keep", "points", "clean_at_0", "robust_at_1", "best_clean", "best_robust",
              "front_size", "hypervolume")


def _md_cell(row: dict[str, Any], c: str) -> str:
    if c in ("clean_at_0", "robust_at_1") and row.get(f"{c}_ci"):
        return f"{fmt(row[c])} {row[f'{c}_ci']}"
    if c == "hypervolume" and row.get("hv_lo") is not None:
        return f"{fmt(row[c])} [{row['hv_lo']:.4f}, {row['hv_hi']:.4f}]"
    return fmt(row[c])


def markdown_table(table: list[dict[str, Any]], caption: str = "", differences: Sequence[str] = ()) -> str:
    """The summary as markdown; intervals in brackets beside their numbers, then the difference lines."""
    lines = ([caption, ""] if caption else []) + ["| " + " | ".join(MD_COLUMNS) + " |",
                                                  "|" + "---|" * len(MD_COLUMNS)]
    lines += ["| " + " | ".join(_md_cell(row, c) for c in MD_COLUMNS) + " |" for row in table]
    if differences:
        lines += ["", *[f"- {d}" for d in differences]]
    return "\n".join(lines) + "\n"


def write_table(table: list[dict[str, Any]], stem: Path, caption: str = "",
                differences: Sequence[str] = ()) -> tuple[Path, Path]:
    """``stem.csv`` (``COLUMNS``) and ``stem.md`` (``markdown_table``); a dot in ``stem`` stays
    (``compare-keep0.05`` -> ``compare-keep0.05.md``, not ``compare-keep0.md``)."""
    csv_path, md_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(table)
    md_path.write_text(markdown_table(table, caption, differences))
    return csv_path, md_path


def _errors(rows: Sequence[dict], key: str) -> list[list[float]]:
    """matplotlib's asymmetric error bars ``[[below], [above]]`` of the rows' ``{key}_ci``."""
    acc = [r[f"{key}_acc"] for r in rows]
    below = [a - r[f"{key}_ci"][0] for a, r in zip(acc, rows)]
    return [below, [r[f"{key}_ci"][1] - a for a, r in zip(acc, rows)]]


def write_figure(results: dict[str, list[dict]], table: list[dict], path: Path, title: str) -> Path:
    """Frontiers on the clean x robust plane: PNG via matplotlib if installed, else Plotly HTML."""
    hv = {row["method"]: row["hypervolume"] for row in table}
    hv_ci = {r["method"]: "" if r.get("hv_lo") is None else f" [{r['hv_lo']:.3f}, {r['hv_hi']:.3f}]"
             for r in table}
    if path.suffix.lower() == ".png" and importlib.util.find_spec("matplotlib") is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.5, 5))
        for method, rows in results.items():
            rows = [with_intervals(r) for r in rows]
            ax.errorbar([r["clean_acc"] for r in rows], [r["robust_acc"] for r in rows],
                        xerr=_errors(rows, "clean"), yerr=_errors(rows, "robust"), fmt="o-", ms=3,
                        elinewidth=0.6, capsize=1.5,
                        label=f"{method} (HV {hv[method]:.3f}{hv_ci[method]})")
        ax.set(xlabel="clean accuracy (bars: Wilson 95%)", ylabel="robust accuracy (bars: Wilson 95%)",
               title=title)
        ax.legend(fontsize=8)
        fig.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(fig)
        return path
    import plotly.graph_objects as go

    from explorer.viz.plots import error_bars
    fig = go.Figure([go.Scatter(x=[r["clean_acc"] for r in rows], y=[r["robust_acc"] for r in rows],
                                mode="lines+markers", name=f"{m} (HV {hv[m]:.3f}{hv_ci[m]})",
                                error_x=error_bars(rows, "clean"), error_y=error_bars(rows, "robust"),
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
