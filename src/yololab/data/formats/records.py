"""The in-memory dataset every reader returns and every writer takes, and the checks they share.

Boxes are float64 ``[M, 4]`` ``x1, y1, x2, y2`` in pixels of the original image, with continuous
coordinates: the image spans ``[0, width] x [0, height]`` and ``x2`` is the right edge of the box (a
box covering pixel columns 10..49 is ``x1 = 10, x2 = 50``). This is the lossless common ground of
the formats: YOLO's normalised ``cx cy w h`` and COCO's ``[x, y, w, h]`` both convert to it exactly
(up to floating point), Pascal VOC's 1-based inclusive indices by an offset of one.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yololab.data.errors import DataError
from yololab.data.yolo_format import BOX_TOLERANCE, SPLIT_KEYS, check_image

# Widths and heights above this are errors: no real image is this large, and the bound keeps size
# arithmetic far from float overflow (a JSON file can hold an integer with 400 digits).
MAX_IMAGE_SIDE = 1 << 20
# Reasons a reader leaves an object out; each is counted in Annotations.skipped, never silent.
SKIP_CROWD = "crowd"  # COCO iscrowd=1: a region of many objects, not one box to learn
SKIP_DIFFICULT = "difficult"  # VOC difficult=1: ignored by VOC evaluation, left out of training


@dataclass
class ImageRecord:
    """One image and its objects.

    ``boxes``: float64 ``[M, 4]`` ``x1, y1, x2, y2`` in pixels, ``0 <= x1 < x2 <= width`` (same for y).
    ``classes``: int64 ``[M]`` in ``0 .. C - 1``, indices into ``Annotations.names``.
    ``skipped``: objects of this image the reader left out, by reason (they follow the image into a new split).
    """

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.classes):
            raise ValueError(f"{self.path}: {len(self.boxes)} boxes but {len(self.classes)} classes")


@dataclass
class Annotations:
    """A dataset: class names, images per split, and what the reader left out.

    ``splits`` maps a split name (``train``, ``val``, ``test``, or a source's own such as ``val2017``)
    to its images in source order. ``skipped[split][reason]`` counts objects left out (``crowd``,
    ``difficult``).
    """

    names: list[str]
    splits: dict[str, list[ImageRecord]] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def n_boxes(self, split: str) -> int:
        return sum(len(record.boxes) for record in self.splits[split])


# fail(index_of_box, problem) -> the DataError naming the file and the line or element of that box.
BoxFail = Callable[[int, str], DataError]


def check_boxes(boxes: np.ndarray, width: int, height: int, fail: BoxFail) -> np.ndarray:
    """Validate pixel xyxy boxes ``[M, 4]`` of a ``width x height`` image; return them clipped.

    Coordinates must be finite with ``x2 > x1`` and ``y2 > y1``; a box may overshoot the image by at
    most ``BOX_TOLERANCE`` of its side (the rule of YOLO labels) and is then clipped to the image.
    The first bad box raises ``fail(index, problem)``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    tol_x, tol_y = BOX_TOLERANCE * width, BOX_TOLERANCE * height
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        text = f"x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g}"
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise fail(i, f"non-finite coordinate in box {text}")
        if x2 <= x1 or y2 <= y1:
            raise fail(i, f"box {text} has x2 <= x1 or y2 <= y1")
        if x1 < -tol_x or y1 < -tol_y:
            raise fail(i, f"negative coordinate in box {text}")
        if x2 > width + tol_x or y2 > height + tol_y:
            raise fail(i, f"box {text} lies outside the {width}x{height} image")
    clipped = np.stack([boxes[:, 0].clip(0, width), boxes[:, 1].clip(0, height),
                        boxes[:, 2].clip(0, width), boxes[:, 3].clip(0, height)], axis=1)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if empty.any():
        i = int(np.argmax(empty))
        raise fail(i, f"box {boxes[i].tolist()} has no area inside the {width}x{height} image")
    return clipped


def check_image_side(value, what: str, fail: Callable[[str], DataError]) -> int:
    """An image width or height read from a file: an integer in ``1 .. MAX_IMAGE_SIDE``."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise fail(f"{what} {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(f"{what} must be a number, got {value!r}")
    if isinstance(value, float) and not value.is_integer():  # also catches nan and inf
        raise fail(f"{what} must be an integer, got {value!r}")
    if not 1 <= value <= MAX_IMAGE_SIDE:
        raise fail(f"{what} must be in 1..{MAX_IMAGE_SIDE}, got {value!r}")
    return int(value)


# What a missing image's error suggests: every reader whose images may live elsewhere takes this option.
IMAGE_ROOT_HINT = "give the folder that holds the images with --image-root"


def find_image(name: str | Path, roots: list[Path], source: Path) -> tuple[Path, tuple[int, int]]:
    """The first ``root / name`` that exists, with its (height, width) read from the header; DataError naming
    ``source`` (the annotation file), the folders tried and ``--image-root`` when it is found nowhere, and the
    image's own error when unreadable."""
    for root in roots:
        path = root / name
        if path.is_file():
            size, problem = check_image(path, full_decode=False)
            if problem is not None:
                raise problem
            return path, size
    raise DataError(source, None, f"image {str(name)!r} not found under {[str(r) for r in roots]}: "
                                  f"{IMAGE_ROOT_HINT}")


def split_key(name: str) -> str:
    """The data.yaml key of a split name: ``train2017`` -> ``train``, ``validation`` -> ``val``."""
    for key in SPLIT_KEYS:
        if name.lower().startswith(key):
            return key
    raise ValueError(f"split {name!r} has no data.yaml key: its name must start with one of {list(SPLIT_KEYS)} "
                     "(rename the source file, e.g. instances_minival.json -> instances_val.json)")


def place_images(records: list[ImageRecord], folder: Path) -> list[Path]:
    """Hard-link (or copy, where links fail) each record's image into ``folder``, keeping its name.

    Two images with the same file name, or with the same name stem (they would share a YOLO label
    file), are an error naming both. Returns the new paths in record order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Path] = {}
    placed = []
    for record in records:
        source = Path(record.path)
        stem = source.stem.lower()  # case folding: a.PNG and a.png collide on case-insensitive disks
        if stem in seen:
            raise DataError(source, None, f"file name collides with {seen[stem]} in {folder}")
        seen[stem] = source
        target = folder / source.name
        if not source.is_file():
            raise DataError(source, None, "image not found")
        try:
            os.link(source, target)
        except OSError:  # other file system, or links not allowed: copy instead
            shutil.copy2(source, target)
        placed.append(target)
    return placed


def prepare_output(out_dir: str | Path) -> Path:
    """``out_dir`` resolved and created; it must be absent or empty, so nothing is overwritten."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
