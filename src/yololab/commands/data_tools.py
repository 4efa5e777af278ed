"""``yololab data make sparse | photo``, ``data check | stats | split``: make, check, describe and split datasets."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, NoReturn, get_args

import numpy as np
import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from yololab.commands.messages import fail, printable
from yololab.data.errors import DataError
from yololab.data.photo import DEFAULT_SIZES as PHOTO_SIZES
from yololab.data.photo import make_photo
from yololab.data.size_bins import SIZE_BINS_KEY, SizeBins
from yololab.data.sparse import (
    DEFAULT_SIZES,
    HIT_DENSITY,
    MAX_IOU,
    NOISE,
    SIZE_MIX_TEXT,
    make_sparse,
    parse_size_mix,
)
from yololab.data.splits import split_indices
from yololab.data.stats import dataset_stats, plot_stats
from yololab.data.stratify import stratified_split_indices
from yololab.data.validation_cache import check_channels, find_duplicate_lines
from yololab.data.yolo_format import (
    BOX_TOLERANCE,
    SPLIT_KEYS,
    BoxPolicy,
    label_path,
    load_data_yaml,
    parse_label_file,
    resolve_split,
    validate_split,
)

console = Console()

EXIT_PROBLEMS = 1  # the data has errors (check)
MAX_ROWS = 50  # problems listed by `data check` unless told otherwise
MAX_LISTED_SIZES = 5  # `data stats` lists up to this many image sizes; beyond, it summarises them
COMMON_SIZES = 3  # the most frequent sizes named in that summary
# Folders carry no class names: without --nc any non-negative integer class passes.
ANY_CLASS = sys.maxsize


def _fail(message: str) -> NoReturn:
    fail(console, message)


# ------------------------------------------------------------------------------------------ make sparse
def make_sparse_command(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/sparse"),
    n_train: Annotated[int, typer.Option(help="Training images.")] = DEFAULT_SIZES["n_train"],
    n_val: Annotated[int, typer.Option(help="Validation images.")] = DEFAULT_SIZES["n_val"],
    n_test: Annotated[int, typer.Option(help="Test images.")] = DEFAULT_SIZES["n_test"],
    imgsz: Annotated[int, typer.Option(help="Image side in pixels.")] = DEFAULT_SIZES["img_size"],
    channels: Annotated[int, typer.Option(help="1 (grey) or 3 (RGB, objects tinted).")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same files.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
    classes: Annotated[str, typer.Option(
        help="Class names separated by commas (track, shower and blob are drawn as such; other names take "
             "those shapes in turn), or a number of classes.")] = "track,shower",
    objects: Annotated[tuple[int, int], typer.Option(
        help="Objects per image, MIN MAX inclusive (MIN 0 allows background images).")] = (1, 4),
    size_mix: Annotated[str, typer.Option(
        help="Object size bins 'weight:WxH-WxH,...' in pixels; width and height are log-uniform within a "
             "bin.")] = SIZE_MIX_TEXT,
    noise: Annotated[float, typer.Option(help="Fraction of pixels with a faint noise hit.")] = NOISE,
    hit_density: Annotated[float, typer.Option(
        help="Fraction of the pixels of a shower's cone or a blob's ellipse that are hit.")] = HIT_DENSITY,
    max_iou: Annotated[float, typer.Option(help="Largest IoU between two objects of an image.")] = MAX_IOU,
    workers: Annotated[int | None, typer.Option(
        help="Writing processes (default: CPU count); the files do not depend on it.")] = None,
) -> None:
    """Generate sparse detector-like images (mostly zero, faint noise, tracks, showers and blobs from ~3x2 to
    ~200x150 pixels) in YOLO layout with a data.yaml.

    Example: yololab data make sparse --out data/sparse --n-train 24000 --n-val 3000 --n-test 3000
    """
    try:
        names: list[str] | int = int(classes) if classes.strip().isdigit() else classes.split(",")
        start = time.perf_counter()
        yaml_path = make_sparse(out, n_train=n_train, n_val=n_val, n_test=n_test, img_size=imgsz,
                                channels=channels, classes=names, objects_per_image=objects,
                                size_mix=parse_size_mix(size_mix), noise=noise, hit_density=hit_density,
                                max_iou=max_iou, seed=seed, overwrite=overwrite, workers=workers)
    except (ValueError, FileExistsError) as err:
        _fail(str(err))
    seconds = time.perf_counter() - start
    total = n_train + n_val + n_test
    console.print(f"wrote {escape(str(yaml_path))}: {total} images in {seconds:.1f} s "
                  f"({total / seconds:.0f} images/s)", highlight=False)


# ------------------------------------------------------------------------------------------ make photo
def make_photo_command(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/photo"),
    n_train: Annotated[int, typer.Option(help="Training images.")] = PHOTO_SIZES["n_train"],
    n_val: Annotated[int, typer.Option(help="Validation images.")] = PHOTO_SIZES["n_val"],
    n_test: Annotated[int, typer.Option(help="Test images.")] = PHOTO_SIZES["n_test"],
    imgsz: Annotated[int, typer.Option(help="Image side in pixels (at least 64).")] = PHOTO_SIZES["img_size"],
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same files.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """Generate small photo-like colour scenes (JPEG): lit balls, boxes, cones and rings of random colours and
    sizes, with shadows and partial occlusion, on jittered crops of scikit-learn's two sample photographs; in
    YOLO layout with a data.yaml.

    Example: yololab data make photo --out data/photo --n-train 200 --n-val 50 --n-test 50 --imgsz 320
    """
    try:
        start = time.perf_counter()
        yaml_path = make_photo(out, n_train=n_train, n_val=n_val, n_test=n_test, img_size=imgsz, seed=seed,
                               overwrite=overwrite)
    except (ValueError, FileExistsError) as err:
        _fail(str(err))
    seconds = time.perf_counter() - start
    total = n_train + n_val + n_test
    console.print(f"wrote {escape(str(yaml_path))}: {total} images in {seconds:.1f} s "
                  f"({total / seconds:.0f} images/s)", highlight=False)


# ------------------------------------------------------------------------------------------ check
def _splits_to_check(path: Path, nc: int | None) -> tuple[dict[str, list[Path]], int]:
    """``({source name: images}, number of classes)`` of a data.yaml, an images folder or an image list."""
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        spec = load_data_yaml(path)
        if nc is not None and nc != spec.num_classes:
            raise DataError(path, None, f"--nc {nc} but the yaml names {spec.num_classes} classes")
        return {f"{path} [{split}]": images for split, images in spec.splits.items()}, spec.num_classes
    return {str(path): _list_images(path)}, nc if nc is not None else ANY_CLASS


def _list_images(path: Path) -> list[Path]:
    """Images of a folder (recursively, sorted) or of a .txt list (entries relative to the list's folder)."""
    path = path.resolve()
    return resolve_split("images", str(path), path.parent if path.is_file() else path, path, None)


def check_command(
    path: Annotated[Path, typer.Argument(help="A data.yaml, a folder of images or a .txt list of images.")],
    channels: Annotated[int | None, typer.Option(
        help="Expected channels: 1 (grey) or 3 (colour); an image with other channels is an error.")] = None,
    full_decode: Annotated[bool, typer.Option(
        help="Decode every image's pixels (catches truncated files); --no-full-decode reads headers only."
    )] = True,
    nc: Annotated[int | None, typer.Option(
        help="Number of classes, for a folder or list (a data.yaml names its own).")] = None,
    max_rows: Annotated[int, typer.Option(help="Problems listed; all are counted.")] = MAX_ROWS,
    boxes_outside: Annotated[str, typer.Option(
        help="A box partly outside its image: refuse it (an error), or clip it to the image and list it, as "
             "training does with --set data.boxes_outside=clip.")] = "refuse",
) -> None:
    """Check a dataset: every image readable and decodable, every label line parseable, class ids in range,
    w and h > 0, no NaN, boxes inside the image (those overshooting by at most 0.001 of the image are clipped,
    further out is an error, or clipped and listed with --boxes-outside clip); duplicate label lines are
    warnings. Images without labels count as background. Prints the problems with file and line, each once
    (also when splits share images): tables in a terminal, plain `file:line: severity: problem` lines in a pipe
    or log. The exit status is 1 when there are errors.

    Example: yololab data check data/sparse/data.yaml --channels 1 --boxes-outside clip
    """
    if channels not in (None, 1, 3):
        _fail(f"--channels must be 1 or 3, got {channels}")
    if boxes_outside not in get_args(BoxPolicy):
        _fail(f"--boxes-outside must be {' or '.join(get_args(BoxPolicy))}, got {boxes_outside}")
    try:
        sources, num_classes = _splits_to_check(path, nc)
    except DataError as err:
        _fail(str(err))
    rows: list[tuple[str, ...]] = []
    # Keyed by the problem's text: a file in two splits (train and val the same folder) is one problem.
    errors: dict[str, DataError] = {}
    warnings: dict[str, DataError] = {}
    clipped: dict[str, DataError] = {}
    for source, images in sources.items():
        report = validate_split(images, num_classes, full_decode=full_decode, source=source,
                                boxes_outside=boxes_outside)
        split_errors = list(report.problems)
        if channels is not None:
            mismatches = (check_channels(image, channels) for image in images)
            split_errors += [p for p in mismatches if p is not None]
        split_warnings = [d for image in images for d in find_duplicate_lines(label_path(image))]
        rows.append((source, str(report.n_images), str(report.n_boxes), str(report.n_backgrounds),
                     str(report.n_missing_labels), str(len(split_errors)), str(len(split_warnings))))
        errors.update((str(e), e) for e in split_errors)
        warnings.update((str(w), w) for w in split_warnings)
        clipped.update((str(c), c) for c in report.clipped)
    problems = ([("error", e) for e in errors.values()] + [("warning", w) for w in warnings.values()]
                + [("clipped", c) for c in clipped.values()])
    class_rule = f"0..{num_classes - 1}" if num_classes != ANY_CLASS else "any integer >= 0 (give --nc)"
    beyond = "clip and list beyond (--boxes-outside clip)" if boxes_outside == "clip" else "reject beyond"
    closing = (f"classes: {class_rule}; box policy: clip within {BOX_TOLERANCE} of the image, {beyond}; "
               f"{len(errors)} errors, {len(warnings)} warnings"
               + (f", {len(clipped)} boxes clipped" if boxes_outside == "clip" else ""))
    notes = [f"{a} and {b} share {n} images: each problem is listed once, and those images do not measure "
             f"generalisation" for a, b, n in _shared_images(sources)]
    if console.is_terminal:
        _print_check_tables(path, rows, problems, max_rows, notes, closing)
    else:
        _print_check_lines(path, rows, problems, max_rows, notes, closing)
    if errors:
        raise typer.Exit(EXIT_PROBLEMS)


SEVERITY_COLOURS = {"error": "red", "warning": "yellow", "clipped": "cyan"}
CHECK_COLUMNS = ("split", "images", "boxes", "background", "without label file", "errors", "warnings")


def _shared_images(sources: dict[str, list[Path]]) -> list[tuple[str, str, int]]:
    """``(source, other source, images in both)`` for every pair of sources that share images."""
    resolved = {source: {p.resolve() for p in images} for source, images in sources.items()}
    names = list(resolved)
    return [(a, b, len(resolved[a] & resolved[b])) for i, a in enumerate(names) for b in names[i + 1:]
            if resolved[a] & resolved[b]]


def _where(problem: DataError) -> str:
    return problem.file if problem.line is None else f"{problem.file}:{problem.line}"


def _print_check_lines(path: Path, rows: list[tuple[str, ...]], problems: list[tuple[str, DataError]],
                       max_rows: int, notes: list[str], closing: str) -> None:
    """Plain, complete lines (a pipe or CI log): no table to cut at 80 columns; problems as ``file:line:``."""
    lines = [f"data check: {path}"]
    for source, *counts in rows:
        lines.append(f"{source}: " + ", ".join(f"{n} {c}" for c, n in zip(CHECK_COLUMNS[1:], counts, strict=True)))
    lines += [f"note: {note}" for note in notes]
    lines += [f"{_where(p)}: {severity}: {p.problem}" for severity, p in problems[:max_rows]]
    if len(problems) > max_rows:
        lines.append(f"... and {len(problems) - max_rows} more (--max-rows)")
    lines.append(closing)
    for line in lines:
        console.print(printable(line), markup=False, highlight=False, soft_wrap=True)


def _print_check_tables(path: Path, rows: list[tuple[str, ...]], problems: list[tuple[str, DataError]],
                        max_rows: int, notes: list[str], closing: str) -> None:
    """Tables for a terminal; long file names fold onto more lines rather than being cut."""
    summary = Table(title=f"data check: {escape(str(path))}")
    for column in CHECK_COLUMNS:
        summary.add_column(column, justify="left" if column == "split" else "right",
                           overflow="fold" if column == "split" else "ellipsis")
    for source, *counts in rows:
        summary.add_row(escape(source), *counts)
    console.print(summary)
    for note in notes:
        console.print(f"note: {escape(note)}", highlight=False)
    if problems:
        table = Table(title="problems")
        table.add_column("severity")
        table.add_column("file:line", overflow="fold")
        table.add_column("problem", overflow="fold")
        for severity, problem in problems[:max_rows]:
            colour = SEVERITY_COLOURS[severity]
            table.add_row(f"[{colour}]{severity}[/]", escape(printable(_where(problem))), escape(problem.problem))
        if len(problems) > max_rows:
            table.caption = f"... and {len(problems) - max_rows} more (--max-rows)"
        console.print(table)
    console.print(closing, highlight=False)


# ------------------------------------------------------------------------------------------ stats
def stats_command(
    data: Annotated[Path, typer.Argument(help="Dataset data.yaml.")],
    split: Annotated[str | None, typer.Option(help="train, val or test (default: all splits).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: DATA folder/stats).")] = None,
) -> None:
    """Dataset statistics: objects per image and per class, box and image width/height in pixels and, for
    sparse images (most pixels zero: detector images, digits on black), the fraction of non-zero pixels.
    Writes stats.json and PNG plots.

    Example: yololab data stats data/sparse/data.yaml --split train --out runs/sparse-stats
    """
    try:
        stats = dataset_stats(data, split)
    except DataError as err:
        _fail(str(err))
    out = out if out is not None else data.parent / "stats"
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    plots = plot_stats(stats, out)

    table = Table(title=f"{escape(str(data))} [{', '.join(stats['splits'])}]", show_header=False)
    opi, width, height = (stats[k] for k in ("objects_per_image", "box_width_px", "box_height_px"))
    rows = [
        ("images", str(stats["n_images"])),
        ("objects", str(stats["n_objects"])),
        ("background images", str(stats["n_backgrounds"])),
        ("objects per image", f"mean {_num(opi['mean'])}, max {opi['max']}"),
        ("objects per class", ", ".join(f"{k} {v}" for k, v in stats["per_class"].items())),
        ("box width px", _range(width)),
        ("box height px", _range(height)),
        *_image_size_rows(stats),
    ]
    if stats["sparse"]:
        rows.append(("non-zero pixel fraction", _range(stats["nonzero_fraction"], ".4f")))
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
    for path in [out / "stats.json", *plots]:
        console.print(f"wrote {escape(str(path))}", highlight=False)


def _image_size_rows(stats: dict) -> list[tuple[str, str]]:
    """Few sizes: each with its count. Many (photos): their number, the most frequent ones, and the ranges."""
    sizes = stats["image_sizes"]
    if len(sizes) <= MAX_LISTED_SIZES:
        return [("image sizes", ", ".join(f"{k}: {v}" for k, v in sizes.items()))]
    common = ", ".join(f"{k}: {v}" for k, v in list(sizes.items())[:COMMON_SIZES])
    return [("image sizes", f"{len(sizes)} different; most frequent {common}"),
            ("image width px", _range(stats["image_width_px"], "g")),
            ("image height px", _range(stats["image_height_px"], "g"))]


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _range(summary: dict, fmt: str = ".1f") -> str:
    return (f"min {_num(summary['min'], fmt)}, median {_num(summary['median'], fmt)}, "
            f"mean {_num(summary['mean'], fmt)}, max {_num(summary['max'], fmt)}")


# ------------------------------------------------------------------------------------------ split
def parse_fractions(text: str, option: str) -> list[float]:
    """``"0.8,0.1,0.1"`` -> ``[0.8, 0.1, 0.1]``: 2 or 3 numbers (train, val[, test]); ValueError naming ``option``."""
    try:
        parts = [float(f) for f in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} must be numbers separated by commas, got {text!r}") from None
    if not 2 <= len(parts) <= len(SPLIT_KEYS):
        raise ValueError(f"{option} needs 2 or 3 values (train, val[, test]), got {text!r}")
    return parts


def _images_and_labels(source: Path) -> tuple[list[Path], list[np.ndarray], list[str], SizeBins | None]:
    """Images of ``source`` (every split of a data.yaml, once each, or a folder / .txt list), their class
    ids, class names (a folder's are "0".."max class") and the data.yaml's size bins (None for a folder)."""
    size_bins = None
    if source.is_file() and source.suffix.lower() in (".yaml", ".yml"):
        spec = load_data_yaml(source)
        images = list(dict.fromkeys(p for split in spec.splits.values() for p in split))
        names, num_classes, size_bins = spec.names, spec.num_classes, spec.size_bins
    else:
        images = _list_images(source)
        names, num_classes = [], ANY_CLASS
    classes = []
    for image in images:
        labels, problems = parse_label_file(label_path(image), num_classes)
        if problems:
            raise DataError(problems[0].file, problems[0].line,
                            f"{problems[0].problem} (run `yololab data check` for all problems)")
        classes.append(labels[:, 0].astype(np.int64))
    if not names:
        top = max((int(c.max()) for c in classes if len(c)), default=0)
        names = [str(i) for i in range(top + 1)]
    return images, classes, names, size_bins


def split_command(
    source: Annotated[Path, typer.Argument(help="A data.yaml (all its splits are pooled), a folder of images "
                                                "or a .txt list of images.")],
    out: Annotated[Path, typer.Option(help="Folder for train.txt, val.txt, test.txt and data.yaml.")],
    fractions: Annotated[str, typer.Option(help="Train,val[,test] fractions summing to 1.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same split.")] = 0,
    stratify: Annotated[bool, typer.Option(
        help="Keep the class mix: split each group of images that share a most frequent class on its own."
    )] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace lists and data.yaml already in OUT.")] = False,
) -> None:
    """Split a dataset's images into train/val/test lists and write a data.yaml using them; images and labels
    stay where they are. The same input, fractions and seed give the same split.

    Example: yololab data split data/sparse/data.yaml --out data/sparse-resplit --fractions 0.7,0.15,0.15
    --stratify
    """
    try:
        parts = parse_fractions(fractions, "--fractions")
    except ValueError as err:
        _fail(str(err))
    written = [out / f"{key}.txt" for key in SPLIT_KEYS] + [out / "data.yaml"]
    if not overwrite and any(p.exists() for p in written):
        _fail(f"{out} already holds a split (data.yaml or lists); pass --overwrite to replace it")
    try:
        images, classes, names, size_bins = _images_and_labels(source)
        indices = (stratified_split_indices(classes, parts, seed) if stratify
                   else split_indices(len(images), parts, seed))
    except (DataError, ValueError) as err:
        _fail(str(err))

    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    spec: dict = {"path": str(root)}
    for key in SPLIT_KEYS:
        (out / f"{key}.txt").unlink(missing_ok=True)
    for key, part in zip(SPLIT_KEYS, indices, strict=False):
        lines = [os.path.relpath(images[i].resolve(), root) for i in part]
        (out / f"{key}.txt").write_text("".join(f"{line}\n" for line in lines))
        if lines:  # an empty list is no split: load_data_yaml refuses one
            spec[key] = f"{key}.txt"
    spec["names"] = names
    if size_bins is not None:  # the images keep their pixels, so the source's size bins still hold
        spec[SIZE_BINS_KEY] = size_bins.to_yaml()
    spec["split"] = {"source": str(source), "fractions": parts, "seed": seed, "stratify": stratify}
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    console.print(_split_table(source, indices, classes, names))
    console.print(f"wrote {escape(str(out / 'data.yaml'))}", highlight=False)


def _split_table(source: Path, indices, classes: list[np.ndarray], names: list[str]) -> Table:
    table = Table(title=f"split of {escape(str(source))}")
    for column in ("part", "images", "background", "objects", "objects per class"):
        table.add_column(column, justify="left" if column in ("part", "objects per class") else "right")
    for key, part in zip(SPLIT_KEYS, indices, strict=False):
        counts = Counter(int(c) for i in part for c in classes[i])
        per_class = ", ".join(f"{names[c]} {counts[c]}" for c in sorted(counts))
        table.add_row(key, str(len(part)), str(sum(len(classes[i]) == 0 for i in part)),
                      str(sum(counts.values())), escape(per_class))
    return table
