"""``yololab data preview``: a PNG grid of augmented training samples with their boxes drawn."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from yololab.commands.messages import EXIT_ERROR, print_error
from yololab.data.augment_config import AugmentConfig
from yololab.data.errors import DataError

if TYPE_CHECKING:
    from yololab.data.augment import Sample
    from yololab.data.dataset import Transform, YoloDataset

DEFAULT_TILE = 256  # pixels per grid cell; each augmented sample is letterboxed into it
GRID_BACKGROUND = (0, 0, 0)  # shown only in empty cells of the last row
BOX_WIDTH = 2  # outline width in pixels
LABEL_OFFSET = (2, 11)  # class label drawn this many pixels right of and above the box corner
GOLDEN_RATIO_CONJUGATE = (5**0.5 - 1) / 2  # hue step that spreads any number of classes evenly
COLOUR_SATURATION = 0.85  # vivid yet readable on black digits backgrounds and on photos
UINT8_MAX = 255
OVERRIDE_PREFIX = "data.augment."  # the same keys as `yololab train --set data.augment.KEY=VALUE`
console = Console()


@dataclass(frozen=True)
class PreviewResult:
    """What :func:`preview_grid` wrote: the PNG, its ``(width, height)``, the boxes of the source samples
    and the boxes drawn (mosaic adds boxes of other images)."""

    path: Path
    size: tuple[int, int]
    boxes_in: int
    boxes_out: int


def preview_grid(
    source: YoloDataset | Sequence[Sample],
    transform: Transform,
    path: str | Path,
    n: int = 16,
    cols: int = 4,
    tile: int = DEFAULT_TILE,
    names: Sequence[str] | None = None,
) -> PreviewResult:
    """Augment ``n`` samples (cycling through ``source``) and draw them with their boxes into one PNG.

    ``source`` is a dataset or a sequence of raw samples ``(image HWC uint8, boxes [M, 4] cxcywh
    normalised, classes [M])``. Each augmented sample is letterboxed into a ``tile x tile`` cell of a
    grid of ``cols`` columns and ``ceil(n / cols)`` rows; boxes are outlined in a colour per class and
    labelled with the class name (``names``) or id.
    """
    from yololab.data.dataset import YoloDataset

    if n < 1 or cols < 1 or tile < 1:
        raise ValueError(f"n, cols and tile must be positive, got n={n}, cols={cols}, tile={tile}")
    count = len(source)
    if count == 0:
        raise ValueError("nothing to preview: the source has no samples")
    rows = math.ceil(n / cols)
    grid = Image.new("RGB", (cols * tile, rows * tile), GRID_BACKGROUND)
    boxes_in = boxes_out = 0
    for i in range(n):
        image, boxes, classes = (source.raw_item(i % count) if isinstance(source, YoloDataset)
                                 else source[i % count])
        boxes_in += len(boxes)
        image, boxes, classes = transform(image, boxes, classes)
        boxes_out += len(boxes)
        grid.paste(_draw_tile(image, boxes, classes, tile, names), ((i % cols) * tile, (i // cols) * tile))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return PreviewResult(path, grid.size, boxes_in, boxes_out)


def _draw_tile(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, tile: int,
               names: Sequence[str] | None) -> Image.Image:
    """One sample letterboxed into ``tile x tile`` with its boxes drawn -> PIL RGB image."""
    import torch

    from yololab.boxes import box_cxcywh_to_xyxy
    from yololab.data.letterbox import boxes_to_letterbox, letterbox

    boxed, info = letterbox(image, (tile, tile))
    xyxy = box_cxcywh_to_xyxy(torch.from_numpy(boxes_to_letterbox(boxes, info, (tile, tile)))) * tile
    canvas = Image.fromarray(boxed.squeeze(-1) if boxed.shape[-1] == 1 else boxed).convert("RGB")
    pen = ImageDraw.Draw(canvas)
    for (x1, y1, x2, y2), cls in zip(xyxy.tolist(), np.asarray(classes).tolist(), strict=True):
        colour = class_colour(int(cls))
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=BOX_WIDTH)
        label = names[int(cls)] if names is not None and 0 <= int(cls) < len(names) else str(int(cls))
        pen.text((x1 + LABEL_OFFSET[0], max(y1 - LABEL_OFFSET[1], 0)), label, fill=colour)
    return canvas


def class_colour(cls: int) -> tuple[int, int, int]:
    """A bright RGB colour per class id; neighbouring ids land far apart on the hue circle."""
    red, green, blue = colorsys.hsv_to_rgb((cls * GOLDEN_RATIO_CONJUGATE) % 1.0, COLOUR_SATURATION, 1.0)
    return round(red * UINT8_MAX), round(green * UINT8_MAX), round(blue * UINT8_MAX)


def augment_config(overrides: Sequence[str]) -> AugmentConfig:
    """``["fliplr=1.0", "mosaic=0.5"]`` (or ``data.augment.fliplr=1.0``) -> AugmentConfig on the defaults.

    Raises ValueError (a ConfigError or pydantic's ValidationError) naming the bad key or value.
    """
    from yololab.config import parse_overrides

    items = [item.removeprefix(OVERRIDE_PREFIX) for item in overrides]
    return AugmentConfig(**parse_overrides(items))


def preview_command(
    data: Annotated[Path, typer.Argument(help="Dataset data.yaml.")],
    split: Annotated[str, typer.Option(help="Split to draw from: train, val or test.")] = "train",
    n: Annotated[int, typer.Option("--n", "-n", help="Samples in the grid.")] = 16,
    cols: Annotated[int, typer.Option(help="Columns of the grid.")] = 4,
    tile: Annotated[int, typer.Option(help="Side of one grid cell in pixels.")] = DEFAULT_TILE,
    channels: Annotated[int, typer.Option(help="Read images as 1 (grey) or 3 (RGB) channels.")] = 3,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("preview.png"),
    seed: Annotated[int, typer.Option(help="Seed of the augmentation: same seed, same picture.")] = 0,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Augmentation override KEY=VALUE, e.g. fliplr=1.0 (repeatable).")] = None,
) -> None:
    """Draw augmented samples of a dataset split with their boxes into one PNG grid, to check that the
    augmentation keeps boxes on their objects.

    Example: yololab data preview data/digits/data.yaml --split train -n 16 --set mosaic=1.0 --out preview.png
    """
    from yololab.data.augment import build_transform
    from yololab.data.dataset import YoloDataset
    from yololab.data.yolo_format import load_data_yaml

    try:
        cfg = augment_config(set_ or [])
        spec = load_data_yaml(data)
        if split not in spec.splits:
            present = ", ".join(spec.splits) or "none"
            raise DataError(data, None, f"no split {split!r}; the yaml has {present}")
        dataset = YoloDataset(spec.splits[split], spec.num_classes, tile, channels=channels)
        transform = build_transform(cfg, channels, seed=seed, sampler=dataset.random_raw_item)
        result = preview_grid(dataset, transform, out, n=n, cols=cols, tile=tile, names=spec.names)
    except ValueError as err:  # DataError, ConfigError and pydantic's ValidationError are ValueErrors
        print_error(console, str(err))
        raise typer.Exit(EXIT_ERROR) from None
    table = Table(title=f"augmentation preview of {data} ({split})", show_header=False)
    for key, value in (
        ("output", str(result.path)),
        ("grid", f"{result.size[0]} x {result.size[1]} px, {n} samples in {cols} columns"),
        ("boxes", f"{result.boxes_in} in the source samples, {result.boxes_out} drawn"),
        ("augmentation", " ".join(f"{k}={v}" for k, v in cfg.model_dump().items())),
    ):
        table.add_row(key, value)
    console.print(table)
