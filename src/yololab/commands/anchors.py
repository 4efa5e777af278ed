"""``yololab anchors``: propose anchors for a dataset by k-means and compare them with a cfg's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from yololab.commands.messages import fail
from yololab.loss.config import LossConfig

if TYPE_CHECKING:
    import torch

console = Console()

DEFAULT_SCALES = 3  # YOLOv3's three heads, used when no --cfg says how many there are
DEFAULT_NUM = 9  # YOLOv3's nine anchors, proposed when neither --num nor --cfg says how many
# The ratio rule's size limit: the loss's own default (ultralytics anchor_t), as yololab.anchors takes it.
DEFAULT_ANCHOR_T = LossConfig.model_fields["anchor_t"].default
# Proposed anchors are rounded to 0.1 px: readable in a cfg, and far below what moves an IoU.
ANCHOR_DECIMALS = 1
MIN_ANCHOR = 10.0 ** -ANCHOR_DECIMALS  # rounding must not give a zero-sized anchor


def anchors_command(
    data: Annotated[Path, typer.Argument(help="The dataset's data.yaml (its train split is used).")],
    num: Annotated[int | None, typer.Option(help="Number of anchors (a multiple of the number of scales; "
                                                 "default: as many as the cfg has, else 9).")] = None,
    img_size: Annotated[int, typer.Option(help="Network input size: boxes are measured after the "
                                               "letterbox to this size.")] = 416,
    cfg: Annotated[str | None, typer.Option(help="Darknet cfg (path or packaged name) whose anchors to "
                                                 "compare; also gives the number of scales.")] = None,
    seed: Annotated[int, typer.Option(help="k-means seed: same seed, same anchors.")] = 0,
    anchor_t: Annotated[float, typer.Option(help="Size-ratio limit of the ratio rule (ultralytics "
                                                 "anchor_t).")] = DEFAULT_ANCHOR_T,
    write_cfg_path: Annotated[Path | None, typer.Option("--write-cfg", help="Write a copy of --cfg with "
                                                        "the proposed anchors here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Save a scatter plot of box sizes and anchors (PNG).")]
    = None,
    json_out: Annotated[Path | None, typer.Option(help="Save both fits and the proposed anchors (JSON).")]
    = None,
) -> None:
    """Propose anchors by k-means (1 - IoU distance) and report how they fit, next to the cfg's.

    Example: yololab anchors data/digits/data.yaml --img-size 256 --cfg yolov3-tiny-3l-small --plot a.png
    """
    from yololab.anchors import (
        AnchorError,
        anchor_fit,
        collect_box_sizes,
        group_per_scale,
        kmeans_anchors,
        plot_anchor_fit,
    )
    from yololab.data.errors import DataError
    from yololab.model import CfgError, Darknet, parse_cfg, write_cfg
    from yololab.model.build import resolve_cfg
    from yololab.model.darknet import set_anchors

    if write_cfg_path is not None and cfg is None:
        _fail("--write-cfg needs --cfg: the cfg to copy with the proposed anchors")
    try:
        model = Darknet.from_cfg(resolve_cfg(cfg)) if cfg is not None else None
        strides = model.strides if model is not None else None
        n_scales = len(strides) if strides is not None else DEFAULT_SCALES
        if num is None:
            num = sum(len(a) for a in model.anchors) if model is not None else DEFAULT_NUM
        wh = collect_box_sizes(data, "train", img_size)
        proposed_flat = kmeans_anchors(wh, num, seed=seed).round(decimals=ANCHOR_DECIMALS)
        proposed_flat = proposed_flat.clamp(min=MIN_ANCHOR)
        proposed = group_per_scale(proposed_flat, n_scales, strides)
        fits = {"proposed": anchor_fit(wh, proposed, strides, anchor_t)}
        current = None
        if model is not None:
            current = [a.clone() for a in model.anchors]
            fits["current"] = anchor_fit(wh, current, strides, anchor_t)
        if write_cfg_path is not None:
            sections = parse_cfg(resolve_cfg(cfg))
            set_anchors(sections, _written(proposed))
            write_cfg(sections, write_cfg_path)
    except (AnchorError, DataError, CfgError, FileNotFoundError) as err:
        _fail(str(err))
    _print_report(fits, current, proposed, strides, cfg, img_size)
    if write_cfg_path is not None:
        console.print(f"wrote {write_cfg_path}")
    if plot is not None:
        console.print(f"wrote {plot_anchor_fit(wh, current, proposed, plot)}")
    if json_out is not None:
        record = {"data": str(data), "img_size": img_size, "num": num, "seed": seed, "cfg": cfg,
                  "proposed_anchors": [a.tolist() for a in _written(proposed)], **fits}
        json_out.write_text(json.dumps(record, indent=2) + "\n")
        console.print(f"wrote {json_out}")


def _written(anchors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The anchors as written to a cfg or JSON: float64 rounded to ANCHOR_DECIMALS, so 74.4 reads 74.4 (the
    float32 nearest to it is 74.4000015258789)."""
    return [a.double().round(decimals=ANCHOR_DECIMALS) for a in anchors]


def _fail(message: str) -> None:
    fail(console, message)


def _anchor_text(anchors: list[list[float]]) -> str:
    return "  ".join(f"{w:g}x{h:g}" for w, h in anchors)


def _print_report(fits: dict, current: list[torch.Tensor] | None, proposed: list[torch.Tensor],
                  strides: list[int] | None, cfg: str | None, img_size: int) -> None:
    """The fit table (current vs proposed), the anchors per head, and the cfg ``anchors=`` line."""
    columns = [name for name in ("current", "proposed") if name in fits]
    table = Table(title=f"Anchor fit on {fits['proposed']['n_truths']} training boxes at {img_size} px")
    table.add_column("")
    for name in columns:
        title = escape(f"current ({Path(cfg).name})") if name == "current" else name
        table.add_column(title, justify="right")

    def row(label: str, value) -> None:
        table.add_row(label, *(value(fits[name]) for name in columns))

    t = fits["proposed"]["anchor_t"]
    row("mean best IoU", lambda f: f"{f['mean_best_iou']:.3f}")
    row("BPR (best IoU > 0.5)", lambda f: f"{f['bpr_iou50']:.3f}")
    row(f"BPR (ratio < {t:g})", lambda f: f"{f['bpr_ratio']:.3f}")
    row(f"anchors per truth (ratio < {t:g})", lambda f: f"{f['anchors_per_truth_ratio']:.2f}")
    for i in range(len(proposed)):
        name = f"stride {strides[i]}" if strides is not None else f"scale {i}"
        row(f"{name}: share of truths", lambda f, i=i: f"{f['share_per_scale'][i]:.3f}")
        row(f"{name}: area spread", lambda f, i=i: f"{f['spread_per_scale'][i]['area_ratio']:.1f}")
        row(f"{name}: aspect spread", lambda f, i=i: f"{f['spread_per_scale'][i]['aspect_ratio']:.2f}")
    console.print(table)

    anchors = Table(title=escape("Anchors per [yolo] layer in cfg order (w x h, input pixels)"))
    anchors.add_column(escape("[yolo]"), justify="right")
    anchors.add_column("stride", justify="right")
    if current is not None:
        anchors.add_column("current")
    anchors.add_column("proposed")
    for i, a in enumerate(proposed):
        now = [_anchor_text(current[i].tolist())] if current is not None else []
        stride = str(strides[i]) if strides is not None else "-"
        anchors.add_row(str(i), stride, *now, _anchor_text(a.tolist()))
    console.print(anchors)
    flat = sorted((p for a in proposed for p in a.tolist()), key=lambda wh: wh[0] * wh[1])
    console.print("anchors = " + ",  ".join(f"{w:g},{h:g}" for w, h in flat), soft_wrap=True)
