"""The page itself in headless Chromium (Playwright) at 1440x1000: the first view without a click,
typing and keys as dragging, slider -> point, sweep -> curve, upload -> bars, filmstrip, transfer.

Skipped, with the reason, when the ``playwright`` package or ``/usr/bin/chromium`` is missing
(never runs ``playwright install``: the system Chromium is used).
"""
from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("EXPLORER_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

sync_api = pytest.importorskip("playwright.sync_api", reason="python package playwright not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slow_anytime(service, pause: float = 0.5) -> None:
    """A pause after every row of the anytime sweeps: the tiny zoo's AutoAttack chunks take
    milliseconds, and the page is to be seen with partial points before they are final."""
    grow = service.anytime_sweep

    def paused(*args, **kwargs):
        for row in grow(*args, **kwargs):
            yield row
            time.sleep(pause)
    service.anytime_sweep = paused


@pytest.fixture(scope="module")
def url(tiny_zoo: Path, tmp_path_factory):
    from explorer.ui import CSS_PATH, build_demo

    store = tmp_path_factory.mktemp("browser_store") / "results.sqlite"
    demo = build_demo(str(tiny_zoo), device="cpu", store_path=str(store))
    slow_anytime(demo.explorer_service, pause=1.0)   # each partial state on screen for a second
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(),
                quiet=True, show_error=True, css_paths=[CSS_PATH])   # the app's stylesheet, as served
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def page(url):
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:  # a Chromium that cannot start here
            pytest.skip(f"Chromium does not start: {exc}")
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(url)
        pg.wait_for_selector("#frontier-plot .js-plotly-plot")
        yield pg
        browser.close()


def plot_traces(page, elem: str) -> list[dict]:
    """Names and hover texts of the Plotly traces inside ``#elem`` (read from the graph div)."""
    return page.evaluate(
        """(sel) => { const gd = document.querySelector(sel + ' .js-plotly-plot');
                      return gd && gd.data ? gd.data.map(t => ({name: t.name, x: t.x, text: t.text})) : []; }""",
        "#" + elem)


def current_text(page) -> str:
    cur = [t for t in plot_traces(page, "frontier-plot") if (t["name"] or "").startswith("current")]
    return cur[0]["text"][0] if cur else ""


def move_alpha(page, fraction: float) -> None:
    """Click the alpha range input at ``fraction`` of its width (pointer up = release event)."""
    rng = page.locator("#alpha-slider input[type=range]")
    box = rng.bounding_box()
    page.mouse.click(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)


# Every text of the plot in ``#id`` that leaves the plot's box, and where the title sits against
# the label Gradio draws over the plot's top left corner (Plotly never wraps or clips a title).
CLIPPED_JS = """(sel) => { const gd = document.querySelector(sel + ' .js-plotly-plot');
  const box = gd.querySelector('svg.main-svg').getBoundingClientRect();
  const out = [...gd.querySelectorAll('svg text')].filter(t => t.textContent.trim()).map(t => [t, t.getBoundingClientRect()])
    .filter(([t, r]) => r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5)
    .map(([t, r]) => t.textContent);
  const title = gd.querySelector('.gtitle'), label = gd.closest('.block').querySelector('[data-testid="block-label"]');
  return {outside: out, title: title ? title.textContent : '', title_top: title ? title.getBoundingClientRect().top : 0,
          label_bottom: label ? label.getBoundingClientRect().bottom : 0, width: box.width}; }"""


def assert_plot_text_inside(page, elem: str, title_has: str = "") -> None:
    """The title of ``#elem`` (and every other text of it) lies inside the plot's box, below its label."""
    page.wait_for_selector(f"#{elem} .js-plotly-plot .gtitle")
    page.wait_for_timeout(300)   # a resize relayout settles
    got = page.evaluate(CLIPPED_JS, "#" + elem)
    assert got["outside"] == [] and got["title_top"] >= got["label_bottom"], (elem, got)
    assert title_has in got["title"], (elem, got["title"])


ACC_CELL = re.compile(r"\d\.\d{3} \[\d\.\d{3},\s\d\.\d{3}\]")
TABLE_JS = """() => { const t = document.querySelector('#points-table'); const view = t.querySelector('.table-wrap, [role=grid]') || t;
  const vb = t.getBoundingClientRect();
  return [...t.querySelectorAll('[role=gridcell]')].map(c => { const s = c.querySelector('span.text') || c; const r = c.getBoundingClientRect();
    return {col: +c.getAttribute('aria-colindex'), text: s.innerText.trim(), clipped: s.scrollWidth > c.clientWidth,
            inside: r.left >= vb.left - 0.5 && r.right <= vb.right + 0.5}; }); }"""


def assert_table_accuracies(page, columns_inside: int) -> None:
    """Every accuracy cell of the points table is ``acc [lo, hi]``, none clipped, and the first
    ``columns_inside`` columns (α, clean, robust, attack, n) are in view without scrolling."""
    header = page.evaluate("() => [...document.querySelectorAll('#points-table th[aria-colindex]')]"
                           ".map(h => h.innerText.trim())")
    assert header[:5] == ["α", "clean acc. [95% CI]", "robust acc. [95% CI]", "attack", "n"], header
    cells = page.evaluate(TABLE_JS)
    acc = [c for c in cells if c["col"] in (2, 3)]
    assert acc and all(ACC_CELL.fullmatch(c["text"]) for c in acc), acc
    assert not any(c["clipped"] for c in cells if c["text"]), [c for c in cells if c["clipped"]]
    assert all(c["inside"] for c in cells if c["col"] <= columns_inside), cells


def summary_has(page, text: str) -> None:
    page.wait_for_function("(t) => document.querySelector('#point-summary').innerText.includes(t)", arg=text)


AA_TRACE = "task_arithmetic · autoattack-fast"
# The AutoAttack curve's marker symbols, once it is drawn (one per point while any is partial).
AA_SYMBOLS_JS = """(name) => { const gd = document.querySelector('#frontier-plot .js-plotly-plot');
  const t = gd && gd.data ? gd.data.find(t => t.name === name) : null;
  return t ? [].concat(t.marker.symbol) : null; }"""


def test_first_view_shows_the_frontier_without_a_click(page) -> None:
    """On load the default curve is computed in the background and streamed in, with its count;
    then the same curve under autoattack-fast, coarse first: hollow partial points with their
    intervals and an 'n_done/n' caption, then filled ones, the preview curve faded behind."""
    page.wait_for_function("() => document.querySelector('#sweep-status').innerText.includes('6 points plotted')")
    traces = plot_traces(page, "frontier-plot")
    names = [t["name"] for t in traces]
    assert {"pretrained (all λ = 0)", "natural endpoint (α = 0)", "robust endpoint (α = 1)"} <= set(names)
    # Hollow AutoAttack points, said to be partial, with what computes them.
    page.wait_for_function(f"(n) => {{ const s = ({AA_SYMBOLS_JS})(n); return s && s.includes('circle-open'); }}",
                           arg=AA_TRACE)
    # Its points so far are named beside the preview curve; once the round is in (6 rows, a pause each)
    # they lead, said to be partial. Either may be on screen when the first hollow marker is drawn.
    page.wait_for_function("() => { const t = document.querySelector('#sweep-status').innerText;"
                           " return t.includes('(autoattack-fast on 16/32 images)')"
                           " || t.includes('Partial (hollow): task_arithmetic: autoattack-fast on 16'); }")
    status = page.locator("#sweep-status").inner_text()
    assert "Computing the same curve under autoattack-fast Linf eps=4/255 (the reported tier)" in status
    # Once its first round is in it leads: partial, and its hypervolume says so.
    page.wait_for_function("() => document.querySelector('#sweep-status').innerText.includes("
                           "'Partial (hollow): task_arithmetic: autoattack-fast on 16')")
    status = page.locator("#sweep-status").inner_text()
    assert "— autoattack-fast Linf eps=4/255, n = 32" in status and "Also plotted (faded): the same curve under pgd-3" in status
    assert re.search(r"\(partial: [1-6] of 6 points not complete\)", status), status
    # Then filled, every point final: the AutoAttack curve leads, the pgd-3 curve faded behind it.
    page.wait_for_function(f"(n) => {{ const s = ({AA_SYMBOLS_JS})(n); return s && !s.includes('circle-open'); }}",
                           arg=AA_TRACE)
    page.wait_for_function("() => !document.querySelector('#sweep-status').innerText.includes('in the background')")
    status = page.locator("#sweep-status").inner_text()
    assert "(pretrained 1, task_arithmetic 5) — autoattack-fast Linf eps=4/255, n = 32" in status
    assert "Also plotted (faded): the same curve under pgd-3 Linf eps=4/255, 6 points, n = 32." in status
    assert "Partial" not in status
    curves = {t["name"]: t for t in plot_traces(page, "frontier-plot")}
    assert len(curves[AA_TRACE]["x"]) == 5 and len(curves["task_arithmetic · pgd-3 (faded)"]["x"]) == 5
    assert "α = 0.5" in current_text(page) and "autoattack-fast" in current_text(page)   # the slider's point


def test_typing_alpha_and_arrow_keys_move_the_point(page) -> None:
    box = page.get_by_label("number input for α: trade-off (0 = natural, 1 = robust)")
    box.fill("0.75")
    box.press("Enter")
    summary_has(page, "α = 0.75")
    assert "α = 0.75" in current_text(page)
    page.locator("#alpha-slider input[type=range]").focus()
    page.keyboard.press("ArrowRight")
    summary_has(page, "α = 0.80")
    summary_has(page, "Refined")
    assert "α = 0.8" in current_text(page)


def test_slider_moves_the_point(page) -> None:
    move_alpha(page, 0.85)
    page.wait_for_function("() => document.querySelector('#point-summary').innerText.includes('Refined')")
    first = current_text(page)
    assert "α = 0.85" in first or "α = 0.8" in first or "α = 0.9" in first, first
    move_alpha(page, 0.15)
    page.wait_for_function("() => document.querySelector('#point-summary').innerText.includes('α = 0.1')"
                           " || document.querySelector('#point-summary').innerText.includes('α = 0.2')")
    page.wait_for_function("() => document.querySelector('#point-summary').innerText.includes('Refined')")
    second = current_text(page)
    assert second != first and "pgd-3 Linf eps=4/255" in second and "n = 32" in second


def test_sweep_draws_the_curve(page) -> None:
    alphas = page.get_by_label("α values (start:stop:count or a list)")
    alphas.fill("0,0.5,1")
    page.locator("#sweep-btn").click()
    page.wait_for_function("() => document.querySelector('#sweep-status').innerText.includes('Sweep 4/4')")
    names = [t["name"] for t in plot_traces(page, "frontier-plot")]
    assert {AA_TRACE, "task_arithmetic · pgd-3 (faded)"} <= set(names)   # the AutoAttack curve leads
    assert {"pretrained (all λ = 0)", "natural endpoint (α = 0)", "robust endpoint (α = 1)"} <= set(names)
    curve = next(t for t in plot_traces(page, "frontier-plot") if t["name"] == "task_arithmetic · pgd-3 (faded)")
    assert len(curve["x"]) >= 3
    assert page.locator("#points-table").inner_text().count("pgd-3 Linf eps=4/255") >= 4
    assert_table_accuracies(page, columns_inside=5)
    assert_plot_text_inside(page, "frontier-plot", "autoattack-fast Linf eps=4/255,")


def test_upload_shows_both_predictions(page, tmp_path) -> None:
    from explorer.data import get_task

    x, _ = get_task("shapes").load("test", 1, 3)
    png = tmp_path / "upload.png"
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(png)
    page.get_by_role("tab", name="Inspect").click()
    page.locator("#inspect-image input[type=file]").set_input_files(str(png))
    page.wait_for_timeout(500)
    page.locator("#inspect-btn").click()
    page.wait_for_function("() => document.querySelector('#inspect-summary').innerText.includes('Attack')")
    for i in range(3):
        page.wait_for_selector(f"#bars-{i} .js-plotly-plot")
        traces = plot_traces(page, f"bars-{i}")
        assert [t["name"].split(" ")[0] for t in traces] == ["clean", "adversarial"]
    # The trade-off image by image: a filmstrip over 6 alphas and the 3x3 transfer view.
    page.wait_for_selector("#filmstrip-plot .js-plotly-plot")
    film = page.evaluate("() => document.querySelector('#filmstrip-plot .js-plotly-plot').data.map(t => t.type)")
    assert film == ["image"] * 6
    notes = page.locator("#filmstrip-plot").inner_text()
    assert "α=0.00" in notes and "α=1.00" in notes and ("fooled" in notes or "held" in notes)
    page.wait_for_selector("#transfer-plot .js-plotly-plot")
    z = page.evaluate("() => document.querySelector('#transfer-plot .js-plotly-plot').data[0].z")
    assert len(z) == 3 and all(len(r) == 3 and set(r) <= {0, 1} for r in z)
    crafted = page.evaluate("() => document.querySelector('#transfer-images .js-plotly-plot').data.length")
    assert crafted == 3
    # Every title fits its plot and names the attack, at 1440 px and on a phone (390 px).
    for width in (1440, 390):
        page.set_viewport_size({"width": width, "height": 1000})
        for elem in ("bars-0", "bars-1", "bars-2", "filmstrip-plot", "transfer-images", "transfer-plot"):
            assert_plot_text_inside(page, elem, "pgd-10 Linf eps=4/255")
    page.set_viewport_size({"width": 1440, "height": 1000})


def test_phone_width_shows_accuracies_with_their_setting(page) -> None:
    """At 390 px the frontier's texts stay inside the plot and the table shows α and both
    accuracies with their intervals without scrolling."""
    page.get_by_role("tab", name="Frontier").click()
    page.set_viewport_size({"width": 390, "height": 900})
    try:
        assert_plot_text_inside(page, "frontier-plot", "autoattack-fast Linf eps=4/255,")
        assert_table_accuracies(page, columns_inside=3)
    finally:
        page.set_viewport_size({"width": 1440, "height": 1000})


def test_models_tab_shows_statistics_when_opened(page) -> None:
    page.get_by_role("tab", name="Models").click()
    page.wait_for_function("() => document.querySelector('#norms-table').innerText.includes('robust2')")
    page.wait_for_selector("#cosine-plot .js-plotly-plot")
    z = page.evaluate("() => document.querySelector('#cosine-plot .js-plotly-plot').data[0].z")
    assert len(z) == 3 and abs(z[0][0] - 1) < 1e-4          # natural, robust, robust2
    page.wait_for_selector("#layers-plot .js-plotly-plot")
    page.get_by_role("tab", name="Frontier").click()


def test_dark_theme_keeps_the_endpoints_distinct(page) -> None:
    page.locator("#theme-radio").get_by_label("dark").check()
    page.wait_for_function("() => document.body.classList.contains('dark')")
    page.wait_for_function("() => { const gd = document.querySelector('#frontier-plot .js-plotly-plot');"
                           " return gd && gd._fullLayout.paper_bgcolor !== '#fff' && gd._fullLayout.paper_bgcolor !== 'white'; }")
    ends = page.evaluate("""() => document.querySelector('#frontier-plot .js-plotly-plot').data
        .filter(t => (t.name || '').includes('endpoint') || (t.name || '').startsWith('pretrained'))
        .map(t => [t.marker.symbol, t.marker.color])""")
    assert len(ends) == 3 and len({s for s, _ in ends}) == 3 and len({c for _, c in ends}) == 3
    page.locator("#theme-radio").get_by_label("light").check()
