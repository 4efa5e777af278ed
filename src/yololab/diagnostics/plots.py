"""Curves of one or several runs from their metrics.jsonl rows, as matplotlib Figures (no pyplot state).

Every function takes ``runs``: a list of ``(label, rows)`` pairs, ``rows`` being the metrics.jsonl
objects of one run (``epoch``, ``split``, ``loss/<term>/s<i>``, ``stat/<name>/s<i>``, ``grad_share/<term>/s<i>``,
``mAP50`` …). One colour per run; train is drawn solid, val dashed. A null value (a stat with no samples) is a gap.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import re

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

# Column order of the loss grid: the terms of DESIGN.md's LossBreakdown, in that order.
TERMS = ("xy", "wh", "box", "obj", "noobj", "cls")
SPLIT_STYLE = {"train": "-", "val": "--"}
# Statistics panels: (title, [(stat name, marker)], log y axis). Markers tell two stats of one panel apart.
STAT_PANELS = (
    ("iou vs iou_prior", [("iou", "o"), ("iou_prior", "v")], False),
    ("obj_pos vs obj_neg", [("obj_pos", "o"), ("obj_neg", "v")], True),
    ("cls_prob", [("cls_prob", "o")], False),
    ("recall50 / recall75", [("recall50", "o"), ("recall75", "v")], False),
    ("n_pos", [("n_pos", "o")], False),
)
# Line style and marker of each term in the gradient-share panels, where the colour is the run's; terms
# outside TERMS take EXTRA_TERM_STYLES in turn.
TERM_STYLES = {"xy": ("-", "o"), "wh": ("--", "v"), "box": ("-.", "s"), "obj": (":", "^"), "noobj": ("-", "D"),
               "cls": ("--", "x")}
EXTRA_TERM_STYLES = ((":", "*"), ("-.", "P"), ("--", "h"))
SHARE_LIMITS = (-0.05, 1.05)  # y range of a share: 0..1 plus a margin so points at 0 or 1 stay visible
PANEL_SIZE = (2.6, 1.9)  # inches per subplot: six columns fit a 1400-px-wide page at DPI
DPI = 80  # enough to read the axis labels; keeps a 3 x 6 grid under ~100 kB
MARKER_SIZE = 3
WIDE_SIZE = (7.0, 3.0)  # inches of a single-panel plot (lr, mAP)
LEGEND_HEIGHT = 0.8  # inches under the panels for the legend (two rows of entries) and the x label
# Fixed margins in inches (left, right, top): matplotlib's constrained layout doubles the drawing time.
MARGINS = (0.5, 0.7, 0.3)
PANEL_SPACE = (0.4, 0.55)  # gaps between panels, as fractions of a panel's width / height (tick labels, title)
KEY_COLOUR = "0.3"  # grey of the style entries of a legend (line style / marker, not a run)
_SCALE_KEY = re.compile(r"^(?:loss|unweighted|stat)/([^/]+)/s(\d+)$")
_GRAD_SHARE_KEY = re.compile(r"^grad_share/([^/]+)/s(\d+)$")


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
    return sorted(scales), _term_order(terms)


def _term_order(terms: set[str]) -> list[str]:
    """``terms`` in ``TERMS`` order, unknown ones after in alphabetical order."""
    return [t for t in TERMS if t in terms] + sorted(terms - set(TERMS))


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


def _grid(n_rows: int, n_cols: int, size: tuple[float, float] = PANEL_SIZE) -> tuple[Figure, list[list[Axes]]]:
    width, height = size[0] * n_cols, size[1] * n_rows + LEGEND_HEIGHT
    fig = Figure(figsize=(width, height))
    left, right, top = MARGINS
    axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={
        "left": left / width, "right": 1 - right / width, "top": 1 - top / height,
        "bottom": LEGEND_HEIGHT / height, "wspace": PANEL_SPACE[0], "hspace": PANEL_SPACE[1]})
    return fig, [list(r) for r in axes]


def _plot(ax: Axes, runs, key: str, splits=("train", "val"), marker=None, style: str | None = None) -> None:
    for i, (_, rows) in enumerate(runs):
        for split in splits:
            x, y = series(rows, split, key)
            if x:
                ax.plot(x, y, style or SPLIT_STYLE[split], color=_colour(i), marker=marker,
                        markersize=MARKER_SIZE)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers


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
    _legend(fig, runs, [("-", None, "train"), ("--", None, "val")])
    return fig


def stats_grid(runs) -> Figure | None:
    """Assignment statistics per scale (rows): iou vs iou_prior, obj_pos vs obj_neg (log), cls_prob, recalls, n_pos."""
    scales, _ = _union(runs)
    if not scales:
        return None
    fig, axes = _grid(len(scales), len(STAT_PANELS))
    for r, scale in enumerate(scales):
        for c, (title, stats, log) in enumerate(STAT_PANELS):
            ax = axes[r][c]
            for name, marker in stats:
                _plot(ax, runs, f"stat/{name}/s{scale}", marker=marker)
            if log and ax.has_data() and _positive(ax):
                ax.set_yscale("log")
            ax.set_title(f"{title} / s{scale}", fontsize="small")
            ax.tick_params(labelsize="x-small")
    axes[-1][0].set_xlabel("epoch", fontsize="small")
    _legend(fig, runs, [("-", None, "train"), ("--", None, "val"), ("", "o", "first stat of a panel"),
                        ("", "v", "second stat (iou_prior: anchors alone, obj_neg, recall75)")])
    return fig


def grad_share_grid(runs, strides: list[int] | None = None) -> Figure | None:
    """Gradient share of each term per scale (one panel per scale, x = epoch, y in 0..1) from the train rows.

    A term is told apart by line style and marker, a run by colour. ``strides``: the stride of each scale
    index, shown in the panel titles when given. None when no run logged a ``grad_share/<term>/s<i>`` key.
    """
    scales, terms = set(), set()
    for _, rows in runs:
        for row in rows:
            for key in row:
                match = _GRAD_SHARE_KEY.match(key)
                if match:
                    terms.add(match.group(1))
                    scales.add(int(match.group(2)))
    if not scales:
        return None
    terms = _term_order(terms)
    extra = itertools.cycle(EXTRA_TERM_STYLES)
    styles = {term: TERM_STYLES.get(term) or next(extra) for term in terms}
    fig, axes = _grid(1, len(scales))
    for ax, scale in zip(axes[0], sorted(scales), strict=True):
        for term in terms:
            linestyle, marker = styles[term]
            _plot(ax, runs, f"grad_share/{term}/s{scale}", splits=("train",), marker=marker, style=linestyle)
        ax.set_ylim(*SHARE_LIMITS)
        known = strides is not None and scale < len(strides)
        ax.set_title(f"s{scale} (stride {strides[scale]})" if known else f"s{scale}", fontsize="small")
        ax.tick_params(labelsize="x-small")
    axes[0][0].set_xlabel("epoch", fontsize="small")
    axes[0][0].set_ylabel("share of the scale's gradient", fontsize="small")
    _legend(fig, runs, [(*styles[term], term) for term in terms])
    return fig


def schedule_plot(runs) -> Figure | None:
    """Learning rate (left axis) and warm-up share (right axis) per epoch, from the train rows."""
    if not any(series(rows, "train", "lr")[0] or series(rows, "train", "warmup")[0] for _, rows in runs):
        return None
    fig, axes = _grid(1, 1, WIDE_SIZE)
    ax = axes[0][0]
    right = ax.twinx()
    _plot(ax, runs, "lr", splits=("train",), marker="o", style="-")
    _plot(right, runs, "warmup", splits=("train",), style=":")
    ax.set_xlabel("epoch", fontsize="small")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))  # lr values like 0.002 need no wide margin
    ax.set_ylabel("lr (solid)", fontsize="small")
    right.set_ylabel("warm-up share (dotted)", fontsize="small")
    right.set_ylim(*SHARE_LIMITS)  # a share: always on the same 0..1 axis
    _legend(fig, runs, [("-", "o", "lr"), (":", None, "warm-up share")])
    return fig


def map_plot(runs) -> Figure | None:
    """Validation mAP50 (solid) and mAP50_95 (dashed) per epoch; None when no val row has them."""
    if not any(series(rows, "val", "mAP50")[0] for _, rows in runs):
        return None
    fig, axes = _grid(1, 1, WIDE_SIZE)
    ax = axes[0][0]
    _plot(ax, runs, "mAP50", splits=("val",), marker="o", style="-")
    _plot(ax, runs, "mAP50_95", splits=("val",), marker="v", style="--")
    ax.set_xlabel("epoch", fontsize="small")
    ax.set_ylabel("val mAP", fontsize="small")
    _legend(fig, runs, [("-", "o", "mAP50"), ("--", "v", "mAP50_95")])
    return fig


def histogram_grid(runs) -> Figure | None:
    """Validation histograms (rows = scales, columns = obj_pos, obj_neg, iou) as shares of samples per bin.

    ``runs``: ``(label, hist_rows)`` pairs, ``hist_rows`` the histograms.jsonl objects (``epoch``, ``edges``,
    ``histograms`` {"<kind>/s<i>": {"counts": [bins], "num": n}}). Each run's last epoch is drawn solid;
    with one run its first epoch is drawn dotted beside it, to show the drift. None when none was logged.
    """
    runs = [(label, rows) for label, rows in runs if rows]
    if not runs:
        return None
    keys = [key for _, rows in runs for key in rows[-1]["histograms"]]
    scales = sorted({int(k.rsplit("/s", 1)[1]) for k in keys})
    kinds = list(dict.fromkeys(k.rsplit("/s", 1)[0] for k in keys))
    fig, axes = _grid(len(scales), len(kinds))
    for r, scale in enumerate(scales):
        for c, kind in enumerate(kinds):
            ax = axes[r][c]
            for i, (_, rows) in enumerate(runs):
                shown = [(rows[0], ":"), (rows[-1], "-")] if len(runs) == 1 and len(rows) > 1 else [(rows[-1], "-")]
                for row, style in shown:
                    hist = row["histograms"].get(f"{kind}/s{scale}")
                    if hist and hist.get("num"):
                        shares = [n / hist["num"] for n in hist["counts"]]
                        ax.stairs(shares, row["edges"], linestyle=style, color=_colour(i))
            if kind == "obj_neg" and _positive(ax, patches=True):
                ax.set_yscale("log")  # nearly every negative sits in the first bin: log shows the tail
            ax.set_title(f"{kind} / s{scale}", fontsize="small")
            ax.tick_params(labelsize="x-small")
    axes[-1][0].set_ylabel("share of samples", fontsize="small")
    styles = [("-", None, "last epoch")] + ([(":", None, "first epoch")] if len(runs) == 1 else [])
    _legend(fig, runs, styles)
    return fig


def _positive(ax: Axes, patches: bool = False) -> bool:
    """A log axis needs some positive value (probabilities can be exactly 0 early on)."""
    if patches:
        return any(p.get_data().values.max() > 0 for p in ax.patches)
    return any(v > 0 for line in ax.get_lines() for v in line.get_ydata() if not math.isnan(v))


def _legend(fig: Figure, runs, styles: list[tuple[str, str | None, str]]) -> None:
    """One legend under the figure: a colour per run, then the line styles / markers and their meaning."""
    handles = [Line2D([], [], color=_colour(i), linestyle="-") for i in range(len(runs))]
    labels = [label for label, _ in runs]
    for linestyle, marker, text in styles:
        handles.append(Line2D([], [], color=KEY_COLOUR, linestyle=linestyle or "none", marker=marker,
                              markersize=MARKER_SIZE + 2))
        labels.append(text)
    fig.legend(handles, labels, loc="lower center", ncols=min(len(labels), 6), fontsize="small")
