"""One-line annotation files (keras-yolo3 / TensorFlow-2 YOLOv3 tutorials) as :class:`Annotations`.

Each line is one image::

    path/to/image.jpg x1,y1,x2,y2,cls x1,y1,x2,y2,cls ...

with pixel coordinates (ints or floats, origin at the top-left, ``x2``/``y2`` the right/bottom edge)
and ``cls`` in ``0 .. C - 1``. A line with a path only is a background image. The image path may
contain spaces: it runs up to the first field that contains a comma. Relative paths are relative to
``image_root``, by default the annotation file's folder. Class names come from an optional names
file (one name per line, as ``coco.names``); without one, classes are named ``0 .. max``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from yololab.data.errors import DataError
from yololab.data.formats.records import Annotations, ImageRecord, check_boxes
from yololab.data.yolo_format import IMAGE_SUFFIXES, check_image

BOX_FIELDS = 5  # x1,y1,x2,y2,cls
BOX_FORMAT = "x1,y1,x2,y2,cls"
SPLIT_SUFFIXES = ("train", "val", "test")  # mnist_train.txt -> split "train"

# image_size(path_field, lineno) -> (width, height), or raises DataError naming the line.
ImageSize = Callable[[str, int], tuple[int, int]]


def read_names(path: str | Path) -> list[str]:
    """Class names, one per non-blank line (``coco.names``, ``mnist.names``)."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, None, f"cannot read names file: {err}") from err
    names = [name for name in names if name]
    if not names:
        raise DataError(path, None, "names file is empty")
    return names


def read_one_line(
    txt: str | Path, names: str | Path | Sequence[str] | None = None, image_root: str | Path | None = None,
    split: str | None = None,
) -> Annotations:
    """Read a one-line annotation file; image sizes come from the image headers.

    Args:
        txt: the annotation file.
        names: a names file or a list of names; classes outside it are errors.
        image_root: folder relative image paths start from; default the file's folder.
        split: split name; default from the file name (``*_train.txt`` -> ``train``), else ``train``.
    """
    txt = Path(txt)
    try:
        text = txt.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(txt, None, f"cannot read annotation file: {err}") from err
    root = Path(image_root) if image_root is not None else txt.parent
    if isinstance(names, str | Path):
        names = read_names(names)

    def image_size(field: str, lineno: int) -> tuple[int, int]:
        size, problem = check_image(root / field, full_decode=False)
        if problem is not None:
            raise DataError(txt, lineno, f"image {problem.file}: {problem.problem}")
        return size[1], size[0]

    ann = parse_one_line(text, txt, image_size, names, split or _split_from_name(txt))
    for record in next(iter(ann.splits.values())):
        record.path = root / record.path
    return ann


def parse_one_line(
    text: str, file: str | Path, image_size: ImageSize, names: Sequence[str] | None = None, split: str = "train"
) -> Annotations:
    """Parse the text of a one-line file; ``image_size`` gives each image's ``(width, height)``.

    Record paths are the path fields as written. Raises :class:`DataError` naming ``file`` and the
    line for the first bad line.
    """
    records, max_class = [], -1
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        path_field, rows = _split_line(line, file, lineno)
        classes = rows[:, 4]
        bad = [c for c in classes.tolist() if c != int(c) or c < 0 or (names is not None and c >= len(names))]
        if bad:
            allowed = f"0..{len(names) - 1}" if names is not None else "integers >= 0"
            raise DataError(file, lineno, f"class {bad[0]:g} is not one of the classes {allowed}")
        width, height = image_size(path_field, lineno)
        boxes = check_boxes(rows[:, :4], width, height,
                            lambda i, problem, lineno=lineno: DataError(file, lineno, f"box {i + 1}: {problem}"))
        records.append(ImageRecord(Path(path_field), width, height, boxes, classes.astype(np.int64)))
        max_class = max(max_class, int(classes.max(initial=-1)))
    names = list(names) if names is not None else [str(i) for i in range(max_class + 1)]
    return Annotations(names=names, splits={split: records}, skipped={split: {}})


def _split_line(line: str, file: str | Path, lineno: int) -> tuple[str, np.ndarray]:
    """``(image path field, float64 [M, 5] rows x1, y1, x2, y2, cls)`` of one line."""
    fields = line.split()
    n_path = next((i for i in range(1, len(fields)) if "," in fields[i]), len(fields))
    path_field = " ".join(fields[:n_path])
    if not _is_image(path_field):
        if _is_image(fields[0]):  # an image path followed by a field without commas
            raise DataError(file, lineno, f"expected {BOX_FORMAT}, got {fields[1]!r}")
        raise DataError(file, lineno, f"line must start with an image path ({', '.join(sorted(IMAGE_SUFFIXES))}),"
                                      f" got {path_field[:80]!r}")
    rows = [_parse_box(field, file, lineno) for field in fields[n_path:]]
    return path_field, np.array(rows, dtype=np.float64).reshape(-1, BOX_FIELDS)


def _parse_box(field: str, file: str | Path, lineno: int) -> list[float]:
    values = field.split(",")
    if len(values) != BOX_FIELDS:
        raise DataError(file, lineno, f"expected {BOX_FORMAT}, got {field!r}")
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise DataError(file, lineno, f"not a number in {field!r} (expected {BOX_FORMAT})") from None
    if not all(math.isfinite(v) for v in numbers):
        raise DataError(file, lineno, f"non-finite value in {field!r}")
    return numbers


def _is_image(path_field: str) -> bool:
    return Path(path_field).suffix.lower() in IMAGE_SUFFIXES


def _split_from_name(txt: Path) -> str:
    stem = txt.stem.lower()
    return next((split for split in SPLIT_SUFFIXES if stem.endswith(split)), "train")
