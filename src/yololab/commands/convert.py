"""``yololab data convert``: convert a dataset between YOLO, one-line, COCO and Pascal VOC formats."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from yololab.commands.data_tools import parse_fractions
from yololab.commands.messages import fail
from yololab.data.errors import DataError
from yololab.data.formats import SOURCE_FORMATS, TARGET_FORMATS, convert
from yololab.data.formats.records import SKIP_CROWD, SKIP_DIFFICULT

console = Console()

MAX_LISTED_FILES = 10  # more written files than this (VOC: one XML per image) are summed up by folder


def convert_command(
    src: Annotated[Path, typer.Argument(help="Source: a data.yaml, a COCO .json (or a folder with "
                                             "annotations/instances_*.json), a VOC .xml or folder of them, "
                                             "or a one-line .txt (path x1,y1,x2,y2,cls ...).")],
    dst: Annotated[Path, typer.Argument(help="Output folder; must be absent or empty.")],
    to: Annotated[str, typer.Option("--to", help=f"Target format: {' | '.join(TARGET_FORMATS)}.")] = "yolo",
    from_: Annotated[str | None, typer.Option(
        "--from", help=f"Source format when the path does not tell: {' | '.join(SOURCE_FORMATS)}.")] = None,
    names: Annotated[Path | None, typer.Option(
        help="Class names file, one per line (one-line and VOC sources).")] = None,
    image_root: Annotated[Path | None, typer.Option(
        help="Folder the source's image paths are relative to (one-line, COCO, VOC).")] = None,
    split: Annotated[str | None, typer.Option(
        help="Split the images anew: train,val[,test] fractions (as `data split`); each image is written to "
             "its split's folder. Default: the source's own splits.")] = None,
    seed: Annotated[int, typer.Option(help="With --split: random seed; same seed, same split.")] = 0,
    stratify: Annotated[bool, typer.Option(help="With --split: keep the class mix in every split.")] = False,
) -> None:
    """Convert a dataset to YOLO txt + data.yaml, COCO JSON or Pascal VOC XML; images are hard-linked or copied.

    Boxes are kept exactly, going through pixel coordinates.
    COCO crowd annotations and VOC difficult objects are left out and counted in the summary.

    VOC output is the devkit layout: Annotations/, JPEGImages/ and ImageSets/Main/<split>.txt. A VOC XML's
    image is looked for beside it, in the folder beside it named by its <folder>, and in ../JPEGImages.

    Example: yololab data convert VOCdevkit/VOC2007 data/voc --to yolo

    Example: yololab data convert photos/annotations data/photos --to yolo --split 0.7,0.15,0.15
    """
    if to not in TARGET_FORMATS or (from_ is not None and from_ not in SOURCE_FORMATS):
        _fail(f"--to must be one of {list(TARGET_FORMATS)} and --from one of {list(SOURCE_FORMATS)}")
    try:
        fractions = parse_fractions(split, "--split") if split is not None else None
        ann, written = convert(src, dst, to=to, src_format=from_, names=names, image_root=image_root,
                               split=fractions, seed=seed, stratify=stratify)
    except (DataError, FileExistsError, ValueError) as err:
        _fail(str(err))
    table = Table(title=f"{escape(str(src))} -> {escape(str(dst))} ({to})")
    for column in ("split", "images", "boxes", "background images", f"skipped {SKIP_CROWD}",
                   f"skipped {SKIP_DIFFICULT}"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, records in ann.splits.items():
        skipped = ann.skipped.get(split, {})
        table.add_row(split, str(len(records)), str(ann.n_boxes(split)),
                      str(sum(len(r.boxes) == 0 for r in records)),
                      str(skipped.get(SKIP_CROWD, 0)), str(skipped.get(SKIP_DIFFICULT, 0)))
    console.print(table)
    console.print(f"{ann.num_classes} classes: {escape(', '.join(ann.names))}", highlight=False)
    if len(written) > MAX_LISTED_FILES:
        folder = os.path.commonpath([str(path) for path in written])
        console.print(f"wrote {len(written)} files in {escape(folder)}", highlight=False)
        return
    for path in written:
        console.print(f"wrote {escape(str(path))}", highlight=False)


def _fail(message: str) -> None:
    fail(console, message)
