"""The HTML report and the compare page rendered in a real headless Chromium (Debian's ``chromium``).

Checks what only a browser can tell: the page loads without console errors, page errors or failed
requests, asks for nothing but itself, decodes every embedded plot, lays the findings out above the loss
plots, shows a hostile run name as text without running it, and paints something that is not blank.
``make test`` installs the browser (``make browser``); without it, or without playwright, the module is skipped.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is not installed (`make browser` installs Debian's chromium)", allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("playwright is not importable (it is in the dev extra of pyproject.toml)", allow_module_level=True)

from test_report import EVIL_NAME, make_run  # noqa: E402
from yololab.diagnostics.report import compare_runs, write_report  # noqa: E402

# Chromium flags: no sandbox (CI runs as root), no GPU, and nothing that talks to the network on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1280, "height": 900}
LOAD_TIMEOUT_MS = 30_000  # the machine may be busy; a report page loads in well under a second when idle
# A screenshot is "blank" below this standard deviation of its grey levels (0..255); an empty page gives 0.
MIN_PIXEL_STD = 10.0
PLOT_SECTIONS = ("losses", "statistics", "schedule", "histograms", "map")
DATA_PNG = "data:image/png;base64,"
# Each <img> as the browser decoded it and laid it out (x, y, width, height in page pixels).
IMAGES_JS = """() => Array.from(document.images).map(img => {
  const box = img.getBoundingClientRect();
  return {section: img.closest('section') ? img.closest('section').id : null, complete: img.complete,
          naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
          x: box.left + window.scrollX, y: box.top + window.scrollY, width: box.width, height: box.height};
})"""


class ImgTags(HTMLParser):
    """The ``src`` of every <img> tag, read from the HTML text without a browser."""

    def __init__(self, text: str):
        super().__init__()
        self.srcs: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@dataclass
class Rendered:
    """What the browser reported while loading one page, and what it shows once loaded."""

    uri: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    title: str = ""
    h1: str = ""
    images: list[dict] = field(default_factory=list)
    boxes: dict[str, dict | None] = field(default_factory=dict)  # CSS selector -> bounding box (px)
    screenshot: np.ndarray | None = None  # [H, W] grey levels of the whole page, float64


def render(browser, path: Path, selectors: tuple[str, ...] = ()) -> Rendered:
    """Open ``path`` as a file:// URI in a fresh page, record every event, measure the page, screenshot it."""
    out = Rendered(uri=path.resolve().as_uri())
    page = browser.new_page(viewport=VIEWPORT)
    page.on("console", lambda msg: out.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: out.page_errors.append(str(err)))
    page.on("requestfailed", lambda req: out.failed_requests.append(f"{req.url}: {req.failure}"))
    page.on("request", lambda req: out.requests.append(req.url))

    def on_dialog(dialog):
        out.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        page.goto(out.uri, wait_until="load", timeout=LOAD_TIMEOUT_MS)
        out.title = page.title()
        out.h1 = page.inner_text("h1") if page.query_selector("h1") else ""
        out.images = page.evaluate(IMAGES_JS)
        out.boxes = {sel: (page.locator(sel).first.bounding_box() if page.locator(sel).count() else None)
                     for sel in selectors}
        png = page.screenshot(full_page=True, timeout=LOAD_TIMEOUT_MS)
        with Image.open(io.BytesIO(png)) as image:
            out.screenshot = np.asarray(image.convert("L"), dtype=np.float64)
    finally:
        page.close()
    return out


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory, browser):
    """The single-run report (run named EVIL_NAME) and a two-run compare page, each with its rendering."""
    root = tmp_path_factory.mktemp("browser_runs")
    evil = make_run(root, EVIL_NAME)
    other = make_run(root, "beta", findings=False, scale_offset=1.0)
    report = write_report(evil)
    compare = compare_runs([evil, other], root / "compare.html")
    selectors = ("#findings table", "#losses img")
    return {"report": (report, render(browser, report, selectors)),
            "compare": (compare, render(browser, compare, selectors))}


@pytest.mark.parametrize("kind", ["report", "compare"])
def test_page_loads_clean_and_self_contained(pages, kind):
    shown = pages[kind][1]
    assert shown.console_errors == []
    assert shown.page_errors == []
    assert shown.failed_requests == []
    assert shown.dialogs == []
    # only the page itself is fetched: plots are data: URIs, there is no stylesheet, font or script to load
    assert [url for url in shown.requests if not url.startswith("data:")] == [shown.uri]


@pytest.mark.parametrize("kind", ["report", "compare"])
def test_every_plot_is_decoded_and_laid_out(pages, kind):
    path, shown = pages[kind]
    srcs = ImgTags(path.read_text(encoding="utf-8")).srcs
    assert len(shown.images) == len(srcs) >= len(PLOT_SECTIONS)
    assert {img["section"] for img in shown.images} >= set(PLOT_SECTIONS)
    for img, src in zip(shown.images, srcs, strict=True):
        assert img["complete"] is True
        assert img["naturalWidth"] > 0 and img["width"] > 0 and img["height"] > 0
        # the browser decoded the same PNG that the file embeds: compare with PIL's reading of its bytes
        assert src.startswith(DATA_PNG)
        with Image.open(io.BytesIO(base64.b64decode(src[len(DATA_PNG):]))) as png:
            assert (img["naturalWidth"], img["naturalHeight"]) == png.size


@pytest.mark.parametrize("kind", ["report", "compare"])
def test_findings_are_above_the_loss_plots(pages, kind):
    shown = pages[kind][1]
    findings, losses = shown.boxes["#findings table"], shown.boxes["#losses img"]
    assert findings is not None and losses is not None
    assert findings["y"] + findings["height"] <= losses["y"]


def test_hostile_run_name_is_shown_as_text(pages):
    shown = pages["report"][1]
    assert shown.title == f"yololab report: {EVIL_NAME}"
    assert shown.h1 == f"yololab report: {EVIL_NAME}"
    assert EVIL_NAME in pages["compare"][1].title
    assert shown.dialogs == [] and pages["compare"][1].dialogs == []


@pytest.mark.parametrize("kind", ["report", "compare"])
def test_screenshot_is_not_blank(pages, kind):
    shown = pages[kind][1]
    grey = shown.screenshot
    assert grey.shape[1] == VIEWPORT["width"] and grey.shape[0] > VIEWPORT["height"]  # full page, taller than view
    assert grey.std() > MIN_PIXEL_STD
    for img in shown.images:  # each plot is painted where it is laid out, not left as an empty box
        top, left = round(img["y"]), round(img["x"])
        plot = grey[top:top + round(img["height"]), left:left + round(img["width"])]
        assert plot.size > 0 and plot.std() > MIN_PIXEL_STD, img["section"]


def test_probes_catch_a_broken_page(browser, tmp_path):
    """The same probes on a page that breaks every rule: each problem is caught, and a blank page reads blank."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body><h1>bad</h1>'
                   '<img src="missing.png"><img src="http://127.0.0.1:9/x.png">'
                   "<script>alert('x'); console.error('boom'); throw new Error('thrown');</script></body></html>")
    shown = render(browser, bad)
    assert any("boom" in text for text in shown.console_errors)
    assert any("thrown" in text for text in shown.page_errors)
    assert shown.dialogs == ["alert: x"]
    assert {url.split(":", 1)[0] for url in shown.failed_requests} >= {"file", "http"}
    assert len(shown.requests) == 3  # the page and its two images
    assert [img["complete"] and img["naturalWidth"] > 0 for img in shown.images] == [False, False]
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert render(browser, blank).screenshot.std() < MIN_PIXEL_STD
