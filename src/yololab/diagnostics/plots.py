"""Curves of one or several runs from their metrics.jsonl rows, as matplotlib Figures (no pyplot state).

Every function takes ``runs``: a list of ``(label, rows)`` pairs, ``rows`` being the metrics.jsonl
objects of one run (``epoch``, ``split``, ``loss/<term>/s<i>``, ``stat/<name>/s<i>``, ``grad_share/<term>/s<i>``,
``mAP50`` …). Columns of a grid are the scales (s0, s1, …), so that a few wide panels fit a screen. Every series of
a panel has its own colour: with one run the colour names the split or statistic, with several runs it names the
run (and the line style the split or statistic). Train is drawn solid, val dashed. A null value (a stat with no
samples) is a gap. Each figure carries one legend under its panels; ``detach_legend`` takes it off as ``Key``s so
that an HTML page can show it as text.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from yololab import keys as scale_keys

# Row order of the loss grid: the terms of DESIGN.md's LossBreakdown, in that order.
TERMS = scale_keys.TERMS
SPLIT_STYLE = {"train": "-", "val": "--"}
# One colour per series of a single run (matplotlib's tab10 / tab20 hex values: distinguishable, colour-blind
# tolerant pairs). A split's colour in the loss grid and the mAP / histogram plots.
SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e"}
# Statistics panels: (title, [stat names], log y axis); a panel holds one or two statistics.
STAT_PANELS = (
    ("iou vs iou_prior (anchors alone)", ["iou", "iou_prior"], False),
    ("obj_pos vs obj_neg", ["obj_pos", "obj_neg"], True),
    ("cls_prob", ["cls_prob"], False),
    ("recall50 / recall75", ["recall50", "recall75"], False),
    ("n_pos (truths assigned per batch)", ["n_pos"], False),
)
# A statistic's (train, val) colours with one run: tab20's dark and light shade of one hue, so that the four lines
# of a panel have four colours and the two splits of one statistic still read as a pair.
STAT_COLOURS = {"iou": ("#1f77b4", "#6baed6"), "iou_prior": ("#d62728", "#ff9896"),
                "obj_pos": ("#2ca02c", "#74c476"), "obj_neg": ("#9467bd", "#c5b0d5"),
                "cls_prob": ("#8c564b", "#c49c94"), "recall50": ("#e377c2", "#f7b6d2"),
                "recall75": ("#17becf", "#9edae5"), "n_pos": ("#7f7f7f", "#c7c7c7")}
# One run's lr, end of lr warm-up, anchor-prior warm-up share.
SCHEDULE_COLOURS = ("#1f77b4", "#7f7f7f", "#2ca02c")
STAT_STYLES = ("-", ":")  # with several runs: first and second statistic of a panel (val only)
# Colour of each term in the single-run gradient-share panels; terms outside TERMS take EXTRA_COLOURS in turn.
TERM_COLOURS = {"xy": "#1f77b4", "wh": "#ff7f0e", "box": "#2ca02c", "obj": "#d62728", "noobj": "#9467bd",
                "cls": "#8c564b"}
EXTRA_COLOURS = ("#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# Line style and marker of each term in the gradient-share panels of several runs, where the colour is the run's;
# terms outside TERMS take EXTRA_TERM_STYLES in turn.
TERM_STYLES = {"xy": ("-", "o"), "wh": ("--", "v"), "box": ("-.", "s"), "obj": (":", "^"), "noobj": ("-", "D"),
               "cls": ("--", "x")}
EXTRA_TERM_STYLES = ((":", "*"), ("-.", "P"), ("--", "h"))
SHARE_LIMITS = (-0.05, 1.05)  # y range of a share: 0..1 plus a margin so points at 0 or 1 stay visible
PANEL_SIZE = (4.2, 2.4)  # inches per subplot: three scales side by side fill a 1280-px-wide page at DPI
DPI = 100  # axis labels readable without zooming
LINE_WIDTH = 1.6
MARKER_SIZE = 4
WIDE_SIZE = (6.3, 2.8)  # inches of a panel of the lr / warm-up / mAP plots (two side by side)
LEGEND_HEIGHT = 0.9  # inches under the panels for the legend (up to three rows of entries)
LEGEND_COLUMNS = 6
# Fixed margins in inches (left, right, top, bottom): matplotlib's constrained layout doubles the drawing time.
MARGINS = (0.7, 0.2, 0.35, 0.5)
PANEL_SPACE = (0.25, 0.5)  # gaps between panels, as fractions of a panel's width / height (tick labels, title)
KEY_COLOUR = "#4d4d4d"  # grey of the style entries of a legend (line style / marker, not a series colour)


@dataclass(frozen=True)
class Key:
    """One legend entry: a colour (hex) and a line style / marker, and what they stand for.

    ``style_only``: the entry explains a line style or marker (drawn grey), not the colour of a series."""

    label: str
    colour: str
    linestyle: str = "-"  # matplotlib's "-", "--", ":", "-." or "none"
    marker: str | None = None
    style_only: bool = False


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
            parts = scale_keys.split(key)
            if parts and parts[0] in scale_keys.LOSS_GROUPS:
                group, name, scale = parts
                scales.add(scale)
                if group == scale_keys.LOSS:
                    terms.add(name)
    return sorted(scales), _term_order(terms)


def _term_order(terms: set[str]) -> list[str]:
    """``terms`` in ``TERMS`` order, unknown ones after in alphabetical order."""
    return [t for t in TERMS if t in terms] + sorted(terms - set(TERMS))


def series(rows: list[dict], split: str, key: str, x: str = "epoch") -> tuple[list[int], list[float]]:
    """(x values, values) of ``key`` in the ``split`` rows that have it, ``x`` being the rows' ``epoch`` or
    ``step`` (optimiser steps at the epoch's end); null becomes NaN (a gap)."""
    xs, values = [], []
    for row in rows:
        if row.get("split") == split and key in row and x in row:
            xs.append(row[x])
            values.append(math.nan if row[key] is None else float(row[key]))
    return xs, values


def run_colour(i: int) -> str:
    """The colour of the ``i``-th run when several are overlaid: matplotlib's ten-colour default cycle."""
    return to_hex(f"C{i % 10}")


def _grid(n_rows: int, n_cols: int, size: tuple[float, float] = PANEL_SIZE) -> tuple[Figure, list[list[Axes]]]:
    left, right, top, bottom = MARGINS
    width = size[0] * n_cols + left + right
    height = size[1] * n_rows + top + bottom + LEGEND_HEIGHT
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={
        "left": left / width, "right": 1 - right / width, "top": 1 - top / height,
        "bottom": (bottom + LEGEND_HEIGHT) / height, "wspace": PANEL_SPACE[0], "hspace": PANEL_SPACE[1]})
    return fig, [list(r) for r in axes]


def _line(ax: Axes, x, y, colour: str, linestyle: str, marker: str | None = None) -> None:
    if x:
        ax.plot(x, y, linestyle=linestyle, color=colour, marker=marker, markersize=MARKER_SIZE, linewidth=LINE_WIDTH)


def _panel(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize="medium")
    ax.tick_params(labelsize="small")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers


def _union(runs) -> tuple[list[int], list[str]]:
    scales, terms = set(), []
    for _, rows in runs:
        s, t = scales_and_terms(rows)
        scales.update(s)
        terms += [x for x in t if x not in terms]
    return sorted(scales), [t for t in TERMS if t in terms] + [t for t in terms if t not in TERMS]


def _split_colour(runs, i: int, split: str) -> str:
    return SPLIT_COLOURS[split] if len(runs) == 1 else run_colour(i)


def _split_keys(runs) -> list[Key]:
    """Legend of a train-vs-val plot: the split colours with one run; run colours and grey styles with several."""
    if len(runs) == 1:
        return [Key(split, SPLIT_COLOURS[split], SPLIT_STYLE[split]) for split in SPLIT_STYLE]
    return _run_keys(runs) + [Key(split, KEY_COLOUR, style, style_only=True) for split, style in SPLIT_STYLE.items()]


def _run_keys(runs) -> list[Key]:
    return [Key(label, run_colour(i)) for i, (label, _) in enumerate(runs)]


def relative(rows: list[dict], key: str) -> list[dict]:
    """``rows`` with ``key`` divided by its first finite train value (1.0 at the start): the shape of a curve, for
    runs whose losses are on different scales."""
    first = next((row[key] for row in rows if row.get("split") == "train" and row.get(key)), None)
    return [{**row, key: row[key] / first} if first and row.get(key) is not None else row
            for row in rows if key in row]


def loss_grid(runs, normalise: bool = False) -> Figure | None:
    """Weighted loss per term (rows) and scale (columns), train vs val; None when no term was logged.

    ``normalise``: divide each run's curve by its first train value (for runs whose loss settings differ)."""
    scales, terms = _union(runs)
    if not scales or not terms:
        return None
    fig, axes = _grid(len(terms), len(scales))
    for r, term in enumerate(terms):
        for c, scale in enumerate(scales):
            key = scale_keys.loss_key(term, scale)
            for i, (_, rows) in enumerate(runs):
                shown = relative(rows, key) if normalise else rows
                for split, style in SPLIT_STYLE.items():
                    _line(axes[r][c], *series(shown, split, key), _split_colour(runs, i, split), style)
            _panel(axes[r][c], f"{term} / s{scale}")
        axes[r][0].set_ylabel("÷ first train value" if normalise else "weighted loss", fontsize="small")
    axes[-1][0].set_xlabel("epoch", fontsize="small")
    _legend(fig, _split_keys(runs))
    return fig


def stats_grid(runs) -> Figure | None:
    """Assignment statistics (rows: iou vs iou_prior, obj_pos vs obj_neg (log), cls_prob, recalls, n_pos) per scale
    (columns). One run: train and val, a colour per statistic and split. Several runs: val only (each run's report
    has its train curves), a colour per run, the panel's second statistic dotted."""
    scales, _ = _union(runs)
    if not scales:
        return None
    single = len(runs) == 1
    fig, axes = _grid(len(STAT_PANELS), len(scales))
    drawn = set()  # (stat, split) pairs with data: the legend lists only those
    for r, (title, stats, log) in enumerate(STAT_PANELS):
        for c, scale in enumerate(scales):
            ax = axes[r][c]
            for i, (_, rows) in enumerate(runs):
                for k, name in enumerate(stats):
                    for j, split in enumerate(SPLIT_STYLE if single else ("val",)):
                        x, y = series(rows, split, scale_keys.stat_key(name, scale))
                        if single:
                            _line(ax, x, y, STAT_COLOURS[name][j], SPLIT_STYLE[split])
                        else:
                            _line(ax, x, y, run_colour(i), STAT_STYLES[k])
                        drawn |= {(name, split)} if x else set()
            if log and ax.has_data() and _positive(ax):
                ax.set_yscale("log")
            _panel(ax, f"{title} / s{scale}")
    axes[-1][0].set_xlabel("epoch", fontsize="small")
    if single:
        keys = [Key(f"{name} {split}", STAT_COLOURS[name][j], SPLIT_STYLE[split])
                for _, stats, _ in STAT_PANELS for name in stats for j, split in enumerate(SPLIT_STYLE)
                if (name, split) in drawn]
    else:
        paired = [[name for name in stats if (name, "val") in drawn] for _, stats, _ in STAT_PANELS if len(stats) > 1]
        keys = _run_keys(runs) + [Key("val " + ", ".join(names), KEY_COLOUR, STAT_STYLES[k], style_only=True)
                                  for k in range(2) if (names := [p[k] for p in paired if len(p) == 2])]
    _legend(fig, keys)
    return fig


def grad_share_grid(runs, strides: list[int] | None = None) -> Figure | None:
    """Gradient share of each term per scale (one panel per scale, x = epoch, y in 0..1) from the train rows.

    One run: a colour per term. Several: a colour per run, a line style and marker per term. ``strides``: the
    stride of each scale index, shown in the panel titles when given. None when no run logged a
    ``grad_share/<term>/s<i>`` key.
    """
    scales, terms = set(), set()
    for _, rows in runs:
        for row in rows:
            for key in row:
                match = scale_keys.match(key, scale_keys.GRAD_SHARE)
                if match:
                    terms.add(match[0])
                    scales.add(match[1])
    if not scales:
        return None
    terms = _term_order(terms)
    extra, extra_colours = itertools.cycle(EXTRA_TERM_STYLES), itertools.cycle(EXTRA_COLOURS)
    styles = {term: TERM_STYLES.get(term) or next(extra) for term in terms}
    colours = {term: TERM_COLOURS.get(term) or next(extra_colours) for term in terms}
    single = len(runs) == 1
    fig, axes = _grid(1, len(scales))
    for ax, scale in zip(axes[0], sorted(scales), strict=True):
        for i, (_, rows) in enumerate(runs):
            for term in terms:
                linestyle, marker = ("-", "o") if single else styles[term]
                colour = colours[term] if single else run_colour(i)
                _line(ax, *series(rows, "train", scale_keys.grad_share_key(term, scale)), colour, linestyle, marker)
        ax.set_ylim(*SHARE_LIMITS)
        known = strides is not None and scale < len(strides)
        _panel(ax, f"s{scale} (stride {strides[scale]})" if known else f"s{scale}")
    axes[0][0].set_xlabel("epoch", fontsize="small")
    axes[0][0].set_ylabel("share of the scale's gradient", fontsize="small")
    if single:
        keys = [Key(term, colours[term], "-", "o") for term in terms]
    else:
        keys = _run_keys(runs) + [Key(term, KEY_COLOUR, *styles[term], style_only=True) for term in terms]
    _legend(fig, keys)
    return fig


def lr_per_step(lr_rows: list[dict]) -> tuple[list[float], list[float]]:
    """(x, lr) of every training step from ``lr.jsonl`` rows (``epoch``, ``lr``: [per step]); x is the epoch plus
    the share of it done before the step, so epoch e's first step sits at e and the curve spans [0, epochs)."""
    x, y = [], []
    for row in lr_rows:
        steps = row["lr"]
        x += [row["epoch"] + k / len(steps) for k in range(len(steps))]
        y += [float(v) for v in steps]
    return x, y


def schedule_plot(runs, lr_rows: list[list[dict]] | None = None,
                  lr_warmup_epochs: list[float | None] | None = None) -> Figure | None:
    """Two panels: the learning rate (left) and the loss's anchor-prior warm-up share (right), from the train rows.

    ``lr_rows``: per run its ``lr.jsonl`` rows (the lr of every step, which shows the warm-up ramp); a run without
    them is drawn from the train rows' ``lr`` (the epoch's last step) with markers. ``lr_warmup_epochs``: per run
    the configured ``optim.warmup_epochs``, drawn as a dotted vertical line where the lr warm-up ends. The warm-up
    share is the fraction of an epoch's batches under ``loss.warmup_batches`` (keras-yolo3's anchor-prior targets),
    unrelated to the lr warm-up. One run: a colour per curve; several: a colour per run. None when no run logged
    either.
    """
    lr_rows = lr_rows or [[] for _ in runs]
    warm_ends = lr_warmup_epochs or [None] * len(runs)
    has_lr = any(lr_rows) or any(series(rows, "train", "lr")[0] for _, rows in runs)
    if not has_lr and not any(series(rows, "train", "warmup")[0] for _, rows in runs):
        return None
    single = len(runs) == 1
    curves = {"lr": Key("lr per step" if any(lr_rows) else "lr at the epoch's last step", SCHEDULE_COLOURS[0]),
              "end": Key("end of the lr warm-up (optim.warmup_epochs)", SCHEDULE_COLOURS[1], ":"),
              "warmup": Key("anchor-prior warm-up: share of batches", SCHEDULE_COLOURS[2], "--", "s")}
    fig, axes = _grid(1, 2, WIDE_SIZE)
    lr_ax, warm_ax = axes[0]
    for i, ((_, rows), steps, end) in enumerate(zip(runs, lr_rows, warm_ends, strict=True)):
        colour = {name: key.colour if single else run_colour(i) for name, key in curves.items()}
        if steps:
            _line(lr_ax, *lr_per_step(steps), colour["lr"], "-")
        else:
            _line(lr_ax, *series(rows, "train", "lr"), colour["lr"], "-", "o")
        if end:
            lr_ax.axvline(end, color=colour["end"], linestyle=":", linewidth=LINE_WIDTH)
        _line(warm_ax, *series(rows, "train", "warmup"), colour["warmup"], "--", "s")
    _panel(lr_ax, "learning rate (optim.lr × schedule)")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))  # lr values like 0.002 need no wide margin
    _panel(warm_ax, "anchor-prior warm-up of the loss (loss.warmup_batches)")
    warm_ax.set_ylim(*SHARE_LIMITS)  # a share: always on the same 0..1 axis
    warm_ax.set_ylabel("share of the epoch's batches", fontsize="small")
    for ax in axes[0]:
        ax.set_xlabel("epoch", fontsize="small")
    if not any(warm_ends):
        del curves["end"]
    if single:
        keys = list(curves.values())
    else:
        keys = _run_keys(runs) + [Key(k.label, KEY_COLOUR, k.linestyle, k.marker, style_only=True)
                                  for k in curves.values()]
    _legend(fig, keys)
    return fig


def map_plot(runs) -> Figure | None:
    """Validation mAP50 and mAP50_95 per epoch; None when no val row has them.

    One run: a colour per metric. Several: a colour per run, mAP50 solid and mAP50_95 dashed."""
    if not any(series(rows, "val", "mAP50")[0] for _, rows in runs):
        return None
    fig, axes = _grid(1, 1, WIDE_SIZE)
    ax = axes[0][0]
    metrics = (("mAP50", "-", "o"), ("mAP50_95", "--", "v"))
    for i, (_, rows) in enumerate(runs):
        for j, (metric, style, marker) in enumerate(metrics):
            colour = list(SPLIT_COLOURS.values())[j] if len(runs) == 1 else run_colour(i)
            _line(ax, *series(rows, "val", metric), colour, style, marker)
    _panel(ax, "validation mAP")
    ax.set_xlabel("epoch", fontsize="small")
    ax.set_ylabel("val mAP", fontsize="small")
    if len(runs) == 1:
        keys = [Key(m, c, s, k) for (m, s, k), c in zip(metrics, SPLIT_COLOURS.values(), strict=True)]
    else:
        keys = _run_keys(runs) + [Key(m, KEY_COLOUR, s, k, style_only=True) for m, s, k in metrics]
    _legend(fig, keys)
    return fig


def size_names(rows: list[dict]) -> tuple[list[str], list[str]]:
    """COCO's sizes and the dataset's size bins that the val rows hold an mAP50 of (bins in logged order)."""
    sizes = [size for size in scale_keys.COCO_SIZES
             if any(scale_keys.size_key("mAP50", size) in row for row in rows if row.get("split") == "val")]
    bins = [parsed[0] for row in rows if row.get("split") == "val" for key in row
            if (parsed := scale_keys.parse_bin_key(key)) and parsed[1] == "mAP50"]
    return sizes, list(dict.fromkeys(bins))


def size_map_plot(rows: list[dict]) -> Figure | None:
    """Validation mAP50 per epoch of each object size of one run: COCO's small / medium / large (left panel) and
    the dataset's own size bins (right panel, when it has some). None when no val row has them; an epoch whose
    size had no truths is a gap."""
    sizes, bins = size_names(rows)
    if not sizes and not bins:
        return None
    panels = [("val mAP50 by COCO size", [(s, scale_keys.size_key("mAP50", s)) for s in sizes])]
    if bins:
        panels.append(("val mAP50 by the dataset's size bins", [(b, scale_keys.bin_key(b, "mAP50")) for b in bins]))
    fig, axes = _grid(1, len(panels), WIDE_SIZE)
    keys, colour_index = [], 0
    for ax, (title, named) in zip(axes[0], panels, strict=True):
        for name, key in named:
            colour = run_colour(colour_index)
            colour_index += 1
            _line(ax, *series(rows, "val", key), colour, "-", "o")
            keys.append(Key(name, colour, "-", "o"))
        _panel(ax, title)
        ax.set_ylim(*SHARE_LIMITS)  # an AP: always on the same 0..1 axis
        ax.set_xlabel("epoch", fontsize="small")
    _legend(fig, keys)
    return fig


def histogram_grid(runs) -> Figure | None:
    """Validation histograms (rows = obj_pos, obj_neg, iou; columns = scales) as shares of samples per bin.

    ``runs``: ``(label, hist_rows)`` pairs, ``hist_rows`` the histograms.jsonl objects (``epoch``, ``edges``,
    ``histograms`` {"<kind>/s<i>": {"counts": [bins], "num": n}}). Each run's last epoch is drawn solid;
    with one run its first epoch is drawn dotted beside it (its own colour), to show the drift. None when none
    was logged.
    """
    runs = [(label, rows) for label, rows in runs if rows]
    if not runs:
        return None
    keys = [key for _, rows in runs for key in rows[-1]["histograms"]]
    parsed = [scale_keys.parse(k) for k in keys]
    scales = sorted({scale for _, scale in parsed})
    kinds = list(dict.fromkeys(kind for kind, _ in parsed))
    single = len(runs) == 1 and len(runs[0][1]) > 1
    fig, axes = _grid(len(kinds), len(scales))
    for r, kind in enumerate(kinds):
        for c, scale in enumerate(scales):
            ax = axes[r][c]
            for i, (_, rows) in enumerate(runs):
                shown = ([(rows[0], ":", SPLIT_COLOURS["val"]), (rows[-1], "-", SPLIT_COLOURS["train"])] if single
                         else [(rows[-1], "-", run_colour(i))])
                for row, style, colour in shown:
                    hist = row["histograms"].get(scale_keys.key(kind, scale))
                    if hist and hist.get("num"):
                        shares = [n / hist["num"] for n in hist["counts"]]
                        ax.stairs(shares, row["edges"], linestyle=style, color=colour, linewidth=LINE_WIDTH)
            if kind == "obj_neg" and _positive(ax, patches=True):
                ax.set_yscale("log")  # nearly every negative sits in the first bin: log shows the tail
            _panel(ax, f"{kind} / s{scale}")
            ax.xaxis.set_major_locator(MaxNLocator())  # bins, not epochs
        axes[r][0].set_ylabel("share of samples", fontsize="small")
    if single:
        (_, rows), = runs
        keys = [Key(f"last epoch ({rows[-1]['epoch']})", SPLIT_COLOURS["train"]),
                Key(f"first epoch ({rows[0]['epoch']})", SPLIT_COLOURS["val"], ":")]
    else:
        keys = [*_run_keys(runs), Key("last epoch", KEY_COLOUR, "-", style_only=True)]
    _legend(fig, keys)
    return fig


def _positive(ax: Axes, patches: bool = False) -> bool:
    """A log axis needs some positive value (probabilities can be exactly 0 early on)."""
    if patches:
        return any(p.get_data().values.max() > 0 for p in ax.patches)
    return any(v > 0 for line in ax.get_lines() for v in line.get_ydata() if not math.isnan(v))


def _legend(fig: Figure, keys: list[Key]) -> None:
    """One legend under the panels, an entry per ``Key``."""
    handles = [Line2D([], [], color=k.colour, linestyle=k.linestyle, marker=k.marker, markersize=MARKER_SIZE + 1,
                      linewidth=LINE_WIDTH) for k in keys]
    fig.legend(handles, [k.label for k in keys], loc="lower center", ncols=min(len(keys), LEGEND_COLUMNS),
               fontsize="small", handlelength=3, frameon=False)


def legend_keys(fig: Figure) -> list[Key]:
    """The entries of the figure's legend (read back from its handles: colour, line style, marker, text)."""
    keys = []
    for legend in fig.legends:
        for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
            colour, marker = to_hex(handle.get_color()), handle.get_marker()
            keys.append(Key(text.get_text(), colour, handle.get_linestyle(),
                            None if marker in ("None", "none", "", None) else marker, colour == KEY_COLOUR))
    return keys


def detach_legend(fig: Figure) -> list[Key]:
    """Remove the figure's legend and the strip kept for it; returns its entries (for a legend in HTML)."""
    keys = legend_keys(fig)
    if not fig.legends:
        return keys
    fig.legends.clear()
    width, height = fig.get_size_inches()
    spec = fig.axes[0].get_subplotspec().get_gridspec()
    top, bottom = (1 - spec.top) * height, spec.bottom * height - LEGEND_HEIGHT
    fig.set_size_inches(width, height - LEGEND_HEIGHT)
    spec.update(top=1 - top / (height - LEGEND_HEIGHT), bottom=bottom / (height - LEGEND_HEIGHT))
    for ax in fig.axes:  # the axes keep their old figure fractions until placed again on the updated grid
        ax.set_position(ax.get_subplotspec().get_position(fig))
    return keys
