"""Curves of a study: per configuration (one colour) the mean over seeds per epoch as a line and the range over
seeds (min to max) as a band; train solid, val dashed. Built on the run plots' grid, colours and legend.

The x axis is the epoch, or the optimiser step at each epoch's end (``x="step"``) for a budget in steps, whose
runs have epochs of different lengths."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from yololab import keys as scale_keys
from yololab.diagnostics import plots

BAND_ALPHA = 0.2  # opacity of the band over seeds: the mean lines stay readable through it

# ``groups``: (configuration label, [metrics.jsonl rows of each of its seeds])
Groups = list[tuple[str, list[list[dict]]]]


def seed_band(seeds: list[list[dict]], split: str, key: str,
              x: str = "epoch") -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(x values, mean, min, max) over the seeds that logged ``key`` at each x (epoch or step)."""
    by_x: dict[int, list[float]] = {}
    for rows in seeds:
        for at, value in zip(*plots.series(rows, split, key, x), strict=True):
            if math.isfinite(value):
                by_x.setdefault(at, []).append(value)
    xs = sorted(by_x)
    values = [np.asarray(by_x[at]) for at in xs]
    return (xs, np.array([v.mean() for v in values]), np.array([v.min() for v in values]),
            np.array([v.max() for v in values]))


def _draw(ax, groups: Groups, key: str, x: str, splits=("train", "val")) -> None:
    for i, (_, seeds) in enumerate(groups):
        for split in splits:
            xs, mean, low, high = seed_band(seeds, split, key, x)
            if xs:
                colour = plots.run_colour(i)
                ax.plot(xs, mean, plots.SPLIT_STYLE[split], color=colour, marker="o",
                        markersize=plots.MARKER_SIZE)
                ax.fill_between(xs, low, high, color=colour, alpha=BAND_ALPHA, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers


def _keys(groups: Groups, styles: list[tuple[str, str]]) -> list[plots.Key]:
    """Legend entries: a colour per configuration, then each line style in the plots' key grey."""
    return [*(plots.Key(label, plots.run_colour(i), "-") for i, (label, _) in enumerate(groups)),
            *(plots.Key(text, plots.KEY_COLOUR, style, style_only=True) for style, text in styles)]


def loss_band_grid(groups: Groups, x: str = "epoch") -> Figure | None:
    """Weighted loss per term (columns) and scale (rows) against ``x``; None when no term was logged."""
    scales, terms = plots._union([(label, rows) for label, seeds in groups for rows in seeds])
    if not scales or not terms:
        return None
    fig, axes = plots._grid(len(scales), len(terms))
    for r, scale in enumerate(scales):
        for c, term in enumerate(terms):
            _draw(axes[r][c], groups, scale_keys.loss_key(term, scale), x)
            axes[r][c].set_title(f"{term} / s{scale}", fontsize="small")
            axes[r][c].tick_params(labelsize="x-small")
    axes[-1][0].set_xlabel(x, fontsize="small")
    plots._legend(fig, _keys(groups, [("-", "train (mean)"), ("--", "val (mean)")]))
    return fig


def map_band_plot(groups: Groups, x: str = "epoch") -> Figure | None:
    """Val mAP@0.5 and mAP@0.5:0.95 against ``x``, one panel each; None when no run validated."""
    if not any(plots.series(rows, "val", "mAP50")[0] for _, seeds in groups for rows in seeds):
        return None
    fig, axes = plots._grid(1, 2, plots.WIDE_SIZE)
    for ax, key in zip(axes[0], ("mAP50", "mAP50_95"), strict=True):
        _draw(ax, groups, key, x, splits=("val",))
        ax.set_title(f"val {key}", fontsize="small")
        ax.set_xlabel(x, fontsize="small")
    plots._legend(fig, _keys(groups, [("--", "val (mean over seeds; band: min to max)")]))
    return fig
