"""Screenshots of each tab of a running app, as a first-time visitor sees them.

Usage: ``python -m explorer.ui.screenshots URL OUT_DIR IMAGE [WIDTH HEIGHT]`` (headless system
Chromium via Playwright) -> OUT_DIR/{frontier,inspect,models}.png, e.g. into assets/screenshots:
the first view once the AutoAttack curve's first round is in (no click), then α typed into its box; an inspection
of IMAGE with its filmstrip and transfer view; the Models tab as opened.
"""
from __future__ import annotations

import sys
import time

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ALPHA_BOX = "number input for α: trade-off (0 = natural, 1 = robust)"


def main(url: str, out: str, image: str, width: str = "1280", height: str = "720") -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        pg = b.new_page(viewport={"width": int(width), "height": int(height)})
        pg.set_default_timeout(900_000)
        pg.goto(url)
        pg.wait_for_selector("#frontier-plot .js-plotly-plot")
        # The first view: wait until the AutoAttack curve's first round is in (it then leads and the
        # pgd-10 preview curve is drawn faded behind it; its later rounds keep growing).
        pg.wait_for_function("() => document.querySelector('#sweep-status').innerText.includes('(faded)')")
        box = pg.get_by_label(ALPHA_BOX)
        box.fill("0.75")
        box.press("Enter")
        pg.wait_for_function("() => document.querySelector('#point-summary').innerText.includes('α = 0.75')")
        time.sleep(1.5)
        pg.screenshot(path=f"{out}/frontier.png", full_page=True)
        pg.get_by_role("tab", name="Inspect").click()
        pg.locator("#inspect-image input[type=file]").set_input_files(image)
        time.sleep(1)
        pg.locator("#inspect-btn").click()
        pg.wait_for_selector("#transfer-plot .js-plotly-plot")
        time.sleep(1.5)
        pg.screenshot(path=f"{out}/inspect.png", full_page=True)
        pg.get_by_role("tab", name="Models").click()
        pg.wait_for_selector("#layers-plot .js-plotly-plot")
        time.sleep(1.5)
        pg.screenshot(path=f"{out}/models.png", full_page=True)
        b.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
