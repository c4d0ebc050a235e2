"""``python -m explorer zoo multitask``: many-vector merging across tasks (Task Arithmetic's
addition, TIES, Iso-C, TSV-M), each task evaluated on its own held-out images.

Given T task vectors, each paired with the task it was fine-tuned on (``natural=fashion``,
``natural-digits=digits``), every merge of ``MERGES`` is evaluated on every task: accuracy with its
95% Wilson interval and, as merging papers report it, the *normalized accuracy*: the merge's
accuracy on a task divided by that task's own fine-tune's (the vector alone at lambda 1). The last
column is the mean normalized accuracy over the tasks.

The merges follow each method's published convention for T equally weighted vectors:

- the pretrained base (every lambda 0) and each vector alone (its lambda 1, the others 0);
- Task Arithmetic (Ilharco et al. 2023, https://arxiv.org/abs/2212.04089): ``theta_0 + lambda sum tau_i``
  at lambda 0.5, 0.7 and 1 (the paper tunes lambda in [0, 1]);
- TIES (Yadav et al. 2023, https://arxiv.org/abs/2306.01708): keep 0.2, lambda 1;
- Iso-C and TSV-M (``merging.spectral``): ``theta_0 + alpha tau_merged`` at alpha 1 and 1.5, i.e.
  our lambdas ``alpha / T`` each (equal lambdas alpha/T give the published merge exactly).

All points go through the engine (stored, history-free), under ``attack`` (default ``none``: clean
accuracy, the multi-task metric; any attack adds robust accuracy). A merge's rows on different
tasks share one merged model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from explorer.config import AttackSpec, EvalSpec, MergeSpec
from explorer.engine.frontier import Engine
from explorer.stats.intervals import fmt_ci, with_intervals


@dataclass(frozen=True)
class Merge:
    """One row of the table: ``lambdas(T)`` gives the coefficients of T vectors."""

    label: str
    method: str
    scale: float            # Task Arithmetic / TIES: lambda of each vector; Iso-C / TSV-M: the published alpha
    keep: float = 1.0
    alone: int | None = None   # the index of the one vector at lambda 1 (the others 0); None: all vectors

    def lambdas(self, t: int) -> tuple[float, ...]:
        if self.alone is not None:
            return tuple(1.0 if i == self.alone else 0.0 for i in range(t))
        per = self.scale / t if self.method in ("iso_c", "tsv_m") else self.scale
        return (per,) * t


MERGES = (*(Merge(f"task arithmetic, lambda {s:g}", "task_arithmetic", s) for s in (0.5, 0.7, 1.0)),
          Merge("TIES, keep 0.2, lambda 1", "ties", 1.0, keep=0.2),
          *(Merge(f"Iso-C, alpha {a:g}", "iso_c", a) for a in (1.0, 1.5)),
          *(Merge(f"TSV-M, alpha {a:g}", "tsv_m", a) for a in (1.0, 1.5)))


def run_multitask(engine: Engine, vectors: Sequence[str], tasks: Sequence[str], attack: AttackSpec,
                  evals: Sequence[EvalSpec], merges: Sequence[Merge] = MERGES) -> list[dict]:
    """Evaluate the base, each vector alone and every merge of ``vectors`` on every task.

    Args:
        vectors: T >= 2 manifest names of task vectors (any role).
        tasks: the task each vector was fine-tuned on (parallel to ``vectors``); two vectors may
            share a task (a natural and a robust fine-tune of it): each task is evaluated once.
        evals: the evaluation set of each vector's task (parallel to ``vectors``).

    Returns: one dict per row: ``label``, ``method``, ``lambdas``, ``points`` (one engine row per
    distinct task, in first-named order) and ``normalized`` (per task: accuracy / that of the
    first vector fine-tuned on it, alone; its own row on its task is 1.0 exactly).

    Raises:
        ValueError: fewer than two vectors, or lengths that differ.
    """
    t = len(vectors)
    if t < 2 or not len(tasks) == len(evals) == t:
        raise ValueError(f"multitask needs >= 2 vectors, each with its task; got {t} vectors, {len(tasks)} tasks")
    first = {task: i for i, task in reversed(list(enumerate(tasks)))}   # task -> its first vector
    order = sorted(first, key=first.get)
    rows = [Merge("pretrained base", "task_arithmetic", 0.0),
            *(Merge(f"{v} alone", "task_arithmetic", 1.0, alone=i) for i, v in enumerate(vectors)), *merges]
    out = []
    for m in rows:
        spec = MergeSpec(method=m.method, lambdas=m.lambdas(t), keep=m.keep)
        pts = [with_intervals(engine.point(list(vectors), [], spec, attack, evals[first[task]])) for task in order]
        out.append({"label": m.label, "method": m.method, "lambdas": list(spec.lambdas), "points": pts})
    own = [out[1 + first[task]]["points"][j]["clean_acc"] for j, task in enumerate(order)]
    for row in out:
        row["normalized"] = [p["clean_acc"] / o if o > 0 else None for p, o in zip(row["points"], own)]
    return out


def distinct(tasks: Sequence[str]) -> list[str]:
    """The tasks in first-named order, each once (the table's columns)."""
    return list(dict.fromkeys(tasks))


def table(rows: list[dict], tasks: Sequence[str], attack: AttackSpec) -> str:
    """The markdown table: per task clean accuracy [95% CI] (and robust where attacked) and
    normalized accuracy, then the mean normalized accuracy."""
    robust = attack.name != "none" and attack.eps > 0
    tasks = distinct(tasks)
    head = ["merge", "lambdas"]
    for task in tasks:
        head += [f"{task} clean [95% CI]"] + ([f"{task} robust [95% CI]"] if robust else []) + [f"{task} norm."]
    head.append("mean norm.")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], ", ".join(f"{x:.3g}" for x in r["lambdas"])]
        for p, norm in zip(r["points"], r["normalized"]):
            cells.append(f"{p['clean_acc']:.3f} {fmt_ci(p['clean_ci'])}")
            if robust:
                cells.append(f"{p['robust_acc']:.3f} {fmt_ci(p['robust_ci'])}")
            cells.append("n/a" if norm is None else f"{norm:.3f}")
        norms = [x for x in r["normalized"] if x is not None]
        cells.append(f"{sum(norms) / len(norms):.3f}" if norms else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    n = ", ".join(f"{task} n={r['n']}" for task, r in zip(tasks, rows[0]["points"]))
    lines.append("")
    lines.append(f"Attack: {rows[0]['points'][0]['attack']}; {n}. Normalized accuracy: accuracy / the task's own "
                 "fine-tune's accuracy (its vector alone).")
    return "\n".join(lines)
