"""Screenshots of each tab of a running app, after a sweep, an inspection and the statistics.

Usage: ``python -m explorer.ui.screenshots URL OUT_DIR IMAGE [ALPHAS]`` (headless system Chromium
via Playwright) -> OUT_DIR/{frontier,inspect,models}.png, e.g. into assets/screenshots.
"""
from __future__ import annotations

import sys
import time

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(url: str, out: str, image: str, alphas: str = "0:1:6") -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        pg = b.new_page(viewport={"width": 1440, "height": 1100})
        pg.set_default_timeout(300_000)
        pg.goto(url)
        pg.wait_for_selector("#frontier-plot .js-plotly-plot")
        pg.get_by_label("α values (start:stop:count or a list)").fill(alphas)
        pg.get_by_label("stability", exact=True).check()
        keep = pg.locator("#keep-slider input[type=number]")
        keep.fill("0.2")
        keep.press("Enter")
        pg.locator("#sweep-btn").click()
        pg.wait_for_function("() => document.querySelector('#sweep-status').innerText"
                             ".match(/Sweep (\\d+)\\/\\1 /)")
        box = pg.locator("#alpha-slider input[type=range]").bounding_box()
        pg.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + box["height"] / 2)
        pg.wait_for_function("() => { const t = document.querySelector('#point-summary').innerText;"
                             " return t.includes('Refined') && t.includes('α = 0.30'); }")
        time.sleep(1)
        pg.screenshot(path=f"{out}/frontier.png", full_page=True)
        pg.get_by_role("tab", name="Inspect").click()
        pg.locator("#inspect-image input[type=file]").set_input_files(image)
        time.sleep(1)
        pg.locator("#inspect-btn").click()
        pg.wait_for_function("() => document.querySelector('#inspect-summary').innerText.includes('Attack')")
        time.sleep(1.5)
        pg.screenshot(path=f"{out}/inspect.png", full_page=True)
        pg.get_by_role("tab", name="Models").click()
        pg.locator("#stats-btn").click()
        pg.wait_for_selector("text=Cosine similarity of task vectors")
        time.sleep(1.5)
        pg.screenshot(path=f"{out}/models.png", full_page=True)
        b.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
