"""Index splits and the MNIST-detection generator."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from generated_data import files_and_bytes, pixel_boxes
from yololab.data import load_data_yaml, make_digits, split_indices, validate_split

# --- split_indices -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fractions", "sizes"),
    [
        (5000, (0.8, 0.1, 0.1), (4000, 500, 500)),
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (7, (0.8, 0.1, 0.1), (7, 0, 0)),  # floor(0.7) = 0: everything stays in train
        (29, (0.7, 0.2, 0.1), (22, 5, 2)),  # floor(5.8) = 5, floor(2.9) = 2, remainder 22
        (100, (0.71, 0.29), (71, 29)),  # 0.29 * 100 is 28.999... in floating point
        (0, (0.8, 0.1, 0.1), (0, 0, 0)),
    ],
)
def test_split_sizes_disjoint_and_covering(n, fractions, sizes):
    parts = split_indices(n, fractions, seed=3)
    assert tuple(len(p) for p in parts) == sizes
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == list(range(n))  # covering and disjoint at once


def test_split_is_deterministic_and_seeded():
    a, b, c = split_indices(1000, seed=1), split_indices(1000, seed=1), split_indices(1000, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.5, -0.1, 0.6), (float("nan"), 1.0), ()])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_indices(10, fractions)


# --- make_digits ---------------------------------------------------------------------------------------

TINY_COUNTS = {"train": 16, "val": 4, "test": 4}
TINY_SIZE = 128


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory.mktemp("digits") / "ds", tiny=True, seed=5)


def test_layout_and_yaml(tiny):
    spec = load_data_yaml(tiny)
    assert spec.names == [str(i) for i in range(10)]
    assert {k: len(v) for k, v in spec.splits.items()} == TINY_COUNTS
    for split, images in spec.splits.items():
        report = validate_split(images, 10)
        assert report.ok, report.problems
        assert report.image_sizes == [(TINY_SIZE, TINY_SIZE)] * TINY_COUNTS[split]
        assert report.n_backgrounds == 0
        assert all(1 <= len(labels) <= 6 for labels in report.labels)
    generator = yaml.safe_load(tiny.read_text())["generator"]
    assert generator["seed"] == 5 and generator["img_size"] == TINY_SIZE
    assert generator["n_images"] == TINY_COUNTS
    image = Image.open(spec.splits["train"][0])
    assert image.mode == "RGB"


def test_same_seed_same_bytes(tiny, tmp_path):
    before = files_and_bytes(tiny.parent)
    # Regenerated in place: every file, data.yaml included, is byte-identical.
    make_digits(tiny.parent, tiny=True, seed=5, overwrite=True)
    assert files_and_bytes(tiny.parent) == before
    # Elsewhere: only the `path` line of data.yaml differs.
    other = files_and_bytes(make_digits(tmp_path / "other", tiny=True, seed=5).parent)
    assert other.keys() == before.keys()
    assert all(other[k] == before[k] for k in before if k != "data.yaml")
    def without_path(text: bytes) -> list[str]:
        return [line for line in text.decode().splitlines() if not line.startswith("path:")]

    assert without_path(other["data.yaml"]) == without_path(before["data.yaml"])
    # Another seed gives other images.
    changed = files_and_bytes(make_digits(tmp_path / "seed6", tiny=True, seed=6).parent)
    assert changed["images/train/000000.png"] != before["images/train/000000.png"]


def test_refuses_to_write_into_non_empty_folder(tiny):
    with pytest.raises(FileExistsError):
        make_digits(tiny.parent, tiny=True)


def test_splits_use_disjoint_digit_instances(tiny):
    used = json.loads((tiny.parent / "mnist_indices.json").read_text())
    assert set(used) == {"train", "val", "test"}
    for a, b in combinations(used.values(), 2):
        assert not set(a) & set(b)
    assert all(0 <= i < 5000 for indices in used.values() for i in indices)
    # Each split draws from its own 80/10/10 pool of the 5,000 digits (seed 5 as in the fixture).
    for split, pool in zip(("train", "val", "test"), split_indices(5000, seed=5), strict=True):
        assert set(used[split]) <= set(pool.tolist())
    # One box per pasted digit, so there are no more distinct digits than boxes.
    n_boxes = sum(len(f.read_text().splitlines()) for f in (tiny.parent / "labels/train").glob("*.txt"))
    assert 0 < len(used["train"]) <= n_boxes


def test_boxes_are_tight_and_cover_every_digit_pixel(tiny):
    root = tiny.parent
    for image_file in sorted((root / "images").rglob("*.png")):
        ink = np.asarray(Image.open(image_file)).max(axis=2) > 0  # [H, W] pixels of any digit
        label_file = root / "labels" / image_file.parent.name / f"{image_file.stem}.txt"
        boxes = pixel_boxes(label_file, TINY_SIZE)
        covered = np.zeros_like(ink)
        for cls, x1, y1, x2, y2 in boxes:
            assert 0 <= cls < 10
            assert 0 <= x1 < x2 <= TINY_SIZE and 0 <= y1 < y2 <= TINY_SIZE
            covered[y1:y2, x1:x2] = True
            inside = ink[y1:y2, x1:x2]
            # Tight: each border row and column of the box holds ink (max blend keeps a digit's own
            # non-zero pixels non-zero).
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert not (ink & ~covered).any(), f"ink outside every box in {image_file}"
        for a, b in combinations(boxes, 2):
            assert iou(a[1:], b[1:]) <= 0.1 + 1e-9


def test_single_digit_box_is_the_ink_bounding_box(tmp_path):
    yaml_path = make_digits(tmp_path / "one", n_train=6, n_val=1, n_test=1, img_size=96,
                            digits_per_image=(1, 1))
    for image_file in sorted((yaml_path.parent / "images/train").glob("*.png")):
        rows, cols = np.nonzero(np.asarray(Image.open(image_file)).max(axis=2))
        expected = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        label_file = yaml_path.parent / "labels/train" / f"{image_file.stem}.txt"
        [(_, *box)] = pixel_boxes(label_file, 96)
        assert tuple(box) == expected


def iou(a, b) -> float:
    """Naive IoU of two pixel xyxy boxes by counting pixels."""
    size = max(a[2], b[2], a[3], b[3])
    ma, mb = np.zeros((size, size), bool), np.zeros((size, size), bool)
    ma[a[1]:a[3], a[0]:a[2]] = True
    mb[b[1]:b[3], b[0]:b[2]] = True
    return (ma & mb).sum() / (ma | mb).sum()
