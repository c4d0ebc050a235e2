"""``python -m explorer zoo report``: the measured quality of a zoo, as a markdown table.

For every model of the manifest: clean and robust accuracy on the default task under the given
attack, and clean accuracy on the tasks named with ``--also``; then the task-arithmetic frontier
(``--alphas``) between the first natural fine-tune and each ``--sweep`` robust one (default: the
first). Points go through
``Engine.point`` (store-backed), so the numbers are the ones ``evaluate``/``sweep`` give.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from explorer.config import AttackSpec, EvalSpec, SweepSpec, parse_alphas
from explorer.engine.frontier import Engine


def model_rows(engine: Engine, attack: AttackSpec, ev: EvalSpec, extra_tasks: list[str]) -> Iterator[dict]:
    """One row per model: robust numbers on ``ev.task``, clean numbers on ``extra_tasks``."""
    for name, entry in engine.manifest.models.items():
        row = engine.model_point(name, attack, ev)
        out = {"model": name, "role": entry.role, "method": entry.provenance.get("method", ""),
               "clean": row["clean_acc"], "robust": row["robust_acc"]}
        for task in extra_tasks:
            clean = engine.model_point(name, AttackSpec("none", eps=0.0), EvalSpec(task, ev.n, ev.seed))
            out[f"clean {task}"] = clean["clean_acc"]
        yield out


def markdown(rows: list[dict], caption: str) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"{caption}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def zoo_report(engine: Engine, attack: AttackSpec, ev: EvalSpec, also: Sequence[str] = (),
               sweeps: Sequence[str] = (), alphas: str = "0:1:11") -> Iterator[str]:
    """The report's markdown blocks: the model table, then one frontier table per robust vector.

    Args:
        also: tasks whose clean accuracy is reported too (``ev.task`` itself is skipped).
        sweeps: robust vectors to sweep to from the first natural one (default: the first robust).
        alphas: the alpha grid of the sweeps (``parse_alphas`` syntax).
    """
    m = engine.manifest
    rows = list(model_rows(engine, attack, ev, [t for t in also if t != ev.task]))
    yield markdown(rows, f"Models on `{ev.task}` (test split, n={ev.n}), robust = {attack.label}:")
    natural = m.names("natural")[0]
    for robust in sweeps or m.names("robust")[:1]:
        spec = SweepSpec(manifest=str(m.path), base=engine.base, natural=(natural,), robust=(robust,),
                         alphas=parse_alphas(alphas), attack=attack, eval=ev)
        pts = list(engine.sweep(spec, progress=False))
        yield markdown([{"alpha": p["alpha"], "clean": p["clean_acc"], "robust": p["robust_acc"]} for p in pts],
                       f"Task arithmetic {natural} -> {robust} ({attack.label}, n={ev.n}):")
