"""The page stays usable while the first view's AutoAttack curve grows (headless Chromium).

A slider move during the background sweep gets its preview and its refined point while the
AutoAttack points are still partial: the first view's stream (hours on a CPU for n=256) holds no
engine lock and no queue slot, and the engine lock is handed over first come, first served.
Skipped like ``test_browser.py`` without playwright or Chromium.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_browser import ARGS, CHROMIUM, TIMEOUT_MS, _free_port, slow_anytime, summary_has, sync_api  # noqa: F401


@pytest.fixture(scope="module")
def page(tiny_zoo: Path, tmp_path_factory):
    from explorer.ui import CSS_PATH, build_demo

    store = tmp_path_factory.mktemp("browser_anytime") / "results.sqlite"
    demo = build_demo(str(tiny_zoo), device="cpu", store_path=str(store))
    slow_anytime(demo.explorer_service, pause=2.0)   # about 25 s of AutoAttack rounds
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True,
                css_paths=[CSS_PATH])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(demo.local_url)
        yield pg
        browser.close()
    demo.close()


STATUS = "() => { const e = document.querySelector('#sweep-status'); return e ? e.innerText : ''; }"


def test_a_slider_move_is_answered_while_the_autoattack_curve_grows(page) -> None:
    page.wait_for_function(f"() => ({STATUS})().includes('under autoattack-fast Linf eps=4/255 (the reported tier)')")
    box = page.get_by_label("number input for α: trade-off (0 = natural, 1 = robust)")
    box.fill("0.35")
    t0 = time.monotonic()
    box.press("Enter")
    summary_has(page, "Refined")
    waited = time.monotonic() - t0
    assert "α = 0.35" in page.locator("#point-summary").inner_text() and waited < 15, waited
    # The AutoAttack curve went on growing meanwhile: the first view's status line says so again.
    page.wait_for_function(f"() => ({STATUS})().includes('in the background')")
    page.wait_for_function(f"() => ({STATUS})().includes('autoattack-fast on 16')")
