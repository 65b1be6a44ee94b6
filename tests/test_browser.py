"""The app in a real browser: `streamlit run app.py` headless, driven by Playwright + Debian's chromium.

The demo click, the first map, a reload while the job runs, the keep-ratio slider, the
selection CSV download, a box selection on the Explore map and its gallery. Screenshots go to
tests/artifacts/ (and, with PRUNE4REL_SCREENSHOTS=DIR, to DIR for the README).
"""

import csv
import io
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from browser_kit import CHROMIUM, FIRST_PLOT_TITLE_JS, ROOT
from browser_kit import app_server as start_app_server
from browser_kit import browser_page as open_browser_page

ARTIFACTS = ROOT / "tests" / "artifacts"
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    workspace = tmp_path_factory.mktemp("workspace")
    with start_app_server(workspace, ARTIFACTS / "streamlit.log") as url:
        yield url, workspace


@pytest.fixture(scope="module")
def browser_page(app_server):
    with sync_api.sync_playwright() as p, open_browser_page(p) as page:
        yield page


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)
    extra = os.environ.get("PRUNE4REL_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(extra) / f"{name}.png"), full_page=False)


def jobs(workspace: Path, kind: str) -> list[tuple]:
    with sqlite3.connect(workspace / "index.sqlite") as con:
        return con.execute("SELECT id, state, progress FROM jobs WHERE kind = ?", (kind,)).fetchall()


def wait_for_app_idle(page) -> None:
    """Streamlit shows a 'running' status widget while a script run is in flight."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


@pytest.fixture
def screenshot_on_failure(browser_page, request):
    yield
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        shot(browser_page, "failure")


def test_demo_flow_in_a_real_browser(app_server, browser_page, screenshot_on_failure):
    url, workspace = app_server
    page = browser_page
    timings = {}

    page.goto(url)
    page.get_by_role("button", name="Run the demo").click()
    started = time.time()

    # Reload while the demo job runs: the job goes on and is not started twice.
    page.wait_for_timeout(1500)
    assert [j[1] for j in jobs(workspace, "demo")] in (["running"], ["queued"]), jobs(workspace, "demo")
    page.reload()
    page.wait_for_timeout(1500)
    after = jobs(workspace, "demo")
    assert len(after) == 1 and after[0][1] in ("running", "queued", "done"), after

    # The first map (PCA at once, UMAP later) appears on the home page.
    page.locator(".js-plotly-plot").first.wait_for(state="visible", timeout=180_000)
    timings["first_map_seconds"] = round(time.time() - started, 1)
    deadline = time.time() + 300
    while jobs(workspace, "demo")[0][1] not in ("done", "failed") and time.time() < deadline:
        time.sleep(1)
    assert jobs(workspace, "demo")[0][1] == "done", jobs(workspace, "demo")
    assert len(jobs(workspace, "demo")) == 1
    # UMAP (its own job) replaces the PCA map on the same page when it is ready.
    page.wait_for_function(f"() => ({FIRST_PLOT_TITLE_JS})().startsWith('UMAP map')", timeout=300_000)
    timings["umap_map_seconds"] = round(time.time() - started, 1)
    shot(page, "home")

    # Select: move the keep-ratio slider; the label and the kept count follow.
    page.goto(f"{url}/select")
    slider = page.get_by_role("slider").first
    slider.wait_for(state="visible")
    before = slider.get_attribute("aria-valuetext") or slider.get_attribute("aria-valuenow")
    slider.focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    wait_for_app_idle(page)
    after_value = slider.get_attribute("aria-valuetext") or slider.get_attribute("aria-valuenow")
    assert after_value != before, (before, after_value)
    match = re.search(r"keep (\d+(?:\.\d+)?)%", page.locator("body").inner_text())
    assert match, "keep X% (prune Y%) label missing"
    keep_pct = float(match.group(1))
    page.get_by_text(f"keep {match.group(1)}% (prune").first.wait_for()
    shot(page, "select")

    # Download the selection CSV: one row per training example, the kept ones marked.
    text = None
    for _ in range(3):  # a rerun can replace the file URL mid-click; the retry gets the new one
        wait_for_app_idle(page)
        try:
            with page.expect_download() as download:
                page.get_by_role("button", name="Download selection CSV").click()
            text = Path(download.value.path()).read_text()
            break
        except sync_api.Error:
            page.wait_for_timeout(1000)
    assert text is not None, "the selection CSV download failed three times"
    rows = list(csv.DictReader(io.StringIO(text)))
    n = 1437  # digits training split
    assert len(rows) == n
    kept = sum(r["selected"] == "1" for r in rows)
    assert kept == max(1, round(keep_pct / 100 * n)), (kept, keep_pct)

    # Explore: a box selection on the map opens a gallery of exactly those points.
    page.goto(f"{url}/explore")
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for(state="visible")
    wait_for_app_idle(page)
    plot.hover()
    page.locator('.modebar-btn[data-val="select"]').first.click()
    area = plot.locator(".nsewdrag").first.bounding_box()
    x0, y0 = area["x"] + area["width"] * 0.35, area["y"] + area["height"] * 0.35
    x1, y1 = area["x"] + area["width"] * 0.65, area["y"] + area["height"] * 0.65
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    heading = page.get_by_text(re.compile(r"^[\d,]+ selected examples?$"))
    heading.wait_for(timeout=60_000)
    count = int(heading.inner_text().split()[0].replace(",", ""))
    assert count > 0
    # The points plotly reports as selected (global index in customdata) are the gallery's.
    selected = page.evaluate(
        """() => { const gd = document.querySelector('.js-plotly-plot');
                   const out = [];
                   gd._fullData.forEach(t => (t.selectedpoints || []).forEach(i => out.push(t.customdata[i][0])));
                   return out; }""")
    page.locator('[data-testid="stImageCaption"]').first.wait_for()
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    shown = sorted(int(re.match(r"\s*#(\d+)", c).group(1)) for c in captions)
    assert len(shown) == min(count, 60)
    if selected:  # plotly keeps the selection on the trace after the rerun
        assert len(selected) == count
        assert set(shown) <= {int(i) for i in selected}
    shot(page, "explore")

    for path, name in (("sweep", "sweep"), ("label-errors", "label_errors")):
        page.goto(f"{url}/{path}")
        page.locator("h1").first.wait_for()
        wait_for_app_idle(page)
        shot(page, name)

    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(timings, indent=2))
    assert timings["first_map_seconds"] < 120
