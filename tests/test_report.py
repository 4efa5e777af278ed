"""HTML report and run comparison on hand-written run folders (metrics.jsonl, config, anchor fit, findings)."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from matplotlib.colors import to_rgb
from PIL import Image
from typer.testing import CliRunner

from yololab.commands.report import compare_command, report_command
from yololab.config import build_config, save_config
from yololab.diagnostics import plots
from yololab.diagnostics.report import (
    ReportError,
    compare_runs,
    differing_settings,
    load_runs,
    severity_counts,
    write_report,
)

MIN_PNG_BYTES = 2_000  # a blank or empty plot compresses far below this
EVIL_NAME = "<script>alert('x')</script>"

# Val mAP per epoch, chosen so that the best epoch (1) is neither the first nor the last.
VAL_MAP50 = [0.10, 0.35, 0.30]
VAL_MAP50_95 = [0.04, 0.12, 0.11]
VAL_TOTAL = [9.0, 6.5, 4.25]
# Val mAP50 per epoch by COCO size and by the dataset's size bins (mAP50_95 is half of it); None: no truths.
VAL_SIZE_MAP50 = {"small": [0.0, 0.05, 0.1], "medium": [0.2, 0.5, 0.45], "large": [0.3, 0.6, 0.7]}
VAL_BIN_MAP50 = {"3x2-5x4": [0.0, 0.02, 0.04], "40x30-200x150": [None, 0.6, 0.65]}
IOU_PRIOR = {"train": 0.45, "val": 0.44}  # IoU of the anchors alone with the truths they are assigned
VAL_IOU = {0: [0.40, 0.52, 0.61], 1: [None, 0.47, 0.55]}  # s1 had no positives in epoch 0
# Gradient share per scale, term and epoch (train rows only); the terms of a scale sum to 1 at each epoch.
GRAD_SHARES = {0: {"box": [0.5, 0.4, 0.3], "obj": [0.2, 0.3, 0.4], "noobj": [0.2, 0.2, 0.2], "cls": [0.1, 0.1, 0.1]},
               1: {"box": [0.25, 0.5, 0.75], "obj": [0.25, 0.25, 0.0], "noobj": [0.5, 0.25, 0.25],
                   "cls": [0.0, 0.0, 0.0]}}
# A second run's shares, different at every point so that its lines never hide the first run's.
GRAD_SHARES_B = {0: {"box": [0.65, 0.55, 0.45], "obj": [0.15, 0.25, 0.35], "noobj": [0.15, 0.15, 0.15],
                     "cls": [0.05, 0.05, 0.05]},
                 1: {"box": [0.35, 0.6, 0.85], "obj": [0.15, 0.15, 0.05], "noobj": [0.45, 0.2, 0.05],
                     "cls": [0.05, 0.05, 0.05]}}
GRAD_SHARE_SECTION_NOTE = "no gradient shares logged"
FINDINGS = [
    {"rule": "objectness_collapse", "severity": "error", "scale": 1, "term": "obj", "first_epoch": 2,
     "numbers": {"obj_pos": 0.01}, "message": "obj_pos fell below 0.05 & stays there",
     "suggestion": "lower noobj weight", "changes": ["loss.noobj_weight=0.5"]},
    {"rule": "val_overfit", "severity": "warning", "scale": 0, "term": "cls", "first_epoch": 1,
     "numbers": {"gap": 0.4, "ratio": 1.6244939271255060}, "message": "val cls rises while train falls",
     "suggestion": "augment",
     "changes": []},
]
# lr of every step (lr.jsonl): 4 steps per epoch, a linear warm-up over epoch 0 (0.25, 0.5, 0.75, 1 of lr 0.004),
# then falling; the train rows' "lr" keeps only each epoch's last step, which misses the ramp.
LR_STEPS = [[0.001, 0.002, 0.003, 0.004], [0.004, 0.0035, 0.003, 0.0025], [0.002, 0.0015, 0.001, 0.0005]]
ANCHOR_FIT = {"n_truths": 40, "n_anchors": 4, "anchor_t": 4.0, "anchors": [[10, 14], [23, 27], [37, 58], [81, 82]],
              "mean_best_iou": 0.7123, "bpr_iou50": 0.875, "share_per_anchor": [0.1, 0.2, 0.3, 0.4],
              "share_per_scale": [0.7, 0.3], "strides": [32, 16]}


def _rows(scale_offset: float = 0.0, grad_shares: dict | None = GRAD_SHARES) -> list[dict]:
    rows = []
    for epoch in range(3):
        for split in ("train", "val"):
            row = {"epoch": epoch, "split": split, "step": 10 * (epoch + 1)}
            for s in (0, 1):
                for k, term in enumerate(("box", "obj", "noobj", "cls")):
                    value = (k + 1) / (epoch + 1) + s + scale_offset + (0.1 if split == "val" else 0.0)
                    row[f"loss/{term}/s{s}"] = value
                    row[f"unweighted/{term}/s{s}"] = 2 * value
                iou = VAL_IOU[s][epoch] if split == "val" else 0.5
                row |= {f"stat/iou/s{s}": iou, f"stat/iou_prior/s{s}": IOU_PRIOR[split],
                        f"stat/obj_pos/s{s}": None if iou is None else 0.3 + 0.1 * epoch,
                        f"stat/obj_neg/s{s}": 0.01 / (epoch + 1), f"stat/cls_prob/s{s}": 0.2 * (epoch + 1),
                        f"stat/recall50/s{s}": 0.3 * epoch, f"stat/recall75/s{s}": 0.1 * epoch,
                        f"stat/n_pos/s{s}": 0.0 if iou is None else 12.0, f"stat/n_ignored/s{s}": 3.0}
            if split == "val":
                row |= {"loss/total": VAL_TOTAL[epoch], "mAP50": VAL_MAP50[epoch], "mAP50_95": VAL_MAP50_95[epoch]}
                for size, values in VAL_SIZE_MAP50.items():
                    row |= {f"mAP50_{size}": values[epoch], f"mAP50_95_{size}": values[epoch] / 2}
                for name, values in VAL_BIN_MAP50.items():
                    v = values[epoch]
                    row |= {f"bin/{name}/mAP50": v}
            else:
                row |= {"loss/total": 10.0 - epoch, "lr": 0.001 * (epoch + 1), "warmup": max(0.0, 1 - epoch)}
                for s, terms in (grad_shares or {}).items():
                    row |= {f"grad_share/{term}/s{s}": values[epoch] for term, values in terms.items()}
            rows.append(row)
    return rows


def _histograms() -> list[dict]:
    edges = [0.0, 0.25, 0.5, 0.75, 1.0]
    return [{"epoch": epoch, "step": 10 * (epoch + 1), "edges": edges,
             "histograms": {f"{kind}/s{s}": {"counts": [4 - epoch, 1, 2, epoch], "num": 7}
                            for s in (0, 1) for kind in ("obj_pos", "obj_neg", "iou")}} for epoch in range(3)]


def make_run(root: Path, name: str, findings: bool = True, scale_offset: float = 0.0,
             grad_shares: dict | None = GRAD_SHARES, preset: str = "darknet", settings: dict | None = None,
             lr_steps: bool = True) -> Path:
    """A run folder written by hand; ``settings``: nested config overrides (e.g. {"optim": {"lr": 0.01}})."""
    run = root / f"run_{len(list(root.glob('run_*')))}"
    run.mkdir(parents=True)
    save_config(build_config({"name": name, "preset": preset, "data": {"data": "data/digits/data.yaml"},
                              "train": {"epochs": 3}, **(settings or {})}), run / "config.yaml")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(scale_offset, grad_shares)))
    if lr_steps:
        (run / "lr.jsonl").write_text("".join(json.dumps({"epoch": e, "step": 4 * e, "lr": lrs}) + "\n"
                                              for e, lrs in enumerate(LR_STEPS)))
    (run / "anchor_fit.json").write_text(json.dumps(ANCHOR_FIT))
    (run / "histograms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _histograms()))
    if findings:
        (run / "findings.json").write_text(json.dumps(FINDINGS))
    return run


class Page(HTMLParser):
    """Collects tags, img sources, section ids, tables (rows of cell texts) and all text; per section, its
    img sources and text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.imgs, self.sections, self.tables, self.text = [], [], [], [], []
        self.section_imgs, self.section_text = {}, {}
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(attrs["src"])
            if self.sections:
                self.section_imgs[self.sections[-1]].append(attrs["src"])
        elif tag == "section":
            self.sections.append(attrs["id"])
            self.section_imgs[attrs["id"]], self.section_text[attrs["id"]] = [], []
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self.sections:
            self.section_text[self.sections[-1]].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def table_with(self, header_cell: str) -> list[list[str]]:
        return next(t for t in self.tables if header_cell in t[0])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run = make_run(root, EVIL_NAME)
    path = write_report(run)
    return path, Page(path.read_text())


def test_report_sections_in_order(report):
    path, page = report
    assert path.name == "report.html"
    assert page.sections == ["summary", "findings", "losses", "grad_shares", "statistics", "schedule", "histograms",
                             "map", "sizes", "thresholds", "anchors"]
    assert "details" in page.tags and "script" not in page.tags


def test_summary_shows_test_metrics_when_the_run_has_them(tmp_path):
    run = make_run(tmp_path, "tested")
    summary = Page(write_report(run, tmp_path / "before.html").read_text()).table_with("value")
    assert not [row for row in summary if row[0].startswith("test ")]
    (run / "test_metrics.json").write_text(json.dumps({"mAP50": 0.91834, "mAP50_95": 0.6065, "n_images": 250}))
    summary = {row[0]: row[1] for row in Page(write_report(run).read_text()).table_with("value")[1:]}
    assert (summary["test mAP50"], summary["test mAP50_95"], summary["test n_images"]) == ("0.9183", "0.6065", "250")


def test_size_section_table_and_plot(report):
    page = report[1]
    table = page.table_with("val mAP50 (last epoch)")
    assert table[0] == ["size", "val mAP50 (last epoch)", "val mAP50_95 (last epoch)"]  # no test_metrics.json
    assert table[1:] == [["COCO small", "0.1000", "0.0500"], ["COCO medium", "0.4500", "0.2250"],
                         ["COCO large", "0.7000", "0.3500"], ["bin 3x2-5x4", "0.0400", "–"],
                         ["bin 40x30-200x150", "0.6500", "–"]]  # bins: AP@0.5 only
    (src,) = page.section_imgs["sizes"]
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
        # two panels of plots.WIDE_SIZE (6.3 x 2.8 in) side by side, margins 0.7 + 0.2 and 0.35 + 0.5 in, 100 dpi
        assert image.size == (round((2 * 6.3 + 0.7 + 0.2) * 100), round((2.8 + 0.35 + 0.5) * 100))
    legend = "".join(page.section_text["sizes"])
    assert all(name in legend for name in ("small", "medium", "large", "3x2-5x4", "40x30-200x150"))


def test_size_section_shows_test_ap_by_size(tmp_path):
    run = make_run(tmp_path, "tested")
    nan = float("nan")
    by_size = {"small": {"mAP50": 0.25, "mAP50_95": 0.125, "n_truths": 8, "area": [0, 1024]},
               "medium": {"mAP50": 0.5, "mAP50_95": 0.25, "n_truths": 4, "area": [1024, 9216]},
               "large": {"mAP50": nan, "mAP50_95": nan, "n_truths": 0, "area": [9216, 1e10]}}
    by_bin = {"3x2-5x4": {"mAP50": 0.125, "n_truths": 5, "area": [1.5, 5.0]}}
    (run / "test_metrics.json").write_text(json.dumps({"mAP50": 0.4, "mAP50_95": 0.2, "n_images": 9,
                                                       "by_size": by_size, "by_bin": by_bin}))
    table = Page(write_report(run).read_text()).table_with("test mAP50")
    rows = {row[0]: row[3:] for row in table[1:]}
    assert rows["COCO small"] == ["0.2500", "0.1250", "8", "0 - 1024"]
    assert rows["COCO large"] == ["–", "–", "0", "9216 - 1e+10"]  # no truths: no AP
    assert rows["bin 3x2-5x4"] == ["0.1250", "–", "5", "1.5 - 5"]
    assert rows["bin 40x30-200x150"] == ["–", "–", "–", "–"]  # a bin the test evaluation did not have


def test_summary_best_map_by_hand(report):
    summary = {row[0]: row[1] for row in report[1].table_with("value")[1:]}
    # best mAP50 is epoch 1's 0.35 (VAL_MAP50), with that epoch's mAP50_95 0.12
    assert summary["best val mAP50"] == "0.3500"
    assert summary["best val mAP50_95"] == "0.1200"
    assert summary["best epoch"] == "1"
    assert summary["preset"] == "darknet"
    assert summary["model cfg"] == "yolov3-tiny-3l-small"
    assert summary["data"] == "data/digits/data.yaml"
    assert summary["epochs (run / configured)"] == "3 / 3"


def test_images_are_embedded_pngs(report):
    path, page = report
    assert len(page.imgs) == 7  # loss grid, gradient shares, statistics, lr, histograms, mAP, AP by size
    for src in page.imgs:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        raw = base64.b64decode(src[len(prefix):], validate=True)
        assert len(raw) > MIN_PNG_BYTES
        with Image.open(io.BytesIO(raw)) as image:
            image.verify()
            assert image.format == "PNG"
    html_text = path.read_text()
    assert "http://" not in html_text and "https://" not in html_text
    assert "<link" not in html_text and "src=\"http" not in html_text


def test_loss_grid_has_a_row_per_term_and_a_column_per_scale(report):
    src = report[1].imgs[0]
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
        width, height = image.size
    # plots.PANEL_SIZE is 4.2 x 2.4 inches at 100 dpi: 2 scales wide, 4 terms high, plus the margins (0.7 + 0.2
    # inches across, 0.35 + 0.5 down); the legend strip is taken off (the page shows the legend as HTML)
    assert width == round((2 * 4.2 + 0.7 + 0.2) * 100)
    assert height == round((4 * 2.4 + 0.35 + 0.5) * 100)


def test_findings_table_lists_each_finding(report):
    table = report[1].table_with("rule")
    header, body = table[0], table[1:]
    assert len(body) == len(FINDINGS)
    for finding, row in zip(FINDINGS, body, strict=True):
        cells = dict(zip(header, row, strict=True))
        assert cells["rule"] == finding["rule"]
        assert cells["severity"] == finding["severity"]
        assert cells["message"] == finding["message"]  # "&" escaped in the file, restored by the parser
        assert cells["first_epoch"] == str(finding["first_epoch"])
    numbers = dict(zip(header, body[1], strict=True))["numbers"]
    assert json.loads(numbers) == {"gap": 0.4, "ratio": 1.624}  # four significant digits


def test_findings_rows_coloured_by_severity(report):
    text = report[0].read_text()
    assert '<tr style="background:#f8d0d0"><td>error</td>' in text
    assert '<tr style="background:#fbe6c2"><td>warning</td>' in text


def test_anchor_fit_numbers(report):
    page = report[1]
    overall = {row[0]: row[1] for row in page.table_with("measure")[1:]}
    assert overall["mean_best_iou"] == "0.7123"
    assert overall["bpr_iou50"] == "0.8750"
    assert overall["n_truths"] == "40"
    anchors = page.table_with("w x h (px)")[1:]
    assert [row[1] for row in anchors] == ["10.0 x 14.0", "23.0 x 27.0", "37.0 x 58.0", "81.0 x 82.0"]
    per_scale = page.table_with("share_per_scale")
    assert per_scale[1][:3] == ["s0", "0.7000", "32"]


def test_text_is_escaped(report):
    path, page = report
    text = path.read_text()
    assert EVIL_NAME not in text
    assert "&lt;script&gt;" in text
    assert "script" not in page.tags
    assert f"yololab report: {EVIL_NAME}" in "".join(page.text)  # shown as text


def test_report_without_optional_files(tmp_path):
    run = make_run(tmp_path, "plain", findings=False)
    (run / "anchor_fit.json").unlink()
    (run / "histograms.jsonl").unlink()
    page = Page(write_report(run, tmp_path / "out.html").read_text())
    text = "".join(page.text)
    assert "no findings.json in this run" in text and "no anchor_fit.json in this run" in text
    assert "no histograms logged" in text
    assert len(page.imgs) == 6


def test_report_of_a_run_without_ap_by_size_says_so(tmp_path):
    run = make_run(tmp_path, "older")
    by_size = ("_small", "_medium", "_large")
    rows = [{k: v for k, v in json.loads(line).items() if not (k.startswith("bin/") or k.endswith(by_size))}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = Page(write_report(run).read_text())
    assert page.section_imgs["sizes"] == []
    assert "no AP by object size logged" in "".join(page.section_text["sizes"])


def test_bad_metrics_line_names_file_and_line(tmp_path):
    run = make_run(tmp_path, "bad")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[2] = "{not json"
    (run / "metrics.jsonl").write_text("\n".join(lines))
    with pytest.raises(ReportError, match=r"metrics\.jsonl:3: not valid JSON"):
        write_report(run)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _rows()))
    (run / "histograms.jsonl").write_text('{"epoch": 0, "edges": [0, 1]}\n')
    with pytest.raises(ReportError, match=r"histograms\.jsonl:1: expected an object with keys"):
        write_report(run)
    with pytest.raises(ReportError, match="no such directory"):
        write_report(tmp_path / "missing")


def test_compare_two_runs(tmp_path):
    a = make_run(tmp_path, "alpha")
    b = make_run(tmp_path, "beta", findings=False, scale_offset=1.0, grad_shares=GRAD_SHARES_B)
    page = Page(compare_runs([a, b], tmp_path / "cmp.html").read_text())
    assert page.sections == ["final", "findings", "losses", "grad_shares", "statistics", "schedule", "histograms",
                             "map", "configs"]
    table = page.table_with("val mAP50")
    rows = {row[0]: dict(zip(table[0], row, strict=True)) for row in table[1:]}
    assert set(rows) == {"alpha", "beta"}
    assert rows["alpha"]["preset"] == "darknet" and rows["alpha"]["settings that differ"] == "–"  # same config
    # the last val row is epoch 2: mAP50 0.30, mAP50_95 0.11, loss/total 4.25, iou 0.61 / 0.55
    assert rows["alpha"]["val mAP50"] == "0.3000"
    assert rows["alpha"]["val mAP50_95"] == "0.1100"
    assert rows["alpha"]["val loss/total"] == "4.2500"
    assert rows["alpha"]["val iou s0"] == "0.6100" and rows["alpha"]["val iou s1"] == "0.5500"
    assert rows["beta"]["best mAP50 (epoch)"] == "0.3500 (1)"
    text = "".join(page.text)
    assert "objectness_collapse" in text  # alpha's findings
    assert "no findings.json in this run" in text  # beta has none
    assert len(page.imgs) == 6
    # gradient shares: one plot in which both runs' colours (C0 alpha, C1 beta) are drawn in the panels
    (src,) = page.section_imgs["grad_shares"]
    assert _colour_pixels(src, "C0") > 0 and _colour_pixels(src, "C1") > 0


def test_compare_runs_of_different_presets(tmp_path):
    a = make_run(tmp_path, "alpha")
    b = make_run(tmp_path, "beta", findings=False, preset="keras-yolo3",
                 settings={"optim": {"lr": 0.01}, "loss": {"warmup_batches": 8}})
    page = Page(compare_runs([a, b], tmp_path / "cmp.html").read_text())
    table = page.table_with("preset")
    rows = {row[0]: dict(zip(table[0], row, strict=True)) for row in table[1:]}
    assert (rows["alpha"]["preset"], rows["beta"]["preset"]) == ("darknet", "keras-yolo3")
    # what differs besides the preset: the lr (both runs) and warmup_batches (0 is darknet's own value, so alpha's
    # row leaves it out; 8 is not keras-yolo3's); keras-yolo3's own weights and aggregation are not listed
    assert rows["alpha"]["settings that differ"] == "optim.lr=0.002"
    assert rows["beta"]["settings that differ"] == "optim.lr=0.01, loss.warmup_batches=8"
    # the loss settings differ: the total is marked, and the loss curves are drawn relative to their start
    assert "val loss/total (not comparable)" in table[0] and "val loss/total" not in table[0]
    assert rows["alpha"]["val loss/total (not comparable)"] == "4.2500"
    assert "not comparable" in "".join(page.section_text["losses"])
    text = "".join(page.section_text["findings"])
    assert "alpha (darknet): 1 error, 1 warning" in text and "beta (keras-yolo3): no findings.json" in text
    assert text.count("objectness_collapse") == 1  # alpha's table, inside its <details>


def test_differing_settings_by_hand(tmp_path):
    a = make_run(tmp_path, "a", settings={"optim": {"lr": 0.01}, "train": {"epochs": 5}})
    b = make_run(tmp_path, "b", settings={"loss": {"obj_weight": 2.0}})
    # a's obj_weight (1.0) is its preset's (darknet) own value: only b's change of it is listed
    assert differing_settings(load_runs([a, b])) == [
        {"optim.lr": 0.01, "train.epochs": 5},
        {"optim.lr": 0.002, "train.epochs": 3, "loss.obj_weight": 2.0}]


def test_severity_counts_most_severe_first():
    findings = [{"severity": "info"}, {"severity": "warning"}, {"severity": "error"}, {"severity": "info"}]
    assert severity_counts(findings) == "1 error, 1 warning, 2 info"
    assert severity_counts([]) == "none" and severity_counts(None) == "no findings.json"


def test_loss_grid_normalised_starts_at_one():
    rows = _rows()
    fig = plots.loss_grid([("a", rows), ("b", _rows(scale_offset=1.0))], normalise=True)
    ax = fig.axes[0]  # box / s0
    assert ax.get_title() == "box / s0"
    # run a, box, s0: train values (k + 1)/(e + 1) = 1, 0.5, 0.333; val 0.1 above; divided by the first train 1.0
    # run b: 1 above (train 2, 1.5, 1.333; val 2.1, 1.6, 1.433): divided by its first train value 2
    ys = [list(line.get_ydata()) for line in ax.get_lines()]
    assert ys == [pytest.approx([1, 0.5, 1 / 3]), pytest.approx([1.1, 0.6, 0.1 + 1 / 3]),
                  pytest.approx([1, 0.75, 2 / 3]), pytest.approx([2.1 / 2, 1.6 / 2, (1 / 3 + 1.1) / 2])]


def test_schedule_draws_the_lr_of_every_step_and_the_loss_warmup(tmp_path):
    fig = plots.schedule_plot([("a", _rows())], [load_runs([make_run(tmp_path, "a")])[0].lr_steps], [1.0])
    lr_ax, warm_ax = fig.axes[0], fig.axes[1]
    (lr_line, warm_end) = lr_ax.get_lines()
    # step k of epoch e sits at e + k/4: the ramp 0.001 .. 0.004 across epoch 0 is drawn, not only its end
    assert list(lr_line.get_xdata()) == pytest.approx([e + k / 4 for e in range(3) for k in range(4)])
    assert list(lr_line.get_ydata()) == pytest.approx([v for lrs in LR_STEPS for v in lrs])
    assert list(warm_end.get_xdata()) == [1.0, 1.0]  # optim.warmup_epochs: a vertical line at epoch 1
    (warm,) = warm_ax.get_lines()
    assert list(warm.get_ydata()) == [1.0, 0.0, 0.0]  # the train rows' "warmup": max(0, 1 - epoch)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["lr per step", "end of the lr warm-up (optim.warmup_epochs)",
                      "anchor-prior warm-up: share of batches"]
    colours = [to_rgb(h.get_color()) for h in fig.legends[0].legend_handles]
    assert len(set(colours)) == 3
    assert [to_rgb(line.get_color()) for line in (lr_line, warm_end, warm)] == colours


def test_schedule_without_lr_file_uses_the_epoch_rows(tmp_path):
    page = Page(write_report(make_run(tmp_path, "old", lr_steps=False), tmp_path / "r.html").read_text())
    assert "no lr.jsonl in this run" in "".join(page.section_text["schedule"])
    fig = plots.schedule_plot([("a", _rows())])
    (lr_line,) = fig.axes[0].get_lines()
    assert list(lr_line.get_xdata()) == [0, 1, 2] and list(lr_line.get_ydata()) == [0.001, 0.002, 0.003]
    assert fig.legends[0].get_texts()[0].get_text() == "lr at the epoch's last step"


def _png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True))).convert("RGB")


def _colour_pixels(src: str, colour: str, tolerance: int = 8) -> int:
    """Pixels of the embedded PNG ``src`` (a page's plot: its legend is HTML, not in the image) within ``tolerance``
    (per channel, 0..255) of a matplotlib colour."""
    panels = _png(src)
    target = [round(255 * c) for c in to_rgb(colour)]
    return sum(all(abs(p - t) <= tolerance for p, t in zip(pixel, target, strict=True))
               for pixel in panels.getdata())


def _lines(fig, single_run: str | None = None) -> list[dict[tuple[str, str], tuple[list, list]]]:
    """Per panel (in figure order): {(run label, term): (x, y)} of its lines.

    Several runs: the run of a line is the legend entry of the same colour, its term the legend entry with the
    same line style and marker. One run (its label is not in the legend): the term is the entry of the same
    colour. Public matplotlib API only: the legend's handles and texts, the lines' data."""
    (legend,) = fig.legends
    runs, terms = {}, {}
    for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
        if handle.get_marker() in ("None", "none", "", None):
            runs[to_rgb(handle.get_color())] = text.get_text()
        else:
            terms[(handle.get_linestyle(), handle.get_marker())] = text.get_text()
    by_colour = {to_rgb(h.get_color()): t.get_text() for h, t in zip(legend.legend_handles, legend.get_texts(),
                                                                       strict=True)}
    panels = []
    for ax in fig.axes:
        found = {}
        for line in ax.get_lines():
            if runs:
                key = (runs[to_rgb(line.get_color())], terms[(line.get_linestyle(), line.get_marker())])
            else:
                key = (single_run, by_colour[to_rgb(line.get_color())])
            assert key not in found, f"two lines for {key} in panel {ax.get_title()}"
            found[key] = (list(line.get_xdata()), list(line.get_ydata()))
        panels.append(found)
    return panels


def test_grad_share_section_has_one_png(report):
    page = report[1]
    (src,) = page.section_imgs["grad_shares"]
    with _png(src) as image:
        image.verify()
    assert len(base64.b64decode(src.split(",", 1)[1])) > MIN_PNG_BYTES
    text = "".join(page.section_text["grad_shares"])
    assert "gradient norm" in text and GRAD_SHARE_SECTION_NOTE not in text
    # one run: a colour per term (box, obj, noobj, cls), none for the absent xy and wh
    for term in ("box", "obj", "noobj", "cls"):
        assert _colour_pixels(src, plots.TERM_COLOURS[term]) > 0, term
    assert _colour_pixels(src, plots.TERM_COLOURS["xy"]) == _colour_pixels(src, plots.TERM_COLOURS["wh"]) == 0


def test_report_without_grad_shares_shows_the_note(tmp_path):
    run = make_run(tmp_path, "off", grad_shares=None)  # diagnostics.grad_share_every=0
    page = Page(write_report(run, tmp_path / "out.html").read_text())
    assert page.section_imgs["grad_shares"] == []
    assert GRAD_SHARE_SECTION_NOTE in "".join(page.section_text["grad_shares"])
    assert len(page.imgs) == 6  # the other plots are still there


def test_grad_share_grid_plots_the_logged_shares():
    fig = plots.grad_share_grid([("a", _rows())], strides=ANCHOR_FIT["strides"])
    assert [ax.get_title() for ax in fig.axes] == ["s0 (stride 32)", "s1 (stride 16)"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["box", "obj", "noobj", "cls"]
    for scale, (ax, found) in enumerate(zip(fig.axes, _lines(fig, single_run="a"), strict=True)):
        assert found == {("a", term): ([0, 1, 2], pytest.approx(values))
                         for term, values in GRAD_SHARES[scale].items()}
        low, high = ax.get_ylim()
        assert low <= 0 and high >= 1  # the whole share range, also where every share is <= 0.75 (s1)


def test_grad_share_grid_overlays_runs_by_colour():
    fig = plots.grad_share_grid([("a", _rows()), ("b", _rows(grad_shares=GRAD_SHARES_B))])
    assert [ax.get_title() for ax in fig.axes] == ["s0", "s1"]  # no strides given
    for scale, found in enumerate(_lines(fig)):
        expected = {(run, term): ([0, 1, 2], pytest.approx(values))
                    for run, shares in (("a", GRAD_SHARES), ("b", GRAD_SHARES_B))
                    for term, values in shares[scale].items()}
        assert found == expected


def test_grad_share_grid_none_without_shares():
    assert plots.grad_share_grid([("a", _rows(grad_shares=None))]) is None


def test_compare_same_names_are_told_apart(tmp_path):
    a, b = make_run(tmp_path, "same"), make_run(tmp_path, "same")
    table = Page(compare_runs([a, b], tmp_path / "cmp.html").read_text()).table_with("val mAP50")
    assert [row[0] for row in table[1:]] == [f"same ({a})", f"same ({b})"]


def _app(command) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app


def test_cli_report_and_compare(tmp_path):
    runner = CliRunner()
    a, b = make_run(tmp_path, "alpha"), make_run(tmp_path, "beta")
    result = runner.invoke(_app(report_command), [str(a), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").is_file()
    result = runner.invoke(_app(compare_command), [str(a), str(b), "--out", str(tmp_path / "c.html")])
    assert result.exit_code == 0, result.output
    assert "alpha" in result.output and "beta" in result.output and "0.3000" in result.output
    assert (tmp_path / "c.html").is_file()
    result = runner.invoke(_app(report_command), [str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such directory" in result.output


def test_autoanchor_decision_in_words_and_both_fits(tmp_path):
    """A run whose anchors autoanchor replaced: the decision as a sentence, the configured and the k-means fit side
    by side, and the record kept out of the one-value-per-row table."""
    run = make_run(tmp_path, "autoanchored")
    configured = {"anchors": [[[81, 82], [135, 169]], [[10, 14], [23, 27]]], "bpr_ratio": 0.9, "bpr_iou50": 0.5,
                  "mean_best_iou": 0.55}
    fitted = {"anchors": [[[40.5, 30], [60, 44]], [[6, 4], [12, 9.25]]], "bpr_ratio": 1.0, "bpr_iou50": 0.95,
              "mean_best_iou": 0.8}
    record = {"enabled": True, "pinned": False, "threshold": 0.98, "seed": 0, "applied": True, "reason": "applied",
              "configured": configured, "fitted": fitted, "kmeans_error": None}
    (run / "anchor_fit.json").write_text(json.dumps({**ANCHOR_FIT, "autoanchor": record,
                                                     "kmeans": {"mean_best_iou": 0.8}}))
    page = Page(write_report(run).read_text())
    assert ("autoanchor: k-means anchors fitted better and replaced the configured ones (config.yaml: "
            "model.anchors).") in " ".join(page.text)
    fits = page.table_with("best possible recall (ratio)")
    assert fits[1] == ["configured", "0.9000", "0.5000", "0.5500", "81x82 135x169 | 10x14 23x27"]
    assert fits[2] == ["k-means", "1.0000", "0.9500", "0.8000", "40.5x30 60x44 | 6x4 12x9.25"]
    overall = {row[0] for row in page.table_with("measure")[1:]}
    assert not overall & {"autoanchor", "kmeans"}
