"""Points and their rows: the merges of a sweep, and the JSON row of a computed or failed point.

Shared by :class:`explorer.engine.frontier.Engine` and the executors (``explorer.executors``), so every
executor runs the same points under the same store keys and writes the same columns.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from explorer.config import CODE_VERSION, AttackSpec, EvalSpec, MergeSpec, SweepSpec
from explorer.evaluation.evaluate import EvalResult
from explorer.merging import canonical_spec, get_method
from explorer.stats.intervals import acc_interval, with_intervals
from explorer.store import ImageRows


def sweep_grid(spec: SweepSpec) -> list[MergeSpec]:
    """The merges of a sweep, alpha x keep x method in that nesting, each canonical and once.

    Shared by ``Engine.sweep`` and the executors (``explorer.executors``), so every executor
    runs the same points under the same store keys.
    """
    n_nat, n_rob = len(spec.natural), len(spec.robust)
    grid: list[MergeSpec] = []
    seen: set[MergeSpec] = set()
    unused = sorted({k for k, _ in spec.options} - {o for m in spec.methods for o in get_method(m).options})
    if unused:
        raise ValueError(f"no method of the sweep ({', '.join(spec.methods)}) has option {', '.join(unused)}")
    for m in spec.methods:
        opts = tuple((key, v) for key, v in spec.options if key in get_method(m).options)
        for k in spec.keeps:
            for a in spec.alphas:
                ms = canonical_spec(MergeSpec.from_alpha(a, n_nat, n_rob, spec.scale, method=m, keep=k,
                                                         scope=spec.scope, seed=spec.merge_seed, options=opts))
                if ms not in seen:
                    seen.add(ms)
                    grid.append(ms)
    return grid


def point_row(res: EvalResult, spec: MergeSpec, attack: AttackSpec, ev: EvalSpec,
              natural: Sequence[str], robust: Sequence[str], base: str, key: str, *,
              seconds: float, merge_seconds: float, device: str) -> dict[str, Any]:
    """The JSON row of one point: accuracies with their Wilson 95% intervals (``clean_ci``,
    ``robust_ci`` = [lo, hi]), the full config, attack label, timings."""
    return with_intervals({
        **_merge_columns(spec), "clean_acc": res.clean_acc, "robust_acc": res.robust_acc,
        **_eval_columns(attack, ev, res.n, natural, robust, base), "n_done": res.n, "final": True,
        "seconds": round(seconds, 4), "merge_seconds": round(merge_seconds, 5),
        "attack_seconds": round(res.seconds.get("attack", 0.0), 4),
        "n_reused": res.n_reused, "n_attacked": res.n_attacked, "cached": False, "key": key,
        "code_version": CODE_VERSION, "device": device, "config": _config(spec, attack, ev),
    })


def image_row(rows: ImageRows, spec: MergeSpec, attack: AttackSpec, ev: EvalSpec, natural: Sequence[str],
              robust: Sequence[str], base: str, key: str, *, seconds: float, merge_seconds: float,
              attack_seconds: float, device: str, normalize: str) -> dict[str, Any]:
    """The row of a point from its per-image results (``Store.images``, images 0..n-1 only).

    ``n`` is the target, ``n_done`` the images done, ``final`` True only when n_done == n;
    accuracies and their Wilson 95% intervals are over the n_done images. ``image_ids``,
    ``clean_flags``, ``robust_flags`` list them (0/1) in eval order. Needs n_done >= 1.
    """
    k = len(rows)
    if k < 1:
        raise ValueError("a point row needs at least one image done")
    clean_k, robust_k = int(rows.clean.sum()), int(rows.robust.sum())
    attacked = attack.name != "none" and attack.eps > 0
    return {
        **_merge_columns(spec), "clean_acc": clean_k / k, "robust_acc": robust_k / k,
        "clean_ci": acc_interval(clean_k / k, k), "robust_ci": acc_interval(robust_k / k, k),
        **_eval_columns(attack, ev, ev.n, natural, robust, base), "n_done": k, "final": k == ev.n,
        "seconds": round(seconds, 4), "merge_seconds": round(merge_seconds, 5),
        "attack_seconds": round(attack_seconds, 4), "n_reused": 0, "n_attacked": clean_k if attacked else 0, "cached": False, "key": key,
        "code_version": CODE_VERSION, "device": device, "config": _config(spec, attack, ev), "reuse": False,
        "normalize": normalize, "image_ids": rows.ids.tolist(), "clean_flags": rows.clean.astype(int).tolist(),
        "robust_flags": rows.robust.astype(int).tolist(),
        "stages": list(rows.stage), "costs": rows.cost.tolist(),
    }


def failed_row(exc: Exception, spec: MergeSpec, attack: AttackSpec, ev: EvalSpec, natural: Sequence[str],
               robust: Sequence[str], base: str) -> dict[str, Any]:
    """The row of a point that has no accuracy: its settings, ``failed: True`` and the ``error``.

    ``clean_acc`` and ``robust_acc`` are None (JSON null), never a number; nothing is stored.
    """
    return {
        **_merge_columns(spec), "clean_acc": None, "robust_acc": None, "clean_ci": None, "robust_ci": None,
        **_eval_columns(attack, ev, ev.n, natural, robust, base), "n_done": 0, "final": False, "cached": False,
        "failed": True, "error": str(exc), "code_version": CODE_VERSION, "config": _config(spec, attack, ev),
    }


def _merge_columns(spec: MergeSpec) -> dict[str, Any]:
    return {"method": spec.method, "alpha": spec.alpha, "keep": spec.keep, "scope": spec.scope,
            "lambdas": list(spec.lambdas)}


def _eval_columns(attack: AttackSpec, ev: EvalSpec, n: int, natural: Sequence[str], robust: Sequence[str],
                  base: str) -> dict[str, Any]:
    return {"attack": attack.label, "attack_name": attack.name, "eps": attack.eps, "norm": attack.norm,
            "n": n, "seed": attack.seed, "eval_seed": ev.seed, "task": ev.task, "split": ev.split,
            "base": base, "natural": list(natural), "robust": list(robust)}


def _config(spec: MergeSpec, attack: AttackSpec, ev: EvalSpec) -> dict[str, Any]:
    return {"merge": spec.to_dict(), "attack": attack.to_dict(), "eval": ev.to_dict()}
