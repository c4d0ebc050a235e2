"""Plotly figure builders: plain data in (result rows, dicts, lists), a ``go.Figure`` out.

Pure functions, no gradio and no torch: the UI, the CLI and notebooks share them. A result
row is the dict ``Engine.point`` returns (``method, alpha, keep, scope, lambdas, clean_acc,
robust_acc, clean_ci, robust_ci, attack, eps, n, task, ...``); accuracies are fractions in [0, 1].
Every point is drawn with its Wilson 95% intervals as error bars (clean horizontally, robust
vertically) and its hover card gives them; rows without intervals get them from ``n``.
"""
from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from explorer.stats.hypervolume import pareto_indices
from explorer.stats.intervals import fmt_ci

from . import partial
from .partial import with_progress_intervals

Row = Mapping[str, Any]
ENDPOINT_STYLE = {  # kind -> (marker symbol, colour, legend name)
    "pretrained": ("square", "#555555", "pretrained (all λ = 0)"),
    "natural": ("diamond", "#1f77b4", "natural endpoint (α = 0)"),
    "robust": ("triangle-up", "#d62728", "robust endpoint (α = 1)"),
}
METHOD_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
# Talk-friendly reading (readable from the back of a room at 1280x720): one base font size, and per
# theme a Plotly template, the endpoint colours (distinct in shape *and* colour on either
# background), the marker outline and the Pareto line.
FONT_SIZE = 15
THEMES: dict[str, dict[str, Any]] = {
    "light": dict(template="plotly_white", outline="white", front="rgba(0,0,0,0.40)",
                  endpoints={"pretrained": "#555555", "natural": "#1f77b4", "robust": "#d62728"}),
    "dark": dict(template="plotly_dark", outline="black", front="rgba(255,255,255,0.50)",
                 endpoints={"pretrained": "#d0d0d0", "natural": "#5aa9ff", "robust": "#ff6b6b"}),
}


def theme_of(name: str | None) -> dict[str, Any]:
    """The style of theme ``name`` (``light`` or ``dark``; None: light); ``KeyError`` listing both."""
    if name is None:
        return THEMES["light"]
    if name not in THEMES:
        raise KeyError(f"unknown theme {name!r}; choose one of {sorted(THEMES)}")
    return THEMES[name]


# px from a figure's top edge to its title's anchor: the text starts about 14 px higher (Plotly's
# top-anchored titles), just below the label Gradio draws over the figure's top left corner (35 px).
TITLE_TOP = 54
PANEL_PX = 230   # text width every title line must fit: a top-k panel at 1440 px (256) less its margins


def fit_lines(text: str, size: int, width: int = PANEL_PX) -> list[str]:
    """``text`` broken at spaces (and at its ``<br>``) into lines of about ``width`` px at font
    ``size`` (0.6 em per character: Plotly's sans fonts average less); a longer word stays whole."""
    chars = max(8, int(width / (0.6 * size)))
    return [line for part in text.split("<br>")
            for line in textwrap.wrap(part, chars, break_long_words=False, break_on_hyphens=False) or [""]]


def fitted_title(main: str, detail: str = "", size: int = FONT_SIZE + 1,
                 width: int = PANEL_PX) -> tuple[dict[str, Any], int]:
    """A title that fits a narrow plot (Plotly never wraps one): ``main`` on top, ``detail`` (what
    produced the numbers: attack, eps, n) below in a smaller font, each wrapped at spaces to
    ``width`` px. Returns the layout's ``title`` and the top margin its lines need (``set_title``
    pins it to the top of a figure of known height)."""
    small = size - 3
    lines = fit_lines(main, size, width)
    extra = [f"<span style='font-size:{small}px'>{line}</span>" for line in fit_lines(detail, small, width)] \
        if detail else []
    height = round(1.3 * (size * len(lines) + small * len(extra))) + TITLE_TOP
    title = dict(text="<br>".join(lines + extra), font=dict(size=size), x=0.02, xanchor="left",
                 yref="container", yanchor="top")
    return title, height


def set_title(fig: go.Figure, main: str, detail: str = "", size: int = FONT_SIZE + 1,
              width: int = PANEL_PX, body: int = 300) -> go.Figure:
    """``fitted_title`` on ``fig``: the top margin grows with its lines, the figure by as much
    (``body``: the height below the title), the title's top line ``TITLE_TOP`` px under the top
    edge (Gradio's plot label sits over the figure's top left corner)."""
    title, top = fitted_title(main, detail, size, width)
    total = body + top
    fig.update_layout(title={**title, "y": 1 - TITLE_TOP / total}, height=total, margin=dict(t=top))
    return fig


def readable(fig: go.Figure, theme: str | None = None) -> go.Figure:
    """The theme's template and the talk-sized fonts (axis titles and ticks included)."""
    t = theme_of(theme)
    fig.update_layout(template=t["template"], font=dict(size=FONT_SIZE),
                      hoverlabel=dict(font=dict(size=FONT_SIZE - 1)))
    fig.update_xaxes(title_font=dict(size=FONT_SIZE + 1), tickfont=dict(size=FONT_SIZE - 1))
    fig.update_yaxes(title_font=dict(size=FONT_SIZE + 1), tickfont=dict(size=FONT_SIZE - 1))
    return fig


def endpoint_kind(row: Row) -> str | None:
    """``pretrained`` (all lambdas 0), ``natural`` (alpha 0), ``robust`` (alpha 1) or None."""
    lambdas = row.get("lambdas") or []
    if lambdas and all(float(v) == 0.0 for v in lambdas):
        return "pretrained"
    alpha, keep = row.get("alpha"), float(row.get("keep", 1.0))
    if alpha is None or keep != 1.0:
        return None
    return {0.0: "natural", 1.0: "robust"}.get(float(alpha))


def setting_label(row: Row, rows: Sequence[Row] = ()) -> str:
    """What produced a number: ``pgd-10 Linf eps=4/255, n=256, task shapes``; ``, 2 of 6 points
    partial`` when some of ``rows`` are still growing (``partial``)."""
    k = sum(partial.is_partial(r) for r in rows)
    return (f"{row.get('attack', '?')}, n={row.get('n', '?')}, task {row.get('task', '?')}"
            + (f", {k} of {len(rows)} points partial" if k else ""))


def hover_text(row: Row) -> str:
    """Hover card of one point: accuracies with their 95% intervals, merge config and the attack,
    eps and n behind the numbers."""
    row = with_progress_intervals(row)
    alpha = row.get("alpha")
    lambdas = ", ".join(f"{float(v):+.3g}" for v in row.get("lambdas") or [])
    return "<br>".join([
        f"<b>{row.get('method', '?')}</b>" + (" (preview)" if row.get("preview") else ""),
        f"clean {float(row['clean_acc']):.3f} {fmt_ci(row.get('clean_ci'))} · "
        f"robust {float(row['robust_acc']):.3f} {fmt_ci(row.get('robust_ci'))}",
        f"(95% intervals over the {partial.progress(row)[0]} images done, Wilson)" if partial.is_partial(row)
        else "(95% intervals, Wilson)",
        f"α = {'—' if alpha is None else f'{float(alpha):.3g}'} · λ = [{lambdas}]",
        f"keep = {float(row.get('keep', 1.0)):.3g} ({row.get('scope', 'global')})",
        f"attack: {partial.attack_on_images(row)} · eps = {float(row.get('eps', 0)):.4g}" if partial.is_partial(row)
        else f"attack: {row.get('attack', '?')} · eps = {float(row.get('eps', 0)):.4g} · n = {row.get('n', '?')}",
    ])


def curve_name(row: Row) -> str:
    """Legend name of the curve a row belongs to: the method, plus keep when sparsified."""
    keep = float(row.get("keep", 1.0))
    return row.get("method", "?") + ("" if keep == 1.0 else f" keep={keep:g} ({row.get('scope', 'global')})")


def error_bars(rows: Sequence[Row], key: str, colour: str | None = None) -> dict[str, Any]:
    """Plotly ``error_x``/``error_y`` of the rows' ``{key}_ci`` intervals (asymmetric, around
    ``{key}_acc``); empty when no row has an ``n``."""
    rows = [with_progress_intervals(r) for r in rows]
    if not all(r.get(f"{key}_ci") for r in rows):
        return {}
    acc = [float(r[f"{key}_acc"]) for r in rows]
    lo = [float(r[f"{key}_ci"][0]) for r in rows]
    hi = [float(r[f"{key}_ci"][1]) for r in rows]
    bars = dict(type="data", symmetric=False, array=[h - a for h, a in zip(hi, acc)],
                arrayminus=[a - v for a, v in zip(acc, lo)], thickness=1, width=2)
    return {**bars, "color": colour} if colour else bars


def _scatter(rows: Sequence[Row], errors: bool = True, symbol: str | None = None, **kwargs: Any) -> go.Scatter:
    """One trace of ``rows``; ``symbol``: their marker, hollow at partial points (``partial.symbols``)."""
    if symbol is not None:
        kwargs["marker"] = {**kwargs.get("marker", {}), "symbol": partial.symbols(symbol, rows)}
    if errors:
        colour = (kwargs.get("line") or kwargs.get("marker") or {}).get("color")
        kwargs.update(error_x=error_bars(rows, "clean", colour), error_y=error_bars(rows, "robust", colour))
    return go.Scatter(x=[r["clean_acc"] for r in rows], y=[r["robust_acc"] for r in rows],
                      text=[hover_text(r) for r in rows], hovertemplate="%{text}<extra></extra>", **kwargs)


def frontier_figure(rows: Sequence[Row], current: Row | None = None, title: str | None = None,
                    attack: str | None = None, theme: str | None = None,
                    setting: str | None = None, other: Sequence[Row] = (),
                    other_faded: bool = False) -> go.Figure:
    """Clean (x) vs robust (y) accuracy: one curve per method, endpoints, Pareto front, current point.

    Args:
        rows: result rows of one setting (same attack, eps, n, task).
        current: the point to highlight (may be a preview of another setting; its hover says so).
        title: overrides the default title's first line (the second names the attack, eps and n).
        attack: attack label for the y axis when there are no rows yet.
        setting: the second line when there are no rows yet (``setting_label``'s form).
        theme: ``light`` (default) or ``dark`` (``THEMES``).
        other: rows of the same setting under another attack (the first view's preview curve
            behind its AutoAttack curve): drawn as their own curves, each legend entry naming
            its attack (and the main curves' then too); no endpoints, no Pareto front.
        other_faded: draw ``other`` thin, grey and translucent, without intervals.
    """
    style, fig = theme_of(theme), go.Figure()
    if other:
        _other_curves(fig, other, other_faded)
    tag = f" · {_attack_name(rows)}" if other and rows else ""
    curves: dict[str, list[Row]] = {}
    for r in rows:
        if endpoint_kind(r) != "pretrained" and r.get("alpha") is not None:
            curves.setdefault(curve_name(r), []).append(r)
    for i, (name, pts) in enumerate(curves.items()):
        pts = sorted(pts, key=lambda r: float(r["alpha"]))
        fig.add_trace(_scatter(pts, name=name + tag, mode="lines+markers", symbol="circle",
                               line=dict(color=METHOD_COLOURS[i % len(METHOD_COLOURS)], width=2)))
    manual = [r for r in rows if r.get("alpha") is None and endpoint_kind(r) is None]
    if manual:
        fig.add_trace(_scatter(manual, name="advanced (λ per vector)", mode="markers", symbol="x",
                               marker=dict(size=9, color="#7f7f7f")))
    front = [rows[i] for i in pareto_indices([(r["clean_acc"], r["robust_acc"]) for r in rows])]
    if len(front) > 1:
        name = "Pareto front (partial)" if partial.any_partial(rows) else "Pareto front"
        fig.add_trace(_scatter(front, errors=False, name=name, mode="lines", hoverinfo="skip",
                               line=dict(color=style["front"], dash="dot", width=3, shape="hv")))
    for kind, (symbol, _, label) in ENDPOINT_STYLE.items():
        pts = [r for r in rows if endpoint_kind(r) == kind]
        if pts:
            fig.add_trace(_scatter(pts, name=label, mode="markers", symbol=symbol, marker=dict(
                size=17, color=style["endpoints"][kind],
                line=dict(color=style["outline"], width=1.5))))
    if current is not None:
        tag = "current (preview)" if current.get("preview") else "current"
        text = f"{tag}: {current.get('attack')}, n={partial.n_cell(current)}"
        fig.add_trace(_scatter([current], name="<br>".join(fit_lines(text, FONT_SIZE - 1, 280)), mode="markers",
                               symbol="star", marker=dict(size=24, color="#ffd400", line=dict(color="black", width=1.5))))
    ref = rows[0] if rows else current
    setting = setting_label(ref, rows) if ref else (setting or "no points yet")
    attack = ref.get("attack") if ref else (attack or "no attack chosen")
    shown = [*rows, *other, *([current] if current is not None else [])]
    readable(fig, theme)
    # Sized for a phone's 326-px plot too: the setting on its own, smaller lines.
    fig.update_layout(
        xaxis=dict(title=dict(text="clean accuracy (no attack)"), range=_axis(shown, "clean_acc")),
        yaxis=dict(title=dict(text=f"robust accuracy<br><span style='font-size:{FONT_SIZE - 2}px'>{attack}</span>"),
                   range=_axis(shown, "robust_acc"), automargin=True),
        legend=dict(orientation="h", yanchor="top", y=-0.14, x=0, font=dict(size=FONT_SIZE - 1)),
        margin=dict(l=70, r=20, b=10), uirevision="frontier")
    return set_title(fig, title or "Clean vs robust accuracy", setting, FONT_SIZE + 2, 290, 500)


def _attack_name(rows: Sequence[Row]) -> str:
    """The attack's name of the rows (``autoattack-fast``), as a legend suffix."""
    return str(rows[0].get("attack", "?")).split(" ")[0]


def _other_curves(fig: go.Figure, rows: Sequence[Row], faded: bool) -> None:
    """The companion tier's curves (``frontier_figure``'s ``other``), legend ``method · attack``."""
    curves: dict[str, list[Row]] = {}
    for r in rows:
        if endpoint_kind(r) != "pretrained" and r.get("alpha") is not None:
            curves.setdefault(curve_name(r), []).append(r)
    tag = _attack_name(rows) + (" (faded)" if faded else "")
    for i, (name, pts) in enumerate(curves.items()):
        pts = sorted(pts, key=lambda r: float(r["alpha"]))
        colour = "#9a9a9a" if faded else METHOD_COLOURS[(i + 3) % len(METHOD_COLOURS)]
        fig.add_trace(_scatter(pts, errors=not faded, name=f"{name} · {tag}", mode="lines+markers",
                               symbol="circle", opacity=0.55 if faded else 1.0,
                               line=dict(color=colour, width=1.5 if faded else 2, dash="dash" if faded else "solid"),
                               marker=dict(size=7 if faded else 9, color=colour)))


def _axis(rows: Sequence[Row], key: str) -> list[float]:
    """The span of the values with a margin (at least 0.05 either side), within [-0.02, 1.02]:
    frontiers of similar models differ by a few points and would be a dot on the whole square."""
    vals = [float(r[key]) for r in rows]
    if not vals:
        return [-0.02, 1.02]
    lo, hi = min(vals), max(vals)
    pad = max(0.05, 0.1 * (hi - lo))
    return [round(max(-0.02, lo - pad), 3), round(min(1.02, hi + pad), 3)]


def topk_figure(clean: Mapping[str, float], adv: Mapping[str, float], k: int = 5,
                title: str = "", attack: str = "", theme: str | None = None) -> go.Figure:
    """Grouped horizontal bars: top-k class probabilities before and after the attack.

    Classes are the union of the top-k of both distributions, ordered by clean probability.
    """
    top = sorted(clean, key=clean.get, reverse=True)[:k]
    top += [c for c in sorted(adv, key=adv.get, reverse=True)[:k] if c not in top]
    top = top[::-1]  # plotly draws the first category at the bottom
    ends = theme_of(theme)["endpoints"]
    fig = go.Figure([
        go.Bar(y=top, x=[clean.get(c, 0.0) for c in top], orientation="h", name="clean",
               marker_color=ends["natural"], hovertemplate="%{y}: %{x:.3f}<extra>clean</extra>"),
        go.Bar(y=top, x=[adv.get(c, 0.0) for c in top], orientation="h", name="adversarial",
               marker_color=ends["robust"], hovertemplate=f"%{{y}}: %{{x:.3f}}<extra>adversarial, {attack}</extra>"),
    ])
    readable(fig, theme)
    # Narrow panels (three side by side): title and attack wrapped to the panel, the attack smaller.
    fig.update_layout(barmode="group", xaxis=dict(title=dict(text="probability"), range=[0, 1]),
                      legend=dict(orientation="h", y=-0.32), margin=dict(l=10, r=10, b=10))
    return set_title(fig, title, attack, FONT_SIZE - 1, body=300)


def cosine_heatmap(names: Sequence[str], matrix: Sequence[Sequence[float]],
                   theme: str | None = None) -> go.Figure:
    """Cosine similarity between task vectors (symmetric, diagonal 1)."""
    fig = go.Figure(go.Heatmap(z=matrix, x=list(names), y=list(names), zmin=-1, zmax=1,
                               colorscale="RdBu", reversescale=True, texttemplate="%{z:.2f}",
                               textfont=dict(size=FONT_SIZE),
                               hovertemplate="cos(%{x}, %{y}) = %{z:.3f}<extra></extra>"))
    readable(fig, theme)
    fig.update_layout(title="Cosine similarity of task vectors", height=400, yaxis=dict(autorange="reversed"),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def layer_magnitude_figure(layers: Sequence[str], norms: Mapping[str, Sequence[float]],
                           theme: str | None = None) -> go.Figure:
    """Per-layer L2 norm of each task vector (one line per vector, layers in model order)."""
    fig = go.Figure([go.Scatter(x=list(layers), y=list(v), mode="lines+markers", name=name)
                     for name, v in norms.items()])
    readable(fig, theme)
    fig.update_layout(title="Per-layer magnitude ‖τ‖₂", yaxis=dict(title=dict(text="L2 norm")),
                      xaxis=dict(tickangle=-45, tickfont=dict(size=FONT_SIZE - 2)), height=400,
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1, xanchor="right"),
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig
