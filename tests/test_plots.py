"""Figure builders on hand-made rows: endpoints, one trace per method, Pareto front, hover."""
from __future__ import annotations

import re

import plotly.graph_objects as go
import pytest

from explorer.stats.hypervolume import pareto_indices
from explorer.viz import plots

ATTACK = "pgd-10 Linf eps=4/255"


def row(method: str, alpha: float | None, clean: float, robust: float, lambdas=None, keep=1.0) -> dict:
    lam = lambdas if lambdas is not None else ([1 - alpha, alpha] if alpha is not None else [0.3, 0.3])
    return {"method": method, "alpha": alpha, "keep": keep, "scope": "global", "lambdas": lam,
            "clean_acc": clean, "robust_acc": robust, "attack": ATTACK, "eps": 4 / 255, "n": 64,
            "task": "shapes", "key": f"{method}-{alpha}-{keep}-{lam}"}


@pytest.fixture
def rows() -> list[dict]:
    out = [row("task_arithmetic", None, 0.30, 0.05, lambdas=[0.0, 0.0])]
    for method, bump in (("task_arithmetic", 0.0), ("ties", 0.05)):
        for a in (0.0, 0.5, 1.0):
            out.append(row(method, a, 0.9 - 0.4 * a + bump * (a == 0.5), 0.1 + 0.5 * a))
    return out


def names(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data]


def test_endpoint_kind() -> None:
    assert plots.endpoint_kind(row("ties", None, 0, 0, lambdas=[0, 0])) == "pretrained"
    assert plots.endpoint_kind(row("ties", 0.0, 0, 0)) == "natural"
    assert plots.endpoint_kind(row("ties", 1.0, 0, 0)) == "robust"
    assert plots.endpoint_kind(row("ties", 0.5, 0, 0)) is None
    assert plots.endpoint_kind(row("ties", 1.0, 0, 0, keep=0.2)) is None  # sparsified: not the model


def test_frontier_one_trace_per_method_and_endpoints(rows: list[dict]) -> None:
    fig = plots.frontier_figure(rows, current=rows[2])
    n = names(fig)
    assert n.count("task_arithmetic") == 1 and n.count("ties") == 1
    curve = fig.data[n.index("ties")]
    assert list(curve.x) == [0.9, 0.75, 0.5]  # sorted by alpha
    for kind in ("pretrained", "natural", "robust"):
        label = plots.ENDPOINT_STYLE[kind][2]
        trace = fig.data[n.index(label)]
        assert trace.marker.symbol == plots.ENDPOINT_STYLE[kind][0]
    pre = fig.data[n.index(plots.ENDPOINT_STYLE["pretrained"][2])]
    assert list(pre.x) == [0.30] and list(pre.y) == [0.05]
    current = [t for t in fig.data if t.name.startswith("current")]
    assert len(current) == 1 and list(current[0].x) == [rows[2]["clean_acc"]]
    # Title and axes state the attack, eps and n.
    assert ATTACK in fig.layout.title.text and "n=64" in fig.layout.title.text
    assert ATTACK in fig.layout.yaxis.title.text


def test_pareto_front_hand_case() -> None:
    pts = [(0.9, 0.1), (0.8, 0.3), (0.7, 0.2), (0.5, 0.6), (0.5, 0.5), (0.2, 0.6), (0.9, 0.05)]
    # (0.7,0.2) is beaten by (0.8,0.3); (0.5,0.5) by (0.5,0.6); (0.2,0.6) by (0.5,0.6); (0.9,0.05) by (0.9,0.1)
    assert pareto_indices(pts) == [3, 1, 0]
    assert pareto_indices([]) == [] and pareto_indices([(0.5, 0.5), (0.5, 0.5)]) == [0]   # the first of equals


def test_pareto_trace_in_figure(rows: list[dict]) -> None:
    fig = plots.frontier_figure(rows)
    front = fig.data[names(fig).index("Pareto front")]
    xs = list(front.x)
    assert xs == sorted(xs)
    # ties at alpha 0.5 (0.75, 0.35) dominates task arithmetic's (0.70, 0.35)
    assert 0.75 in xs and 0.70 not in xs


def test_hover_text_has_config_and_setting(rows: list[dict]) -> None:
    text = plots.hover_text(rows[2])
    for needle in ("α = 0.5", "λ = [+0.5, +0.5]", "keep = 1", "task_arithmetic", ATTACK, "n = 64", "eps = 0.01569"):
        assert needle in text, needle
    fig = plots.frontier_figure(rows)
    assert all("attack:" in t for t in fig.data[0].text)


def test_empty_figure_names_the_attack() -> None:
    fig = plots.frontier_figure([], attack=ATTACK)
    assert ATTACK in fig.layout.yaxis.title.text and len(fig.data) == 0


def test_advanced_points_get_their_own_trace() -> None:
    fig = plots.frontier_figure([row("ties", None, 0.5, 0.4, lambdas=[0.7, -0.2])])
    assert names(fig) == ["advanced (λ per vector)"]


def test_topk_union_and_order() -> None:
    clean = {"cat": 0.7, "dog": 0.2, "car": 0.06, "ship": 0.04}
    adv = {"cat": 0.1, "dog": 0.05, "car": 0.05, "ship": 0.8}
    fig = plots.topk_figure(clean, adv, k=2, title="t", attack=ATTACK)
    assert list(fig.data[0].y) == ["ship", "dog", "cat"]  # top-2 clean + adv's top, best clean on top
    assert list(fig.data[1].x) == [0.8, 0.05, 0.1]
    assert fig.data[1].name == "adversarial"   # short legend; the attack in the title and in the hover
    assert ATTACK in fig.layout.title.text and ATTACK in fig.data[1].hovertemplate


def test_titles_are_wrapped_to_a_narrow_panel() -> None:
    """Plotly never wraps a title: lines are cut at spaces to about PANEL_PX at their font size
    (0.6 em a character), the attack on its own smaller lines, and the top margin holds them."""
    long_attack = "autoattack-fast Linf eps=4/255 +reuse (preview)"
    head, top = plots.fitted_title("a photo of a very long class name → automobile ✗ fooled", long_attack, 14)
    lines = head["text"].split("<br>")
    plain = [re.sub(r"<[^>]+>", "", line) for line in lines]
    assert " ".join(plain) == "a photo of a very long class name → automobile ✗ fooled " + long_attack
    small = [line for line in lines if "font-size:11px" in line]
    assert len(small) == 2 and all(len(p) <= int(plots.PANEL_PX / (0.6 * 11)) for p in plain[-2:])
    assert all(len(p) <= int(plots.PANEL_PX / (0.6 * 14)) for p in plain[:-2])
    assert top >= 1.3 * (14 * (len(lines) - 2) + 11 * 2) and head["yanchor"] == "top"


def test_stats_figures() -> None:
    heat = plots.cosine_heatmap(["a", "b"], [[1.0, 0.2], [0.2, 1.0]])
    assert heat.data[0].zmin == -1 and list(heat.data[0].x) == ["a", "b"]
    lines = plots.layer_magnitude_figure(["visual.block0", "text.block0"], {"a": [1, 2], "b": [3, 4]})
    assert [t.name for t in lines.data] == ["a", "b"]


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_themes_keep_endpoints_distinct_and_text_talk_sized(rows: list[dict], theme: str) -> None:
    fig = plots.frontier_figure(rows, current=rows[2], theme=theme)
    ends = [t for t in fig.data if t.name in {s[2] for s in plots.ENDPOINT_STYLE.values()}]
    assert len(ends) == 3
    assert len({t.marker.symbol for t in ends}) == 3 and len({t.marker.color for t in ends}) == 3
    bg = fig.layout.template.layout.paper_bgcolor
    assert all(t.marker.color != bg for t in ends)
    assert (bg == "rgb(17,17,17)") == (theme == "dark")
    assert fig.layout.font.size >= 14 and fig.layout.title.font.size >= 16
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0   # below the plane, not over it
    for fig in (plots.topk_figure({"a": 0.7, "b": 0.3}, {"a": 0.2, "b": 0.8}, theme=theme),
                plots.cosine_heatmap(["x", "y"], [[1, 0.5], [0.5, 1]], theme=theme),
                plots.layer_magnitude_figure(["l1"], {"x": [1.0]}, theme=theme)):
        assert fig.layout.font.size >= 14
    with pytest.raises(KeyError, match="light"):
        plots.frontier_figure(rows, theme="sepia")


# ----------------------------------------------------------------- partial (anytime) points
AA = "autoattack-fast Linf eps=4/255"


def grown(r: dict, done: int, n: int = 256, final: bool | None = None) -> dict:
    """``r`` as an anytime point with ``done`` of ``n`` images (the row contract's fields)."""
    return {**r, "attack": AA, "n": n, "n_done": done, "final": done == n if final is None else final}


def partial_rows(done: int = 48) -> list[dict]:
    """Pretrained and task arithmetic at alpha 0, 0.5, 1; alpha 0.5 and the pretrained one partial."""
    pre = grown(row("task_arithmetic", None, 0.30, 0.05, lambdas=[0.0, 0.0]), done)
    a0, a5, a1 = (row("task_arithmetic", a, 0.9 - 0.4 * a, 0.1 + 0.5 * a) for a in (0.0, 0.5, 1.0))
    return [pre, grown(a0, 256), grown(a5, done), grown(a1, 256)]


def test_progress_reads_the_row_contract() -> None:
    from explorer.viz import partial

    old = row("ties", 0.5, 0.7, 0.3)   # stored before anytime points: complete
    assert partial.progress(old) == (64, 64, True) and not partial.is_partial(old)
    assert partial.progress(grown(old, 48)) == (48, 256, False)
    assert partial.progress(grown(old, 256)) == (256, 256, True)
    # final is never believed early: a row saying final on fewer images is partial
    assert partial.progress(grown(old, 48, final=True)) == (48, 256, False)
    assert partial.progress(grown(old, 256, final=False)) == (256, 256, False)   # cut off at n: still partial
    assert partial.n_cell(grown(old, 48)) == "48/256" and partial.n_cell(old) == "64"


def test_partial_intervals_are_over_the_images_done() -> None:
    from explorer.stats.intervals import acc_interval
    from explorer.viz import partial

    r = partial.with_progress_intervals(grown(row("ties", 0.5, 0.75, 0.25), 48))
    assert r["clean_ci"] == acc_interval(0.75, 48) and r["robust_ci"] == acc_interval(0.25, 48)
    assert r["n"] == 256 and r["clean_ci"] != acc_interval(0.75, 256)   # wider than the target's
    bars = plots.error_bars([r], "clean")
    assert bars["array"][0] == pytest.approx(acc_interval(0.75, 48)[1] - 0.75)


def test_partial_points_are_hollow_with_error_bars_filled_when_final() -> None:
    fig = plots.frontier_figure(partial_rows(48))
    n = names(fig)
    curve = fig.data[n.index("task_arithmetic")]
    assert list(curve.marker.symbol) == ["circle", "circle-open", "circle"]   # by alpha: 0, 0.5, 1
    assert curve.error_y.array[1] > curve.error_y.array[0] > 0   # 48 images: the wider interval
    pre = fig.data[n.index(plots.ENDPOINT_STYLE["pretrained"][2])]
    assert list(pre.marker.symbol) == ["square-open"]
    nat = fig.data[n.index(plots.ENDPOINT_STYLE["natural"][2])]
    assert nat.marker.symbol == "diamond"
    assert "Pareto front (partial)" in n and "Pareto front" not in n
    title = " ".join(re.sub(r"<[^>]+>", "", line) for line in fig.layout.title.text.split("<br>"))
    assert f"{AA}, n=256, task shapes, 2 of 4 points partial" in title
    hover = curve.text[1]
    assert f"{AA} on 48/256 images (partial)" in hover and "over the 48 images done" in hover
    assert "partial" not in curve.text[0]
    done = plots.frontier_figure(partial_rows(256))
    curve = done.data[names(done).index("task_arithmetic")]
    assert curve.marker.symbol == "circle" and "Pareto front" in names(done)
    assert "partial" not in done.layout.title.text


def test_curve_progress_and_front_caption() -> None:
    from explorer.viz import partial

    rows = partial_rows(48)
    curves = {"pretrained": rows[:1], "task_arithmetic": rows[1:]}
    assert partial.curve_progress(curves) == ("pretrained: autoattack-fast on 48/256 images; "
                                              "task_arithmetic: autoattack-fast on 48-256/256 images")
    assert partial.curve_progress({"task_arithmetic": partial_rows(256)[1:]}) == ""
    # (0.3, 0.05) is dominated; along the front (0.5, 0.6), (0.7, 0.35), (0.9, 0.1), by hand:
    hv = 0.5 * 0.6 + 0.2 * 0.35 + 0.2 * 0.1
    assert partial.front_text(rows) == f"hypervolume {hv:.3f} (partial: 2 of 4 points not complete)"
    assert partial.front_text(partial_rows(256)) == f"hypervolume {hv:.3f}"
