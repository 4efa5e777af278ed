"""Datasets in the ultralytics YOLO convention: ``data.yaml``, image folders and ``.txt`` labels.

A ``data.yaml`` names a ``path`` (the dataset root), the splits ``train`` / ``val`` / ``test`` and the
class ``names``. Each split is a folder of images, a ``.txt`` file listing image paths, or a list of
those. The label file of ``.../images/.../x.png`` is ``.../labels/.../x.txt`` (the last ``images``
folder replaced by ``labels``, ultralytics' rule); each line is ``class cx cy w h``, box values
normalised to [0, 1] by the image width and height. An image without a label file is a background
image (no objects).

Every problem is a :class:`DataError` naming the file and, where there is one, the line.
``validate_split`` checks a whole split up front, so training never stops mid-epoch on a bad file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image

from yololab.data.errors import DataError
from yololab.data.size_bins import SIZE_BINS_KEY, SizeBins, parse_size_bins

# Image suffixes taken as images in a split folder: ultralytics' IMG_FORMATS, less those PIL cannot
# decode without plug-ins (heic, mpo, dng, pfm).
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
# PIL modes the dataset knows how to turn into 8-bit grey or RGB (16-bit grey is scaled down).
SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr",
                             "I", "I;16", "I;16B", "I;16L"})
SPLIT_KEYS = ("train", "val", "test")
LABEL_FIELDS = 5  # class cx cy w h
# Labels written with a few decimals can overshoot the image by a rounding step; boxes within this
# distance of [0, 1] are clipped, boxes further out are errors.
BOX_TOLERANCE = 1e-3
MAX_LISTED_PROBLEMS = 20  # problems spelled out by ValidationReport.raise_if_errors
# What to do with a box that lies partly outside the image by more than BOX_TOLERANCE: "refuse" the line
# (yololab's default), or "clip" it to the image as darknet and ultralytics do, counting and listing it.
BoxPolicy = Literal["refuse", "clip"]


@dataclass
class DataSpec:
    """A parsed ``data.yaml``.

    ``root`` is the yaml's ``path`` resolved against the yaml's folder (the folder itself when
    ``path`` is absent); ``splits`` maps each split present in the yaml to its image paths, in a
    stable order (sorted within a folder, file order within a list). ``size_bins`` is the dataset's own
    object-size bins (the optional ``size_bins`` block, :mod:`yololab.data.size_bins`), None without it.
    """

    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[Path]] = field(default_factory=dict)
    size_bins: SizeBins | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)


def load_data_yaml(path: str | Path) -> DataSpec:
    """Read a ``data.yaml`` and list the images of each split. Raises :class:`DataError`."""
    yaml_path = Path(path)
    try:
        text = yaml_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(yaml_path, None, f"cannot read dataset yaml: {err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise DataError(yaml_path, mark.line + 1 if mark else None, f"invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise DataError(yaml_path, None, "expected a mapping with keys path, train, val, test, names")
    lines = _key_lines(text)

    root_value = data.get("path")
    if root_value is not None and not isinstance(root_value, str):
        raise DataError(yaml_path, lines.get("path"), f"'path' must be a string, got {root_value!r}")
    root = yaml_path.parent / root_value if root_value else yaml_path.parent
    if not root.is_dir():
        raise DataError(yaml_path, lines.get("path"), f"dataset root {root} is not a folder")

    names = _parse_names(data.get("names"), data.get("nc"), yaml_path, lines)
    splits = {}
    for key in SPLIT_KEYS:
        if data.get(key) is not None:
            splits[key] = resolve_split(key, data[key], root, yaml_path, lines.get(key))
    if "train" not in splits:
        raise DataError(yaml_path, None, "no 'train' split")
    size_bins = data.get(SIZE_BINS_KEY)
    if size_bins is not None:
        size_bins = parse_size_bins(size_bins, yaml_path, lines.get(SIZE_BINS_KEY))
    return DataSpec(yaml_path=yaml_path, root=root, names=names, splits=splits, size_bins=size_bins)


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key, so errors can point at it."""
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(key.value): key.start_mark.line + 1 for key, _ in node.value}


def _parse_names(names, nc, yaml_path: Path, lines: dict[str, int]) -> list[str]:
    """``names`` as a list, or as a ``{id: name}`` dict with ids 0..n-1; checked against ``nc``."""
    line = lines.get("names")
    if isinstance(names, dict):
        if set(names) != set(range(len(names))):
            raise DataError(yaml_path, line, f"'names' ids must be 0..{len(names) - 1}, got {list(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(yaml_path, line, "'names' must be a non-empty list or {id: name} mapping")
    if nc is not None and nc != len(names):
        raise DataError(yaml_path, lines.get("nc"), f"'nc' is {nc} but 'names' has {len(names)} entries")
    return [str(n) for n in names]


def resolve_split(key: str, value, root: Path, yaml_path: Path, line: int | None) -> list[Path]:
    """Image paths of one split entry: a folder, a ``.txt`` list, or a list of those."""
    entries = value if isinstance(value, list) else [value]
    images: list[Path] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise DataError(yaml_path, line, f"'{key}' entries must be paths, got {entry!r}")
        where = root / entry
        if where.is_dir():
            images += sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif where.is_file() and where.suffix.lower() == ".txt":
            images += _read_image_list(where, root)
        else:
            raise DataError(yaml_path, line, f"'{key}': {where} is neither a folder nor a .txt image list")
    if not images:
        raise DataError(yaml_path, line, f"'{key}': no images found in {value}")
    return images


def _read_image_list(list_file: Path, root: Path) -> list[Path]:
    """Paths listed one per line in ``list_file``; relative paths are relative to the dataset root."""
    images = []
    for lineno, raw in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        entry = raw.strip()
        if not entry:
            continue
        image = root / entry
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(list_file, lineno, f"'{entry}' is not an image ({sorted(IMAGE_SUFFIXES)})")
        if not image.is_file():
            raise DataError(list_file, lineno, f"image not found: {image}")
        images.append(image)
    return images


def label_path(image: str | Path) -> Path:
    """Label file of an image: the last ``images`` folder becomes ``labels``, suffix ``.txt``.

    Without an ``images`` folder in the path the label sits next to the image (as in ultralytics).
    """
    parts = Path(image).parts
    folders = parts[:-1]
    if "images" in folders:
        i = len(folders) - 1 - folders[::-1].index("images")
        parts = (*parts[:i], "labels", *parts[i + 1:])
    return Path(*parts).with_suffix(".txt")


def read_label_file(path: str | Path, num_classes: int, boxes_outside: BoxPolicy = "refuse") -> np.ndarray:
    """Labels of one image -> float32 ``[M, 5]`` rows ``(class, cx, cy, w, h)``, boxes normalised.

    A missing file means a background image and gives ``[0, 5]``. Raises :class:`DataError` for the
    first bad line; :func:`parse_label_file` returns all of them instead.
    """
    labels, problems = parse_label_file(path, num_classes, boxes_outside)
    if problems:
        raise problems[0]
    return labels


def parse_label_file(path: str | Path, num_classes: int, boxes_outside: BoxPolicy = "refuse",
                     clipped: list[DataError] | None = None) -> tuple[np.ndarray, list[DataError]]:
    """Labels of the good lines (float32 ``[M, 5]``) and one :class:`DataError` per bad line.

    Blank lines are skipped. Boxes that overshoot [0, 1] by at most ``BOX_TOLERANCE`` are clipped; those
    further out are bad lines, or with ``boxes_outside="clip"`` clipped too, each noted in ``clipped`` (a
    ``file:line: what was clipped`` per box) when a list is given.
    """
    path = Path(path)
    empty = np.zeros((0, LABEL_FIELDS), dtype=np.float32)
    if not path.exists():
        return empty, []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        return empty, [DataError(path, None, f"cannot read label file: {err}")]
    rows, problems = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_parse_label_line(line, num_classes, path, lineno, boxes_outside, clipped))
        except DataError as err:
            problems.append(err)
    labels = np.array(rows, dtype=np.float32).reshape(-1, LABEL_FIELDS)
    return labels, problems


def _parse_label_line(line: str, num_classes: int, path: Path, lineno: int, boxes_outside: BoxPolicy = "refuse",
                      clipped: list[DataError] | None = None) -> list[float]:
    """One ``class cx cy w h`` line -> its values, box clipped to [0, 1]; DataError if bad."""

    def fail(problem: str) -> DataError:
        return DataError(path, lineno, problem)

    fields = line.split()
    if len(fields) != LABEL_FIELDS:
        raise fail(f"expected {LABEL_FIELDS} fields 'class cx cy w h', got {len(fields)}: {line.strip()!r}")
    try:
        values = [float(f) for f in fields]
    except ValueError as err:
        raise fail(f"not a number in {line.strip()!r}") from err
    if not all(math.isfinite(v) for v in values):
        raise fail(f"non-finite value in {line.strip()!r}")
    cls, cx, cy, w, h = values
    if cls != int(cls):
        raise fail(f"class {fields[0]} is not an integer")
    if not 0 <= cls < num_classes:
        raise fail(f"class {int(cls)} out of range 0..{num_classes - 1}")
    if w <= 0 or h <= 0:
        raise fail(f"box width and height must be > 0, got w={fields[3]} h={fields[4]}")
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if min(x1, y1) < -BOX_TOLERANCE or max(x2, y2) > 1 + BOX_TOLERANCE:
        outside = f"box x {x1:.6g}..{x2:.6g}, y {y1:.6g}..{y2:.6g} lies outside the image [0, 1]"
        if boxes_outside != "clip":
            raise fail(outside)
        if clipped is not None and min(x2, y2) > 0 and max(x1, y1) < 1:  # one with no area left is an error
            clipped.append(fail(f"{outside}: clipped to it (data.boxes_outside=clip)"))
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
    out = np.array([cls, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=np.float32)
    # Checked after the cast to the float32 the labels are kept in: a width of 1e-300 is > 0 only in float64.
    if x2 <= x1 or y2 <= y1 or out[3] <= 0 or out[4] <= 0:
        raise fail("box has no area inside the image")
    return out.tolist()


@dataclass
class ValidationReport:
    """What :func:`validate_split` found. ``labels`` / ``image_sizes`` follow the image order."""

    source: str
    n_images: int = 0
    n_boxes: int = 0
    n_backgrounds: int = 0  # images with no boxes: no label file or an empty one
    n_missing_labels: int = 0  # of those, images without a label file
    full_decode: bool = True  # every image's pixel data was decoded, not just its header
    problems: list[DataError] = field(default_factory=list)
    clipped: list[DataError] = field(default_factory=list)  # boxes clipped under boxes_outside="clip"
    labels: list[np.ndarray] = field(default_factory=list)  # float32 [M, 5] per image
    image_sizes: list[tuple[int, int] | None] = field(default_factory=list)  # (h, w); None if unreadable

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return (f"{self.source}: {self.n_images} images, {self.n_boxes} boxes, {self.n_backgrounds} "
                f"background images ({self.n_missing_labels} without a label file), "
                f"{len(self.problems)} problems")

    def raise_if_errors(self, max_listed: int = MAX_LISTED_PROBLEMS) -> None:
        """Raise one :class:`DataError` listing the first ``max_listed`` problems and their count."""
        if self.ok:
            return
        listed = "\n".join(f"  {p}" for p in self.problems[:max_listed])
        more = len(self.problems) - max_listed
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DataError(self.source, None, f"{len(self.problems)} problems in {self.n_images} images:\n"
                                           f"{listed}{tail}")


def validate_split(
    images: Sequence[str | Path], num_classes: int, full_decode: bool = True, source: str | None = None,
    boxes_outside: BoxPolicy = "refuse",
) -> ValidationReport:
    """Check every image and label file of a split and collect all problems.

    Each image is opened with PIL and, with ``full_decode``, its pixel data decoded, which catches
    truncated and corrupt files that a header read misses. Each label file is parsed line by line.

    Args:
        images: image paths of the split.
        num_classes: classes are valid in ``0 .. num_classes - 1``.
        full_decode: decode pixels (slower, thorough) or read headers only.
        source: name used in messages; defaults to the folder the images share.
        boxes_outside: refuse boxes partly outside the image, or clip them (listed in ``report.clipped``).
    """
    images = [Path(p) for p in images]
    report = ValidationReport(source=source or _common_folder(images), full_decode=full_decode)
    if not images:
        report.problems.append(DataError(report.source, None, "split has no images"))
    for image in images:
        size, problem = check_image(image, full_decode)
        if problem is not None:
            report.problems.append(problem)
        label_file = label_path(image)
        labels, label_problems = parse_label_file(label_file, num_classes, boxes_outside, report.clipped)
        report.problems += label_problems
        report.n_images += 1
        report.n_boxes += len(labels)
        report.n_backgrounds += int(len(labels) == 0 and not label_problems)
        report.n_missing_labels += int(not label_file.exists())
        report.labels.append(labels)
        report.image_sizes.append(size)
    return report


def check_image(path: Path, full_decode: bool = True) -> tuple[tuple[int, int] | None, DataError | None]:
    """``((h, w), None)`` for a readable image, ``(None, DataError)`` otherwise."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
            if full_decode:
                image.load()
    except FileNotFoundError:
        return None, DataError(path, None, "image not found")
    # The exceptions PIL raises for unreadable, truncated or corrupt files (UnidentifiedImageError is
    # an OSError); anything else is a bug and should propagate.
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        return None, DataError(path, None, f"cannot decode image: {err}")
    if width == 0 or height == 0:
        return None, DataError(path, None, f"image has zero size {width}x{height}")
    if mode not in SUPPORTED_MODES:
        return None, DataError(path, None, f"unsupported image mode {mode!r}")
    return (height, width), None


def _common_folder(images: Iterable[Path]) -> str:
    paths = [str(p) for p in images]
    if not paths:
        return "<empty split>"
    return os.path.commonpath([os.path.dirname(p) or "." for p in paths])
