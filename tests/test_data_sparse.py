"""The sparse detector-like generator: determinism, tight boxes, sizes, sparsity, channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from generated_data import files_and_bytes, pixel_boxes
from yololab.data import load_data_yaml, validate_split
from yololab.data.sparse import HIT_MIN, NOISE_MAX, SizeBin, class_shapes, make_sparse, parse_size_mix

SIZE = 480


def images_and_boxes(yaml_path: Path, split: str = "train", size: int = SIZE):
    """[(pixels [H, W] or [H, W, 3], boxes)] of a split, from the files."""
    root = yaml_path.parent
    out = []
    for image_file in sorted((root / "images" / split).glob("*.png")):
        pixels = np.asarray(Image.open(image_file))
        out.append((pixels, pixel_boxes(root / "labels" / split / f"{image_file.stem}.txt", size)))
    return out


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    args = {"n_train": 5, "n_val": 2, "n_test": 2, "img_size": 96, "seed": 3}
    one = files_and_bytes(make_sparse(tmp_path / "a", workers=1, **args).parent)
    # Two processes, one per split chunk: per-image seeds make the bytes independent of who writes them.
    two = files_and_bytes(make_sparse(tmp_path / "b", workers=2, **args).parent)
    assert one.keys() == two.keys()
    assert len([k for k in one if k.endswith(".png")]) == 9
    assert all(one[k] == two[k] for k in one if k != "data.yaml")
    def without_path(text: bytes) -> list[str]:
        return [line for line in text.decode().splitlines() if not line.startswith("path:")]

    assert without_path(one["data.yaml"]) == without_path(two["data.yaml"])
    other = files_and_bytes(make_sparse(tmp_path / "c", workers=1, **{**args, "seed": 4}).parent)
    assert other["images/train/000000.png"] != one["images/train/000000.png"]


def test_yaml_layout_and_generator_block(tmp_path):
    yaml_path = make_sparse(tmp_path / "ds", n_train=4, n_val=2, n_test=0, img_size=64, classes=3,
                            noise=0.01, seed=7)
    spec = load_data_yaml(yaml_path)
    assert spec.names == ["track", "shower", "blob"]
    assert {k: len(v) for k, v in spec.splits.items()} == {"train": 4, "val": 2}  # empty test split left out
    for images in spec.splits.values():
        assert validate_split(images, 3).ok
    generator = yaml.safe_load(yaml_path.read_text())["generator"]
    assert generator["seed"] == 7 and generator["img_size"] == 64 and generator["noise"] == 0.01
    assert generator["n_images"] == {"train": 4, "val": 2, "test": 0}
    assert generator["shapes"] == {"track": "track", "shower": "shower", "blob": "blob"}
    with pytest.raises(FileExistsError):
        make_sparse(tmp_path / "ds", n_train=1, n_val=0, n_test=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_one_object_box_is_the_bounding_box_of_its_pixels(tmp_path, channels):
    yaml_path = make_sparse(tmp_path / "one", n_train=24, n_val=0, n_test=0, channels=channels,
                            classes=("track", "shower", "blob"), objects_per_image=(1, 1), noise=0.0, seed=1)
    seen_classes = set()
    for pixels, boxes in images_and_boxes(yaml_path):
        assert pixels.shape == ((SIZE, SIZE) if channels == 1 else (SIZE, SIZE, 3))
        hits = pixels if channels == 1 else pixels.max(axis=2)
        rows, cols = np.nonzero(hits)
        [(cls, *box)] = boxes
        assert tuple(box) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        seen_classes.add(cls)
    assert seen_classes == {0, 1, 2}


def test_boxes_cover_every_object_hit_and_are_tight_with_noise(tmp_path):
    yaml_path = make_sparse(tmp_path / "many", n_train=20, n_val=0, n_test=0, objects_per_image=(2, 5),
                            noise=0.05, seed=2)
    for pixels, boxes in images_and_boxes(yaml_path):
        # Grey noise is at most NOISE_MAX < HIT_MIN: every pixel of at least HIT_MIN is an object hit.
        assert NOISE_MAX < HIT_MIN
        object_hits = pixels >= HIT_MIN
        covered = np.zeros_like(object_hits)
        for _, x1, y1, x2, y2 in boxes:
            covered[y1:y2, x1:x2] = True
            inside = object_hits[y1:y2, x1:x2]
            # Tight: every border row and column of the box holds an object hit.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert not (object_hits & ~covered).any()


def test_sizes_span_the_configured_bins(tmp_path):
    mix = (SizeBin(0.4, (3, 2), (5, 4)), SizeBin(0.4, (6, 6), (40, 40)), SizeBin(0.2, (40, 30), (200, 150)))
    yaml_path = make_sparse(tmp_path / "sizes", n_train=50, n_val=0, n_test=0, objects_per_image=(4, 4),
                            size_mix=mix, max_iou=1.0, seed=3)
    sizes = np.array([(x2 - x1, y2 - y1) for _, boxes in images_and_boxes(yaml_path)
                      for _, x1, y1, x2, y2 in boxes])
    assert len(sizes) == 200  # max_iou 1: every object is placed
    in_bin = np.stack([((sizes >= b.min_wh) & (sizes <= b.max_wh)).all(axis=1) for b in mix])
    assert in_bin.any(axis=0).all(), sizes[~in_bin.any(axis=0)]
    assert in_bin.sum(axis=1).min() >= 10  # each bin drawn
    assert tuple(sizes.min(axis=0)) == (3, 2)  # the smallest objects reach ~3x2 ...
    assert sizes[:, 0].max() >= 150 and sizes[:, 1].max() >= 110  # ... the largest reach well past 100 px
    # The data.yaml declares the bins as areas (pixels² at the image size) for evaluation: w*h ranges by hand.
    bins = load_data_yaml(yaml_path).size_bins
    assert bins.image_size == SIZE
    assert bins.areas == {"3x2-5x4": (6, 20), "6x6-40x40": (36, 1600), "40x30-200x150": (1200, 30000)}
    areas = sizes.prod(axis=1)
    for b, (lo, hi) in zip(mix, bins.areas.values(), strict=True):
        drawn = in_bin[mix.index(b)]
        assert ((areas[drawn] >= lo) & (areas[drawn] <= hi)).all()


def test_noise_fraction_is_exact_and_objects_stay_within_their_boxes(tmp_path):
    noise = 0.02
    background = make_sparse(tmp_path / "bg", n_train=3, n_val=0, n_test=0, objects_per_image=(0, 0),
                             noise=noise, seed=4)
    expected = round(noise * SIZE * SIZE)  # 4608 of 230,400 pixels
    for pixels, boxes in images_and_boxes(background):
        assert boxes == []
        assert np.count_nonzero(pixels) == expected
        assert 1 <= pixels[pixels > 0].min() and pixels.max() <= NOISE_MAX

    yaml_path = make_sparse(tmp_path / "obj", n_train=20, n_val=0, n_test=0, noise=noise, seed=5)
    fractions = []
    for pixels, boxes in images_and_boxes(yaml_path):
        nonzero = np.count_nonzero(pixels)
        box_area = sum((x2 - x1) * (y2 - y1) for _, x1, y1, x2, y2 in boxes)
        # Noise pixels are distinct and non-zero; object hits lie inside their boxes.
        assert expected <= nonzero <= expected + box_area
        fractions.append(nonzero / SIZE**2)
    assert 0.02 <= min(fractions) and max(fractions) < 0.1  # mostly zero, as a detector readout


def test_rgb_objects_are_tinted_and_noise_is_grey(tmp_path):
    yaml_path = make_sparse(tmp_path / "rgb", n_train=4, n_val=0, n_test=0, channels=3, seed=6)
    for pixels, _ in images_and_boxes(yaml_path):
        assert pixels.dtype == np.uint8 and pixels.shape == (SIZE, SIZE, 3)
        grey = (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])
        assert (~grey).any()  # some tinted object hits
        lit = pixels.max(axis=2) > 0
        assert (pixels.min(axis=2)[lit] > 0).all()  # a hit is non-zero in every channel


def test_class_shapes_and_size_mix_parsing():
    assert class_shapes(5) == (["track", "shower", "blob", "track1", "shower1"],
                               ("track", "shower", "blob", "track", "shower"))
    assert class_shapes(["shower", "muon", "x"]) == (["shower", "muon", "x"], ("shower", "shower", "blob"))
    assert parse_size_mix("0.5:3x2-5x4,0.5:40X30-200x150") == (
        SizeBin(0.5, (3, 2), (5, 4)), SizeBin(0.5, (40, 30), (200, 150)))
    for bad in ("0.5:3x2", "a:3x2-5x4", "0.5:3-5x4"):
        with pytest.raises(ValueError, match="size mix"):
            parse_size_mix(bad)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"channels": 2}, "channels"),
    ({"objects_per_image": (3, 1)}, "objects_per_image"),
    ({"noise": 1.5}, "noise"),
    ({"size_mix": (SizeBin(1.0, (5, 5), (4, 4)),)}, "size bin"),
    ({"classes": ["a", "a"]}, "distinct"),
])
def test_bad_parameters_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sparse(tmp_path / "bad", n_train=1, n_val=0, n_test=0, **kwargs)
