"""`report.html`: one self-contained page, checked as text and in a real headless browser.

The browser test drives Debian's chromium through its own chromedriver
(`apt-get install chromium chromium-driver`; selenium from the dev extra) and is skipped,
with the reason, on a machine without them: nothing is downloaded.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest

from revbench.cli import main
from revbench.measurement import Counts, Measurement
from revbench.models import get_info
from revbench.records import Record
from revbench.report_html import inline
from revbench.store import RunStore
from revbench.suite import make_cell

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

# Memory per sample of each configuration, exactly linear in the batch (fixed 200 MB).
PER_SAMPLE = {
    ("revbifpn_s4", "reversible"): 50e6,
    ("revbifpn_s5", "reversible"): 80e6,
    ("tf_efficientnet_b4", "vanilla"): 600e6,
    ("tf_efficientnet_b5", "vanilla"): 1.3e9,
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("html")
    store = RunStore.create(root / "results", "imagenet-train-mem")
    store.write_manifest({"suite": "imagenet-train-mem", "method": "estimate", "cells": 12})
    for (model, mode), per_sample in PER_SAMPLE.items():
        info = get_info(model)
        counts = Counts(
            params=info.published_params, macs=info.published_macs, macs_thop=info.published_macs
        )
        for batch in (2, 4, 8):
            cell = make_cell(
                model,
                resolution=info.native_resolution,
                batch_size=batch,
                mode=mode,
                suite="imagenet-train-mem",
            )
            peak = int(200e6 + per_sample * batch)
            breakdown = dict(mem_parameters_bytes=int(200e6), mem_activations_bytes=peak - 200e6)
            measurement = Measurement(peak_bytes=peak, **breakdown)
            store.append(Record.for_cell(cell, counts=counts, measurement=measurement))
    out = root / "report"
    assert main(["plot", str(store.dir), "--out", str(out), "--format", "png"]) == 0
    return out / "report.html"


def test_html_is_self_contained_with_every_figure_inline(report):
    text = report.read_text(encoding="utf-8")
    # Nothing fetched: no external script, style, image or font.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "<link" not in text and "@import" not in text and "<img" not in text
    written = sorted(p.stem for p in (report.parent / "imagenet-train-mem").glob("*.png"))
    assert written and "headline" in written
    figures = re.findall(r'<figure id="fig-imagenet-train-mem-([\w-]+)">\s*<svg', text)
    assert sorted(f.replace("-", "_") for f in figures) == sorted(
        w.replace("-", "_") for w in written
    )
    assert text.count('<table class="sortable">') >= 3
    assert "<?xml" not in text and "<!DOCTYPE svg" not in text  # inlined, not pasted files


def test_inline_markdown_is_escaped_before_it_becomes_tags():
    assert inline("a <b> & `x<y>` *em* **st** [t](f.png)") == (
        "a &lt;b&gt; &amp; <code>x&lt;y&gt;</code> <em>em</em> <strong>st</strong> "
        '<a href="f.png">t</a>'
    )
    assert inline("3 * 4 * 5") == "3 * 4 * 5"  # spaced asterisks are not emphasis


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium and chromedriver on this machine "
    "(Debian: apt-get install chromium chromium-driver)",
)
def test_html_report_in_a_headless_browser(report):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra)")
    from PIL import Image
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.add_argument("--disable-dev-shm-usage")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(report.resolve().as_uri())
        assert driver.title == "revbench report"
        svgs = driver.find_elements(By.CSS_SELECTOR, "figure svg")
        assert len(svgs) >= 3
        for svg in svgs:  # every figure laid out at a readable size
            driver.execute_script("arguments[0].scrollIntoView();", svg)
            assert svg.is_displayed()
            assert svg.size["width"] > 300 and svg.size["height"] > 150
        # The sorting script runs: a click on a numeric header orders the rows by it.
        table = driver.find_element(
            By.CSS_SELECTOR, "h3#memory-per-sample-vs-published ~ div table"
        )
        heads = table.find_elements(By.CSS_SELECTOR, "thead th")
        col = next(i for i, h in enumerate(heads) if h.text.endswith("MB/sample"))
        driver.execute_script("arguments[0].scrollIntoView();", heads[col])
        heads[col].click()

        def column():
            cells = table.find_elements(By.CSS_SELECTOR, f"tbody td:nth-child({col + 1})")
            return [float(c.text) for c in cells]

        assert column() == sorted(column()) and len(column()) == len(PER_SAMPLE)
        heads[col].click()
        assert column() == sorted(column(), reverse=True)
        driver.execute_script("window.scrollTo(0, 0);")
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        # Every column of every table shows in a wide and in a narrow window: tables wrap
        # their cells rather than run past the box (where a scrollbar would hide columns).
        for width in (1400, 800):
            driver.set_window_size(width, 1000)
            overflow = driver.execute_script(
                "return Array.from(document.querySelectorAll('div.scroll'))"
                ".filter(b => b.scrollWidth > b.clientWidth + 1)"
                ".map(b => b.querySelector('th').textContent)"
            )
            assert overflow == [], f"tables wider than a {width} px window: {overflow}"
    finally:
        driver.quit()
    assert errors == []
    # Not blank: a good share of the page is ink, in more than two shades.
    histogram = shot.histogram()
    ink = sum(histogram[:200]) / sum(histogram)
    assert ink > 0.01 and sum(1 for n in histogram if n) > 10
