"""Curves of one or several runs from their metrics.jsonl rows, as matplotlib Figures (no pyplot state).

Every function takes ``runs``: a list of ``(label, rows)`` pairs, ``rows`` being the metrics.jsonl
objects of one run (``epoch``, ``split``, ``loss/<term>/s<i>``, ``stat/<name>/s<i>``, ``mAP50`` …).
One colour per run; train is drawn solid, val dashed. A null value (a stat with no samples) is a gap.
"""

from __future__ import annotations

import base64
import io
import math
import re

from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Column order of the loss grid: the terms of DESIGN.md's LossBreakdown, in that order.
TERMS = ("xy", "wh", "box", "obj", "noobj", "cls")
SPLIT_STYLE = {"train": "-", "val": "--"}
# Statistics panels: (title, [(stat name, marker)], log y axis). Markers tell two stats of one panel apart.
STAT_PANELS = (
    ("iou", [("iou", "o")], False),
    ("obj_pos vs obj_neg", [("obj_pos", "o"), ("obj_neg", "v")], True),
    ("cls_prob", [("cls_prob", "o")], False),
    ("recall50 / recall75", [("recall50", "o"), ("recall75", "v")], False),
    ("n_pos", [("n_pos", "o")], False),
)
PANEL_SIZE = (2.6, 1.9)  # inches per subplot: six columns fit a 1400-px-wide page at DPI
DPI = 80  # enough to read the axis labels; keeps a 3 x 6 grid under ~100 kB
MARKER_SIZE = 3
_SCALE_KEY = re.compile(r"^(?:loss|unweighted|stat)/([^/]+)/s(\d+)$")


def data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (embedded in the HTML, no file beside it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def scales_and_terms(rows: list[dict]) -> tuple[list[int], list[str]]:
    """Scale indices and loss terms present in ``rows`` (terms in ``TERMS`` order, unknown ones after)."""
    scales, terms = set(), set()
    for row in rows:
        for key in row:
            match = _SCALE_KEY.match(key)
            if match:
                scales.add(int(match.group(2)))
                if key.startswith("loss/"):
                    terms.add(match.group(1))
    ordered = [t for t in TERMS if t in terms] + sorted(terms - set(TERMS))
    return sorted(scales), ordered


def series(rows: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``key`` in the ``split`` rows that have it; null becomes NaN (a gap)."""
    epochs, values = [], []
    for row in rows:
        if row.get("split") == split and key in row:
            epochs.append(row["epoch"])
            values.append(math.nan if row[key] is None else float(row[key]))
    return epochs, values


def _colour(i: int) -> str:
    return f"C{i % 10}"  # matplotlib's default cycle: ten distinguishable colours


def _grid(n_rows: int, n_cols: int) -> tuple[Figure, list[list[Axes]]]:
    fig = Figure(figsize=(PANEL_SIZE[0] * n_cols, PANEL_SIZE[1] * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, [list(r) for r in axes]


def _plot(ax: Axes, runs, key: str, splits=("train", "val"), marker=None, label_suffix: str = "") -> None:
    for i, (label, rows) in enumerate(runs):
        for split in splits:
            x, y = series(rows, split, key)
            if x:
                ax.plot(x, y, SPLIT_STYLE[split], color=_colour(i), marker=marker, markersize=MARKER_SIZE,
                        label=f"{label} {split}{label_suffix}")


def _union(runs) -> tuple[list[int], list[str]]:
    scales, terms = set(), []
    for _, rows in runs:
        s, t = scales_and_terms(rows)
        scales.update(s)
        terms += [x for x in t if x not in terms]
    return sorted(scales), [t for t in TERMS if t in terms] + [t for t in terms if t not in TERMS]


def loss_grid(runs) -> Figure | None:
    """Weighted loss per term (columns) and scale (rows), train vs val; None when no term was logged."""
    scales, terms = _union(runs)
    if not scales or not terms:
        return None
    fig, axes = _grid(len(scales), len(terms))
    for r, scale in enumerate(scales):
        for c, term in enumerate(terms):
            ax = axes[r][c]
            _plot(ax, runs, f"loss/{term}/s{scale}")
            ax.set_title(f"{term} / s{scale}", fontsize="small")
            ax.tick_params(labelsize="x-small")
    axes[-1][0].set_xlabel("epoch", fontsize="small")
    _legend(fig, axes)
    return fig


def stats_grid(runs) -> Figure | None:
    """Assignment statistics per scale (rows): iou, obj_pos vs obj_neg (log), cls_prob, recalls, n_pos."""
    scales, _ = _union(runs)
    if not scales:
        return None
    fig, axes = _grid(len(scales), len(STAT_PANELS))
    for r, scale in enumerate(scales):
        for c, (title, stats, log) in enumerate(STAT_PANELS):
            ax = axes[r][c]
            for name, marker in stats:
                suffix = f" {name}" if len(stats) > 1 else ""
                _plot(ax, runs, f"stat/{name}/s{scale}", marker=marker, label_suffix=suffix)
            if log and ax.has_data() and _positive(ax):
                ax.set_yscale("log")
            ax.set_title(f"{title} / s{scale}", fontsize="small")
            ax.tick_params(labelsize="x-small")
    axes[-1][0].set_xlabel("epoch", fontsize="small")
    _legend(fig, axes, marker_note="markers: o = first stat of the panel, v = second")
    return fig


def schedule_plot(runs) -> Figure | None:
    """Learning rate (left axis) and warm-up share (right axis) per epoch, from the train rows."""
    if not any(series(rows, "train", "lr")[0] or series(rows, "train", "warmup")[0] for _, rows in runs):
        return None
    fig, axes = _grid(1, 1)
    ax = axes[0][0]
    right = ax.twinx()
    for i, (label, rows) in enumerate(runs):
        ax.plot(*series(rows, "train", "lr"), "-", color=_colour(i), marker="o", markersize=MARKER_SIZE,
                label=f"{label} lr")
        right.plot(*series(rows, "train", "warmup"), ":", color=_colour(i), label=f"{label} warm-up")
    ax.set_xlabel("epoch", fontsize="small")
    ax.set_ylabel("lr (solid)", fontsize="small")
    right.set_ylabel("warm-up share (dotted)", fontsize="small")
    right.set_ylim(-0.05, 1.05)  # a share: always on the same 0..1 axis
    _fig_legend(fig, ax.get_legend_handles_labels(), right.get_legend_handles_labels())
    return fig


def map_plot(runs) -> Figure | None:
    """Validation mAP50 (solid) and mAP50_95 (dashed) per epoch; None when no val row has them."""
    if not any(series(rows, "val", "mAP50")[0] for _, rows in runs):
        return None
    fig, axes = _grid(1, 1)
    ax = axes[0][0]
    for i, (label, rows) in enumerate(runs):
        ax.plot(*series(rows, "val", "mAP50"), "-", color=_colour(i), marker="o", markersize=MARKER_SIZE,
                label=f"{label} mAP50")
        ax.plot(*series(rows, "val", "mAP50_95"), "--", color=_colour(i), marker="v", markersize=MARKER_SIZE,
                label=f"{label} mAP50_95")
    ax.set_xlabel("epoch", fontsize="small")
    ax.set_ylabel("mAP", fontsize="small")
    _fig_legend(fig, ax.get_legend_handles_labels())
    return fig


def _positive(ax: Axes) -> bool:
    """A log axis needs some positive value (probabilities can be exactly 0 early on)."""
    return any(v > 0 for line in ax.get_lines() for v in line.get_ydata() if not math.isnan(v))


def _legend(fig: Figure, axes: list[list[Axes]], marker_note: str | None = None) -> None:
    handles, labels = {}, []
    for row in axes:
        for ax in row:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in handles:
                    handles[label] = handle
                    labels.append(label)
    if labels:
        fig.legend([handles[x] for x in labels], labels, loc="outside lower center", ncols=min(len(labels), 6),
                   fontsize="small", title=marker_note, title_fontsize="x-small")


def _fig_legend(fig: Figure, *pairs) -> None:
    handles = [h for pair in pairs for h in pair[0]]
    labels = [x for pair in pairs for x in pair[1]]
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize="small")
