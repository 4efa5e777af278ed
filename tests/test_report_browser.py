"""The HTML report and the compare page rendered in a real headless Chromium (Debian's ``chromium``).

Checks what only a browser can tell: the page loads without console errors, page errors or failed
requests, asks for nothing but itself, decodes every embedded plot, lays the findings out above the loss
plots, shows a hostile run name as text without running it, and paints something that is not blank. And what a
reader needs of the plots: every plot has a legend whose entries show a swatch and a name, the colours of a
legend differ and each is painted in its plot; compare collapses the findings per run so that the first curve is
on the first screen, and names each run's preset; the report draws both warm-ups (lr and the loss's).
``make test`` installs the browser (``make browser``); without it, or without playwright, the module is skipped.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
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
from yololab.diagnostics import plots  # noqa: E402
from yololab.diagnostics.report import compare_runs, write_report  # noqa: E402

# Chromium flags: no sandbox (CI runs as root), no GPU, and nothing that talks to the network on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1280, "height": 900}
LOAD_TIMEOUT_MS = 30_000  # the machine may be busy; a report page loads in well under a second when idle
# A screenshot is "blank" below this standard deviation of its grey levels (0..255); an empty page gives 0.
MIN_PIXEL_STD = 10.0
# A legend colour is "painted" in its plot when at least MIN_KEY_PIXELS screenshot pixels of the plot are within
# KEY_TOLERANCE (per RGB channel, 0..255) of it: the browser scales the PNG, which blends the edges of a line.
MIN_KEY_PIXELS = 20
KEY_TOLERANCE = 24
PRESETS = {"report": ["darknet"], "compare": ["darknet", "keras-yolo3"]}  # of the runs in the pages fixture
FINDINGS_REPEAT = 3  # the first run has its findings three times over: spelled out, they fill more than a screen
SET_APART = 0.8  # the second run's statistics, mAPs, shares and lr, relative to the first run's
WARMUP_KEYS = ("lr per step", "anchor-prior warm-up: share of batches")
PLOT_SECTIONS = ("losses", "statistics", "schedule", "histograms", "map")
DATA_PNG = "data:image/png;base64,"
# Each <img> as the browser decoded it and laid it out (x, y, width, height in page pixels).
IMAGES_JS = """() => Array.from(document.images).map(img => {
  const box = img.getBoundingClientRect();
  return {section: img.closest('section') ? img.closest('section').id : null, complete: img.complete,
          naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
          x: box.left + window.scrollX, y: box.top + window.scrollY, width: box.width, height: box.height};
})"""
# Each plot's legend as shown: per <figure>, its section and the entries (text, "style" entries that explain a line
# style rather than a colour, the swatch's painted colour and size).
LEGENDS_JS = """() => Array.from(document.querySelectorAll('figure')).map(fig => ({
  section: fig.closest('section') ? fig.closest('section').id : null,
  keys: Array.from(fig.querySelectorAll('.legend .key')).map(key => {
    const svg = key.querySelector('svg'), line = key.querySelector('svg line'), dot = key.querySelector('svg circle');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    const paint = line ? getComputedStyle(line).stroke : dot ? getComputedStyle(dot).fill : null;
    return {text: key.innerText.trim(), style_only: key.classList.contains('style'), paint: paint,
            width: box.width, height: box.height};
  })}))"""
# The <details> of the findings section (open or not, summary text) and the header cells of the runs table.
FINDINGS_JS = """() => Array.from(document.querySelectorAll('#findings details')).map(d => ({
  open: d.open, summary: d.querySelector('summary').innerText.trim()}))"""
RUNS_TABLE_JS = """() => Array.from(document.querySelectorAll('#final table tr')).map(
  tr => Array.from(tr.children).map(cell => cell.innerText.trim()))"""


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
    legends: list[dict] = field(default_factory=list)  # LEGENDS_JS
    findings: list[dict] = field(default_factory=list)  # FINDINGS_JS
    runs_table: list[list[str]] = field(default_factory=list)  # RUNS_TABLE_JS: header row first
    screenshot: np.ndarray | None = None  # [H, W] grey levels of the whole page, float64
    colours: np.ndarray | None = None  # [H, W, 3] RGB of the whole page, uint8


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
        out.legends = page.evaluate(LEGENDS_JS)
        out.findings = page.evaluate(FINDINGS_JS)
        out.runs_table = page.evaluate(RUNS_TABLE_JS)
        out.boxes = {sel: (page.locator(sel).first.bounding_box() if page.locator(sel).count() else None)
                     for sel in selectors}
        png = page.screenshot(full_page=True, timeout=LOAD_TIMEOUT_MS)
        with Image.open(io.BytesIO(png)) as image:
            out.screenshot = np.asarray(image.convert("L"), dtype=np.float64)
            out.colours = np.asarray(image.convert("RGB"))
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
    findings = json.loads((evil / "findings.json").read_text())
    (evil / "findings.json").write_text(json.dumps(findings * FINDINGS_REPEAT))
    other = make_run(root, "beta", scale_offset=1.0, preset="keras-yolo3", settings={"loss": {"warmup_batches": 8}})
    _set_apart(other)
    report = write_report(evil)
    compare = compare_runs([evil, other], root / "compare.html")
    selectors = ("#findings table", "#losses img")
    return {"report": (report, render(browser, report, selectors)),
            "compare": (compare, render(browser, compare, selectors))}


def _set_apart(run: Path) -> None:
    """Scale the run's statistics, mAPs, shares and lr by SET_APART and reverse its histograms, so that none of its
    curves lies exactly on the other run's (a line drawn over another hides that run's colour)."""
    def scaled(row: dict, prefixes: tuple[str, ...]) -> dict:
        return {k: v * SET_APART if isinstance(v, float) and k.startswith(prefixes) else v for k, v in row.items()}

    for name, prefixes in (("metrics.jsonl", ("stat/", "mAP", "grad_share/", "lr", "warmup")), ("lr.jsonl", ())):
        rows = [json.loads(line) for line in (run / name).read_text().splitlines()]
        if name == "lr.jsonl":
            rows = [{**row, "lr": [v * SET_APART for v in row["lr"]]} for row in rows]
        (run / name).write_text("".join(json.dumps(scaled(row, prefixes)) + "\n" for row in rows))
    hists = [json.loads(line) for line in (run / "histograms.jsonl").read_text().splitlines()]
    for row in hists:
        row["histograms"] = {k: {**h, "counts": h["counts"][::-1]} for k, h in row["histograms"].items()}
    (run / "histograms.jsonl").write_text("".join(json.dumps(row) + "\n" for row in hists))


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


# ------------------------------------------------------------------------- probes of what a reader needs


def _rgb(paint: str | None) -> tuple[int, ...] | None:
    """``rgb(31, 119, 180)`` (a computed style) as a tuple; None for none."""
    numbers = re.findall(r"\d+", paint or "")
    return tuple(int(n) for n in numbers[:3]) if len(numbers) >= 3 else None


def painted_pixels(shown: Rendered, section: str, colour: tuple[int, ...]) -> int:
    """Screenshot pixels of the section's plot within KEY_TOLERANCE of ``colour``."""
    (img,) = [img for img in shown.images if img["section"] == section]
    top, left = round(img["y"]), round(img["x"])
    crop = shown.colours[top:top + round(img["height"]), left:left + round(img["width"])].astype(int)
    return int(np.all(np.abs(crop - np.array(colour)) <= KEY_TOLERANCE, axis=-1).sum())


def legend_problems(shown: Rendered) -> list[str]:
    """What is wrong with the plots' legends: a plot without one, an entry without a visible swatch or name, two
    series of one plot in one colour, a legend colour not painted in its plot. [] when all is well."""
    problems = []
    legends = {legend["section"]: legend["keys"] for legend in shown.legends}
    for section in sorted({img["section"] for img in shown.images}):
        keys = legends.get(section, [])
        if len(keys) < 2:
            problems.append(f"{section}: {len(keys)} legend entries")
        for key in keys:
            if not key["text"] or key["width"] <= 0 or key["height"] <= 0 or _rgb(key["paint"]) is None:
                problems.append(f"{section}: entry {key['text']!r} has no visible swatch")
        colours = [_rgb(key["paint"]) for key in keys if not key["style_only"]]
        if len(set(colours)) != len(colours):
            problems.append(f"{section}: one colour for several series {colours}")
        for key in keys:
            colour = _rgb(key["paint"])
            if not key["style_only"] and colour and painted_pixels(shown, section, colour) < MIN_KEY_PIXELS:
                problems.append(f"{section}: the colour of {key['text']!r} {colour} is not painted in the plot")
    return problems


def findings_problems(shown: Rendered, n_runs: int) -> list[str]:
    """Compare's findings: one closed <details> per run, with its counts, and the first curve on the first screen."""
    problems = []
    if len(shown.findings) != n_runs:
        problems.append(f"{len(shown.findings)} findings blocks for {n_runs} runs")
    problems += [f"findings of {d['summary']!r} are open" for d in shown.findings if d["open"]]
    problems += [f"no counts in {d['summary']!r}" for d in shown.findings
                 if not re.search(r": (\d+ \w+(, )?)+$|: none$|: no findings\.json$", d["summary"])]
    first_curve = min(img["y"] for img in shown.images if img["section"] == "losses")
    if first_curve > VIEWPORT["height"]:
        problems.append(f"the first curve starts at {first_curve:.0f} px, below the first screen")
    return problems


@pytest.mark.parametrize("kind", ["report", "compare"])
def test_every_plot_has_a_legend_in_distinct_painted_colours(pages, kind):
    shown = pages[kind][1]
    assert legend_problems(shown) == []
    legends = {legend["section"]: [key["text"] for key in legend["keys"]] for legend in shown.legends}
    if kind == "report":
        assert legends["losses"] == ["train", "val"]
        assert legends["statistics"][:4] == ["iou train", "iou val", "iou_prior train", "iou_prior val"]
        assert legends["grad_shares"] == ["box", "obj", "noobj", "cls"]
        assert legends["sizes"] == ["small", "medium", "large", "3x2-5x4", "40x30-200x150"]  # COCO's, then the bins
    else:  # a colour per run, then the line styles
        assert legends["losses"] == [EVIL_NAME, "beta", "train", "val"]
        assert legends["map"][:2] == [EVIL_NAME, "beta"]


def test_report_draws_both_warmups(pages):
    shown = pages["report"][1]
    (keys,) = [legend["keys"] for legend in shown.legends if legend["section"] == "schedule"]
    drawn = {key["text"]: painted_pixels(shown, "schedule", _rgb(key["paint"])) for key in keys}
    for name in WARMUP_KEYS:
        assert drawn[name] >= MIN_KEY_PIXELS, name
    # the lr warm-up ramp: lr.jsonl's first step is a quarter of the peak, so the curve does not start at the top
    assert plots.lr_per_step([{"epoch": 0, "lr": [0.001, 0.004]}])[1][0] < 0.004


def test_compare_findings_are_collapsed_before_the_first_curve(pages):
    assert findings_problems(pages["compare"][1], n_runs=2) == []


@pytest.mark.parametrize("kind", ["compare"])
def test_compare_names_each_runs_preset(pages, kind):
    header, *rows = pages[kind][1].runs_table
    assert header[:3] == ["run", "preset", "settings that differ"]
    assert [row[1] for row in rows] == PRESETS[kind]
    assert rows[1][2] == "loss.warmup_batches=8"
    assert "val loss/total (not comparable)" in header  # darknet and keras-yolo3 sum their terms differently


def test_probes_catch_broken_legends_and_findings(browser, pages, tmp_path):
    """The legend and findings probes on the compare page broken three ways: each way is caught."""
    text = pages["compare"][0].read_text(encoding="utf-8")
    no_legend = tmp_path / "no_legend.html"  # the plots as before: the legend only inside the PNG, or nowhere
    no_legend.write_text(re.sub(r'<div class="legend">.*?</div>', "", text), encoding="utf-8")
    problems = legend_problems(render(browser, no_legend))
    assert "losses: 0 legend entries" in problems and "map: 0 legend entries" in problems
    one_colour = tmp_path / "one_colour.html"  # every series drawn and keyed in one colour
    one_colour.write_text(re.sub(r'(stroke|fill)="#[0-9a-f]{6}"', r'\1="#1f77b4"', text), encoding="utf-8")
    problems = legend_problems(render(browser, one_colour))
    assert any(p.startswith("losses: one colour for several series") for p in problems)
    unpainted = tmp_path / "unpainted.html"  # a legend colour that no line of the plot has
    unpainted.write_text(text.replace('stroke="#ff7f0e"', 'stroke="#00ff00"'), encoding="utf-8")
    assert any("'beta' (0, 255, 0) is not painted" in p for p in legend_problems(render(browser, unpainted)))
    opened = tmp_path / "open.html"  # every run's findings spelled out before the curves
    opened.write_text(text.replace('<details class="findings">', '<details class="findings" open>'), encoding="utf-8")
    problems = findings_problems(render(browser, opened), n_runs=2)
    assert len([p for p in problems if p.endswith("are open")]) == 2
    assert any("below the first screen" in p for p in problems)
