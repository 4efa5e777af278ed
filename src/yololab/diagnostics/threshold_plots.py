"""Plots of a threshold analysis (:mod:`yololab.evaluate.thresholds`) and the report section that shows them.

Three figures: precision against recall per class (COCOeval's interpolated curve at IoU 0.5), F1 against
confidence per class with the mean and the best-F1 confidence marked, and the confusion matrix with
background at that confidence (rows true class, columns predicted class).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from yololab.diagnostics.plots import data_uri

# Mirrors of yololab.evaluate.thresholds (which imports torch and pycocotools; the report is read without them).
THRESHOLDS_FILE = "thresholds.json"
CONF_SPLIT_ORDER = ("val", "test", "train")

CURVE_SIZE = (5.0, 3.6)  # inches of the PR and F1 panels
MATRIX_INCHES_PER_CLASS = 0.45
MATRIX_MIN_INCHES = 3.5
MEAN_LINE_WIDTH = 2.5
CLASS_LINE_WIDTH = 1.0
CLASS_ALPHA = 0.6
SECTION_ID = "thresholds"
SECTION_HEADING = "Confidence threshold: PR curves, F1 against confidence, confusion matrix"


def pr_figure(analysis: dict[str, Any]) -> Figure:
    fig = Figure(figsize=CURVE_SIZE)
    ax = fig.add_subplot()
    for name, row in analysis["per_class"].items():
        if row.get("pr_precision") is not None:
            precision = [max(p, 0.0) for p in row["pr_precision"]]
            ax.plot(row["pr_recall"], precision, lw=CLASS_LINE_WIDTH, label=str(name))
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"precision-recall per class (IoU {analysis['iou']})")
    _small_legend(ax)
    fig.tight_layout()
    return fig


def f1_figure(analysis: dict[str, Any]) -> Figure:
    fig = Figure(figsize=CURVE_SIZE)
    ax = fig.add_subplot()
    for name, row in analysis["per_class"].items():
        if row["n_truths"]:
            ax.plot(analysis["conf"], row["f1"], lw=CLASS_LINE_WIDTH, alpha=CLASS_ALPHA, label=str(name))
    best = analysis["best_conf"]
    ax.plot(analysis["conf"], analysis["f1"], color="black", lw=MEAN_LINE_WIDTH,
            label=f"mean: {analysis['best_f1']:.3f} at {best:.2f}" if best is not None else "mean: 0 everywhere")
    if best is not None:
        ax.axvline(best, color="black", ls=":")
    ax.set(xlabel="confidence (score > threshold)", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02),
           title="F1 against confidence")
    _small_legend(ax)
    fig.tight_layout()
    return fig


def confusion_figure(analysis: dict[str, Any]) -> Figure:
    confusion = analysis["confusion"]
    labels, matrix = confusion["labels"], confusion["matrix"]
    side = max(MATRIX_MIN_INCHES, MATRIX_INCHES_PER_CLASS * len(labels) + 1.5)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.7)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=90)
    ax.set_yticks(ticks, labels)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize="x-small",
                        color="white" if count > peak / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion at confidence {confusion['conf']:.2f}")
    fig.tight_layout()
    return fig


def _small_legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", loc="lower left", ncol=2)


def chosen_split(stored: dict[str, Any]) -> str | None:
    """The split the section shows: the first of CONF_SPLIT_ORDER recorded (the one detect uses)."""
    return next((s for s in CONF_SPLIT_ORDER if s in stored), None)


def thresholds_section(run_dir: str | Path) -> tuple[str, str, str]:
    """``(id, heading, html)`` of the report section for ``run_dir/thresholds.json`` (a note when absent)."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        note = ('<p class="none">no thresholds.json in this run (run <code>yololab eval RUN --split val</code>: '
                "it records the best-F1 confidence that <code>yololab detect</code> then uses)</p>")
        return SECTION_ID, SECTION_HEADING, note
    stored = json.loads(path.read_text())
    split = chosen_split(stored)
    analysis = stored[split]
    others = html.escape(", ".join(s for s in stored if s != split) or "none")
    if analysis["best_conf"] is None:
        text = (f"<p>On the {html.escape(split)} split F1 is 0 at every confidence: the model finds nothing at "
                f"IoU {analysis['iou']}, so no threshold is recorded. Other splits recorded: {others}.</p>")
    else:
        text = (f"<p>On the {html.escape(split)} split, at IoU {analysis['iou']}: mean F1 over classes peaks at "
                f"<b>{analysis['best_f1']:.3f}</b> at confidence <b>{analysis['best_conf']:.2f}</b>, the default "
                "of <code>yololab detect</code> for this run (<code>--conf</code> overrides it). Other splits "
                f"recorded: {others}.</p>")
    images = "".join(f'<img alt="{alt}" src="{data_uri(make(analysis))}">' for alt, make in
                     (("precision-recall", pr_figure), ("F1 against confidence", f1_figure),
                      ("confusion matrix", confusion_figure)))
    return SECTION_ID, SECTION_HEADING, text + images
