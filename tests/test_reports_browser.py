"""The reports in a real browser: headless Chromium (the operating system's, driven by Playwright) opens each
page with every network request recorded, no console error may appear, a screenshot is taken into the test's
output folder, and the key figures shown must equal the run's Parquet tables.

Needs the Python package ``playwright`` and a Chromium binary (Debian package ``chromium``:
``/usr/bin/chromium``, or the path in ``GPURISK_CHROMIUM``); each missing piece is a skip that names it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("jinja2", reason="the reports extra (jinja2) is not installed")
pytest.importorskip("matplotlib", reason="the reports extra (matplotlib) is not installed")

from test_reports import make_margin_run, make_stress_run  # noqa: E402

from gpurisk.reports import write_report  # noqa: E402

#: Chromium flags: headless in a container, nothing contacted in the background
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    for cand in (os.environ.get("GPURISK_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    pytest.skip("no Chromium binary: install the Debian package chromium (apt-get install -y chromium) "
                "or set GPURISK_CHROMIUM")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the Python package playwright is not installed (pip install playwright)")
    exe = _chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=exe, headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": 1366, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()


def open_page(ctx, html: Path, shot: Path):
    """Open ``html``; return (page, console errors, requests other than the page itself). Screenshot to ``shot``."""
    page = ctx.new_page()
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    url = html.resolve().as_uri()
    page.on("request", lambda r: requests.append(r.url) if r.url != url else None)
    page.goto(url)
    page.wait_for_load_state("load")
    page.screenshot(path=str(shot), full_page=True)
    return page, errors, requests


def _value(page, key: str) -> float:
    return float(page.locator(f'[data-key="{key}"]').get_attribute("data-value"))


def test_stress_report_in_chromium(browser, tmp_path):
    run = make_stress_run(tmp_path / "run", tmp_path)
    html = write_report(run, tmp_path / "stress.html")
    page, errors, requests = open_page(browser, html, tmp_path / "stress.png")
    assert errors == [] and requests == []
    assert (tmp_path / "stress.png").stat().st_size > 10_000
    s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    cov = pd.read_parquet(run / "cover.parquet")
    assert _value(page, "cover2_usd") == float(cov["cover2_usd"].max()) == s["cover2"]["usd"]
    assert _value(page, "cover1_usd") == float(cov["cover1_usd"].max())
    shown = page.locator('[data-key="cover2_usd"]').inner_text().replace(",", "")
    assert float(shown) == pytest.approx(float(cov["cover2_usd"].max()), abs=0.5)
    # the per-scenario table holds every scenario; its first row is the worst Cover-2
    rows = page.locator("#cover-table tbody tr")
    assert rows.count() == len(cov)
    first = float(rows.nth(0).locator('td[data-col="cover2_usd"]').get_attribute("data-value"))
    assert first == float(cov["cover2_usd"].max())
    # pages of 25 rows on screen; a click on a header sorts
    assert page.locator("#cover-table tbody tr:visible").count() == min(25, len(cov))
    page.locator('#cover-table th[data-col="cover2_usd"]').click()
    first = float(rows.nth(0).locator('td[data-col="cover2_usd"]').get_attribute("data-value"))
    assert first == float(cov["cover2_usd"].min())
    assert errors == [] and requests == []
    page.close()


def test_margin_report_in_chromium(browser, tmp_path):
    from conftest import TINY_AS_OF, tiny_tables
    from gpurisk.book import Book
    from gpurisk.validate import validate

    clean, _, _ = validate(tiny_tables(), TINY_AS_OF)
    book = Book.from_frames(TINY_AS_OF, **clean)
    make_margin_run(tmp_path / "runs", "20260101T000000Z-aaaaaaaa", book, scale=0.5)
    run = make_margin_run(tmp_path / "runs", "20260101T040000Z-bbbbbbbb", book)
    html = write_report(run, tmp_path / "margin.html")
    page, errors, requests = open_page(browser, html, tmp_path / "margin.png")
    assert errors == [] and requests == []
    assert (tmp_path / "margin.png").is_file()
    for label, venue in (("house", "ALL"), ("venue", "deribit"), ("venue", "okx")):
        m = pd.read_parquet(run / label / "margin.parquet")
        m = m[m["venue"].astype(str) == venue]
        assert _value(page, f"im_usd:{label}:{venue}") == pytest.approx(float(m["im_usd"].sum()), rel=1e-12)
    change = page.locator("#change-table tbody tr").first
    assert float(change.locator('td[data-col="change_pct"]').get_attribute("data-value")) == pytest.approx(100.0)
    page.close()


def test_printing_shows_every_row(browser, tmp_path):
    run = make_stress_run(tmp_path / "run", tmp_path)
    html = write_report(run, tmp_path / "stress.html")
    page, errors, requests = open_page(browser, html, tmp_path / "screen.png")
    page.emulate_media(media="print")
    n = len(pd.read_parquet(run / "cover.parquet"))
    assert page.locator("#cover-table tbody tr:visible").count() == n
    pdf = page.pdf(path=str(tmp_path / "stress.pdf"))
    assert pdf[:4] == b"%PDF" and errors == [] and requests == []
    page.close()
