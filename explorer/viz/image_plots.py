"""Plotly builders for the trade-off image by image: a filmstrip of adversarial images and the
transfer matrix. Pure: uint8 images (HxWx3 numpy arrays), labels and flags in, a figure out.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import FONT_SIZE, readable, set_title, theme_of

FOOLED, HELD = "✗ fooled", "✓ held"


def image_strip(images: Sequence[np.ndarray], titles: Sequence[str], bad: Sequence[bool],
                title: str = "", theme: str | None = None, detail: str = "") -> go.Figure:
    """Images side by side, each under its title; a title is red when ``bad`` (fooled).

    Args:
        images: HxWx3 uint8 arrays (any size; each panel keeps its aspect ratio).
        titles: one per image (``<br>`` breaks lines).
        bad: one flag per image (colours its title).
        title, detail: the figure's title and, below it in a smaller font, what produced it (the
            attack); both wrapped to fit a phone-wide or third-of-a-page plot.

    Raises:
        ValueError: lengths differ or no image.
    """
    if not images or not len(images) == len(titles) == len(bad):
        raise ValueError(f"need as many titles and flags as images, got {len(images)}, {len(titles)}, {len(bad)}")
    ends = theme_of(theme)["endpoints"]
    fig = make_subplots(rows=1, cols=len(images), horizontal_spacing=0.012)
    for i, img in enumerate(images):
        fig.add_trace(go.Image(z=np.asarray(img, dtype=np.uint8), hoverinfo="skip"), row=1, col=i + 1)
        axis = "" if i == 0 else str(i + 1)
        fig.add_annotation(text=titles[i], showarrow=False, xref=f"x{axis} domain", yref=f"y{axis} domain",
                           x=0.5, y=-0.04, yanchor="top", font=dict(
                               size=FONT_SIZE - (1 if len(images) <= 4 else 3),
                               color=ends["robust"] if bad[i] else None))
    readable(fig, theme)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(margin=dict(l=5, r=5, b=70), showlegend=False)
    return set_title(fig, title, detail, FONT_SIZE + 1, 300, body=250)


def filmstrip_figure(frames: Sequence[Mapping[str, Any]], attack: str = "",
                     theme: str | None = None) -> go.Figure:
    """One panel per alpha: the adversarial image, the prediction after the attack, fooled or held.

    ``frames`` are the dicts of ``Service.filmstrip`` (``alpha, adv, clean_pred, adv_pred, fooled``).
    """
    titles = [f"α={f['alpha']:.2f}<br>{f['adv_pred']}<br>{FOOLED if f['fooled'] else HELD}" for f in frames]
    held = sum(not f["fooled"] for f in frames)
    return image_strip([f["adv"] for f in frames], titles, [bool(f["fooled"]) for f in frames],
                       title=f"Filmstrip over α: held at {held} of {len(frames)} merges", detail=attack,
                       theme=theme)


def transfer_figure(result: Mapping[str, Any], theme: str | None = None) -> go.Figure:
    """Rows: the model the adversarial image was crafted on; columns: the model classifying it.

    ``result`` is ``Service.transfer``'s dict (``models``, ``pred[src][dst]``, ``fooled[src][dst]``);
    a cell shows the prediction, coloured by fooled (1) or held (0).
    """
    models = list(result["models"])
    z = [[1.0 if result["fooled"][s][d] else 0.0 for d in models] for s in models]
    text = [[f"{result['pred'][s][d]}<br>{FOOLED if result['fooled'][s][d] else HELD}" for d in models]
            for s in models]
    ends = theme_of(theme)["endpoints"]
    fig = go.Figure(go.Heatmap(z=z, x=models, y=models, text=text, texttemplate="%{text}", zmin=0, zmax=1,
                               colorscale=[[0, ends["natural"]], [1, ends["robust"]]], showscale=False,
                               textfont=dict(size=FONT_SIZE - 3, color="white"), xgap=3, ygap=3,
                               hovertemplate="crafted on %{y}, classified by %{x}: %{text}<extra></extra>"))
    readable(fig, theme)
    # Tick labels on two lines ("natural<br>(α = 0)"): the cells keep their width on a phone.
    ticks = dict(tickvals=models, ticktext=[m.replace(" ", "<br>", 1) for m in models])
    fig.update_layout(xaxis=dict(title=dict(text="classified by"), side="bottom", **ticks),
                      yaxis=dict(title=dict(text="crafted on"), autorange="reversed", **ticks),
                      margin=dict(l=10, r=10, b=10))
    return set_title(fig, "Transfer", result.get("attack", ""), FONT_SIZE, 300, body=320)
