"""Shared UI helpers: readable errors, UI values -> config objects, tables, constants."""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from explorer.attacks import ATTACK_NAMES, parse_attack
from explorer.config import EvalSpec, MergeSpec, PointSpec, SweepSpec, parse_alphas, parse_options
from explorer.core.errors import message_of
from explorer.data import Task, get_task
from explorer.merging import validate_spec
from explorer.stats.intervals import fmt_ci
from explorer.viz import partial, plots

log = logging.getLogger(__name__)

MAX_VECTORS = 6                   # lambda sliders available in advanced mode
PREVIEW_ATTACK = "pgd-5"          # live tier: answered within about a second on the demo zoo
PREVIEW_N = 48                    # live tier sample count (capped by the chosen n)
ATTACK_CHOICES = list(ATTACK_NAMES)   # from the attack records (explorer.attacks.ATTACKS)
EXPORT_ROOT = Path(tempfile.gettempdir()) / "trade-off-explorer-exports"
DEFAULT_METHOD = "task_arithmetic"   # the method the page opens on
DEFAULT_ALPHA = 0.5
DEFAULT_CURVE_ALPHAS = "0:1:5"       # the first view's curve: on the alpha slider's 0.05 grid
THEMES = ["light", "dark"]


def export_dir(content: str | bytes) -> Path:
    """A folder named by the content's hash: the same export reuses it instead of piling up."""
    data = content.encode() if isinstance(content, str) else content
    out = EXPORT_ROOT / hashlib.sha256(data).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    return out


# The page's table: each accuracy in one cell with its interval, then what produced it.
CLEAN_COL, ROBUST_COL = "clean acc. [95% CI]", "robust acc. [95% CI]"
TABLE_COLUMNS = ["α", CLEAN_COL, ROBUST_COL, "attack", "n", "method", "task", "λ", "keep", "scope", "cached",
                 "seconds"]
# px: the first six fit in 800 (the table at 1440 px); on a phone assets/style.css narrows the
# accuracy columns so that α and both accuracies fit in 326 (each wraps before its interval).
TABLE_WIDTHS = [56, 176, 176, 176, 72, 136, 64, 116, 52, 72, 64, 72]   # n: "176/256" whole
# The exported CSV: numbers as numbers, intervals in their own columns (README, "What an interval means").
# ``final``/``n_done``: a partial (anytime) point's accuracies are over its n_done images (viz/partial.py).
EXPORT_COLUMNS = ["method", "alpha", "lambdas", "keep", "scope", "clean_acc", "clean_ci", "robust_acc",
                  "robust_ci", "attack", "n", "n_done", "final", "task", "cached", "seconds"]


INTERNAL_ERROR = "Something went wrong on the server (the details are in its log); please try again."
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(text: object, limit: int = 300) -> str:
    """A message as one line: ANSI escapes dropped, whitespace collapsed, at most ``limit`` chars."""
    line = " ".join(_ANSI.sub("", str(text)).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def user_error(message: object, where: str = "page") -> gr.Error:
    """A page user's bad input as the page's one-line error, logged as one INFO line.

    A bad input is not a server fault: Gradio prints a traceback for every ``gr.Error`` whose
    ``print_exception`` is left True (``gradio.queueing``), so that is turned off here.
    """
    line = one_line(message)
    log.info("%s refused: %s", where, line)
    return gr.Error(line, print_exception=False)


def readable_errors(fn: Callable) -> Callable:
    """Turn exceptions into one-line ``gr.Error`` messages (never a stack trace in the page).

    User errors are ``gr.Error``/``ValueError``/``KeyError`` (the project's convention: their
    messages are written for users): one INFO line in the log, no traceback (``user_error``).
    Anything else is logged once with its traceback and shown as one generic line that reveals
    nothing of the server (no exception text, no type, no path).
    Works for plain and generator handlers; keeps the signature (gradio reads it for
    ``gr.Progress``/``gr.Request`` parameters).
    """
    def to_error(exc: Exception) -> gr.Error:
        if isinstance(exc, gr.Error):
            return user_error(exc.message, fn.__name__)
        if isinstance(exc, (ValueError, KeyError)):
            return user_error(message_of(exc), fn.__name__)
        log.exception("handler %s failed", fn.__name__)
        return gr.Error(INTERNAL_ERROR, print_exception=False)   # its traceback is logged just above

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise to_error(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise to_error(exc) from None
    return wrapper


def eval_spec(task: str, n: float | int | None) -> EvalSpec:
    """The page's evaluation set; ``ValueError`` (one line) for an n below 1 or above what the
    task's test split holds (said before the job is priced, so a big n is not a 'cost' refusal)."""
    if n is None or int(n) < 1:
        raise ValueError("sample count n must be a whole number >= 1")
    ev = EvalSpec(task=task, n=int(n))
    found = _task(task)
    if found is not None:   # an unknown task is named later, where the engine loads it
        found.check_n(ev.split, ev.n)
    return ev


@functools.lru_cache(maxsize=32)
def _task(name: str) -> Task | None:
    """The task of that name, looked up once (every slider move checks its n; a torchvision task
    opens its dataset when made); None for an unknown name."""
    try:
        return get_task(name)
    except KeyError:
        return None


def check_vectors(natural: Sequence[str] | None, robust: Sequence[str] | None) -> tuple[list[str], list[str]]:
    natural, robust = list(natural or []), list(robust or [])
    if not natural or not robust:
        raise ValueError("choose at least one natural and one robust task vector")
    if len(natural) + len(robust) > MAX_VECTORS:
        raise ValueError(f"at most {MAX_VECTORS} task vectors at a time")
    if set(natural) & set(robust):
        raise ValueError(f"{sorted(set(natural) & set(robust))} chosen as both natural and robust")
    return natural, robust


def lambda_values(values: Mapping[str, Any]) -> list[float]:
    """The ``lambda_0 .. lambda_{MAX_VECTORS-1}`` slider values, in order (missing ones 0)."""
    return [float(values.get(f"lambda_{i}") or 0.0) for i in range(MAX_VECTORS)]


def merge_spec(natural: Sequence[str], robust: Sequence[str], method: str, alpha: float, keep: float,
               scope: str, advanced: bool, lambdas: Sequence[float], options: str = "") -> MergeSpec:
    """Alpha mode (one trade-off weight) or advanced mode (one lambda per vector); ``options`` is the
    method-options text (``kappa=2, q=0.05``), checked against the method's record."""
    if not method:
        raise ValueError("choose a merge method")
    opts = parse_options(options or "")
    if advanced:
        n = len(natural) + len(robust)
        spec = MergeSpec(method=method, lambdas=tuple(float(v) for v in lambdas[:n]), keep=float(keep),
                         scope=scope, options=opts)
    else:
        spec = MergeSpec.from_alpha(float(alpha), len(natural), len(robust), method=method,
                                    keep=float(keep), scope=scope, options=opts)
    validate_spec(spec)   # an option the method does not have: one line listing the valid ones
    return spec


# The row fields that name a plotted setting: points with equal values are drawn on one plot.
SETTING_FIELDS = ("base", "natural", "robust", "attack", "n", "task", "eval_seed")


def setting_ref(point: PointSpec | SweepSpec) -> dict[str, Any]:
    """The ``SETTING_FIELDS`` of a point's or a sweep's setting, as a row carries them (``setting_of``
    compares them)."""
    return {"base": point.base, "natural": list(point.natural), "robust": list(point.robust),
            "attack": point.attack.label, "n": point.eval.n, "task": point.eval.task, "eval_seed": point.eval.seed}


def setting_of(row: Mapping[str, Any]) -> tuple:
    """Rows are comparable (one plot) when their ``SETTING_FIELDS`` agree (a missing seed is 0)."""
    return tuple(tuple(row.get(k) or ()) if k in ("natural", "robust") else row.get(k, 0 if k == "eval_seed" else None)
                 for k in SETTING_FIELDS)


def selection(values: Mapping[str, Any], default_base: str) -> PointSpec:
    """The point the frontier controls select (its ``base`` always set); ``ValueError`` naming a bad value.

    Reads ``base, natural, robust, method, alpha, keep, scope, advanced, options, lambda_i, attack,
    eps, norm, task, n``: a new control that changes the merge, attack or evaluation is read here.
    """
    v = values
    natural, robust = check_vectors(v["natural"], v["robust"])
    spec = merge_spec(natural, robust, v["method"], v["alpha"], v["keep"], v["scope"], bool(v["advanced"]),
                      lambda_values(v), v.get("options") or "")
    return PointSpec(natural, robust, spec, parse_attack(v["attack"], v["eps"], v["norm"] or "Linf"),
                     eval_spec(v["task"], v["n"]), base=v["base"] or default_base)


def acc_cell(acc: float, ci: Sequence[float] | None) -> str:
    """``0.879 [0.833, 0.913]``: an accuracy and its Wilson 95% interval, in one cell (a no-break
    space inside the interval: a narrow column wraps before it, never inside it)."""
    return f"{float(acc):.3f} " + fmt_ci(ci).replace(", ", ",\u00a0")


def rows_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The points as the page shows them: each accuracy in one cell with its Wilson 95% interval
    (``0.879 [0.833, 0.913]``), beside the attack (with eps), n and task that produced it."""
    recs = []
    for r in map(partial.with_progress_intervals, rows):
        attack = f"{r['attack']} (preview)" if r.get("preview") else r.get("attack")
        alpha = None if r.get("alpha") is None else round(float(r["alpha"]), 4)
        method = "pretrained" if plots.endpoint_kind(r) == "pretrained" else r.get("method")
        recs.append({"method": method, "α": alpha, CLEAN_COL: acc_cell(r["clean_acc"], r.get("clean_ci")),
                     ROBUST_COL: acc_cell(r["robust_acc"], r.get("robust_ci")), "attack": attack,
                     "n": partial.n_cell(r), "task": r.get("task"),
                     "λ": ", ".join(f"{float(v):+.2f}" for v in r.get("lambdas") or []), "keep": r.get("keep"),
                     "scope": r.get("scope"), "cached": r.get("cached"), "seconds": r.get("seconds")})
    return pd.DataFrame(recs, columns=TABLE_COLUMNS)


def export_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The points for the CSV export: accuracies as numbers, intervals ``[lo, hi]`` beside them."""
    recs = []
    for r in map(partial.with_progress_intervals, rows):
        rec = {c: r.get(c) for c in EXPORT_COLUMNS}
        rec["n_done"], _, rec["final"] = partial.progress(r)
        rec["lambdas"] = ", ".join(f"{float(v):+.2f}" for v in r.get("lambdas") or [])
        rec["clean_acc"] = round(float(r["clean_acc"]), 4)
        rec["robust_acc"] = round(float(r["robust_acc"]), 4)
        rec["clean_ci"], rec["robust_ci"] = fmt_ci(r.get("clean_ci")), fmt_ci(r.get("robust_ci"))
        rec["alpha"] = None if r.get("alpha") is None else round(float(r["alpha"]), 4)
        if r.get("preview"):
            rec["attack"] = f"{r['attack']} (preview)"
        recs.append(rec)
    return pd.DataFrame(recs, columns=EXPORT_COLUMNS)


def marked(rows: Sequence[dict]) -> list[dict]:
    """Rows as exported (JSON): each with ``n_done`` and ``final`` (``partial.progress``), so a
    partial point is never read as complete."""
    out = []
    for r in rows:
        done, _, final = partial.progress(r)
        out.append({**r, "n_done": done, "final": final})
    return out


def point_summary(row: dict, state: str) -> str:
    """One line under the plot: accuracies with the attack, eps, n and tier that produced them."""
    alpha = row.get("alpha")
    where = f"α = {alpha:.2f}" if alpha is not None else "λ = " + ", ".join(
        f"{v:+.2f}" for v in row.get("lambdas", []))
    cached = " · from the store" if row.get("cached") else f" · {row.get('seconds', 0):.1f} s"
    row = partial.with_progress_intervals(row)
    n = row["n"] if not partial.is_partial(row) else f"{partial.n_cell(row)} (partial, so far)"
    return (f"**{state}** — {row['method']} {where}, keep {row['keep']:g}: clean **{row['clean_acc']:.3f}** "
            f"{fmt_ci(row.get('clean_ci'))}, robust **{row['robust_acc']:.3f}** {fmt_ci(row.get('robust_ci'))} "
            f"(95% intervals) under *{row['attack']}*, n = {n} "
            f"(task {row['task']}){cached}")


def default_curve(service: Any) -> SweepSpec | None:
    """The curve the page opens on: the default method between the manifest's first natural and
    first robust vector, under the default attack, eps, task and n (the controls' initial values);
    None when the manifest lacks a natural or a robust vector."""
    m, d = service.manifest, service.defaults
    nat, rob = m.names("natural")[:1], m.names("robust")[:1]
    if not nat or not rob or d.base is None:
        return None
    return SweepSpec(manifest=service.manifest_path, base=d.base, natural=tuple(nat), robust=tuple(rob),
                     methods=(DEFAULT_METHOD,), alphas=parse_alphas(DEFAULT_CURVE_ALPHAS), keeps=(1.0,),
                     scope="global", attack=d.attack_spec(), eval=d.eval_spec())


def at_merge(curve: Sequence[dict], spec: MergeSpec) -> dict | None:
    """The row of ``curve`` computed for the merge ``spec`` (same method, alpha or lambdas, keep)."""
    for r in curve:
        same = (r.get("alpha") == spec.alpha if spec.alpha is not None
                else [float(v) for v in r.get("lambdas") or []] == list(spec.lambdas))
        if same and r.get("method") == spec.method and float(r.get("keep", 1.0)) == spec.keep:
            return r
    return None


def caption(curve: Sequence[dict], ref: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> str:
    """What the plot shows, counted: points per curve and endpoints, the attack (with eps) and n,
    the plotted points' hypervolume; while any point is partial, how many images each curve's
    points have (``partial.curve_progress``); the tier of the highlighted point when it is not the
    plotted setting's."""
    groups: dict[str, list[dict]] = {}   # as drawn: a curve's points include its α = 0 and α = 1 ends
    for r in curve:
        pre = plots.endpoint_kind(r) == "pretrained"
        name = "pretrained" if pre else plots.curve_name(r) if r.get("alpha") is not None else "λ points"
        groups.setdefault(name, []).append(r)
    parts = ", ".join(f"{k} {len(v)}" for k, v in groups.items())
    text = (f"{len(curve)} point{'s' * (len(curve) != 1)} plotted" + (f" ({parts})" if parts else "")
            + f" — {ref.get('attack')}, n = {ref.get('n')}, task {ref.get('task')}.")
    if curve:
        front = partial.front_text(curve)
        text += f" {front[0].upper()}{front[1:]}."
    growing = partial.curve_progress(groups)
    if growing:
        text += f" Partial (hollow): {growing}."
    if current is not None and current.get("preview"):
        text += (f" ★ is a preview ({current.get('attack')}, n = {current.get('n')}), "
                 "not on this scale until refined.")
    return text
